"""Memory of one ext_proc process: idle RSS, RSS over a soak of the ``full`` row, and where
growth comes from (a tracemalloc snapshot diff).

  python bench/memory.py --soak 300          # idle RSS, then 300 s at c=16, RSS every 15 s
  python bench/memory.py --tracemalloc 90    # the same load with the server in this process
                                             # under tracemalloc: the top allocation growth
  python bench/memory.py --soak 1200 --ab MALLOC_ARENA_MAX=2
        # two full stacks, the second ext_proc with the given environment; the load alternates
        # between them every step, so both see the same machine (each gets half the seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import gateway_config, load, rss_kb, upstream_envoy  # noqa: E402
from extproc.config.envoy import render_envoy  # noqa: E402
from extproc.config.load import load_config  # noqa: E402
from extproc.dev.keys import ensure_dev_issuer, mint_token  # noqa: E402
from extproc.dev.procs import Proc, envoy_binary, free_port, free_ports, start_redis, wait_http, wait_tcp  # noqa: E402


def stack(work: Path) -> tuple[list[Proc], dict[str, int], Path, str, dict[str, str]]:
    env = {**os.environ, "BENCH_PROVIDER_KEY": "sk-bench-" + "x" * 32}
    procs: list[Proc] = []
    rport = free_port()
    procs.append(start_redis(rport, work))
    up_port, up_admin = free_ports(2)
    (work / "upstream.yaml").write_text(yaml.safe_dump(upstream_envoy(up_port, up_admin)))
    procs.append(Proc("upstream", [envoy_binary(), "-c", str(work / "upstream.yaml"), "--log-level", "error",
                                   "--base-id", str(up_admin), "--concurrency", "1"], work / "up.log").start())
    wait_tcp("127.0.0.1", up_port, 20, procs[-1])
    key, _ = ensure_dev_issuer(work / "dev")
    token = mint_token(key.read_text(), subject="bench", groups=["engineering"], ttl_seconds=7200)
    names = ("http", "ext_proc", "admin", "admin_grpc", "envoy_admin")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    cfg_path = gateway_config(work, ports, up_port, f"redis://127.0.0.1:{rport}/0", "full", 1)
    (work / "gw.yaml").write_text(yaml.safe_dump(render_envoy(load_config(cfg_path, env=env))))
    return procs, ports, cfg_path, token, env


def start_gateway(work: Path, ports: dict[str, int]) -> Proc:
    gw = Proc("gateway", [envoy_binary(), "-c", str(work / "gw.yaml"), "--log-level", "error", "--base-id",
                          str(ports["envoy_admin"]), "--concurrency", "1"], work / "gw.log").start()
    wait_http(f"http://127.0.0.1:{ports['envoy_admin']}/ready", 20, gw)
    return gw


def soak(seconds: float, step: float = 15.0) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="extproc-soak-"))
    procs, ports, cfg_path, token, env = stack(work)
    try:
        side = Proc("extproc", [sys.executable, "-m", "extproc", "--log-level", "warning", "serve", "--config",
                                str(cfg_path)], work / "extproc.log", env=env, cwd=str(REPO)).start()
        procs.append(side)
        wait_http(f"http://127.0.0.1:{ports['admin']}/readyz", 60, side)
        assert side.popen is not None
        pid = side.popen.pid
        time.sleep(2)
        idle = rss_kb(pid)
        print(f"idle RSS of one ext_proc process (full configuration, nothing served yet): {idle / 1024:.1f} MB")
        procs.append(start_gateway(work, ports))
        series: list[tuple[int, int]] = []  # (requests so far, RSS kB)
        total = 0
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            r = load(ports["http"], token, 16, step)
            total += int(r["requests"])
            series.append((total, rss_kb(pid)))
            print(f"  {total:>8} requests  RSS {series[-1][1] / 1024:7.1f} MB  ({r['rps']:.0f} req/s, "
                  f"{r['errors']} errors)", flush=True)
        # Growth after the first step (caches and pools fill during it), per request.
        (n0, r0), (n1, r1) = series[0], series[-1]
        per_req = (r1 - r0) * 1024 / max(n1 - n0, 1)
        print(f"RSS growth after warm-up: {(r1 - r0) / 1024:.1f} MB over {n1 - n0} requests = {per_req:.0f} bytes "
              "per request")
        return {"idle_rss_mb": idle / 1024, "series": series, "bytes_per_request": per_req}
    finally:
        for p in reversed(procs):
            p.stop()


def soak_ab(seconds: float, extra_env: dict[str, str], step: float = 15.0) -> None:
    """The soak with two ext_proc processes, A as configured and B with ``extra_env``, each behind
    its own stack; the load alternates between them step by step (noise is shared, not confounded).
    Names starting ``envoy.`` are not environment: they go into B's gateway Envoy's runtime."""
    labels = ("A default", "B " + " ".join(f"{k}={v}" for k, v in extra_env.items()))
    runtime = {k: v for k, v in extra_env.items() if k.startswith("envoy.")}
    extra_env = {k: v for k, v in extra_env.items() if not k.startswith("envoy.")}
    stacks: list[tuple[list[Proc], dict[str, int], str, int]] = []
    try:
        for extra in ({}, extra_env):
            work = Path(tempfile.mkdtemp(prefix="extproc-soak-"))
            procs, ports, cfg_path, token, env = stack(work)
            if extra is extra_env and runtime:
                gw = yaml.safe_load((work / "gw.yaml").read_text())
                gw["layered_runtime"] = {"layers": [{"name": "ab", "static_layer": {
                    k: yaml.safe_load(v) for k, v in runtime.items()}}]}
                (work / "gw.yaml").write_text(yaml.safe_dump(gw))
            side = Proc("extproc", [sys.executable, "-m", "extproc", "--log-level", "warning", "serve",
                                    "--config", str(cfg_path)], work / "extproc.log", env={**env, **extra},
                        cwd=str(REPO)).start()
            procs.append(side)
            stacks.append((procs, ports, token, 0))
            wait_http(f"http://127.0.0.1:{ports['admin']}/readyz", 60, side)
            assert side.popen is not None
            stacks[-1] = (procs, ports, token, side.popen.pid)
        time.sleep(2)
        for label, (procs, ports, _, pid) in zip(labels, stacks, strict=True):
            print(f"{label}: idle RSS {rss_kb(pid) / 1024:.1f} MB")
            procs.append(start_gateway(procs[-1].log_path.parent, ports))
        series: list[list[tuple[int, int]]] = [[], []]
        totals = [0, 0]
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            for i, (_, ports, token, pid) in enumerate(stacks):
                r = load(ports["http"], token, 16, step)
                totals[i] += int(r["requests"])
                series[i].append((totals[i], rss_kb(pid)))
                print(f"  {labels[i][:1]} {totals[i]:>8} requests  RSS {series[i][-1][1] / 1024:7.1f} MB  "
                      f"({r['rps']:.0f} req/s, {r['errors']} errors)  load {os.getloadavg()[0]:.1f}", flush=True)
        for label, ser in zip(labels, series, strict=True):
            (n0, r0), (n1, r1) = ser[0], ser[-1]
            mid = ser[len(ser) // 2]
            print(f"{label}: RSS {r0 / 1024:.1f} MB after the first step, {mid[1] / 1024:.1f} MB half-way, "
                  f"{r1 / 1024:.1f} MB at the end; {(r1 - r0) * 1024 / max(n1 - n0, 1):.0f} bytes/request "
                  f"over {n1 - n0} requests (second half: "
                  f"{(r1 - mid[1]) * 1024 / max(n1 - mid[0], 1):.0f} bytes/request)")
    finally:
        for procs, *_ in stacks:
            for p in reversed(procs):
                p.stop()


def traced(seconds: float) -> None:
    """The server in this process under tracemalloc: what grows between two snapshots."""
    work = Path(tempfile.mkdtemp(prefix="extproc-trace-"))
    procs, ports, cfg_path, token, env = stack(work)
    os.environ.update(env)
    from extproc.cli import _validate_extensions
    from extproc.server import serve

    cfg = load_config(cfg_path)
    _validate_extensions(cfg)

    async def drive(ready: asyncio.Event) -> None:
        await ready.wait()
        procs.append(start_gateway(work, ports))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, load, ports["http"], token, 16, 20.0)  # warm-up: caches, pools
        import gc

        gc.collect()
        first = tracemalloc.take_snapshot()
        r = await loop.run_in_executor(None, load, ports["http"], token, 16, seconds)
        gc.collect()
        second = tracemalloc.take_snapshot()
        print(f"{r['requests']} requests between the snapshots ({r['rps']:.0f} req/s under tracemalloc)")
        stats = second.compare_to(first, "lineno")
        grown = sum(s.size_diff for s in stats)
        print(f"traced memory grew {grown / 1024:.1f} KB = {grown / max(r['requests'], 1):.0f} bytes per request; "
              "top growth:")
        for s in stats[:15]:
            print(f"  {s.size_diff / 1024:8.1f} KB {s.count_diff:+7d} blocks  {s.traceback.format()[0].strip()[:110]}")
        os.kill(os.getpid(), signal.SIGTERM)

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(drive(ready))
        await serve(cfg, ready=ready)
        await task

    tracemalloc.start(1)
    try:
        asyncio.run(main())
    finally:
        for p in reversed(procs):
            p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of c=16 load with RSS sampled")
    ap.add_argument("--ab", nargs="*", default=None, metavar="NAME=VALUE",
                    help="with --soak: a second ext_proc with this environment, soaked alternately")
    ap.add_argument("--tracemalloc", type=float, default=0.0, help="seconds of load between two snapshots")
    args = ap.parse_args()
    if args.soak and args.ab is not None:
        soak_ab(args.soak, dict(kv.split("=", 1) for kv in args.ab))
    elif args.soak:
        soak(args.soak)
    if args.tracemalloc:
        traced(args.tracemalloc)
    if not args.soak and not args.tracemalloc:
        soak(15.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
