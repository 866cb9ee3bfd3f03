"""A small closed-loop HTTP/1.1 load generator (keep-alive, N connections, fixed duration).

Used by ``make bench`` when ``wrk`` is not installed. Prints one JSON line: requests, errors,
requests/s and latency percentiles in milliseconds. Only ever points at 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _worker(host: str, port: int, request: bytes, deadline: float, lat: list[float], errs: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errs.append(status)
    finally:
        writer.close()


async def run(host: str, port: int, request: bytes, concurrency: int, duration: float) -> dict[str, float]:
    lat: list[float] = []
    errs: list[int] = []
    deadline = time.perf_counter() + duration
    t0 = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, request, deadline, lat, errs) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 2 else [0.0] * 99
    return {
        "requests": len(lat),
        "errors": len(errs),
        "rps": len(lat) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--body", default="")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args()
    body = a.body.encode()
    lines = [f"POST {a.path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
             "Content-Type: application/json", *a.header]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    out = asyncio.run(run("127.0.0.1", a.port, request, a.concurrency, a.duration))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
