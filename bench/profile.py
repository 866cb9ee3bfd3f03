"""Where a request's time goes: the ``full`` row of ``make bench`` under a sampling profiler.

Starts the same stack as ``bench/run.py`` (Redis, a canned upstream Envoy, the gateway Envoy,
one ext_proc process with the ``full`` configuration), warms it up, then samples the ext_proc
process with py-spy (``pip install py-spy``; it only reads the process, so the load runs at full
speed) while loading it (c=16 unless told), and prints the CPU time per request by the library the CPU was
in, by the project module responsible for it, and the top frames.
``python bench/profile.py --help``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import gateway_config, load, start_upstream  # noqa: E402
from extproc.config.envoy import render_envoy  # noqa: E402
from extproc.config.load import load_config  # noqa: E402
from extproc.dev.keys import ensure_dev_issuer, mint_token  # noqa: E402
from extproc.dev.procs import Proc, envoy_binary, free_port, free_ports, start_redis, wait_http  # noqa: E402

#: (area, substrings of "file:function") in the order they are tried; the first match wins.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("redis client (redis-py)", ("/redis/",)),
    ("recording (record model, store)", ("extproc/recording/",)),
    ("policy engine", ("extproc/policy/",)),
    ("masking (detectors, response masker)", ("extproc/masking/",)),
    ("identity (JWT cache)", ("extproc/identity/",)),
    ("state machine, servicer", ("extproc/datapath/",)),
    ("llm API adapters, usage", ("extproc/llmapi/",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("JSON", ("json/", "strictjson")),
    ("regex (re, re2)", ("/re/", "re2", "_sre", "sre_")),
    ("asyncio event loop", ("asyncio/", "selectors", "{method 'poll'", "{method 'select'", "epoll")),
    ("grpc aio (Cython)", ("grpc", "cygrpc", "_cython")),
    ("protobuf", ("protobuf", "_pb2")),
    ("logging", ("logging/",)),
)


def _file_of(frame: str) -> str:
    return frame.rsplit("(", 1)[-1] if "(" in frame else frame


def area_of(frame: str) -> str:
    for area, needles in AREAS:
        if any(n in frame for n in needles):
            return area
    return "other (stdlib, dataclasses, ...)"


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Per thread of ``pid``: its name and CPU seconds so far."""
    out: dict[int, tuple[str, float]] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return out


