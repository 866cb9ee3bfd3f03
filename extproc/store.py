"""The one Redis seam: a connection for the stores of each capability.

``policy/budgets.py``, ``approvals/store.py`` and ``recording/store.py`` each own their keys and
Lua scripts and take ``RedisStore.client``; nothing else in the data path talks to Redis. Every
store turns a Redis or network error into :class:`~extproc.errors.StoreUnavailable`, and the
caller fails closed.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from extproc.errors import StoreUnavailable

__all__ = ["DEFAULT_PREFIX", "KeySpace", "RedisStore", "StoreUnavailable"]

log = logging.getLogger("extproc.store")

#: Every key the project writes starts with this (configurable per deployment or tenant).
DEFAULT_PREFIX = "extproc:"


class KeySpace:
    """Names keys under one prefix (the deployment's, or a tenant's: the Redis ACLs are written
    for it), so no store spells a key by hand: ``KeySpace("extproc:")("records", "head")`` is
    ``extproc:records:head``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def __call__(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)


class RedisStore:
    """redis-py's asyncio client for one URL (redis://, rediss://, unix://) and a key prefix."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 2.0,
                 retries: int | None = None) -> None:
        self.prefix = prefix
        extra: dict[str, Any] = {}
        if retries is not None:
            # redis-py's default retries ten times with backoff (seconds): a caller that must
            # fail fast or move on (records spool while Redis is away) retries once, at once.
            extra["retry"] = Retry(NoBackoff(), retries)
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30, **extra
        )

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
