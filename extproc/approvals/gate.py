"""The approval hold: the I/O behind ``NeedApproval``.

Order matters: an existing grant for exactly this binding is used first (no new hold); a
request identical to one already pending joins that approval instead of paging approvers
again; otherwise a new approval is created (and webhooks fire). The wait is a future on the
process's single pub/sub connection, so many held requests cost no connections and no
polling. A hold that runs out, or a caller that goes away, releases the approval: it stays
pending for a retry. Any Redis failure fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from extproc.approvals.ids import new_approval_id
from extproc.approvals.model import ApprovalError, ApprovalSettings, new_approval
from extproc.approvals.store import ApprovalStore
from extproc.approvals.waiter import ApprovalWaiter
from extproc.datapath.machine import ApprovalResult, NeedApproval
from extproc.identity.model import Identity
from extproc.store import StoreUnavailable

__all__ = ["ApprovalGate"]

log = logging.getLogger("extproc.hold")


class ApprovalGate:
    def __init__(self, store: ApprovalStore, waiter: ApprovalWaiter, owner: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.waiter = waiter
        self.owner = owner
        self._clock = clock
        self.holding = 0

    async def hold(self, need: NeedApproval, requester: Identity, settings: ApprovalSettings) -> ApprovalResult:
        store = self.store
        try:
            grant = await store.find_grant(need.binding)
            if grant is not None:
                return ApprovalResult("approved", grant.id, granted_before=True)
            appr = await store.find_pending(need.binding)
            if appr is None:
                try:
                    appr = new_approval(need.binding, requester=requester, settings=settings, now=self._clock(),
                                        owner=self.owner, approval_id=new_approval_id())
                except ApprovalError as exc:
                    return ApprovalResult("no_approvers", reason=exc.message)
                appr = await store.create(appr, owner=self.owner)
                log.info("request held for approval %s (rule %s, user %s)", appr.id, need.binding.rule_id,
                         requester.user)
            self.holding += 1
            try:
                final = await self.waiter.wait(appr.id, timeout=need.hold_seconds)
            except BaseException:
                # The caller went away (stream cancelled) or Redis broke: let a retry find it.
                with contextlib.suppress(Exception):
                    await asyncio.shield(store.release(appr.id, self.owner))
                raise
            finally:
                self.holding -= 1
            if final.state == "approved":
                if await store.consume_grant(appr.id) is None:
                    return ApprovalResult("consumed", appr.id)
                return ApprovalResult("approved", appr.id)
            if final.state == "pending":
                await store.release(appr.id, self.owner)
                return ApprovalResult("pending", appr.id)
            reason = next((v.reason for v in reversed(final.decisions) if v.verdict == "deny"), "")
            return ApprovalResult(final.state, appr.id, reason=reason)
        except (StoreUnavailable, ApprovalError) as exc:
            log.warning("approval hold failed closed: %s", exc)
            return ApprovalResult("unavailable")
