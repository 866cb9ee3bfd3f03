"""Session records in Redis Streams, hash-chained, indexed, trimmed; a local spool when Redis is away.

Key layout (``<p>`` is the key prefix, ``extproc:`` by default)::

    <p>records                       the stream: one entry per start/complete record,
                                     fields entry (canonical JSON), prev_hash, hash
    <p>records:head                  hash {hash, id}: the last entry of the chain
    <p>records:anchor                hash {prev_hash, first_id}: what the first entry left by
                                     the last trim points to (the chain's start after trimming)
    <p>records:session:<h(user)>     hash {sid, seen}: the user's current gap-based session
    <p>records:index_key             the deployment's HMAC key for index names (made once)
    <p>records:uid:<iid>:<kind>      short-lived marker that an entry was written (de-duplicates
                                     spool flushes after an ambiguous failure)
    <p>idx:all                       sorted sets of *start* entry ids, scored by the time the
    <p>idx:user:<h(user)>            request was received (ms); each expires after the
    <p>idx:session:<h(sid)>          retention age and is cleaned when the stream is trimmed
    <p>idx:decision:<action>
    <p>idx:provider:<provider>
    <p>idx:model:<h(model)>
    <p>idx:request:<h(request id)>   start and complete entry ids of that request id

``h(v)`` is ``HMAC-SHA256(index_key, kind || 0x00 || v)``, 32 hex digits: values that come from
callers, bodies or tokens never appear in key names; look-ups hash the query the same way.

Appending is one Lua script: it reads the head, computes ``hash = sha256(prev_hash || digest)``
(``digest`` is the SHA-256 of the entry, computed here; SHA-256 of the 128-byte link input is
computed in Lua with Redis' ``bit`` library), XADDs, moves the head and updates the indexes,
atomically with respect to every other replica. Every key the script touches is passed in
KEYS; a Redis Cluster would still need a hash tag in the prefix (one slot for all of them).

No loss: in ``required`` mode :meth:`RecordsStore.append_start` raises
:class:`RecordingUnavailable` when the entry cannot be written (the data path answers 503);
in ``best_effort`` mode the entry goes to a bounded local JSON-lines spool, flushed in order
once Redis answers again. ``complete`` entries are never refused (the answer is already out):
they are spooled in both modes. Counters ``written``, ``spooled``, ``failed``, ``flushed``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from extproc.errors import StoreUnavailable
from extproc.recording.model import (
    GENESIS_HASH,
    ChainEntry,
    RecordingSettings,
    VerifyResult,
    canonical_json,
    entry_digest,
    merge_interaction,
    summarize,
    verify_chain,
)
from extproc.store import DEFAULT_PREFIX, KeySpace, reraise_if_cancelled

__all__ = ["RecordKeys", "RecordingUnavailable", "RecordsStore", "Spool", "TrimResult"]

log = logging.getLogger("extproc.recording")

_ERRORS = (RedisError, OSError, TimeoutError)
_DEDUPE_DIRECT_SECONDS = 3600
_DEDUPE_FLUSH_SECONDS = 86400
_PAGE = 500
#: Spooled entries written per pipelined round trip when flushing.
_FLUSH_BATCH = 200
#: Entries of one group write at most (submitted while the previous write was in flight).
_WRITE_BATCH = 200
#: How long a write that nobody waits for (completions, best_effort starts) lingers for company:
#: a request's start and completion, and those of its neighbours, then share one round trip. A
#: required-mode start (a request waiting) cuts the linger short.
_LINGER_SECONDS = 0.02
#: Interactions whose start was lost remembered at most (their completions are not reserved).
_LOST_MAX = 100_000
#: Index kinds whose values come from callers, bodies or tokens: keyed by HMAC, never raw.
#: (``decision`` and ``provider`` values come from the configuration.)
_HASHED_INDEXES = frozenset({"user", "session", "model", "request", "client_request_id"})

_SHA256_LUA = r"""
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit, tohex = bit.rshift, bit.lshift, bit.ror, bit.tobit, bit.tohex
local K = {
  0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
  0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
  0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
  0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
  0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
  0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
  0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
  0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2}
