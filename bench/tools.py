"""``tools/call`` overhead: the same MCP tool called directly and through the gateway, with the
official `mcp` SDK client, in one run (p50/p99 per call over one session each)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stack import running_stack, workdir  # noqa: E402


async def _calls(url: str, headers: dict[str, str], n: int) -> list[float]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers=headers)
    out: list[float] = []
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
        for _ in range(5):
            await c.call_tool("delete_records", {"env": "staging", "ids": [1]})
        for _ in range(n):
            t0 = time.perf_counter()
            await c.call_tool("delete_records", {"env": "staging", "ids": [1]})
            out.append((time.perf_counter() - t0) * 1000)
    return out


def bench_tools(n: int = 100) -> dict[str, Any]:
    with running_stack(workdir("tools")) as s:
        direct = asyncio.run(_calls(f"http://127.0.0.1:{s.mcp.port}/mcp", {}, n))
        gateway = asyncio.run(_calls(f"{s.gateway}/mcp/crm", {"Authorization": f"Bearer {s.token()}"}, n))

    def p(xs: list[float], q: int) -> float:
        return round(statistics.quantiles(xs, n=100)[q - 1], 2)

    return {"n": n, "direct_p50_ms": p(direct, 50), "direct_p99_ms": p(direct, 99),
            "gateway_p50_ms": p(gateway, 50), "gateway_p99_ms": p(gateway, 99),
            "added_p50_ms": round(p(gateway, 50) - p(direct, 50), 2)}


if __name__ == "__main__":
    import json

    print(json.dumps(bench_tools(), indent=2))
