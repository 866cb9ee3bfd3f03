"""Isolation: one caller's 7.8 MB prompt dense with PII against another caller's small requests.

A real stack (Envoy with its default 2 s message timeout and 8 MiB body limit, extproc with the
policy and recording of the e2e stack, Redis, the fake upstream). Measured in the same run: the
small request's latency alone, then while the big prompt is being inspected; and whether either
request failed. Target: the small request's p50 within 100 ms of its idle p50, nothing fails.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stack import Stack, post_chat, running_stack, workdir  # noqa: E402

UNIT = "Reach bob.smith@example.com or +1 415 555 0132, cc alice@corp.example.org. "
SMALL = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello, write to bob@example.com"}]})


def _inflight(s: Stack) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{s.ports['admin']}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return next(float(x.split()[-1]) for x in text.splitlines()
                if x.startswith("extproc_offloaded_inspections_inflight "))


def _small(s: Stack, token: str, n: int) -> tuple[list[float], int]:
    lat, errors = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        if post_chat(s, token, SMALL, 60) != 200:
            errors += 1
        lat.append((time.perf_counter() - t0) * 1000)
    return lat, errors


def bench_isolation(size: int = 7_800_000, n: int = 30) -> dict[str, Any]:
    work = workdir("isolation")
    extra = {"envoy": {"message_timeout_ms": 2000, "max_request_bytes": 8 * 1024 * 1024},
             "inspection": {"timeout_seconds": 300},
             "recording": {"mode": "required", "spool": {"path": str(work / "spool.jsonl")}}}
    with running_stack(work, extra) as s:
        token = s.token("alice")
        _small(s, token, 5)  # warm up
        idle, idle_err = _small(s, token, n)
        text = UNIT * (size // len(UNIT))
        big_body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
        big: dict[str, Any] = {}

        def send() -> None:
            t0 = time.perf_counter()
            big["status"] = post_chat(s, s.token("mallory"), big_body, 600)
            big["seconds"] = time.perf_counter() - t0

        t = threading.Thread(target=send)
        t.start()
        while _inflight(s) < 1 and t.is_alive():
            time.sleep(0.02)
        busy: list[float] = []
        busy_err = 0
        while t.is_alive() and _inflight(s) >= 1 and len(busy) < 10 * n:
            lat, err = _small(s, token, 1)
            busy += lat
            busy_err += err
        t.join()
        p50_idle, p50_busy = statistics.median(idle), statistics.median(busy) if busy else float("nan")
        return {
            "big_bytes": len(big_body), "big_status": big.get("status"), "big_seconds": round(big.get("seconds", 0), 2),
            "small_idle_p50_ms": round(p50_idle, 2), "small_during_p50_ms": round(p50_busy, 2),
            "small_during_max_ms": round(max(busy), 2) if busy else None, "small_during_n": len(busy),
            "small_added_p50_ms": round(p50_busy - p50_idle, 2),
            "small_during/idle p50": round(p50_busy / p50_idle, 3), "small_errors": idle_err + busy_err,
        }


if __name__ == "__main__":
    print(json.dumps(bench_isolation(), indent=2))
