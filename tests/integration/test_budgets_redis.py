"""Budgets against a real Redis: atomic across concurrent callers, windows, token corrections.

Uses the suite's Redis (``REDIS_URL``); every test writes under its own key
prefix and deletes it afterwards. Skipped (with the reason) only if no Redis answers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from extproc.policy import BudgetCharge
from extproc.policy.budgets import BudgetOutcome, charge_usage, check_and_reserve, window_start

#: The suite's Redis (tests/conftest.py starts one or takes REDIS_URL; no Redis is an error).
URL = os.environ["REDIS_URL"]
T = TypeVar("T")



def run(fn: Callable[[Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = Redis.from_url(URL, max_connections=64)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def charge(
    budget_id: str = "b",
    *,
    requests: int | None = None,
    tokens: int | None = None,
    window: int = 60,
    fail: str = "closed",
    key: str | None = None,
) -> BudgetCharge:
    return BudgetCharge(
        budget_id=budget_id,
        key=key or f"budget:{budget_id}:user:alice",
        window_seconds=window,
        requests_limit=requests,
        tokens_limit=tokens,
        fail=fail,
    )


# Mid-window, so the tests never straddle a boundary.
NOW = 1_700_000_000.0 - (1_700_000_000 % 60) + 15.0


def test_n_requests_then_refused_with_retry_after(prefix: str) -> None:
    c = [charge(requests=3)]

    async def go(r: Redis) -> list[BudgetOutcome]:
        return [await check_and_reserve(r, c, prompt_tokens=10, now=NOW, prefix=prefix) for _ in range(4)]

    outcomes = run(go)
    assert [o.allowed for o in outcomes] == [True, True, True, False]
    last = outcomes[-1]
    assert (last.status, last.budget_id, last.limit) == (429, "b", "requests")
    assert last.retry_after == 45  # window of 60 started 15 s ago

    # The next window starts fresh.
    nxt = run(lambda r: check_and_reserve(r, c, prompt_tokens=10, now=NOW + 60, prefix=prefix))
    assert nxt.allowed


def test_concurrent_reservations_allow_exactly_the_limit(prefix: str) -> None:
    c = [charge(requests=20), charge("g", requests=1000, key="budget:g:group:eng")]

    async def go(r: Redis) -> list[BudgetOutcome]:
        return await asyncio.gather(
            *(check_and_reserve(r, c, prompt_tokens=1, now=NOW, prefix=prefix) for _ in range(60))
        )

    outcomes = run(go)
    assert sum(o.allowed for o in outcomes) == 20
    assert all(o.budget_id == "b" for o in outcomes if not o.allowed)

    async def counters(r: Redis) -> Any:
        return await r.hgetall(f"{prefix}budget:g:group:eng:{window_start(NOW, 60)}")

    # All-or-nothing: refused reservations were not counted in the other budget either.
    assert run(counters) == {b"r": b"20", b"t": b"20"}


def test_token_limit_with_actual_usage_correction(prefix: str) -> None:
    c = [charge(tokens=100)]

    async def go(r: Redis) -> list[bool]:
        got = []
        for _ in range(3):
            got.append((await check_and_reserve(r, c, prompt_tokens=40, now=NOW, prefix=prefix)).allowed)
        # The first answer used 10 tokens, not the 40 reserved: 30 come back.
        assert await charge_usage(r, c, actual_tokens=10, estimated_tokens=40, now=NOW, prefix=prefix)
        got.append((await check_and_reserve(r, c, prompt_tokens=40, now=NOW, prefix=prefix)).allowed)
        # A long answer costs more than reserved: 500 extra tokens exhaust the window.
        assert await charge_usage(r, c, actual_tokens=540, estimated_tokens=40, now=NOW, prefix=prefix)
        out = await check_and_reserve(r, c, prompt_tokens=1, now=NOW, prefix=prefix)
        got.append(out.allowed)
        assert out.limit == "tokens" and out.retry_after == 45
        return got

    assert run(go) == [True, True, False, True, False]


def test_refund_never_goes_below_zero(prefix: str) -> None:
    c = [charge(tokens=10)]

    async def go(r: Redis) -> bool:
        await charge_usage(r, c, actual_tokens=0, estimated_tokens=1000, now=NOW, prefix=prefix)
        # A huge refund into an empty window must not become credit.
        return (await check_and_reserve(r, c, prompt_tokens=11, now=NOW, prefix=prefix)).allowed

    assert run(go) is False


def test_keys_expire_after_their_window(prefix: str) -> None:
    c = [charge(requests=5, window=60)]

    async def go(r: Redis) -> int:
        await check_and_reserve(r, c, prompt_tokens=1, now=NOW, prefix=prefix)
        ttl: int = await r.ttl(f"{prefix}budget:b:user:alice:{window_start(NOW, 60)}")
        return ttl

    assert 45 <= run(go) <= 45 + 60


def test_script_is_reloaded_when_redis_forgot_it(prefix: str) -> None:
    async def go(r: Redis) -> bool:
        async def forgot(*a: Any, **k: Any) -> Any:
            raise NoScriptError("NOSCRIPT No matching script")

        r.evalsha = forgot  # type: ignore[method-assign]
        return (await check_and_reserve(r, [charge(requests=1)], prompt_tokens=1, now=NOW, prefix=prefix)).allowed

    assert run(go) is True


def test_unreachable_redis_fails_closed_or_open() -> None:
    async def go(c: list[BudgetCharge]) -> BudgetOutcome:
        client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        try:
            return await check_and_reserve(client, c, prompt_tokens=1, now=NOW)
        finally:
            await client.aclose()

    closed = asyncio.run(go([charge("o", requests=1, fail="open"), charge("c", requests=1, fail="closed")]))
    assert (closed.allowed, closed.status, closed.budget_id, closed.unavailable) == (False, 503, "c", True)
    opened = asyncio.run(go([charge("o", requests=1, fail="open")]))
    assert (opened.allowed, opened.status, opened.unavailable) == (True, 200, True)
    assert opened.error
