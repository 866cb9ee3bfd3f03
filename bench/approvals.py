"""Approval latency: from the approve call to the upstream receiving the held request, and
whether 50 held requests slow unrelated traffic through the same ext_proc process.

A real stack (Envoy, extproc, Redis) with the Python fake upstream, which timestamps arrivals.
Approvals are decided through the store API (what the admin API calls), so the number is the
gateway's latency, not a CLI's start-up time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stack import post_chat, running_stack, workdir  # noqa: E402

DEAL = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Please review this term sheet"}]})
HELLO = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]})


def _pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 2 else max(xs)


def bench_approvals(n: int = 20) -> dict[str, Any]:
    from redis.asyncio import Redis

    from extproc.approvals.store import ApprovalStore
    from extproc.identity.model import Identity

    approver = Identity(user="bench-approver", groups=("legal",), issuer="https://extproc.local/dev",
                        subject="bench-approver", expires_at=time.time() + 3600)

    async def pending_ids(store: ApprovalStore) -> set[str]:
        return {a.id for a in await store.list(state="pending", limit=1000)}

    async def decide(store: ApprovalStore, aid: str) -> float:
        t0 = time.perf_counter()
        await store.decide(aid, approver, "approve", "bench")
        return t0

    latencies: list[float] = []
    unrelated: dict[str, float] = {}
    with running_stack(workdir("approvals")) as s:
        loop = asyncio.new_event_loop()
        redis = Redis.from_url(s.redis_url)
        store = ApprovalStore(redis)
        with concurrent.futures.ThreadPoolExecutor(64) as ex:
            for i in range(n):
                before = loop.run_until_complete(pending_ids(store))
                fut = ex.submit(post_chat, s, s.token(f"bench-{i}"), DEAL, 30)
                new: set[str] = set()
                while not new:
                    time.sleep(0.01)
                    new = loop.run_until_complete(pending_ids(store)) - before
                s.upstream.reset()
                t0 = loop.run_until_complete(decide(store, new.pop()))
                assert fut.result(10) == 200
                latencies.append((s.upstream.requests[0].at - t0) * 1000)

            free = s.token("bench-free")

            def unrelated_p50() -> float:
                xs = []
                for _ in range(40):
                    t = time.perf_counter()
                    assert post_chat(s, free, HELLO, 30) == 200
                    xs.append((time.perf_counter() - t) * 1000)
                return statistics.median(xs)

            unrelated["idle_p50_ms"] = unrelated_p50()
            held = [ex.submit(post_chat, s, s.token(f"bench-held-{i}"), DEAL, 30) for i in range(50)]
            time.sleep(1.0)
            unrelated["with_50_held_p50_ms"] = unrelated_p50()
            for f in held:
                f.result(30)
        loop.run_until_complete(redis.aclose())
        loop.close()
    return {
        "approve_to_upstream_p50_ms": round(statistics.median(latencies), 2),
        "approve_to_upstream_p99_ms": round(_pct(latencies, 99), 2),
        "n": n,
        **{k: round(v, 2) for k, v in unrelated.items()},
    }


if __name__ == "__main__":
    print(json.dumps(bench_approvals(), indent=2))
