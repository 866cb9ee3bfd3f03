"""The ``extproc.api.admin.v1.Approvals`` gRPC service: list, show, approve, deny, watch.

Every RPC authenticates the caller's bearer token like any admin call. What a caller sees
is limited to approvals they requested or may decide (an approver rule admits them), so
the admin port does not tell everyone who asked for what. Approve and Deny are checked
against the approver rule recorded with the approval *and* the current configuration's
rule: a configuration change can take an approver's right away, never hand one out for a
request already waiting.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

import grpc
from redis.asyncio import Redis

from extproc.api.admin.v1 import approvals_pb2 as pb
from extproc.api.admin.v1 import approvals_pb2_grpc as pb_grpc
from extproc.approvals.model import (
    APPROVAL_ID_RE,
    PENDING,
    Approval,
    ApprovalError,
    ApprovalSettings,
    Principal,
)
from extproc.approvals.notify import Notifier
from extproc.approvals.store import DEFAULT_PREFIX, ApprovalStore
from extproc.approvals.waiter import ApprovalWaiter
from extproc.identity.admin import authenticate_rpc
from extproc.identity.jwt import Authenticator
from extproc.identity.model import Identity
from extproc.store import StoreUnavailable

__all__ = ["ApprovalsService", "add_to_server", "approval_to_pb"]

_STATUS: dict[str, grpc.StatusCode] = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "self_approval": grpc.StatusCode.PERMISSION_DENIED,
    "not_an_approver": grpc.StatusCode.PERMISSION_DENIED,
    "not_pending": grpc.StatusCode.FAILED_PRECONDITION,
    "expired": grpc.StatusCode.FAILED_PRECONDITION,
    "already_voted": grpc.StatusCode.FAILED_PRECONDITION,
    "grant_unusable": grpc.StatusCode.FAILED_PRECONDITION,
    "no_approvers": grpc.StatusCode.FAILED_PRECONDITION,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
}
MAX_LIST = 1000


def _principal_pb(p: Principal) -> pb.Principal:
    return pb.Principal(user=p.user, issuer=p.issuer, groups=list(p.groups), workload=p.workload or "")


def approval_to_pb(a: Approval) -> pb.Approval:
    b = a.binding
    return pb.Approval(
        id=a.id,
        binding=pb.Binding(
            user=b.user,
            issuer=b.issuer,
            provider=b.provider,
            route=b.route,
            content_digest=b.content_digest,
            policy_version=b.policy_version,
            rule_id=b.rule_id,
        ),
        requester=_principal_pb(a.requester),
        created_at=a.created_at,
        expires_at=a.expires_at,
        state=a.state,
        decisions=[
            pb.Vote(approver=_principal_pb(v.approver), verdict=v.verdict, reason=v.reason, at=v.at)
            for v in a.decisions
        ],
        quorum=a.quorum,
        approvals=a.approvals,
        grant=a.grant,
        decided_at=a.decided_at or 0.0,
        grant_expires_at=a.grant_expires_at or 0.0,
        uses=a.uses,
        approver_groups=list(a.approvers.groups),
        approver_users=list(a.approvers.users),
    )


class ApprovalsService(pb_grpc.ApprovalsServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: ApprovalStore,
        authenticator: Authenticator,
        settings: ApprovalSettings,
        waiter: ApprovalWaiter,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._auth = authenticator
        self._settings = settings
        self._waiter = waiter
        self._clock = clock

    # -- RPCs -------------------------------------------------------------------

    async def ListPending(
        self, request: pb.ListPendingRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApprovalsResponse:
        who = await authenticate_rpc(context, self._auth)
        limit = min(max(request.limit or 100, 1), MAX_LIST)
        async with self._errors(context):
            items = await self._store.list(PENDING, limit=MAX_LIST)
        visible = [a for a in items if self._visible(a, who)][:limit]
        return pb.ListApprovalsResponse(approvals=[approval_to_pb(a) for a in visible])

    async def Get(self, request: pb.GetApprovalRequest, context: grpc.aio.ServicerContext) -> pb.Approval:
        who = await authenticate_rpc(context, self._auth)
        a = await self._load(request.id, who, context)
        return approval_to_pb(a)

    async def Approve(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.Approval:
        return await self._decide(request, context, "approve")

    async def Deny(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.Approval:
        return await self._decide(request, context, "deny")

    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ApprovalEvent]:
        who = await authenticate_rpc(context, self._auth)
        # Subscribed before the snapshot is read: an approval created in between shows up
        # twice (snapshot and event) rather than not at all.
        async with self._waiter.subscribe() as sub:
            if request.include_pending:
                async with self._errors(context):
                    current = await self._store.list(PENDING, limit=MAX_LIST)
                for a in current:
                    if self._visible(a, who):
                        yield pb.ApprovalEvent(event="pending", approval=approval_to_pb(a))
            while True:
                ev = await sub.get()
                if ev is None:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, "this watch fell too far behind the events; start it again"
                    )
                    return
                if self._visible(ev.approval, who):
                    yield pb.ApprovalEvent(event=ev.kind, approval=approval_to_pb(ev.approval))

    # -- helpers ----------------------------------------------------------------

    async def _decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext, verdict: str) -> pb.Approval:
        who = await authenticate_rpc(context, self._auth)
        a = await self._load(request.id, who, context)
        rule = self._settings.rule_for(a.binding.rule_id)
        if rule is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the current configuration names no approvers for policy rule '{a.binding.rule_id}'",
            )
        async with self._errors(context):
            new = await self._store.decide(a.id, who, verdict, request.reason, now=self._clock(), rule=rule)
        return approval_to_pb(new)

    async def _load(self, approval_id: str, who: Identity, context: grpc.aio.ServicerContext) -> Approval:
        if not APPROVAL_ID_RE.match(approval_id or ""):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not an approval id (apr_ + 20 characters)")
        a: Approval | None = None
        async with self._errors(context):
            a = await self._store.get(approval_id, now=self._clock())
        if a is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no approval {approval_id}")
        assert a is not None
        if not self._visible(a, who):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who.user} neither requested approval {approval_id} nor may decide it",
            )
        return a

    def _visible(self, a: Approval, who: Identity) -> bool:
        p = Principal.of(who)
        if p.same_person(a.requester):
            return True
        rule = self._settings.rule_for(a.binding.rule_id)
        return a.approvers.admits(p) and rule is not None and rule.admits(p)

    @contextlib.asynccontextmanager
    async def _errors(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        try:
            yield
        except ApprovalError as exc:
            await context.abort(_STATUS.get(exc.code, grpc.StatusCode.FAILED_PRECONDITION), exc.message)
        except StoreUnavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the approval store (Redis) is unavailable")


def add_to_server(
    server: grpc.aio.Server,
    *,
    redis: Redis,
    authenticator: Authenticator,
    settings: ApprovalSettings,
    waiter: ApprovalWaiter,
    notifier: Notifier | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> ApprovalsService:
    """Serve ``Approvals`` on ``server`` (the admin gRPC server). ``waiter`` must be started
    (``Watch`` rides on its subscription); ``notifier`` sends the "decided" webhooks."""
    service = ApprovalsService(ApprovalStore(redis, prefix=prefix, notifier=notifier), authenticator, settings, waiter)
    pb_grpc.add_ApprovalsServicer_to_server(service, server)
    return service
