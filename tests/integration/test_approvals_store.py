"""Approvals against a real Redis: racing approvers, waking held requests, grants, holders.

Every test writes under its own key prefix (and so its own event channel) and deletes it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from extproc.approvals.ids import new_approval_id
from extproc.approvals.model import (
    Approval,
    ApprovalError,
    ApprovalSettings,
    Binding,
    content_digest,
    new_approval,
)
from extproc.approvals.store import ApprovalStore
from extproc.approvals.waiter import ApprovalWaiter
from extproc.errors import StoreUnavailable
from extproc.identity.model import Identity

T = TypeVar("T")


def ident(user: str, *groups: str) -> Identity:
    return Identity(user=user, groups=groups, issuer="https://idp", subject=user, expires_at=time.time() + 3600)


ALICE, BOB, CAROL = ident("alice", "eng"), ident("bob", "sec"), ident("carol", "sec")


def binding(text: str = "hello", **kw: str) -> Binding:
    base = {
        "user": "alice",
        "issuer": "https://idp",
        "provider": "openai",
        "route": "/chat/completions",
        "content_digest": content_digest(f'{{"messages":["{text}"]}}'.encode(), api="openai"),
        "policy_version": "pv1",
        "rule_id": "secrets",
    }
    base.update(kw)
    return Binding(**base)


def settings(quorum: int = 1, **kw: Any) -> ApprovalSettings:
    return ApprovalSettings.from_config({"rules": {"secrets": {"groups": ["sec"], "quorum": quorum}}, **kw})


@asynccontextmanager
async def redis_client(name: str | None = None) -> AsyncIterator[Redis]:
    client = Redis.from_url(os.environ["REDIS_URL"], max_connections=200, client_name=name)
    try:
        yield client
    finally:
        await client.aclose()


def run(fn: Callable[[Redis, str], Awaitable[T]]) -> T:
    prefix = f"extproc-test:{uuid.uuid4().hex}:"

    async def main() -> T:
        async with redis_client() as client:
            try:
                return await fn(client, prefix)
            finally:
                keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
                if keys:
                    await client.delete(*keys)

    return asyncio.run(main())


async def make(store: ApprovalStore, *, quorum: int = 1, owner: str | None = None, **kw: Any) -> Approval:
    a = new_approval(
        approval_id=new_approval_id(), binding=binding(**kw), requester=ALICE, settings=settings(quorum),
        now=time.time())
    return await store.create(a, owner=owner)


def test_create_get_list(redis_url: str) -> None:
    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        a = await make(store, text="one")
        b = await make(store, text="two")
        assert await store.get(a.id) == a
        assert await store.get("apr_" + "x" * 20) is None
        assert [x.id for x in await store.list("pending")] == [a.id, b.id]
        await store.decide(a.id, BOB, "deny", "no")
        assert [x.id for x in await store.list("pending")] == [b.id]
        assert [x.id for x in await store.list()] == [b.id, a.id]
        assert [x.id for x in await store.list("denied")] == [a.id]
        assert await store.find_pending(binding(text="two")) == b
        assert await store.find_pending(binding(text="one")) is None

    run(body)


def test_racing_approvers_both_count(redis_url: str) -> None:
    """Quorum 2, two approvers on two connections at the same instant: neither vote is lost."""

    async def body(r: Redis, p: str) -> None:
        async with redis_client() as r2:
            s1, s2 = ApprovalStore(r, prefix=p), ApprovalStore(r2, prefix=p)
            for _ in range(15):
                a = await make(s1, quorum=2)
                got = await asyncio.gather(
                    s1.decide(a.id, BOB, "approve"), s2.decide(a.id, CAROL, "approve"), return_exceptions=True
                )
                assert not [g for g in got if isinstance(g, BaseException)], got
                final = await s1.get(a.id)
                assert final is not None and final.state == "approved"
                assert sorted(v.approver.user for v in final.decisions) == ["bob", "carol"]

    run(body)


def test_decide_errors_and_expiry(redis_url: str) -> None:
    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        a = await make(store)
        for who, code in ((ALICE, "self_approval"), (ident("dave", "eng"), "not_an_approver")):
            with pytest.raises(ApprovalError) as exc:
                await store.decide(a.id, who, "approve")
            assert exc.value.code == code
        with pytest.raises(ApprovalError) as exc:
            await store.decide("apr_" + "y" * 20, BOB, "approve")
        assert exc.value.code == "not_found"
        # past its expiry: the vote is refused and the record is now expired for everyone
        with pytest.raises(ApprovalError) as exc:
            await store.decide(a.id, BOB, "approve", now=a.expires_at + 1)
        assert exc.value.code == "expired"
        stored = await store.get(a.id, now=a.created_at)
        assert stored is not None and stored.state == "expired"
        assert await store.list("pending") == []
        b = await make(store, text="later")
        assert await store.expire_due(now=b.expires_at + 1) == [b.id]

    run(body)


def test_wait_wakes_within_50ms(redis_url: str) -> None:
    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        waiter = ApprovalWaiter(r, prefix=p)
        await waiter.start()
        try:
            a = await make(store)
            task = asyncio.create_task(waiter.wait(a.id, timeout=10))
            await asyncio.sleep(0.2)
            assert not task.done()
            t0 = time.monotonic()
            await store.decide(a.id, BOB, "approve", "ok")
            got = await task
            assert time.monotonic() - t0 < 0.05
            assert got.state == "approved" and got.decisions[0].reason == "ok"
            # decided before the wait starts: no lost wake-up, it returns at once
            b = await make(store, text="b")
            await store.decide(b.id, BOB, "deny", "no")
            t0 = time.monotonic()
            assert (await waiter.wait(b.id, timeout=10)).state == "denied"
            assert time.monotonic() - t0 < 0.05
            # nobody decides: the record as it stands after the timeout
            c = await make(store, text="c")
            t0 = time.monotonic()
            assert (await waiter.wait(c.id, timeout=0.3)).state == "pending"
            assert 0.25 < time.monotonic() - t0 < 1.0
            with pytest.raises(ApprovalError):
                await waiter.wait("apr_" + "z" * 20, timeout=1)
            assert waiter.waiting == 0
        finally:
            await waiter.close()

    run(body)


def test_fifty_waits_share_one_connection(redis_url: str) -> None:
    name = f"apw-{uuid.uuid4().hex[:12]}"

    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        async with redis_client(name) as wr:
            waiter = ApprovalWaiter(wr, prefix=p)
            await waiter.start()
            try:
                approvals = [await make(store, text=str(i)) for i in range(50)]
                tasks = [asyncio.create_task(waiter.wait(a.id, timeout=10)) for a in approvals]
                await asyncio.sleep(0.3)
                assert waiter.waiting == 50
                clients = await r.client_list()
                mine = [c for c in clients if c.get("name") == name]
                subscribed = [c for c in mine if int(c.get("sub", 0)) > 0]
                # one subscription for all 50 (the others are the pool's idle read connections)
                assert len(subscribed) == 1, mine
                for i, a in enumerate(approvals):
                    await store.decide(a.id, BOB, "approve" if i % 2 else "deny", "r")
                results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
                assert [x.state for x in results] == ["denied", "approved"] * 25
            finally:
                await waiter.close()

    run(body)


def test_waiter_recovers_a_lost_message(redis_url: str) -> None:
    """The backstop re-read finds a decision whose event never arrived."""

    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        waiter = ApprovalWaiter(r, prefix=p, backstop_seconds=0.2)
        await waiter.start()
        try:
            a = await make(store)
            task = asyncio.create_task(waiter.wait(a.id, timeout=5))
            await asyncio.sleep(0.1)
            # write the decision behind the store's back: no event is published
            approved = replace(a, state="approved", decided_at=time.time())
            await r.set(f"{p}approval:{a.id}", approved.to_json(), keepttl=True)
            got = await asyncio.wait_for(task, 3)
            assert got.state == "approved"
        finally:
            await waiter.close()

    run(body)


def test_grants_once(redis_url: str) -> None:
    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        a = await make(store)
        assert await store.find_grant(binding()) is None  # pending grants nothing
        await store.decide(a.id, BOB, "approve")
        assert await store.find_grant(binding(text="other")) is None
        assert await store.find_grant(binding(user="mallory")) is None
        assert await store.find_grant(binding(policy_version="pv2")) is None
        # ten concurrent retries from ten connections (replicas): exactly one gets the once-grant
        clients = [Redis.from_url(os.environ["REDIS_URL"]) for _ in range(10)]
        try:
            stores = [ApprovalStore(c, prefix=p) for c in clients]
            await asyncio.gather(*(c.ping() for c in clients))
            got = await asyncio.gather(*(s.find_grant(binding()) for s in stores))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        winners = [g for g in got if g is not None]
        assert len(winners) == 1 and winners[0].uses == 1
        assert await store.find_grant(binding()) is None
        assert await store.consume_grant(a.id) is None

    run(body)


def test_grants_window(redis_url: str) -> None:
    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        s = settings(grant="window", grant_window_seconds=60)
        a = await store.create(new_approval(
            approval_id=new_approval_id(), binding=binding(), requester=ALICE, settings=s, now=time.time()))
        approved = await store.decide(a.id, BOB, "approve")
        assert approved.decided_at is not None
        t = approved.decided_at
        for i in range(3):
            g = await store.find_grant(binding(), now=t + 1 + i)
            assert g is not None and g.uses == i + 1
        assert await store.find_grant(binding(), now=t + 60) is None
        assert await store.find_grant(binding(text="x"), now=t + 1) is None

    run(body)


def test_abandon_stale_and_release(redis_url: str) -> None:
    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        dead = await make(store, owner="host:1:dead", text="dead")
        alive = await make(store, owner="host:2:alive", text="alive")
        released = await make(store, owner="host:1:dead", text="released")
        assert (await store.release(released.id, "host:1:dead") or released).owner is None
        assert await store.abandon_stale() == []  # every heartbeat is fresh
        await r.delete(f"{p}approvals:heartbeat:host:1:dead")  # that process died
        assert await store.abandon_stale() == [dead.id]
        got = await store.get(dead.id)
        assert got is not None and got.state == "abandoned"
        with pytest.raises(ApprovalError) as exc:
            await store.decide(dead.id, BOB, "approve")
        assert exc.value.code == "not_pending"
        assert {x.id for x in await store.list("pending")} == {alive.id, released.id}
        await store.heartbeat("host:2:alive", ttl_seconds=1)
        assert await store.mark_abandoned([alive.id, released.id, dead.id]) == [alive.id, released.id]

    run(body)


def test_maintain(redis_url: str) -> None:
    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        soon = new_approval(
            approval_id=new_approval_id(), binding=binding(), requester=ALICE,
            settings=settings(hold_seconds=1, ttl_seconds=1), now=time.time())
        await store.create(soon)
        task = asyncio.create_task(store.maintain("host:9:me", interval=0.05))
        try:
            await asyncio.sleep(1.3)
            assert await r.exists(f"{p}approvals:heartbeat:host:9:me")
            got = await r.get(f"{p}approval:{soon.id}")
            assert got is not None and Approval.from_json(got).state == "expired"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(body)


def test_maintain_ends_when_cancelled_even_if_the_client_turns_the_cancel_into_an_error(redis_url: str) -> None:
    async def body(r: Redis, p: str) -> None:
        store = ApprovalStore(r, prefix=p)
        entered = asyncio.Event()
        calls = 0

        async def heartbeat(owner: str, **_kw: object) -> None:
            nonlocal calls
            calls += 1
            entered.set()
            if calls > 1:
                await asyncio.sleep(60)  # (only reached if the first cancel was swallowed)
                return
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                raise StoreUnavailable("ConnectionError") from None  # what a client may do mid-read

        store.heartbeat = heartbeat  # type: ignore[method-assign]
        task = asyncio.create_task(store.maintain("host:9:me", interval=0.01))
        await entered.wait()
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        assert task.done() and task.cancelled() and calls == 1  # not another round of the loop

    run(body)
