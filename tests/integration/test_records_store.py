"""Session records on a real Redis: append, indexes, queries, the chain, retention, no loss.

Every test writes under its own key prefix and deletes it afterwards. Redis outages are real:
a client pointed at a closed port, or a TCP relay in front of the suite's Redis that is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from extproc.dev.procs import free_port
from extproc.identity.model import Identity
from extproc.policy.model import Decision
from extproc.recording.model import (
    InteractionRecorder,
    RecordingSettings,
    RetentionSettings,
    SpoolSettings,
    next_session,
)
from extproc.recording.store import _SHA256_LUA, RecordingUnavailable, RecordsStore

URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/13"
T = TypeVar("T")



def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def settings(tmp_path: Path, **kw: Any) -> RecordingSettings:
    kw.setdefault("spool", SpoolSettings(path=str(tmp_path / "spool.jsonl"), max_bytes=1 << 20))
    return RecordingSettings(**kw)


@contextlib.asynccontextmanager
async def store_for(tmp_path: Path, prefix: str, url: str = URL, **kw: Any) -> AsyncIterator[RecordsStore]:
    client = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    try:
        yield RecordsStore(client, settings(tmp_path, **kw), prefix=prefix, retry_interval=0)
    finally:
        await client.aclose()


def interaction(
    store: RecordsStore,
    rid: str,
    *,
    user: str = "alice",
    action: str | None = "allow",
    provider: str = "demo",
    model: str = "m1",
    now: float | None = None,
    session: str | None = None,
    body: bytes = b'{"prompt": "hi bob@example.com"}',
) -> tuple[InteractionRecorder, dict[str, Any]]:
    t = time.time() if now is None else now
    rec = InteractionRecorder(store.settings, now=t, interaction_id=uuid.uuid4().hex)
    rec.request(request_id=rid, method="POST", path=f"/{provider}/chat/completions", provider=provider,
                route="/chat/completions", caller=Identity(user, ("eng",), "iss", user, 0.0), session_header=session)
    d = None if action is None else Decision(action=action, mode="enforce", rule_id=f"r-{action}", message="",
                                             status=200, model=model, operation="chat")
    return rec, rec.forwarded(body, decision=d, now=t + 0.001)


def finish(rec: InteractionRecorder, text: bytes = b"hello there") -> dict[str, Any]:
    t = rec.received_at
    rec.response_headers(200, now=t + 0.01, content_type="application/json")
    rec.response_chunk(text, t + 0.02)
    return rec.complete({"input_tokens": 3, "output_tokens": 4}, now=t + 0.03)


async def record(store: RecordsStore, rid: str, *, complete: bool = True, **kw: Any) -> None:
    rec, start = interaction(store, rid, **kw)
    await store.append_start(start)
    if complete:
        await store.append_complete(finish(rec))


def test_lua_sha256_matches_hashlib(prefix: str) -> None:
    async def main() -> None:
        client = Redis.from_url(URL)
        try:
            for n in [*range(0, 130), 200, 1000]:
                msg = (hashlib.sha256(str(n).encode()).hexdigest() * 20)[:n]
                got = await client.eval(_SHA256_LUA + "return sha256(ARGV[1])", 0, msg)
                assert got.decode() == hashlib.sha256(msg.encode()).hexdigest(), n
        finally:
            await client.aclose()

    run(main)


def test_append_list_get_and_indexes(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        async with store_for(tmp_path, prefix) as s:
            t0 = time.time() - 100
            await record(s, "r1", user="alice", action="allow", provider="demo", model="m1", now=t0)
            await record(s, "r2", user="bob", action="block", provider="openai", model="gpt", now=t0 + 10)
            await record(s, "r3", user="alice", action="mask", provider="openai", model="gpt", now=t0 + 20)
            await record(s, "r4", user="alice", action="allow", provider="demo", model="m1", now=t0 + 30,
                         complete=False)
            assert s.written == 7 and s.spooled == 0 and s.failed == 0

            ids = lambda rows: [r["request_id"] for r in rows]  # noqa: E731
            assert ids(await s.list()) == ["r4", "r3", "r2", "r1"]
            assert ids(await s.list(user="alice")) == ["r4", "r3", "r1"]
            assert ids(await s.list(decision="block")) == ["r2"]
            assert ids(await s.list(provider="openai")) == ["r3", "r2"]
            assert ids(await s.list(model="m1", user="alice")) == ["r4", "r1"]
            assert ids(await s.list(user="alice", provider="openai", decision="mask")) == ["r3"]
            assert ids(await s.list(user="nobody")) == []
            assert ids(await s.list(since=t0 + 5, until=t0 + 25)) == ["r3", "r2"]
            assert ids(await s.list(limit=2)) == ["r4", "r3"]

            rows = {r["request_id"]: r for r in await s.list()}
            assert rows["r4"]["complete"] is False and rows["r1"]["complete"] is True
            assert rows["r1"]["status"] == 200 and rows["r1"]["total_tokens"] == 7
            assert rows["r1"]["session_id"] == rows["r3"]["session_id"]  # alice, within the gap
            assert rows["r1"]["session_id"] != rows["r2"]["session_id"]

            view = await s.get("r3")
            assert view is not None and view["complete"] is True
            assert view["request"]["body"] == '{"prompt": "hi [EMAIL]"}'
            assert view["response"]["chunks"] == [[0, "hello there"]]
            assert [r["kind"] for r in view["records"]] == ["start", "complete"]
            incomplete = await s.get("r4")
            assert incomplete is not None and incomplete["complete"] is False
            assert await s.get("missing") is None
            assert (await s.verify()).ok

            sessions = await s.list(session=rows["r1"]["session_id"])
            assert ids(sessions) == ["r4", "r3", "r1"]

    run(main)


def test_session_header_and_gap_rule_match_the_pure_function(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        async with store_for(tmp_path, prefix, session_gap_seconds=60) as s:
            await record(s, "h1", session="conv-7")
            _, start = interaction(s, "h2", user="erin")
            assert start["session_id"] is None
            await s.append_start(start)
            assert start["session_id"] and start["session_id"] == (await s.get("h2") or {})["session_id"]
            view = await s.get("h1")
            assert view is not None and view["session_id"] == "conv-7" and view["session_source"] == "header"

            times = [1000.0, 1030.0, 1090.0, 1151.0, 1100.0, 1300.0, 1360.0]
            state: tuple[str, float] | None = None
            for t in times:
                sid = await s.resolve_session("carol", now=t)
                expected, seen = next_session(state, t, 60, sid)
                assert sid == expected, (t, state)
                state = (expected, seen)

    run(main)


def test_verify_detects_edit_and_deletion_in_redis(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        async with store_for(tmp_path, prefix) as s:
            for i in range(6):
                await record(s, f"v{i}", complete=False)
            c, stream = s.client, s.keys.stream
            entries = await c.xrange(stream)
            ids = [e[0].decode() for e in entries]
            res = await s.verify()
            assert res.ok and res.checked == 6
            assert (await s.verify(ids[2], ids[4])).ok and (await s.verify(ids[2], ids[4])).checked == 3

            async def rebuild(keep: list[Any], edit: str | None = None) -> None:
                await c.delete(stream)
                for eid, fields in keep:
                    fields = dict(fields)
                    if eid.decode() == edit:
                        doc = json.loads(fields[b"entry"])
                        doc["caller"]["user"] = "mallory"
                        fields[b"entry"] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
                    await c.xadd(stream, fields, id=eid)

            # edit: the same ids, one entry's content changed
            await rebuild(entries, edit=ids[3])
            res = await s.verify()
            assert not res.ok and res.first_break_id == ids[3] and "edited" in res.reason
            assert res.checked == 3
            assert (await s.verify(ids[0], ids[2])).ok  # the range before the edit is fine

            await rebuild(entries)
            assert (await s.verify()).ok
            # deletion in the middle
            await c.xdel(stream, ids[2])
            res = await s.verify()
            assert not res.ok and res.first_break_id == ids[3] and "deleted" in res.reason
            # deletion at the end: the head still names the deleted entry
            await rebuild(entries[:5])
            res = await s.verify()
            assert not res.ok and res.first_break_id == ids[5] and "head" in res.reason
            # deletion of the oldest entry (it was chained to the genesis hash)
            await rebuild(entries[1:])
            res = await s.verify()
            assert not res.ok and res.first_break_id == ids[1]

    run(main)


def test_concurrent_appends_from_separate_clients_keep_one_chain(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        async with store_for(tmp_path, prefix) as a, store_for(tmp_path / "b", prefix) as b:
            async def writer(s: RecordsStore, tag: str) -> None:
                for i in range(60):
                    await record(s, f"{tag}{i}", user=f"user-{tag}-{i % 3}")

            await asyncio.gather(writer(a, "a"), writer(b, "b"))
            assert a.written == b.written == 120
            assert await a.client.xlen(a.keys.stream) == 240
            res = await a.verify()
            assert res.ok and res.checked == 240, res

    run(main)


def test_retention_by_age_and_size_keeps_a_verifiable_chain(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        async with store_for(tmp_path, prefix, retention=RetentionSettings(max_age_hours=1, max_entries=0)) as s:
            for i in range(5):
                await record(s, f"old{i}", complete=False)
            await asyncio.sleep(0.05)
            mid = time.time()
            await asyncio.sleep(0.05)
            for i in range(3):
                await record(s, f"new{i}", complete=False)
            res = await s.trim(mid + 3600)
            assert res.removed == 5 and res.index_members_removed >= 10  # idx:all, user, request, ...
            assert [r["request_id"] for r in await s.list()] == ["new2", "new1", "new0"]
            assert await s.client.zcard(s.keys.index("all")) == 3
            assert await s.client.zcard(s.keys.index("request", "old0")) == 0
            assert (await s.verify()).ok
            # a deletion right after the trim point is still caught (the anchor)
            first = (await s.client.xrange(s.keys.stream, count=1))[0]
            await s.client.xdel(s.keys.stream, first[0])
            res = await s.verify()
            assert not res.ok and res.checked == 0
            # everything expires; later entries chain on from the head
            res = await s.trim(time.time() + 7200)
            assert res.removed == 2 and await s.client.xlen(s.keys.stream) == 0
            assert (await s.verify()).ok
            await record(s, "after", complete=False)
            assert (await s.verify()).ok
            assert [r["request_id"] for r in await s.list()] == ["after"]

        async with store_for(tmp_path, prefix + "size:",
                             retention=RetentionSettings(max_age_hours=0, max_entries=50)) as s:
            for i in range(250):
                await record(s, f"s{i}", complete=False)
            res = await s.trim(time.time())
            left = await s.client.xlen(s.keys.stream)
            assert res.removed > 0 and 50 <= left < 250 and res.removed + left == 250
            assert (await s.verify()).ok
            assert await s.client.zcard(s.keys.index("all")) == left
            await s.client.delete(*[k async for k in s.client.scan_iter(match=f"{prefix}size:*")])

    run(main)


def test_required_mode_refuses_when_redis_is_down(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        down = f"redis://127.0.0.1:{free_port()}/0"
        async with store_for(tmp_path, prefix, url=down) as s:
            rec, start = interaction(s, "x1")
            with pytest.raises(RecordingUnavailable):
                await s.append_start(start)
            assert (s.written, s.spooled, s.failed) == (0, 0, 1)
            # the answer of a request already forwarded is never refused: it is spooled
            assert await s.append_complete(finish(rec)) is None
            assert (s.written, s.spooled, s.failed) == (0, 1, 1)

    run(main)


class Relay:
    """A TCP relay to the suite's Redis that can be cut and restored: a real outage."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = True
        self.port = free_port()
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        ur, uw = await asyncio.open_connection(*self.target)
        self._conns |= {writer, uw}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))

    def cut(self) -> None:
        self.up = False
        for w in self._conns:
            w.close()
        self._conns.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