def summarise(collapsed: Path, requests: int, rate: int, top: int = 25) -> dict[str, Any]:
    """``collapsed``: py-spy's raw format, one ``frame;frame;...;leaf count`` line per stack."""
    leaf_area: dict[str, int] = {}
    owner: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f.strip()]
        # py-spy names the thread first ("process 123:...", "thread (0x...)"): not a frame.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        # Only the event-loop thread serves requests; gRPC's own threads sit in C calls that
        # py-spy cannot tell from work, and would count as busy.
        if not frames or not any("asyncio/" in f for f in frames):
            continue
        total += count
        leaf = frames[-1]
        leaf_area[area_of(leaf)] = leaf_area.get(area_of(leaf), 0) + count
        leaves[leaf] = leaves.get(leaf, 0) + count
        # The nearest project frame is what the CPU was spent for.
        # (__main__, cli and server only start the event loop: what runs under them alone is runtime.)
        mine = next((f for f in reversed(frames) if "extproc/" in f and "/site-packages/" not in f
                     and not any(x in f for x in ("extproc/cli.py", "extproc/server.py", "extproc/__main__.py"))),
                    None)
        key = "runtime (gRPC aio, asyncio, no project frame)" if mine is None else \
            mine.split("extproc/", 1)[1].split(":", 1)[0]
        owner[key] = owner.get(key, 0) + count
    per = 1e6 / rate / max(requests, 1)
    cpu = total * per
    print(f"\nsampled at {rate} Hz while serving {requests} requests: {total} busy samples, "
          f"{cpu:.0f} us of CPU (one core) per request")
    print(f"\n{'where the CPU was (leaf frame)':<48} {'us/req':>8} {'share':>7}")
    for area, c in sorted(leaf_area.items(), key=lambda kv: -kv[1]):
        print(f"{area:<48} {c * per:>8.0f} {c / max(total, 1):>7.1%}")
    print(f"\n{'on behalf of (nearest project module)':<48} {'us/req':>8} {'share':>7}")
    for mod, c in sorted(owner.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{mod:<48} {c * per:>8.0f} {c / max(total, 1):>7.1%}")
    print(f"\ntop {top} leaf frames")
    for leaf, c in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {c * per:8.0f} us/req {c / max(total, 1):6.1%}  {leaf[:120]}")
    return {"requests": requests, "cpu_us_per_request": cpu,
            "leaf_areas_us": {a: c * per for a, c in leaf_area.items()},
            "owners_us": {m: c * per for m, c in owner.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", default="full", help="which bench row's configuration (default: full)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    ap.add_argument("--concurrency", "-c", type=int, default=16, help="concurrent callers (default 16)")
    ap.add_argument("--cprofile", default="", help="run the server under cProfile and write its stats here")
    ap.add_argument("--native", action="store_true", help="py-spy --native: C frames (gRPC's Cython, libc) too")
    ap.add_argument("--threads", action="store_true",
                    help="no sampling: the CPU each thread of the ext_proc process used per request")
    ap.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    ap.add_argument("--workers", type=int, default=1, help="ext_proc workers (default 1)")
    ap.add_argument("--out", default="", help="keep py-spy's collapsed stacks here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="extproc-profile-"))
    env = {**os.environ, "BENCH_PROVIDER_KEY": "sk-bench-" + "x" * 32}
    procs: list[Proc] = []
    prof = Path(args.out) if args.out else work / "extproc.collapsed"
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is needed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    try:
        rport = free_port()
        procs.append(start_redis(rport, work))
        redis_url = f"redis://127.0.0.1:{rport}/0"
        up_port = start_upstream(work, procs)
        key, _ = ensure_dev_issuer(work / "dev")
        token = mint_token(key.read_text(), subject="bench", groups=["engineering"], ttl_seconds=7200)
        names = ("http", "ext_proc", "admin", "admin_grpc", "envoy_admin")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        cfg_path = gateway_config(work, ports, up_port, redis_url, args.row, args.workers)
        cfg = load_config(cfg_path, env=env)
        (work / "gw.yaml").write_text(yaml.safe_dump(render_envoy(cfg)))
        # cProfile with the thread's CPU clock: time the loop thread spends preempted by Envoy,
        # Redis or the load generator on this shared machine is not charged to the function.
        launcher = ["-c", "import cProfile, sys, time; from extproc.cli import main; "
                    "p = cProfile.Profile(time.thread_time); rc = p.runcall(main); "
                    f"p.dump_stats({args.cprofile!r}); sys.exit(rc)"] if args.cprofile else ["-m", "extproc"]
        side = Proc("extproc", [sys.executable, *launcher, "--log-level", "warning", "serve", "--config",
                                str(cfg_path)], work / "extproc.log", env=env, cwd=str(REPO)).start()
        procs.append(side)
        wait_http(f"http://127.0.0.1:{ports['admin']}/readyz", 60, side)
        gw = Proc("gateway", [envoy_binary(), "-c", str(work / "gw.yaml"), "--log-level", "error",
                              "--use-dynamic-base-id", "--concurrency", "1"], work / "gw.log").start()
        procs.append(gw)
        wait_http(f"http://127.0.0.1:{ports['envoy_admin']}/ready", 20, gw)
        load(ports["http"], token, 16, 2.0)
        assert side.popen is not None
        if args.cprofile:  # deterministic: every call, under cProfile's own overhead
            got = load(ports["http"], token, args.concurrency, args.duration)
            side.stop(30)
            import pstats

            print(f"load: {got}; the whole run's profile (start-up included) is in {args.cprofile}")
            pstats.Stats(args.cprofile).sort_stats("tottime").print_stats(30)
            return 0
        if args.threads:
            before = thread_cpu(side.popen.pid)
            got = load(ports["http"], token, args.concurrency, args.duration)
            after = thread_cpu(side.popen.pid)
            print(f"load: {got}\n\next_proc CPU per request by thread (c={args.concurrency}):")
            for tid, (name, cpu) in sorted(after.items(), key=lambda kv: -(kv[1][1] - before.get(kv[0], ("", 0.0))[1])):
                used = cpu - before.get(tid, ("", 0.0))[1]
                if used > 0:
                    print(f"  {name:<24} {used / got['requests'] * 1e6:8.0f} us")
            return 0
        result: dict[str, Any] = {}
        loader = threading.Thread(target=lambda: result.update(
            load(ports["http"], token, args.concurrency, args.duration + 1)))
        loader.start()
        subprocess.run([spy, "record", "--pid", str(side.popen.pid), "--duration", str(int(args.duration)),
                        "--rate", str(args.rate), "--format", "raw", "--subprocesses",
                        # --native unwinds C stacks, which needs the process paused while sampled
                        *(["--native"] if args.native else ["--nonblocking"]), "-o", str(prof)],
                       check=True, capture_output=True)
        loader.join()
        print(f"load: {result}")
        # The sampled window is ``duration`` of the ``duration + 1`` seconds of load.
        summarise(prof, int(result["requests"] * args.duration / (args.duration + 1)), args.rate)
        print(f"\ncollapsed stacks: {prof}")
    finally:
        for p in reversed(procs):
            p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