local function sha256(msg)
  local len = #msg
  local bits = len * 8
  msg = msg .. '\128' .. string.rep('\0', (55 - len) % 64) .. string.char(0, 0, 0, 0,
    band(rshift(bits, 24), 255), band(rshift(bits, 16), 255), band(rshift(bits, 8), 255), band(bits, 255))
  local H = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19}
  local w = {}
  for blk = 1, #msg, 64 do
    for j = 0, 15 do
      local a, b, c, d = string.byte(msg, blk + 4 * j, blk + 4 * j + 3)
      w[j] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for j = 16, 63 do
      local x, y = w[j - 15], w[j - 2]
      local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
      local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
      w[j] = tobit(w[j - 16] + s0 + w[j - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
    for j = 0, 63 do
      local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(band(e, f), band(bnot(e), g))
      local t1 = tobit(h + S1 + ch + K[j + 1] + w[j])
      local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + S0 + maj)
    end
    H[1] = tobit(H[1] + a); H[2] = tobit(H[2] + b); H[3] = tobit(H[3] + c); H[4] = tobit(H[4] + d)
    H[5] = tobit(H[5] + e); H[6] = tobit(H[6] + f); H[7] = tobit(H[7] + g); H[8] = tobit(H[8] + h)
  end
  local out = {}
  for i = 1, 8 do out[i] = tohex(H[i], 8) end
  return table.concat(out)
end
"""

# KEYS: 1 stream, 2 head, 3 dedupe marker, 4.. index sorted sets
# ARGV: 1 entry (canonical JSON), 2 sha256(entry) hex, 3 index score, 4 index ttl (0 none),
#       5 dedupe ttl (0 = no marker)
_APPEND = _SHA256_LUA + f"""
if tonumber(ARGV[5]) > 0 then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[5]) then
    return {{'', ''}}
  end
end
local prev = redis.call('HGET', KEYS[2], 'hash')
if not prev then prev = '{GENESIS_HASH}' end
local h = sha256(prev .. ARGV[2])
local id = redis.call('XADD', KEYS[1], '*', 'entry', ARGV[1], 'prev_hash', prev, 'hash', h)
redis.call('HSET', KEYS[2], 'hash', h, 'id', id)
local ttl = tonumber(ARGV[4])
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[3], id)
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return {{id, h}}
"""

# KEYS: 1 stream, 2 head, 3 anchor.  ARGV: 1 MINID ('' none), 2 MAXLEN (0 none)
_TRIM = f"""
local removed = 0
if ARGV[1] ~= '' then removed = removed + redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1]) end
if tonumber(ARGV[2]) > 0 then removed = removed + redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2]) end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if removed > 0 then
  if #first > 0 then
    local f = first[1][2]
    local prev = ''
    for i = 1, #f, 2 do if f[i] == 'prev_hash' then prev = f[i + 1] end end
    redis.call('HSET', KEYS[3], 'prev_hash', prev, 'first_id', first[1][1])
  else
    redis.call('HSET', KEYS[3], 'prev_hash', redis.call('HGET', KEYS[2], 'hash') or '{GENESIS_HASH}', 'first_id', '')
  end
end
local first_id = ''
if #first > 0 then first_id = first[1][1] end
return {{removed, first_id, redis.call('HGET', KEYS[2], 'id') or ''}}
"""

# KEYS: 1 the user's session hash.  ARGV: 1 now (ms), 2 gap (ms), 3 new id, 4 ttl (s)
# Exactly ``extproc.recording.model.next_session``.
_SESSION = """
local cur = redis.call('HMGET', KEYS[1], 'sid', 'seen')
local now = tonumber(ARGV[1])
if cur[1] and cur[2] then
  local seen = tonumber(cur[2])
  if now - seen <= tonumber(ARGV[2]) then
    if now > seen then redis.call('HSET', KEYS[1], 'seen', ARGV[1]) end
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    return cur[1]
  end
