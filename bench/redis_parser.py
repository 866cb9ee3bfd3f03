"""redis-py's reply parser on the request path: the pure-Python one against hiredis, measured in
one run on the calls the data path makes (a budget reservation script, a recording append).

  python bench/redis_parser.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis.asyncio as aioredis  # noqa: E402
from redis.asyncio.connection import _AsyncRESP2Parser  # noqa: E402

from extproc.dev.procs import free_port, start_redis  # noqa: E402
from extproc.policy import budgets  # noqa: E402
from extproc.policy.model import BudgetCharge  # noqa: E402

ENTRY = json.dumps({"kind": "start", "request_id": "r" * 36, "body": {"messages": [{"content": "x" * 400}]}})


async def run(url: str, parser: type | None, calls: int, concurrency: int = 16) -> float:
    kw: dict[str, Any] = {"parser_class": parser} if parser is not None else {}
    client = aioredis.Redis.from_url(url, **kw)
    charge = BudgetCharge(budget_id="b", key="budget:b:user:u", window_seconds=60, requests_limit=10**12,
                          tokens_limit=None, fail="open")
    xadd = client.register_script("return redis.call('XADD', KEYS[1], 'MAXLEN', '~', 1000, '*', 'e', ARGV[1])")

    async def one() -> None:
        for _ in range(calls // concurrency):
            await budgets.check_and_reserve(client, (charge,), prompt_tokens=10, now=time.time())
            await xadd(keys=["bench:stream"], args=[ENTRY])

    await one()  # warm: scripts loaded, connections open
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    dt = time.perf_counter() - t0
    await client.aclose()
    return 2 * (calls // concurrency) * concurrency / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="extproc-redis-"))
    port = free_port()
    proc = start_redis(port, work)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        try:
            import hiredis  # noqa: F401
            from redis.asyncio.connection import _AsyncHiredisParser
            fast: type | None = _AsyncHiredisParser
        except ImportError:
            print("hiredis is not installed: only the pure-Python parser is measured")
            fast = None
        results: dict[str, list[float]] = {"python": [], "hiredis": []}
        for _ in range(args.rounds):  # interleaved, so machine load hits both alike
            results["python"].append(asyncio.run(run(url, _AsyncRESP2Parser, args.calls)))
            if fast is not None:
                results["hiredis"].append(asyncio.run(run(url, fast, args.calls)))
        for name, xs in results.items():
            if xs:
                print(f"{name:<8} {sorted(xs)[len(xs) // 2]:8.0f} Redis calls/s (median of {len(xs)}: "
                      + ", ".join(f"{x:.0f}" for x in xs) + ")")
        if results["hiredis"]:
            py, hi = (sorted(x)[len(x) // 2] for x in (results["python"], results["hiredis"]))
            print(f"hiredis/python: {hi / py:.2f}")
    finally:
        proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