def test_best_effort_spools_then_flushes_in_order(tmp_path: Path, prefix: str) -> None:
    from urllib.parse import urlsplit

    async def main() -> None:
        u = urlsplit(URL)
        relay = Relay(u.hostname or "127.0.0.1", u.port or 6379)
        await relay.start()
        db = (u.path or "/0").lstrip("/") or "0"
        try:
            async with store_for(tmp_path, prefix, url=f"redis://127.0.0.1:{relay.port}/{db}",
                                 mode="best_effort") as s:
                await record(s, "b0")
                assert s.written == 2
                relay.cut()
                for i in range(1, 5):
                    await record(s, f"b{i}", user="dave")
                assert (s.written, s.spooled, s.failed, s.flushed) == (2, 8, 0, 0)
                assert s.spool.pending == 8
                lines = Path(s.settings.spool.path).read_text().splitlines()
                assert [json.loads(x)["request_id"] for x in lines] == [f"b{i // 2 + 1}" for i in range(8)]

                relay.up = True
                s._down_until = 0.0  # what the background flusher's probe does once Redis answers
                await record(s, "b5")  # written at once: the request path never waits for the spool
                assert (s.written, s.spooled, s.failed, s.flushed) == (4, 8, 0, 0)
                assert s.spool.pending == 8
                assert await s.flush_spool() == 8  # the background flush, in spool order
                assert (s.written, s.spooled, s.failed, s.flushed) == (4, 8, 0, 8)
                assert s.spool.pending == 0 and not Path(s.settings.spool.path).exists()
                assert not s.spool.flushing.exists()

                order = [(e["entry"]["request_id"], e["entry"]["kind"]) async for e in s.export()]
                assert order == [(f"b{i}", k) for i in (0, 5, 1, 2, 3, 4) for k in ("start", "complete")]
                assert (await s.verify()).ok
                rows = await s.list(user="dave")
                assert [r["request_id"] for r in rows] == ["b4", "b3", "b2", "b1"]
                assert len({r["session_id"] for r in rows}) == 1 and rows[0]["session_id"]
        finally:
            await relay.close()

    run(main)