end
redis.call('HSET', KEYS[1], 'sid', ARGV[3], 'seen', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return ARGV[3]
"""


#: A ``start`` entry could not be recorded and the mode is ``required``: refuse (503). The same
#: condition as any other store outage, so the same class.
RecordingUnavailable = StoreUnavailable


def new_session_id() -> str:
    return "s_" + uuid.uuid4().hex[:20]


@dataclass(frozen=True, slots=True)
class _Pending:
    """An entry waiting for the next group write, and where its outcome goes."""

    entry: Mapping[str, Any]
    refuse: bool
    reserved: bool
    result: asyncio.Future[str | None]


@dataclass(frozen=True, slots=True)
class TrimResult:
    removed: int
    index_members_removed: int
    first_id: str | None


class RecordKeys(KeySpace):
    """The recording store's keys (see docs/recording.md for the layout)."""

    __slots__ = ("anchor", "head", "index_secret", "stream")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(prefix)
        self.stream = self("records")
        self.head = self("records", "head")
        self.anchor = self("records", "anchor")
        self.index_secret = self("records", "index_key")

    def session(self, user_digest: str) -> str:
        return self("records", "session", user_digest)

    def dedupe(self, interaction_id: str, kind: str) -> str:
        return self("records", "uid", interaction_id, kind)

    def index(self, kind: str, value: str | None = None) -> str:
        return self("idx", kind) if value is None else self("idx", kind, value)


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _chain_entry(stream_id: Any, raw: Mapping[Any, Any] | None) -> ChainEntry:
    f = {_s(k): v for k, v in (raw or {}).items()}
    entry = f.get("entry", b"")
    return ChainEntry(
        id=_s(stream_id),
        prev_hash=_s(f.get("prev_hash", "")),
        hash=_s(f.get("hash", "")),
        entry=entry if isinstance(entry, bytes) else str(entry).encode("utf-8"),
    )


def _parse(e: ChainEntry) -> dict[str, Any] | None:
    try:
        doc = json.loads(e.entry)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class Spool:
    """A bounded, append-only JSON-lines file of entries waiting for Redis (one process each).

    New entries go to ``path``. A flush first *claims* what is there by renaming it to
    ``<path>.flushing`` (so entries spooled meanwhile never mix with it), then writes it in
    batches, recording after each how far it got in ``<path>.flushing.offset``; a crash
    mid-flush resumes there (the store's de-duplication markers absorb a repeated batch).
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        self.path = Path(path)
        self.flushing = self.path.with_name(self.path.name + ".flushing")
        self._offset_path = self.path.with_name(self.path.name + ".flushing.offset")
        self.max_bytes = max_bytes
        self.pending = 0
        self.size = 0
        for f in (self.path, self.flushing):
            if f.exists():
                data = f.read_bytes()
                if f == self.flushing:
                    data = data[self._offset():]
                self.size += len(data)
                self.pending += sum(1 for line in data.splitlines() if line.strip())

    def _offset(self) -> int:
        try:
            return int(self._offset_path.read_text() or "0")
        except (OSError, ValueError):
            return 0

    def add(self, entry: Mapping[str, Any], *, reserved: bool = False) -> bool:
        """Append ``entry``; False when the spool is full. ``reserved`` entries (completions
        of interactions whose start is already recorded) are taken past the bound."""
        line = canonical_json(entry) + b"\n"
        if not reserved and self.size + len(line) > self.max_bytes:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as fh:
            fh.write(line)
        self.size += len(line)
        self.pending += 1
        return True

    def claim(self) -> bool:
        """Make the spooled entries the ones being flushed (unless a flush is unfinished)."""
        if self.flushing.exists():
            return True
        if not self.path.exists():
            return False
        os.replace(self.path, self.flushing)
        self._offset_path.unlink(missing_ok=True)
        return True

    def batches(self, size: int) -> Iterator[tuple[builtins.list[dict[str, Any]], int, int]]:
        """``(entries, end offset, bytes)`` of the claimed file from where the last flush stopped."""
        if not self.flushing.exists():
            return
        with self.flushing.open("rb") as fh:
            fh.seek(self._offset())
            while True:
                batch: builtins.list[dict[str, Any]] = []
                used = 0
                while len(batch) < size:
                    line = fh.readline()
                    if not line:
                        break
                    used += len(line)
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except ValueError:  # a torn last line after a crash
                        log.warning("recording spool %s: skipping an unreadable line", self.flushing)
                        self.pending -= 1
                        self.size -= len(line)
                        continue
                    if isinstance(doc, dict):
                        batch.append(doc)
                if not batch and not used:
                    return
                yield batch, fh.tell(), used

    def advance(self, offset: int, count: int, nbytes: int) -> None:
        """A batch is in Redis: remember how far the claimed file is done."""
        tmp = self._offset_path.with_name(self._offset_path.name + ".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self._offset_path)
        self.pending = max(0, self.pending - count)
        self.size = max(0, self.size - nbytes)

    def finish(self) -> None:
        """The claimed file is flushed completely."""
        self.flushing.unlink(missing_ok=True)
        self._offset_path.unlink(missing_ok=True)
        if not self.path.exists():
            self.pending = self.size = 0

    def read(self) -> builtins.list[dict[str, Any]]:
        """Every waiting entry, claimed ones first (for inspection and tests)."""
        out: builtins.list[dict[str, Any]] = []
        for f, start in ((self.flushing, self._offset()), (self.path, 0)):
            if not f.exists():
                continue
            for line in f.read_bytes()[start:].splitlines():
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict):
                        out.append(doc)
        return out


class RecordsStore:
    """Writes and reads interaction records. One per process; safe for concurrent tasks."""

    def __init__(
        self,
        client: Redis,
        settings: RecordingSettings,
        *,
        prefix: str = "extproc:",
        retry_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        linger: float = _LINGER_SECONDS,
    ) -> None:
        self.client = client
        self.settings = settings
        self._sessions: dict[str, tuple[str, float]] = {}
        self.keys = RecordKeys(prefix)
        self.spool = Spool(settings.spool.path, settings.spool.max_bytes)
        #: Entries written to Redis directly / put in the spool / lost (or refused) /
        #: moved from the spool to Redis.
        self.written = 0
        self.spooled = 0
        self.failed = 0
        self.flushed = 0
        self._retry_interval = retry_interval
        self._monotonic = monotonic
        self._down_until = 0.0
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._lost_starts: set[str] = set()
        self._secret: bytes | None = None
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._urgent = asyncio.Event()
        self._linger = linger
        self._append = client.register_script(_APPEND)
        self._trim = client.register_script(_TRIM)
        self._session = client.register_script(_SESSION)

    def counters(self) -> dict[str, int]:
        return {"written": self.written, "spooled": self.spooled, "failed": self.failed, "flushed": self.flushed,
                "spool_pending": self.spool.pending, "spool_bytes": self.spool.size}

    @property
    def redis_up(self) -> bool:
        """False from a failed write until Redis answers again (a probe or a write)."""
        return self._monotonic() >= self._down_until

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: whether records reach Redis, and the backlog waiting in the spool."""
        return {"mode": self.settings.mode, "redis": "up" if self.redis_up else "down",
                "spool_pending": self.spool.pending, "spool_bytes": self.spool.size,
                "flushing": self._flush_lock.locked()}

    # -- writing -------------------------------------------------------------------

    async def append_start(self, entry: Mapping[str, Any]) -> str | None:
        """Record a ``start`` entry. Returns its stream id, or None when it was spooled.

        A gap-based session is resolved here and, when ``entry`` is a dict, written back into
        its ``session_id``. Raises :class:`RecordingUnavailable` in ``required`` mode when the
        entry cannot be written."""
        return await self.submit_start(entry)

    def submit_start(self, entry: Mapping[str, Any]) -> asyncio.Future[str | None]:
        """:meth:`append_start` without waiting: the entry joins the next group write. In
        ``best_effort`` mode the request need not wait for it (a failure spools it, in order)."""
        return self._enqueue(entry, refuse=self.settings.mode == "required", reserved=False)

    async def append_complete(self, entry: Mapping[str, Any]) -> str | None:
        """Record a ``complete`` entry; spooled when Redis is unreachable, in either mode.

        The completion of an interaction whose start is recorded (written or spooled) is
        never lost to the spool's size bound."""
        return await self.submit_complete(entry)

    def submit_complete(self, entry: Mapping[str, Any]) -> asyncio.Future[str | None]:
        """:meth:`append_complete` without waiting (completions are written off the request path)."""
        iid = str(entry.get("interaction_id") or "")
        lost = iid in self._lost_starts
        self._lost_starts.discard(iid)
        return self._enqueue(entry, refuse=False, reserved=not lost)

    def _enqueue(self, entry: Mapping[str, Any], *, refuse: bool, reserved: bool) -> asyncio.Future[str | None]:
        """Group commit: entries submitted while a write is in flight go together in the next one
        (one pipeline, one round trip), in submission order, by one writer task, so a request's
        start always precedes its completion in the chain. The future has the stream id, None
        (spooled or lost) or :class:`RecordingUnavailable` (``refuse``: required mode)."""
        result: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if not self.redis_up and not self._pending:
            # Never waits for Redis or the spool: what is spooled is flushed in the background
            # (``run_flusher``), and entries written meanwhile simply land before it. (With
            # entries still queued, this one joins them: the writer spools them in order.)
            self._fall_back(entry, refuse, reserved, "redis was unreachable moments ago", result)
            return result
        self._pending.append(_Pending(entry, refuse, reserved, result))
        if refuse:
            self._urgent.set()  # a request waits for this one
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())
        return result

    async def _write_pending(self) -> None:
        while self._pending:
            if self._linger and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger):
                        await self._urgent.wait()
            self._urgent.clear()
            batch, self._pending = self._pending[:_WRITE_BATCH], self._pending[_WRITE_BATCH:]
            if not self.redis_up:  # failed moments ago: no connection attempt, in order to the spool
                for p in batch:
                    self._fall_back(p.entry, p.refuse, p.reserved, "redis was unreachable moments ago", p.result)
                continue
            try:
                replies = await self._append_many([p.entry for p in batch], dedupe_ttl=_DEDUPE_DIRECT_SECONDS)
            except _ERRORS as exc:
                self._mark_down()
                error = f"{type(exc).__name__}: {exc}"[:200]
                for p in batch:
                    self._fall_back(p.entry, p.refuse, p.reserved, error, p.result)
                continue
            for p, reply in zip(batch, replies, strict=True):
                if isinstance(reply, Exception):
                    self._mark_down()
                    self._fall_back(p.entry, p.refuse, p.reserved, f"{type(reply).__name__}: {reply}"[:200],
                                    p.result)
                elif not p.result.done():
                    self.written += 1
                    p.result.set_result(_s(reply[0]))

    def _fall_back(self, entry: Mapping[str, Any], refuse: bool, reserved: bool, error: str,
                   result: asyncio.Future[str | None]) -> None:
        """An entry Redis did not take: refused (required mode), else spooled, else lost."""
        if result.done():
            return
        if refuse:
            self.failed += 1
            self._lose_start(entry)
            result.set_exception(RecordingUnavailable(f"the interaction cannot be recorded: {error}"))
            return
        if self.spool.add(entry, reserved=reserved):
            self.spooled += 1
        else:
            self.failed += 1
            self._lose_start(entry)
            log.error("recording spool %s is full (%d bytes): an entry of request %s is lost",
                      self.spool.path, self.spool.max_bytes, entry.get("request_id"))
        result.set_result(None)

    async def _append_many(self, entries: Sequence[Mapping[str, Any]], *, dedupe_ttl: int) -> list[Any]:
        """Append ``entries`` in order, in one round trip: each reply, or the exception Redis
        gave that entry. A connection failure raises."""
        calls = [await self._prepare(e, dedupe_ttl=dedupe_ttl) for e in entries]
        if len(calls) == 1:
            keys, args = calls[0]
            try:
                return [await self._append(keys=keys, args=args)]
            except ResponseError as exc:
                return [exc]
        replies = await self._pipelined(calls)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis lost its script cache (a restart, SCRIPT FLUSH, a failover) between two
            # calls: load it once and send the entries it refused again, in order.
            await self.client.script_load(_APPEND)
            again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            for i, r in zip(again, await self._pipelined([calls[i] for i in again]), strict=True):
                replies[i] = r
        return replies

    async def _pipelined(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        # EVALSHA directly: redis-py's pipeline asks SCRIPT EXISTS before every batch for
        # scripts registered with it, a round trip per batch for nothing.
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._append.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def drain(self) -> None:
        """Wait for every submitted entry's write (shutdown, tests)."""
        self._urgent.set()
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    def _lose_start(self, entry: Mapping[str, Any]) -> None:
        if entry.get("kind") == "start" and entry.get("interaction_id"):
            if len(self._lost_starts) > _LOST_MAX:
                self._lost_starts.clear()
            self._lost_starts.add(str(entry["interaction_id"]))

    def _mark_down(self) -> None:
        self._down_until = self._monotonic() + self._retry_interval
        self._wake.set()  # the flusher probes until Redis answers

    async def flush_spool(self) -> int:
        """Write spooled entries to Redis in pipelined batches, oldest first; returns how many
        were moved. Stops at the first failure and keeps the rest (and where it stopped)."""
        done = 0
        async with self._flush_lock:
            while self.spool.claim():
                for batch, offset, nbytes in self.spool.batches(_FLUSH_BATCH):
                    try:
                        await self._write_batch(batch)
                    except _ERRORS as exc:
                        self._mark_down()
                        log.warning("recording spool flush stopped after %d entries: %s", done,
                                    type(exc).__name__)
                        return done
                    self.spool.advance(offset, len(batch), nbytes)
                    done += len(batch)
                    self.flushed += len(batch)
                    await asyncio.sleep(0)  # let requests run between batches
                self.spool.finish()
        return done

    async def _write_batch(self, batch: Sequence[Mapping[str, Any]]) -> None:
        if not batch:
            return
        calls = [await self._prepare(e, dedupe_ttl=_DEDUPE_FLUSH_SECONDS) for e in batch]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            await self._append(keys=keys, args=args, client=pipe)
        try:
            await pipe.execute()
        except ResponseError:
            # One entry Redis refuses must not block every later one: write them one by one
            # and drop (and count) those it refuses.
            for keys, args in calls:
                try:
                    await self._append(keys=keys, args=args)
                except ResponseError as exc:
                    self.failed += 1
                    log.error("recording spool: Redis refused an entry (%s); it is dropped", exc)

    async def run_flusher(self, *, interval: float = 2.0, probe: float = 0.1) -> None:
        """Background task: while Redis is away, probe it every ``probe`` seconds (so requests are
        recorded again the moment it answers); flush the spool whenever it is reachable."""
        while True:
            if not self.redis_up or self.spool.pending:
                try:
                    ok = bool(await self.client.ping())
                except _ERRORS:
                    reraise_if_cancelled()
                    ok = False
                if ok:
                    self._down_until = 0.0
                    if self.spool.pending:
                        await self.flush_spool()
                else:
                    self._down_until = max(self._down_until, self._monotonic() + probe)
            self._wake.clear()
            wait = probe if (not self.redis_up or self.spool.pending) else interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _prepare(self, entry: Mapping[str, Any], *, dedupe_ttl: int) -> tuple[list[str], list[Any]]:
        doc = dict(entry)
        kind = doc.get("kind")
        caller = doc.get("caller") or {}
        user = caller.get("user") if isinstance(caller, dict) else None
        if kind == "start" and not doc.get("session_id") and user:
            doc["session_id"] = await self.resolve_session(str(user), now=int(doc.get("received_at_ms") or 0) / 1000)
            if isinstance(entry, dict):
                entry["session_id"] = doc["session_id"]  # so the caller's log line shows it
        data = canonical_json(doc)
        k = self.keys
        await self._index_secret()
        idx = [self._index("request", str(doc.get("request_id") or "-"))]
        if kind == "start":
            score = int(doc.get("received_at_ms") or 0)
            idx.append(k.index("all"))
            decision = doc.get("decision") or {}
            for name, value in (
                ("user", user),
                ("session", doc.get("session_id")),
                ("decision", decision.get("action") if isinstance(decision, dict) else None),
                ("provider", doc.get("provider")),
                ("model", doc.get("model")),
                ("client_request_id", doc.get("client_request_id")),
            ):
                if value:
                    idx.append(self._index(name, str(value)))
        else:
            score = int(doc.get("completed_at_ms") or 0)
        age = self.settings.retention.max_age_hours
        index_ttl = age * 3600 + 86400 if age else 0
        dedupe_key = k.dedupe(str(doc.get("interaction_id") or ""), str(kind))
        return ([k.stream, k.head, dedupe_key, *idx],
                [data, entry_digest(data), score, index_ttl, dedupe_ttl if doc.get("interaction_id") else 0])

    async def _index_secret(self) -> bytes:
        """The deployment's HMAC key for index key names: made once (``SET NX``) and shared by
        every replica through Redis; see docs/recording.md for why it lives there."""
        if self._secret is None:
            key = self.keys.index_secret
            await self.client.set(key, secrets.token_hex(32), nx=True)
            got = await self.client.get(key)
            if got is None:  # deleted between the two calls: try once more next time
                raise RedisError("the index key vanished")
            self._secret = got if isinstance(got, bytes) else str(got).encode()
        return self._secret

    async def _digest(self, kind: str, value: str) -> str:
        await self._index_secret()
        return self._hmac(kind, value)

    def _hmac(self, kind: str, value: str) -> str:
        assert self._secret is not None
        return hmac.new(self._secret, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:32]

    def _index(self, kind: str, value: str) -> str:
        """An index key: caller-, body- or identity-supplied values appear only as an HMAC."""
        if kind in _HASHED_INDEXES:
            return self.keys.index(kind, self._hmac(kind, value))
        return self.keys.index(kind, value)

    async def resolve_session(self, user: str, *, now: float) -> str:
        """The user's gap-based session at ``now`` (see ``extproc.recording.model.next_session``).

        A user's burst of requests would cost a Redis round trip each; within a second of the
        last look-up (far inside any session gap) the session cannot have ended, so the
        answer is reused and Redis's last-seen time is refreshed at most once a second.
        """
        gap = self.settings.session_gap_seconds
        hit = self._sessions.get(user)
        fresh = min(1.0, gap / 10)
        if hit is not None and 0 <= now - hit[1] < fresh:
            return hit[0]
        sid = _s(await self._session(
            keys=[self.keys.session(await self._digest("user", user))],
            args=[round(now * 1000), gap * 1000, new_session_id(), gap + 3600],
        ))
        if len(self._sessions) > 10_000:
            self._sessions.clear()
        self._sessions[user] = (sid, now)
        return sid

    # -- maintenance ---------------------------------------------------------------

    async def trim(self, now: float) -> TrimResult:
        """Apply retention (age, then size) and drop index members of trimmed entries."""
        r = self.settings.retention
        minid = f"{int((now - r.max_age_hours * 3600) * 1000)}-0" if r.max_age_hours else ""
        k = self.keys
        removed, first_id, last_id = await self._trim(keys=[k.stream, k.head, k.anchor], args=[minid, r.max_entries])
        removed, first, last = int(removed), _s(first_id), _s(last_id)
        cleaned = 0
        if removed and (first or last):
            cutoff, inclusive = (_id_tuple(first), False) if first else (_id_tuple(last), True)
            cleaned = await self._clean_indexes(cutoff, inclusive)
        return TrimResult(removed, cleaned, first or None)

    async def _clean_indexes(self, cutoff: tuple[int, int], inclusive: bool) -> int:
        # Scores are receive times (the replica's clock); ids are Redis' clock. Look a little
        # past the cutoff and decide by id.
        upper = cutoff[0] + 600_000
        removed = 0
        pattern = self.keys.index("*").replace("[", "\\[").replace("?", "\\?")
        async for key in self.client.scan_iter(match=pattern, count=1000):
            members = await self.client.zrangebyscore(key, "-inf", upper)
            stale: builtins.list[Any] = []
            for m in members:
                t = _id_tuple(_s(m))
                if t < cutoff or (inclusive and t == cutoff):
                    stale.append(m)
            if stale:
                removed += int(await self.client.zrem(key, *stale))
        return removed

    async def maintain(self, now: float) -> TrimResult | None:
        """Trim, and flush the spool unless a flush is running; for a periodic task. Never
        raises on Redis errors."""
        try:
            if self.spool.pending and not self._flush_lock.locked() and self.redis_up:
                await self.flush_spool()
            return await self.trim(now)
        except _ERRORS as exc:
            log.warning("recording maintenance failed: %s", type(exc).__name__)
            return None

    # -- reading -------------------------------------------------------------------

    async def _entries(self, ids: Sequence[str]) -> dict[str, ChainEntry]:
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.xrange(self.keys.stream, min=i, max=i, count=1)
        out: dict[str, ChainEntry] = {}
        for res in await pipe.execute():
            for sid, raw in res:
                ce = _chain_entry(sid, raw)
                out[ce.id] = ce
        return out

    async def _interactions(self, starts: Sequence[ChainEntry]) -> builtins.list[dict[str, Any]]:
        docs = [(s, _parse(s)) for s in starts]
        pipe = self.client.pipeline(transaction=False)
        for _, d in docs:
            pipe.zrange(self._index("request", str((d or {}).get("request_id") or "-")), 0, -1)
        related = await pipe.execute()
        ids = sorted({_s(i) for group in related for i in group} - {s.id for s in starts})
        others = await self._entries(ids)
        completes: dict[str, tuple[ChainEntry, dict[str, Any]]] = {}
        for ce in others.values():
            d = _parse(ce)
            if d is not None and d.get("kind") == "complete" and d.get("interaction_id"):
                completes.setdefault(str(d["interaction_id"]), (ce, d))
        out = []
        for ce, d in docs:
            if d is None:
                continue
            comp = completes.get(str(d.get("interaction_id")))
            view = merge_interaction(d, comp[1] if comp else None)
            view["records"] = [{"id": ce.id, "kind": "start", "hash": ce.hash, "prev_hash": ce.prev_hash}]
            if comp:
                view["records"].append({"id": comp[0].id, "kind": "complete", "hash": comp[0].hash,
                                        "prev_hash": comp[0].prev_hash})
            out.append(view)
        return out

    async def list(
        self,
        *,
        user: str | None = None,
        session: str | None = None,
        decision: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        client_request_id: str | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Interaction summaries, newest first, from the indexes (never a scan of the stream).
        ``client_request_id`` finds every interaction whose caller sent that ``x-request-id``
        (callers choose it, so several users' requests may share one)."""
        k = self.keys
        await self._index_secret()
        filters = [self._index(n, v) for n, v in (("user", user), ("session", session), ("decision", decision),
                                               ("provider", provider), ("model", model),
                                               ("client_request_id", client_request_id)) if v]
        keys = filters or [k.index("all")]
        lo = "-inf" if since is None else round(since * 1000)
        hi = "+inf" if until is None else round(until * 1000)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.zcard(key)
        sizes = await pipe.execute()
        if 0 in sizes or limit <= 0:
            return []
        order = sorted(range(len(keys)), key=lambda i: sizes[i])
        primary, others = keys[order[0]], [keys[i] for i in order[1:]]
        found: builtins.list[str] = []
        offset = 0
        while len(found) < limit:
            page = [_s(m) for m in await self.client.zrevrangebyscore(primary, hi, lo, start=offset, num=_PAGE)]
            if not page:
                break
            offset += len(page)
            keep = page
            for other in others:
                scores = await self.client.zmscore(other, keep)
                keep = [m for m, sc in zip(keep, scores, strict=True) if sc is not None]
                if not keep:
                    break
            found.extend(keep)
        found = found[:limit]
        entries = await self._entries(found)
        starts = [entries[i] for i in found if i in entries]  # trimmed ids are skipped
        return [summarize(v) for v in await self._interactions(starts)]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        """The merged start+complete view of the latest interaction with this request id."""
        await self._index_secret()
        ids = [_s(i) for i in await self.client.zrange(self._index("request", request_id), 0, -1)]
        entries = await self._entries(ids)
        starts = [e for e in entries.values() if (_parse(e) or {}).get("kind") == "start"]
        if starts:
            latest = max(starts, key=lambda e: _id_tuple(e.id))
            views = await self._interactions([latest])
            return views[0] if views else None
        for e in entries.values():  # a complete whose start was trimmed or never written
            d = _parse(e)
            if d is not None:
                view = merge_interaction(None, d)
                view["records"] = [{"id": e.id, "kind": "complete", "hash": e.hash, "prev_hash": e.prev_hash}]
                return view
        return None

    async def _range(self, start: str, end: str) -> AsyncIterator[ChainEntry]:
        lo = start
        while True:
            page = await self.client.xrange(self.keys.stream, min=lo, max=end, count=_PAGE)
            if not page:
                return
            for sid, raw in page:
                yield _chain_entry(sid, raw)
            last = _id_tuple(_s(page[-1][0]))
            lo = f"{last[0]}-{last[1] + 1}"
            if len(page) < _PAGE:
                return

    async def export(self, since: float | None = None, until: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Raw entries in stream order (by append time), with their chain fields."""
        start = "-" if since is None else f"{round(since * 1000)}-0"
        end = "+" if until is None else f"{round(until * 1000)}-{2**64 - 1}"
        async for ce in self._range(start, end):
            yield {"id": ce.id, "prev_hash": ce.prev_hash, "hash": ce.hash, "entry": _parse(ce)}

    async def verify(self, start_id: str | None = None, end_id: str | None = None) -> VerifyResult:
        """Check the chain from ``start_id`` (default: the oldest entry) to ``end_id`` (default:
        the newest, also checked against the head)."""
        k = self.keys
        expected: str | None
        before: Any = []
        if start_id:
            before = await self.client.xrevrange(k.stream, max=f"({start_id}", min="-", count=1)
        if before:
            expected = _chain_entry(before[0][0], before[0][1]).hash
        else:
            anchor = _fields(await self.client.hgetall(k.anchor))
            expected = anchor.get("prev_hash") or GENESIS_HASH
        head: tuple[str, str] | None = None
        end = end_id or "+"
        if not end_id:
            # Read the head first and stop there: entries appended meanwhile are not breaks.
            h = _fields(await self.client.hgetall(k.head))
            head = (h.get("id", ""), h.get("hash", ""))
            if head[0]:
                end = head[0]
        entries = [e async for e in self._range(start_id or "-", end)]
        return verify_chain(entries, expected_prev=expected, head=head)
