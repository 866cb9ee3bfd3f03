"""The one Redis seam: a connection for the stores of each capability.

``policy/budgets.py``, ``approvals/store.py`` and ``recording/store.py`` each own their keys and
Lua scripts and take ``RedisStore.client``; nothing else in the data path talks to Redis. Every
store turns a Redis or network error into :class:`~extproc.errors.StoreUnavailable`, and the
caller fails closed.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from extproc.errors import StoreUnavailable

__all__ = ["DEFAULT_PREFIX", "RedisStore", "StoreUnavailable"]

log = logging.getLogger("extproc.store")

#: Every key the project writes starts with this (configurable per deployment or tenant).
DEFAULT_PREFIX = "extproc:"


class RedisStore:
    """redis-py's asyncio client for one URL (redis://, rediss://, unix://) and a key prefix."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 2.0) -> None:
        self.prefix = prefix
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
        )

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