def test_spool_limit_counts_losses_and_a_spool_survives_a_restart(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        down = f"redis://127.0.0.1:{free_port()}/0"
        spool = SpoolSettings(path=str(tmp_path / "s.jsonl"), max_bytes=3000)
        async with store_for(tmp_path, prefix, url=down, mode="best_effort", spool=spool) as s:
            for i in range(10):
                _, start = interaction(s, f"f{i}")
                await s.append_start(start)
            assert s.spooled + s.failed == 10 and s.failed > 0 and s.spooled > 0
            kept = s.spooled
        async with store_for(tmp_path, prefix, mode="best_effort", spool=spool) as s:
            assert s.spool.pending == kept
            assert await s.flush_spool() == kept
            assert s.flushed == kept
            assert [r["request_id"] for r in await s.list()][::-1] == [f"f{i}" for i in range(kept)]

    run(main)


def test_spool_flushes_in_batches_in_the_background_and_never_on_the_request_path(tmp_path: Path,
                                                                                   prefix: str) -> None:
    async def main() -> None:
        down = f"redis://127.0.0.1:{free_port()}/0"
        spool = SpoolSettings(path=str(tmp_path / "s.jsonl"), max_bytes=64 << 20)
        async with store_for(tmp_path, prefix, url=down, mode="best_effort", spool=spool) as s:
            for i in range(1000):
                await record(s, f"sp{i}", user=f"u{i % 7}")
            assert (s.spooled, s.failed, s.spool.pending) == (2000, 0, 2000)
        async with store_for(tmp_path, prefix, mode="best_effort", spool=spool) as s:
            assert s.spool.pending == 2000
            flush = asyncio.create_task(s.flush_spool())
            await asyncio.sleep(0)
            await record(s, "direct")  # written directly while the flush runs, not behind it
            assert s.written == 2 and not flush.done()
            assert await flush == 2000
            assert s.spool.pending == 0 and not Path(spool.path).exists() and not s.spool.flushing.exists()
            entries = [e["entry"] async for e in s.export()]
            assert len(entries) == 2002
            ids = [(e["request_id"], e["kind"]) for e in entries]
            assert len(set(ids)) == 2002  # nothing written twice
            assert ids.index(("direct", "start")) < ids.index(("sp999", "complete"))
            assert (await s.verify()).ok

    run(main)


def test_an_interrupted_flush_resumes_where_it_stopped_without_duplicates(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        down = f"redis://127.0.0.1:{free_port()}/0"
        spool = SpoolSettings(path=str(tmp_path / "s.jsonl"), max_bytes=64 << 20)
        async with store_for(tmp_path, prefix, url=down, mode="best_effort", spool=spool) as s:
            for i in range(300):
                await record(s, f"r{i}")
        async with store_for(tmp_path, prefix, mode="best_effort", spool=spool) as s:
            assert s.spool.claim()
            batches = s.spool.batches(200)
            first, offset, nbytes = next(batches)
            await s._write_batch(first)
            s.spool.advance(offset, len(first), nbytes)
            second, _, _ = next(batches)
            await s._write_batch(second[:50])  # written, then the process dies before advance()
            batches.close()
        async with store_for(tmp_path, prefix, mode="best_effort", spool=spool) as s:
            assert s.spool.pending == 400
            assert await s.flush_spool() == 400
            ids = [(e["entry"]["request_id"], e["entry"]["kind"]) async for e in s.export()]
            assert len(ids) == 600 and len(set(ids)) == 600
            assert (await s.verify()).ok

    run(main)


def test_completions_of_recorded_starts_are_never_lost_to_a_full_spool(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        down = f"redis://127.0.0.1:{free_port()}/0"
        spool = SpoolSettings(path=str(tmp_path / "s.jsonl"), max_bytes=4000)
        async with store_for(tmp_path, prefix, url=down, mode="best_effort", spool=spool) as s:
            recs = []
            for i in range(10):
                rec, start = interaction(s, f"c{i}")
                await s.append_start(start)
                recs.append(rec)
            kept_starts = s.spooled
            lost_starts = s.failed
            assert kept_starts and lost_starts  # the bound was reached
            for rec in recs:
                await s.append_complete(finish(rec))
            # every completion whose start is in the spool was kept, past the bound
            assert s.spooled == 2 * kept_starts
            assert s.failed == 2 * lost_starts
            assert s.spool.size > spool.max_bytes
            entries = s.spool.read()
            starts = {e["interaction_id"] for e in entries if e["kind"] == "start"}
            completes = {e["interaction_id"] for e in entries if e["kind"] == "complete"}
            assert starts == completes

    run(main)
