"""Waking held requests the moment a human decides: one Redis pub/sub connection per process
serves every held request and every ``approvals watch`` stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from extproc.approvals.model import (
    PENDING,
    Approval,
    ApprovalError,
)
from extproc.approvals.store import ApprovalEvent, ApprovalStore, parse_event
from extproc.store import DEFAULT_PREFIX, StoreUnavailable

__all__ = ["ApprovalWaiter", "Subscription"]

log = logging.getLogger("extproc.approvals")


# ---------------------------------------------------------------------------
# waking held requests: one pub/sub connection per process


class Subscription:
    """Approval events for one consumer (a ``Watch`` RPC). Bounded: a consumer that falls
    more than ``maxsize`` events behind is cut off (``get`` returns None) rather than
    growing memory."""

    def __init__(self, maxsize: int) -> None:
        self._q: asyncio.Queue[ApprovalEvent | None] = asyncio.Queue(maxsize + 1)
        self._max = maxsize
        self.overflowed = False

    def _offer(self, ev: ApprovalEvent) -> None:
        if self.overflowed:
            return
        if self._q.qsize() >= self._max:
            self.overflowed = True
            self._q.put_nowait(None)  # the one spare slot: wakes the consumer to end
            return
        self._q.put_nowait(ev)

    async def get(self) -> ApprovalEvent | None:
        return await self._q.get()


class ApprovalWaiter:
    """Wakes held requests as soon as their approval leaves ``pending``.

    One pub/sub connection per process serves every ``wait`` and every ``subscribe``:
    fifty held requests are fifty futures in a dictionary, not fifty connections.
    ``wait`` registers its future first, then makes sure the subscription is live, then
    reads the record: a decision before the read is in the record, one after it arrives
    as a message. No lost wake-up.

    Pub/sub is at-most-once: after a reconnect, and every ``backstop_seconds`` while
    anything waits, the waited records are re-read with one MGET. That is a safety net
    for a dropped message, not the wake-up path.
    """

    def __init__(
        self, redis: Redis, *, prefix: str = DEFAULT_PREFIX, backstop_seconds: float = 5.0
    ) -> None:
        self._r = redis
        self._store = ApprovalStore(redis, prefix=prefix)
        self._channel = self._store.channel
        self._backstop = backstop_seconds
        self._waiters: dict[str, set[asyncio.Future[Approval]]] = {}
        self._subs: set[Subscription] = set()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def waiting(self) -> int:
        """Held requests currently waiting (for metrics)."""
        return sum(len(s) for s in self._waiters.values())

    async def start(self, *, timeout: float = 5.0) -> None:
        """Subscribe; returns once the subscription is live or after ``timeout`` (then it
        keeps trying in the background, and ``wait`` reads the record directly meanwhile)."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="approval-waiter")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.cancel()

    async def wait(self, approval_id: str, timeout: float) -> Approval:
        """The approval once it is no longer pending, or as it stands after ``timeout``.

        Raises ``ApprovalError("not_found")`` for an unknown id and ``StoreUnavailable``
        when Redis cannot be read (the caller fails closed).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut: asyncio.Future[Approval] = loop.create_future()
        self._waiters.setdefault(approval_id, set()).add(fut)
        try:
            if not self._subscribed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._subscribed.wait(), max(0.0, deadline - loop.time()))
            cur = await self._store.get(approval_id)
            if cur is None:
                raise ApprovalError("not_found", f"no approval {approval_id}")
            if cur.state != PENDING:
                return cur
            remaining = deadline - loop.time()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(fut, remaining)
            return await self._store.get(approval_id) or cur
        finally:
            futs = self._waiters.get(approval_id)
            if futs is not None:
                futs.discard(fut)
                if not futs:
                    del self._waiters[approval_id]

    @contextlib.asynccontextmanager
    async def subscribe(self, *, maxsize: int = 1000) -> AsyncIterator[Subscription]:
        """Every approval event from now on, for as long as the context is open."""
        sub = Subscription(maxsize)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    # -- internals ------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            ps: PubSub = self._r.pubsub()
            try:
                await ps.subscribe(self._channel)
                while True:  # the confirmation: from here on every publish reaches us
                    msg = await ps.get_message(timeout=5.0)
                    if msg is None:
                        raise TimeoutError("no subscribe confirmation")
                    if msg.get("type") == "subscribe":
                        break
                self._subscribed.set()
                backoff = 0.05
                await self._recheck()  # whatever was decided while we were not subscribed
                last = time.monotonic()
                while True:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._dispatch(msg["data"])
                    if self._waiters and time.monotonic() - last >= self._backstop:
                        await self._recheck()
                        last = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError, StoreUnavailable) as exc:
                if not self._closing:
                    log.warning("approval event subscription lost (%s); reconnecting", type(exc).__name__)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await ps.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _dispatch(self, data: Any) -> None:
        ev = parse_event(data)
        if ev is None:
            return
        for sub in list(self._subs):
            sub._offer(ev)
        if ev.approval.state != PENDING:
            self._resolve(ev.approval)

    def _resolve(self, a: Approval) -> None:
        for f in self._waiters.get(a.id, ()):
            if not f.done():
                f.set_result(a)

    async def _recheck(self) -> None:
        ids = list(self._waiters)
        if not ids:
            return
        for a in await self._store._load(ids, self._store._now(None), prune=f"{self._store.prefix}approvals:pending"):
            if a.state != PENDING:
                self._resolve(a)
