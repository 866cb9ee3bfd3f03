"""Redis commands of concurrent requests share round trips (``store.Batcher``) and records are
group-committed (``RecordsStore``): against the suite's real Redis."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from extproc.dev.procs import free_port
from extproc.policy import BudgetCharge
from extproc.policy.budgets import charge_usage_nowait, check_and_reserve
from extproc.recording.store import RecordingUnavailable, RecordsStore
from extproc.store import Batcher
from tests.integration.test_records_store import finish, interaction, settings

URL = os.environ["REDIS_URL"]



def test_concurrent_commands_share_one_round_trip_and_each_gets_its_own_reply(prefix: str) -> None:
    async def main() -> None:
        client = Redis.from_url(URL)
        b = Batcher(client)
        try:
            replies = await asyncio.gather(*(b.eval("return ARGV[1]", 0, str(i)) for i in range(40)))
            assert replies == [str(i).encode() for i in range(40)]
            assert (b.batches, b.commands) == (1, 40)  # issued in one loop turn: one pipeline
            # One command Redis refuses fails only its caller.
            good, bad = await asyncio.gather(b.eval("return 1", 0), b.eval("return redis.call('NOPE')", 0),
                                             return_exceptions=True)
            assert good == 1 and isinstance(bad, ResponseError)
            # An unknown script is redis-py's NoScriptError, as when sent alone (callers fall back).
            with pytest.raises(NoScriptError):
                await b.evalsha("0" * 40, 0)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_burst_beyond_the_batch_bound_takes_more_round_trips_not_fewer_replies() -> None:
    async def main() -> None:
        client = Redis.from_url(URL)
        b = Batcher(client, max_batch=8)
        try:
            replies = await asyncio.gather(*(b.eval("return tonumber(ARGV[1])", 0, str(i)) for i in range(20)))
            assert replies == list(range(20)) and b.batches == 3
        finally:
            await client.aclose()

    asyncio.run(main())


def test_budget_reservations_through_the_batcher_stay_exact_under_concurrency(prefix: str) -> None:
    charge = BudgetCharge(budget_id="b", key="budget:b:u", requests_limit=25, tokens_limit=None,
                          window_seconds=60, fail="closed")

    async def main() -> None:
        client = Redis.from_url(URL)
        b = Batcher(client)
        try:
            await client.script_flush()  # the first batch meets NOSCRIPT and falls back to EVAL
            now = time.time()
            outs = await asyncio.gather(*(check_and_reserve(b, [charge], prompt_tokens=1, now=now, prefix=prefix)
                                          for _ in range(40)))
            assert sum(o.allowed for o in outs) == 25 and sum(o.status == 429 for o in outs) == 15
            assert b.batches < 40  # they shared round trips
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_usage_charge_sent_without_waiting_lands_or_reports_its_error(prefix: str) -> None:
    charge = BudgetCharge(budget_id="t", key="budget:t:u", requests_limit=None, tokens_limit=1000,
                          window_seconds=60, fail="closed")

    async def main() -> None:
        client = Redis.from_url(URL)
        b = Batcher(client)
        errors: list[BaseException] = []
        try:
            now = time.time()
            await check_and_reserve(b, [charge], prompt_tokens=10, now=now, prefix=prefix)
            await client.script_flush()  # the charge meets NOSCRIPT: sent again as EVAL
            charge_usage_nowait(b, [charge], actual_tokens=50, estimated_tokens=10, now=now, prefix=prefix,
                                on_error=errors.append)
            await b.drain()
            await b.drain()  # the EVAL sent from the first one's error
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            assert len(keys) == 1 and await client.hget(keys[0], "t") == b"50" and errors == []
        finally:
            await client.aclose()
        dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        down = Batcher(dead)
        try:
            charge_usage_nowait(down, [charge], actual_tokens=50, estimated_tokens=10, now=now, prefix=prefix,
                                on_error=errors.append)
            await down.drain()
            assert len(errors) == 1  # counted by the servicer (stream_errors{kind="usage_charge"})
        finally:
            await dead.aclose()

    asyncio.run(main())


def test_records_are_group_committed_in_submission_order(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        client = Redis.from_url(URL)
        store = RecordsStore(client, settings(tmp_path), prefix=prefix, retry_interval=0)
        try:
            futures = []
            for i in range(30):
                rec, start = interaction(store, f"req-{i}")
                futures.append(store.submit_start(start))
                futures.append(store.submit_complete(finish(rec)))
            ids = await asyncio.gather(*futures)
            assert all(ids) and store.written == 60
            # Stream ids grow in submission order: every start precedes its completion.
            assert ids == sorted(ids, key=lambda s: tuple(int(x) for x in str(s).split("-")))
            assert (await store.verify()).ok
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_required_start_does_not_wait_out_the_linger(tmp_path: Path, prefix: str) -> None:
    async def main() -> None:
        client = Redis.from_url(URL)
        store = RecordsStore(client, settings(tmp_path, mode="required"), prefix=prefix, retry_interval=0,
                             linger=600.0)
        try:
            rec, _ = interaction(store, "req-held")
            later = store.submit_complete(finish(rec))  # lingers for company...
            # ...until a request waits for its start: then the batch goes at once (a test that
            # waited out the linger would time out here).
            _, start2 = interaction(store, "req-waiting")
            sid = await asyncio.wait_for(store.append_start(start2), 30)
            assert sid and await asyncio.wait_for(later, 30)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_group_commit_when_redis_is_away_spools_best_effort_and_refuses_required(tmp_path: Path) -> None:
    async def main() -> None:
        dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1, socket_timeout=1)
        try:
            best = RecordsStore(dead, settings(tmp_path / "b", mode="best_effort"), retry_interval=0)
            rec, start = interaction(best, "req-b")
            assert await best.append_start(start) is None and await best.append_complete(finish(rec)) is None
            assert best.spooled == 2 and [e["kind"] for e in best.spool.read()] == ["start", "complete"]
            req = RecordsStore(dead, settings(tmp_path / "r", mode="required"), retry_interval=0)
            _, start = interaction(req, "req-r")
            with pytest.raises(RecordingUnavailable):
                await req.append_start(start)
            assert req.failed == 1 and req.spooled == 0
        finally:
            await dead.aclose()

    asyncio.run(main())


_ARG = st.one_of(st.text(max_size=40), st.binary(max_size=40), st.integers(-(2**63), 2**63 - 1),
                 st.floats(allow_nan=False, allow_infinity=False))


@given(st.sampled_from(["EVALSHA", "SCRIPT LOAD", "GET", b"PING"]), st.lists(_ARG, max_size=12))
def test_commands_are_packed_in_c_to_the_same_bytes_as_redis_py(command: str | bytes, args: list[Any]) -> None:
    from redis.asyncio.connection import Connection

    from extproc.store import _packing_class

    packed = _packing_class(Connection)().pack_command(command, *args)
    assert b"".join(packed) == b"".join(Connection().pack_command(command, *args))


def test_the_store_connects_with_the_c_packer_and_redis_understands_it(prefix: str) -> None:
    from extproc.store import RedisStore

    async def main() -> None:
        store = RedisStore(URL, prefix=prefix)
        try:
            assert store.client.connection_pool.connection_class.__name__.startswith("Packed")
            sha = await store.client.script_load("return {ARGV[1], tonumber(ARGV[2]), ARGV[3]}")
            assert await store.client.evalsha(sha, 0, "é ☃", 42, 2.5) == ["é ☃".encode(), 42, b"2.5"]
        finally:
            await store.close()

    asyncio.run(main())
