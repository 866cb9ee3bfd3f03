"""Request and token budgets in Redis, shared by every replica.

Fixed windows: a budget's counters live in one hash per window, keyed by the window's
start (``<prefix><charge key>:<window start>``), holding ``r`` (requests) and ``t``
(tokens). One Lua script checks every budget that applies and, only if all have room,
counts the request and its estimated prompt tokens in all of them: Redis runs scripts
one at a time, so concurrent reservations from any number of replicas can never
overshoot a limit. A fixed window can let up to twice a limit through across a window
boundary; it is chosen over a sliding log because it is O(1) in memory and time per
budget and its ``Retry-After`` is exact.

Once the response reports real usage, :func:`charge_usage` adds the difference between
actual and estimated tokens to the current window (never taking it below zero).

When Redis cannot be reached, each budget's ``fail`` setting decides: any ``closed``
budget refuses the request (the data path answers 503); if all are ``open`` the request
proceeds and the outcome says budgets were not enforced.

Every key of one call must live on one Redis node: use a single instance or Sentinel;
Redis Cluster would need a hash tag in the key prefix.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from extproc.policy.model import BudgetCharge, BudgetOutcome
from extproc.store import DEFAULT_PREFIX, Batcher

__all__ = ["DEFAULT_PREFIX", "BudgetOutcome", "charge_usage", "charge_usage_nowait", "check_and_reserve",
           "window_start"]

#: Keys outlive their window a little, so a late usage correction still finds them.
_GRACE_SECONDS = 60

_RESERVE = """
local tokens = tonumber(ARGV[1])
local n = #KEYS
for i = 1, n do
  local rl = tonumber(ARGV[3 * i - 1])
  local tl = tonumber(ARGV[3 * i])
  local used = redis.call('HMGET', KEYS[i], 'r', 't')
  local r = tonumber(used[1]) or 0
  local t = tonumber(used[2]) or 0
  if rl >= 0 and r + 1 > rl then return {i, 1} end
  if tl >= 0 and t + tokens > tl then return {i, 2} end
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'r', 1)
  redis.call('HINCRBY', KEYS[i], 't', tokens)
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3 * i + 1]))
end
return {0, 0}
"""

_CHARGE = """
local delta = tonumber(ARGV[1])
for i = 1, #KEYS do
  local t = redis.call('HINCRBY', KEYS[i], 't', delta)
  if t < 0 then redis.call('HSET', KEYS[i], 't', 0) end
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], tonumber(ARGV[i + 1])) end
end
return 0
"""

_SRC = {"reserve": _RESERVE, "charge": _CHARGE}
# Redis names scripts by their SHA-1; it is an identifier here, not a security control.
_SHA = {name: hashlib.sha1(src.encode(), usedforsecurity=False).hexdigest() for name, src in _SRC.items()}


def window_start(now: float, window_seconds: int) -> int:
    return int(now // window_seconds) * window_seconds


def _seconds_left(now: float, window_seconds: int) -> int:
    return max(1, math.ceil(window_start(now, window_seconds) + window_seconds - now))


def _unique(charges: Sequence[BudgetCharge]) -> list[BudgetCharge]:
    # The same key twice would be checked once but counted twice.
    return list({c.key: c for c in charges}.values())


async def _run(client: Redis | Batcher, name: str, keys: list[str], args: list[Any]) -> Any:
    try:
        return await client.evalsha(_SHA[name], len(keys), *keys, *args)
    except NoScriptError:  # first use on this server, or after SCRIPT FLUSH / failover
        return await client.eval(_SRC[name], len(keys), *keys, *args)


async def check_and_reserve(
    client: Redis | Batcher,
    charges: Sequence[BudgetCharge],
    *,
    prompt_tokens: int,
    now: float,
    prefix: str = DEFAULT_PREFIX,
) -> BudgetOutcome:
    """Count one request and ``prompt_tokens`` against every budget, or refuse without counting."""
    charges = _unique(charges)
    if not charges:
        return BudgetOutcome(allowed=True)
    keys: list[str] = []
    args: list[Any] = [max(0, int(prompt_tokens))]
    for c in charges:
        keys.append(f"{prefix}{c.key}:{window_start(now, c.window_seconds)}")
        args += [
            -1 if c.requests_limit is None else c.requests_limit,
            -1 if c.tokens_limit is None else c.tokens_limit,
            _seconds_left(now, c.window_seconds) + _GRACE_SECONDS,
        ]
    try:
        result = await _run(client, "reserve", keys, args)
    except (TimeoutError, RedisError, OSError) as exc:
        closed = next((c for c in charges if c.fail == "closed"), None)
        error = f"{type(exc).__name__}: {exc}"[:200]
        if closed is not None:
            return BudgetOutcome(allowed=False, status=503, budget_id=closed.budget_id, unavailable=True, error=error)
        return BudgetOutcome(allowed=True, unavailable=True, error=error)
    index, which = int(result[0]), int(result[1])
    if index == 0:
        return BudgetOutcome(allowed=True)
    refused = charges[index - 1]
    return BudgetOutcome(
        allowed=False,
        status=429,
        budget_id=refused.budget_id,
        limit="requests" if which == 1 else "tokens",
        retry_after=_seconds_left(now, refused.window_seconds),
    )


def _charge_call(charges: Sequence[BudgetCharge], actual_tokens: int, estimated_tokens: int, now: float,
                 prefix: str) -> tuple[list[str], list[Any]] | None:
    """The keys and arguments of the correction, or None when there is nothing to correct."""
    delta = int(actual_tokens) - int(estimated_tokens)
    targets = [c for c in _unique(charges) if c.tokens_limit is not None]
    if delta == 0 or not targets:
        return None
    keys = [f"{prefix}{c.key}:{window_start(now, c.window_seconds)}" for c in targets]
    return keys, [delta] + [_seconds_left(now, c.window_seconds) + _GRACE_SECONDS for c in targets]


def charge_usage_nowait(
    batcher: Batcher,
    charges: Sequence[BudgetCharge],
    *,
    actual_tokens: int,
    estimated_tokens: int,
    now: float,
    prefix: str = DEFAULT_PREFIX,
    on_error: Callable[[BaseException], None],
) -> None:
    """:func:`charge_usage` with the next Redis batch, without waiting (the answer is out).
    The script was loaded by the reservation that preceded it; should Redis have lost it
    since, the correction is sent again as a plain ``EVAL``."""
    call = _charge_call(charges, actual_tokens, estimated_tokens, now, prefix)
    if call is None:
        return
    keys, args = call

    def failed(exc: BaseException) -> None:
        if isinstance(exc, NoScriptError):
            batcher.send("EVAL", _SRC["charge"], len(keys), *keys, *args, on_error=on_error)
        else:
            on_error(exc)

    batcher.send("EVALSHA", _SHA["charge"], len(keys), *keys, *args, on_error=failed)


async def charge_usage(
    client: Redis | Batcher,
    charges: Sequence[BudgetCharge],
    *,
    actual_tokens: int,
    estimated_tokens: int,
    now: float,
    prefix: str = DEFAULT_PREFIX,
) -> bool:
    """Correct token counters by ``actual - estimated``; False if Redis could not be reached.

    The correction lands in the window containing ``now``. Pass the reservation's time
    to correct the same window it was reserved in.
    """
    call = _charge_call(charges, actual_tokens, estimated_tokens, now, prefix)
    if call is None:
        return True
    keys, args = call
    try:
        await _run(client, "charge", keys, args)
    except (TimeoutError, RedisError, OSError):
        return False
    return True
