"""Approvals in Redis: records, atomic decisions across replicas, grants, and waking the
held request the moment an approver decides.

Keys (``<p>`` is the prefix, ``extproc:`` by default)::

    <p>approval:<id>               the record (JSON); expires long after it stops mattering
    <p>approvals:pending           ZSET id -> expires_at: what is waiting, oldest first
    <p>approvals:all               ZSET id -> created_at: recent approvals, newest last
    <p>approvals:binding:<sha256>  ZSET id -> created_at: approvals for one exact binding
    <p>approvals:heartbeat:<owner> "1" with a TTL: the holding process is alive
    <p>approvals:events            pub/sub channel: {"event": ..., "approval": {...}}

Every change to a record is a WATCH/MULTI transaction: read the record, compute the new
one with the pure functions of ``extproc.approvals.model``, write it and publish the event in one
MULTI. If another replica changed the record in between, EXEC fails and the step is
re-run on the fresh record, so two approvers racing on a quorum of two both count.

All keys of one approval live on one Redis node: a single instance or Sentinel (like
budgets); Redis Cluster would need a hash tag in the prefix.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from extproc.approvals.model import (
    PENDING,
    Approval,
    ApprovalError,
    ApproverRule,
    Binding,
    abandon,
    consume,
    decide,
    expire_if_due,
    grant_usable,
)
from extproc.approvals.notify import Notifier
from extproc.identity.model import Identity
from extproc.store import DEFAULT_PREFIX, KeySpace, StoreUnavailable, reraise_if_cancelled

__all__ = [
    "DEFAULT_PREFIX",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TTL",
    "ApprovalEvent",
    "ApprovalStore",
]

log = logging.getLogger("extproc.approvals")

#: A holder refreshes its heartbeat every ``HEARTBEAT_INTERVAL`` seconds; after
#: ``HEARTBEAT_TTL`` without one, its held approvals count as abandoned.
HEARTBEAT_INTERVAL = 10
HEARTBEAT_TTL = 30
#: How long a record is kept after it could last matter (expiry, then the grant window).
RETENTION_SECONDS = 86_400
#: ``approvals:all`` keeps the newest this many ids (``list`` of decided approvals).
MAX_LISTED = 10_000
_MAX_TX_ATTEMPTS = 64


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    # Callers handle one exception type for "the store is down" and decide to fail closed.
    try:
        yield
    except (RedisError, OSError) as exc:
        if isinstance(exc, WatchError):
            raise
        raise StoreUnavailable(type(exc).__name__) from None


@dataclass(frozen=True, slots=True)
class ApprovalEvent:
    #: created | voted | approved | denied | expired | abandoned
    kind: str
    approval: Approval


def _event_payload(kind: str, a: Approval) -> bytes:
    return json.dumps({"event": kind, "approval": a.to_dict()}, separators=(",", ":")).encode()


def parse_event(data: bytes | str) -> ApprovalEvent | None:
    try:
        doc = json.loads(data)
        return ApprovalEvent(kind=str(doc["event"]), approval=Approval.from_dict(doc["approval"]))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed approval event")
        return None


def _event_kind(old: Approval, new: Approval) -> str | None:
    if old.state != new.state:
        return new.state
    if len(old.decisions) != len(new.decisions):
        return "voted"
    return None  # grant uses and owner changes wake nobody


class ApprovalStore:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = redis
        self.prefix = prefix
        self._k = k = KeySpace(prefix)
        self.channel = k("approvals", "events")
        self._pending = k("approvals", "pending")
        self._all = k("approvals", "all")
        self._notifier = notifier
        self._clock = clock

    # -- keys ------------------------------------------------------------------

    def _rec(self, approval_id: str) -> str:
        return self._k("approval", approval_id)

    def _by_binding(self, binding: Binding) -> str:
        return self._k("approvals", "binding", binding.key())

    def _hb(self, owner: str) -> str:
        return self._k("approvals", "heartbeat", owner)

    # -- create, read ---------------------------------------------------------

    async def create(self, a: Approval, *, owner: str | None = None) -> Approval:
        """Store a new pending approval, publish ``created`` and notify the webhooks.

        With ``owner`` (``make_owner_id()``), the approval is held by that process: its
        heartbeat is set here too, so another replica's ``abandon_stale`` cannot abandon
        it before the first ``heartbeat`` call.
        """
        if owner is not None:
            a = replace(a, owner=owner)
        ttl = max(1, int(a.expires_at - a.created_at + a.grant_window_seconds + RETENTION_SECONDS))
        idx = self._by_binding(a.binding)
        with _redis_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.set(self._rec(a.id), a.to_json(), ex=ttl)
                pipe.zadd(self._pending, {a.id: a.expires_at})
                pipe.zadd(self._all, {a.id: a.created_at})
                pipe.zremrangebyrank(self._all, 0, -(MAX_LISTED + 1))
                pipe.zadd(idx, {a.id: a.created_at})
                pipe.expire(idx, ttl)
                if owner is not None:
                    pipe.set(self._hb(owner), b"1", ex=HEARTBEAT_TTL)
                pipe.publish(self.channel, _event_payload("created", a))
                await pipe.execute()
        if self._notifier is not None:
            self._notifier.notify("created", a)
        return a

    async def get(self, approval_id: str, *, now: float | None = None) -> Approval | None:
        """The record, or None. A pending record past its expiry is marked ``expired`` first."""
        with _redis_errors():
            raw = await self._r.get(self._rec(approval_id))
        if raw is None:
            return None
        a = Approval.from_json(raw)
        return await self._expire(a, self._now(now))

    async def list(
        self, state: str | None = None, *, limit: int = 100, now: float | None = None
    ) -> builtins.list[Approval]:
        """Pending approvals oldest first (``state="pending"``); otherwise newest first."""
        t = self._now(now)
        out: builtins.list[Approval] = []
        if state == PENDING:
            with _redis_errors():
                ids = [_s(i) for i in await self._r.zrange(self._pending, 0, -1)]
            for a in await self._load(ids, t, prune=self._pending):
                if a.state == PENDING:
                    out.append(a)
                    if len(out) >= limit:
                        break
            return out
        start, batch = 0, max(limit, 100)
        while len(out) < limit:
            with _redis_errors():
                ids = [_s(i) for i in await self._r.zrevrange(self._all, start, start + batch - 1)]
            if not ids:
                break
            start += batch
            out += [a for a in await self._load(ids, t, prune=self._all) if state is None or a.state == state]
        return out[:limit]

    async def _load(self, ids: builtins.list[str], now: float, *, prune: str) -> builtins.list[Approval]:
        if not ids:
            return []
        with _redis_errors():
            raws = await self._r.mget([self._rec(i) for i in ids])
        out: builtins.list[Approval] = []
        gone: builtins.list[str] = []
        for i, raw in zip(ids, raws, strict=True):
            if raw is None:
                gone.append(i)  # the record outlived its retention; drop the index entry
                continue
            try:
                a = Approval.from_json(raw)
            except ValueError:
                log.warning("skipping an unreadable approval record %s", i)
                continue
            out.append(await self._expire(a, now))
        if gone:
            with _redis_errors():
                await self._r.zrem(prune, *gone)
        return out

    async def _expire(self, a: Approval, now: float) -> Approval:
        if expire_if_due(a, now) is a:
            return a

        async def step(cur: Approval, pipe: Pipeline) -> Approval | None:
            return expire_if_due(cur, now)

        try:
            return await self._transact(a.id, step)
        except ApprovalError:
            return expire_if_due(a, now)

    # -- decisions ------------------------------------------------------------

    async def decide(
        self,
        approval_id: str,
        approver: Identity,
        verdict: str,
        reason: str = "",
        *,
        now: float | None = None,
        rule: ApproverRule | None = None,
    ) -> Approval:
        """Record a vote atomically; returns the new record or raises ``ApprovalError``.

        ``rule`` is the current configuration's approver rule for the approval's policy
        rule (see ``ApprovalSettings.rule_for``); the voter must satisfy it as well as
        the rule recorded when the request was held.
        """
        t = self._now(now)
        refused: ApprovalError | None = None

        async def step(cur: Approval, pipe: Pipeline) -> Approval | None:
            nonlocal refused
            refused = None
            try:
                return decide(cur, approver, verdict, reason, now=t, rule=rule)
            except ApprovalError as exc:
                expired = expire_if_due(cur, t)
                if expired is cur:
                    raise
                refused = exc  # persist the expiry, then report why the vote failed
                return expired

        new = await self._transact(approval_id, step)
        if refused is not None:
            raise refused
        return new

    async def mark_abandoned(self, ids: Iterable[str], *, now: float | None = None) -> builtins.list[str]:
        """Abandon these pending approvals (e.g. held requests cancelled at shutdown)."""
        t = self._now(now)
        done: builtins.list[str] = []
        for i in ids:

            async def step(cur: Approval, pipe: Pipeline) -> Approval | None:
                return abandon(cur, t)  # raises unless pending: only report what we changed

            with contextlib.suppress(ApprovalError):
                if (await self._transact(i, step)).state == "abandoned":
                    done.append(i)
        return done

    # -- holders: ownership, heartbeats, abandonment -----------------------------

    async def heartbeat(self, owner: str, *, ttl_seconds: int = HEARTBEAT_TTL) -> None:
        """Call every ``HEARTBEAT_INTERVAL`` seconds while this process may hold requests."""
        with _redis_errors():
            await self._r.set(self._hb(owner), b"1", ex=ttl_seconds)

    async def release(self, approval_id: str, owner: str) -> Approval | None:
        """The hold ended without a decision (timeout, client gone): nobody holds it now.

        The approval stays pending, so an approver can still approve it and the caller's
        retry finds the grant; it is no longer abandoned if this process dies.
        """

        async def step(cur: Approval, pipe: Pipeline) -> Approval | None:
            return replace(cur, owner=None) if cur.owner == owner else None

        try:
            return await self._transact(approval_id, step)
        except ApprovalError:
            return None

    async def abandon_stale(self, *, now: float | None = None) -> builtins.list[str]:
        """Abandon pending approvals whose holding process stopped heartbeating.

        Call at start-up and periodically (any replica may: it only touches approvals
        whose owner's heartbeat key has expired). Returns the ids abandoned.
        """
        t = self._now(now)
        with _redis_errors():
            ids = [_s(i) for i in await self._r.zrange(self._pending, 0, -1)]
        held = [a for a in await self._load(ids, t, prune=self._pending) if a.state == PENDING and a.owner]
        owners = sorted({a.owner for a in held if a.owner})
        if not owners:
            return []
        with _redis_errors():
            alive = await self._r.mget([self._hb(o) for o in owners])
        dead = {o for o, hb in zip(owners, alive, strict=True) if hb is None}
        done: builtins.list[str] = []
        for a in held:
            if a.owner not in dead:
                continue

            async def step(cur: Approval, pipe: Pipeline) -> Approval | None:
                if cur.owner is None:
                    return None  # released meanwhile
                # Watched too: a holder that heartbeats now keeps its approval.
                hb = self._hb(cur.owner)
                await pipe.watch(hb)
                if await pipe.exists(hb):
                    return None
                return abandon(cur, t)  # raises unless pending (another replica was first)

            with contextlib.suppress(ApprovalError):
                if (await self._transact(a.id, step)).state == "abandoned":
                    done.append(a.id)
        if done:
            log.warning("abandoned %d approval(s) whose holding process stopped: %s", len(done), ", ".join(done))
        return done

    async def maintain(self, owner: str, *, interval: float = HEARTBEAT_INTERVAL) -> None:
        """Run until cancelled: heartbeat for ``owner``, abandon other dead holders' approvals,
        expire overdue ones (so watchers and webhooks hear about it without anyone reading).
        A Redis outage is logged and retried; it never ends the loop."""
        while True:
            try:
                await self.heartbeat(owner)
                await self.abandon_stale()
                await self.expire_due()
            except StoreUnavailable as exc:
                reraise_if_cancelled()
                log.warning("approval maintenance skipped: redis unavailable (%s)", exc)
            await asyncio.sleep(interval)

    async def expire_due(self, *, now: float | None = None) -> builtins.list[str]:
        """Mark every pending approval past its expiry ``expired`` (publishing the event)."""
        t = self._now(now)
        with _redis_errors():
            ids = [_s(i) for i in await self._r.zrangebyscore(self._pending, "-inf", t)]
        return [a.id for a in await self._load(ids, t, prune=self._pending) if a.state == "expired"]

    # -- grants -----------------------------------------------------------------

    async def find_pending(self, binding: Binding, *, now: float | None = None) -> Approval | None:
        """A pending approval for exactly this binding: a retry joins it instead of asking again."""
        t = self._now(now)
        for a in await self._for_binding(binding, t):
            if a.state == PENDING and a.binding == binding:
                return a
        return None

    async def find_grant(self, binding: Binding, *, now: float | None = None) -> Approval | None:
        """An approved, still usable approval for exactly this binding, used once atomically.

        ``once`` grants are consumed here (a second caller racing for the same grant gets
        None); ``window`` grants count the use. Returns the updated record.
        """
        t = self._now(now)
        for a in await self._for_binding(binding, t):
            if grant_usable(a, binding, t):
                got = await self.consume_grant(a.id, now=t)
                if got is not None:
                    return got
        return None

    async def consume_grant(self, approval_id: str, *, now: float | None = None) -> Approval | None:
        """Use an approved grant (the held request that was just approved calls this).

        None when the grant is already used up, past its window, or not approved.
        """
        t = self._now(now)

        async def step(cur: Approval, pipe: Pipeline) -> Approval | None:
            return consume(cur, t)

        try:
            return await self._transact(approval_id, step)
        except ApprovalError:
            return None

    async def _for_binding(self, binding: Binding, now: float) -> builtins.list[Approval]:
        idx = self._by_binding(binding)
        with _redis_errors():
            ids = [_s(i) for i in await self._r.zrevrange(idx, 0, 49)]
        return await self._load(ids, now, prune=idx)

    # -- the transaction ----------------------------------------------------------

    async def _transact(
        self, approval_id: str, step: Callable[[Approval, Pipeline], Awaitable[Approval | None]]
    ) -> Approval:
        """Optimistic read-modify-write of one record; ``step`` returns the new record or
        None for "no change" (and may WATCH more keys through the pipeline). Returns the
        record as stored afterwards."""
        key = self._rec(approval_id)
        for attempt in range(_MAX_TX_ATTEMPTS):
            with _redis_errors():
                async with self._r.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        if raw is None:
                            raise ApprovalError("not_found", f"no approval {approval_id}")
                        cur = Approval.from_json(raw)
                        new = await step(cur, pipe)
                        if new is None or new == cur:
                            await pipe.unwatch()  # type: ignore[no-untyped-call]
                            return cur
                        kind = _event_kind(cur, new)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(key, new.to_json(), keepttl=True)
                        if new.state != PENDING:
                            pipe.zrem(self._pending, new.id)
                        if kind is not None:
                            pipe.publish(self.channel, _event_payload(kind, new))
                        await pipe.execute()
                    except WatchError:
                        # Someone else changed it first: back off a little and re-read.
                        await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311
                        continue
            if self._notifier is not None and kind in ("approved", "denied", "expired", "abandoned"):
                self._notifier.notify("decided", new)
            return new
        raise StoreUnavailable(f"approval {approval_id} is contended; gave up after {_MAX_TX_ATTEMPTS} attempts")

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
