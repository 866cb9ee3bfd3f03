"""The state store seam: a small async interface over Redis.

Approvals, session records and budgets go through this; the data path never talks to the
Redis client directly. Tests use a real Redis server behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["RedisStore", "StateStore", "StoreUnavailable"]

log = logging.getLogger("extproc.store")


class StoreUnavailable(Exception):
    """The store could not be reached; callers decide whether that fails closed."""


class StateStore(Protocol):
    async def ping(self) -> bool: ...
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any: ...
    async def xadd(self, stream: str, fields: Mapping[str, bytes | str], *, maxlen: int | None = None) -> str: ...
    async def publish(self, channel: str, message: bytes) -> None: ...
    async def close(self) -> None: ...


class RedisStore:
    """``StateStore`` on redis-py's asyncio client. Accepts redis://, rediss://, unix://."""

    def __init__(self, url: str, *, prefix: str = "extproc:", timeout: float = 2.0, retries: int | None = None) -> None:
        self.prefix = prefix
        self._url = url
        extra: dict[str, Any] = {}
        if retries is not None:
            # redis-py's default retries ten times with backoff (seconds): a caller that must
            # fail fast or move on (records spool while Redis is away) retries once, at once.
            extra["retry"] = Retry(NoBackoff(), retries)
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30, **extra
        )

    def key(self, key: str) -> str:
        return self.prefix + key

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def get(self, key: str) -> bytes | None:
        try:
            v = await self.client.get(self.key(key))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        if v is None:
            return None
        return v if isinstance(v, bytes) else str(v).encode()

    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        try:
            px = int(ttl_seconds * 1000) if ttl_seconds else None
            await self.client.set(self.key(key), value, px=px)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete(self.key(key))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    async def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.client.eval(script, len(keys), *[self.key(k) for k in keys], *args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    async def xadd(self, stream: str, fields: Mapping[str, bytes | str], *, maxlen: int | None = None) -> str:
        try:
            data = {k: v for k, v in fields.items()}
            rid = await self.client.xadd(self.key(stream), data, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        return rid.decode() if isinstance(rid, bytes) else str(rid)

    async def publish(self, channel: str, message: bytes) -> None:
        try:
            await self.client.publish(self.key(channel), message)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    async def close(self) -> None:
        await self.client.aclose()
