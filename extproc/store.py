"""The one Redis seam: a connection for the stores of each capability.

``policy/budgets.py``, ``approvals/store.py`` and ``recording/store.py`` each own their keys and
Lua scripts and take ``RedisStore.client``; nothing else in the data path talks to Redis. Every
store turns a Redis or network error into :class:`~extproc.errors.StoreUnavailable`, and the
caller fails closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from extproc.errors import StoreUnavailable

__all__ = ["DEFAULT_PREFIX", "Batcher", "KeySpace", "RedisStore", "StoreUnavailable", "reraise_if_cancelled"]

log = logging.getLogger("extproc.store")

#: Every key the project writes starts with this (configurable per deployment or tenant).
DEFAULT_PREFIX = "extproc:"


def reraise_if_cancelled() -> None:
    """Call where a background loop handles a Redis error: a cancel that arrived mid-command may
    come out of the client as a connection error, and a loop that handled it would never end
    (nor would the ``asyncio.run`` that waits for it at exit)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class KeySpace:
    """Names keys under one prefix (the deployment's, or a tenant's: the Redis ACLs are written
    for it), so no store spells a key by hand: ``KeySpace("extproc:")("records", "head")`` is
    ``extproc:records:head``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def __call__(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)


def _hiredis_pack(self: AbstractConnection, *args: Any) -> list[bytes]:
    """redis-py's asyncio connections pack commands in Python (~28 us for a record's append);
    hiredis, already the reply parser, packs them in C (~3 us), as redis-py's own synchronous
    client does when hiredis is installed. Same bytes: UTF-8 strings, ints and floats as text."""
    if isinstance(args[0], str):
        args = (*args[0].encode().split(), *args[1:])  # "SCRIPT LOAD": Redis wants two words
    elif b" " in args[0]:
        args = (*args[0].split(), *args[1:])
    return [hiredis.pack_command(args)]


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packing_class(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (TCP, TLS or unix-socket connection) with the C packer."""
    if cls not in _PACKING:
        _PACKING[cls] = type(f"Packed{cls.__name__}", (cls,), {"pack_command": _hiredis_pack})
    return _PACKING[cls]


#: Commands sent in one pipeline at most (a burst beyond it takes a second round trip).
MAX_BATCH = 256


class Batcher:
    """Redis commands of concurrent requests sent together, as a database's group commit does.

    Every command issued while the event loop runs other work joins one pipeline, written at the
    loop's next turn: one socket write, one read of every reply, one wake-up of each caller,
    instead of a connection check-out, a write, a read with a timeout and a wake-up per command.
    A lone request pays one loop turn (microseconds); sixteen concurrent ones share one round
    trip. Each caller still gets its own reply or exception (``raise_on_error=False``), so one
    refused command fails only its caller; a connection error fails the whole batch, and each
    caller handles it as it would have handled its own (fail closed, spool, count).

    Pipelines are not transactions: commands of one batch are not atomic together. Each of
    ours is a single command or script, atomic on its own, exactly as when sent alone.
    """

    def __init__(self, client: aioredis.Redis, *, max_batch: int = MAX_BATCH) -> None:
        self.client = client
        self._max = max_batch
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        #: Batches sent and commands in them (``/metrics`` and the bench read them).
        self.batches = 0
        self.commands = 0

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """``EVALSHA`` with the next batch; its reply (or ``NoScriptError``, as redis-py's)."""
        return await self._call(("EVALSHA", sha, numkeys, *keys_and_args))

    async def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self._call(("EVAL", script, numkeys, *keys_and_args))

    def send(self, command: str, script: str, numkeys: int, *keys_and_args: Any,
             on_error: Callable[[BaseException], None]) -> None:
        """``EVALSHA``/``EVAL`` with the next batch without waiting: the reply is dropped and an
        error goes to ``on_error`` (usage charges and other writes off the request path)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[Any]) -> None:
            exc = None if f.cancelled() else f.exception()
            if exc is not None:
                on_error(exc)

        fut.add_done_callback(done)
        self._add((command, script, numkeys, *keys_and_args), fut)

    async def _call(self, args: tuple[Any, ...]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._add(args, fut)
        return await fut

    def _add(self, args: tuple[Any, ...], fut: asyncio.Future[Any]) -> None:
        self._queue.append((args, fut))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue:
            batch, self._queue = self._queue[:self._max], self._queue[self._max:]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        self.batches += 1
        self.commands += len(batch)
        try:
            pipe = self.client.pipeline(transaction=False)
            for (command, script, numkeys, *rest), _ in batch:
                if command == "EVALSHA":
                    pipe.evalsha(script, numkeys, *rest)
                else:
                    pipe.eval(script, numkeys, *rest)
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection, a timeout, or this task cancelled
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RedisError("batch cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), reply in zip(batch, replies, strict=True):
            if fut.done():
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    async def drain(self) -> None:
        """Wait until every command queued so far has its reply (shutdown, tests)."""
        await asyncio.sleep(0)
        while self._inflight or self._queue:
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            else:
                await asyncio.sleep(0)


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
        pool = self.client.connection_pool
        pool.connection_class = _packing_class(pool.connection_class)
        #: The data path's commands (budget reservations and charges), batched across requests.
        self.batcher = Batcher(self.client)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            reraise_if_cancelled()
            return False

    async def close(self) -> None:
        await self.client.aclose()
