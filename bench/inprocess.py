"""What one request costs the ext_proc process itself, without gRPC, Envoy or the network.

Two layers, for a bench row's configuration (``bench/run.py``'s rows, e.g. ``full`` or
``full_norecording``), CPU time per request (``time.process_time``), one process:

* ``machine``: the pure per-request machine (policy, masking, recording model, usage), its
  ``Need*`` answered at once (identity verified, budget allowed, record written);
* ``servicer``: the real servicer's ``Process`` driven by ready-made ext_proc messages, 16
  streams at a time, with the real token cache and real Redis (budgets, records).

The difference between them is the servicer's own share and Redis; the data-path rows of
``make bench`` add gRPC and the event loop moving the messages. CPU time on a shared machine
still moves by ~10-20% between runs: compare rows within one run.
``python bench/inprocess.py --rows auth,full,full_norecording [--profile full]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder is first on the path, and its profile.py would shadow the
# standard library's (which cProfile imports).
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

import cProfile  # noqa: E402
import pstats  # noqa: E402

from envoy.config.core.v3 import base_pb2  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep  # noqa: E402

from bench.run import BODY, CANNED, gateway_config  # noqa: E402
from extproc.config.load import load_config  # noqa: E402
from extproc.datapath.machine import Continue, NeedBudget, NeedIdentity, NeedRecordStart, RequestMachine  # noqa: E402
from extproc.datapath.runtime import build_gateway  # noqa: E402
from extproc.datapath.servicer import ExternalProcessor  # noqa: E402
from extproc.dev.keys import ensure_dev_issuer, mint_token  # noqa: E402
from extproc.identity.credentials import CredentialStore  # noqa: E402
from extproc.identity.model import Identity  # noqa: E402
from extproc.policy.model import BudgetOutcome  # noqa: E402
from extproc.recording.store import RecordsStore  # noqa: E402
from extproc.server import build_state  # noqa: E402

_PORTS = {k: 10000 + i for i, k in enumerate(("http", "ext_proc", "admin", "admin_grpc", "envoy_admin"))}


def _config(work: Path, row: str, redis_url: str) -> Any:
    os.environ.setdefault("BENCH_PROVIDER_KEY", "sk-bench-" + "x" * 32)
    return load_config(gateway_config(work, _PORTS, 9, redis_url, row), env=dict(os.environ))


def machine_us(work: Path, row: str, n: int = 2000) -> float:
    """CPU per request of the pure machine for ``row``."""
    gw = build_gateway(cfg := _config(work, row, "redis://127.0.0.1:9/0"), CredentialStore(cfg.providers))
    ident = Identity(user="bench", groups=("engineering",), issuer="https://extproc.local/dev", subject="bench",
                     expires_at=time.time() + 7200)
    headers = {":method": "POST", ":path": "/openai/chat/completions", "authorization": "Bearer a.b.c",
               "content-type": "application/json", "content-length": str(len(BODY))}
    answer = {":status": "200", "content-type": "application/json", "content-length": str(len(CANNED))}

    def one() -> None:
        m = RequestMachine(gw, request_id="9b1f2c3d-1111-4222-8333-444455556666")
        d: object = m.on_request_headers(headers, False)
        if isinstance(d, NeedIdentity):
            d = m.on_identity(ident)
        d = m.on_request_body(BODY.encode(), True)
        while not isinstance(d, Continue):
            if isinstance(d, NeedBudget):
                d = m.on_budget(BudgetOutcome(allowed=True))
            elif isinstance(d, NeedRecordStart):
                d = m.on_record_start(True)
            else:
                raise SystemExit(f"{row}: unexpected {d!r}")
        m.on_response_headers(answer, False)
        m.on_response_body(CANNED.encode(), True)

    for _ in range(n // 10):
        one()
    t0 = time.process_time()
    for _ in range(n):
        one()
    return (time.process_time() - t0) / n * 1e6


def _headers(pairs: dict[str, str], eos: bool) -> ep.HttpHeaders:
    return ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]), end_of_stream=eos)


class _Context:
    async def abort(self, code: object, details: str) -> None:
        raise RuntimeError(f"stream aborted: {code} {details}")


async def _servicer(work: Path, row: str, redis_url: str, n: int, profile: Path | None) -> float:
    cfg = _config(work, row, redis_url)
    key, _ = ensure_dev_issuer(work / "dev")
    token = mint_token(key.read_text(), subject="bench", groups=["engineering"], ttl_seconds=7200)
    state = build_state(cfg)
    await state.authenticator.preload()
    rec = state.gateway.recording
    records = RecordsStore(state.store.client, rec, prefix=cfg.redis_prefix) if rec is not None else None
    proc = ExternalProcessor(lambda: state.gateway, lambda: state.authenticator, state.metrics, state.store,
                             records=records)
    messages = [
        ep.ProcessingRequest(request_headers=_headers({
            ":method": "POST", ":path": "/openai/chat/completions", ":authority": "bench",
            "authorization": f"Bearer {token}", "content-type": "application/json",
            "content-length": str(len(BODY))}, False)),
        ep.ProcessingRequest(request_body=ep.HttpBody(body=BODY.encode(), end_of_stream=True)),
        ep.ProcessingRequest(response_headers=_headers({
            ":status": "200", "content-type": "application/json", "content-length": str(len(CANNED))}, False)),
        ep.ProcessingRequest(response_body=ep.HttpBody(body=CANNED.encode(), end_of_stream=True)),
    ]

    async def stream() -> Any:
        for m in messages:
            yield m

    async def callers(total: int, concurrency: int = 16) -> None:
        async def caller() -> None:
            for _ in range(total // concurrency):
                async for _resp in proc.Process(stream(), _Context()):
                    pass

        await asyncio.gather(*(caller() for _ in range(concurrency)))

    try:
        await callers(n // 8)
        t0 = time.process_time()
        await callers(n)
        used = (time.process_time() - t0) / n * 1e6
        if profile is not None:
            p = cProfile.Profile()
            p.enable()
            await callers(n // 2)
            p.disable()
            p.dump_stats(profile)
        if records is not None:
            await records.drain()
        return used
    finally:
        await state.store.close()


def servicer_us(work: Path, row: str, redis_url: str, n: int = 3200, profile: Path | None = None) -> float:
    """CPU per request of the servicer (machine + servicer + Redis, no gRPC) for ``row``."""
    return asyncio.run(_servicer(work, row, redis_url, n, profile))


def bench_inprocess(rows: list[str], redis_url: str) -> dict[str, dict[str, int]]:
    work = Path(tempfile.mkdtemp(prefix="extproc-bench-inprocess-"))
    return {row: {"machine_us": round(machine_us(work, row)), "servicer_us": round(servicer_us(work, row, redis_url))}
            for row in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="auth,full,full_nobudget,full_nopolicy,full_nomasking,full_norecording")
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--profile", default="", help="cProfile the servicer for this row and print the top")
    args = ap.parse_args()
    if args.profile:
        out = Path(tempfile.mkdtemp()) / "servicer.pstats"
        servicer_us(Path(tempfile.mkdtemp()), args.profile, args.redis, profile=out)
        pstats.Stats(str(out)).sort_stats("cumulative").print_stats(40)
        return 0
    print(f"{'row':<18} {'machine us/req':>15} {'servicer us/req':>16}")
    for row, r in bench_inprocess([x for x in args.rows.split(",") if x], args.redis).items():
        print(f"{row:<18} {r['machine_us']:>15} {r['servicer_us']:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
