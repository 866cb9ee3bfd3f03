"""``make bench``: the gateway's overhead, measured as ratios against baselines in the same run.

Scenarios, all with the same load against the same upstream (a second Envoy answering with a
canned chat completion, so the upstream is never the bottleneck), every Envoy with
``--concurrency 1``:

  envoy        Envoy alone routing to the upstream
  noop         Envoy + a do-nothing ext_proc server (bench/noop_extproc.py, same processing mode)
  auth         Envoy + extproc with authentication and credential injection
  auth_unix    ``auth`` with ext_proc on a unix socket and its SO_PEERCRED guard (the sidecar)
  full         auth + the 20-rule ``examples/policy-bench.yaml`` policy without its approval rules
               + a per-user budget + response masking + ``best_effort`` recording
  full_wN      ``full`` with N ext_proc worker processes (N = the machine's cores), one process
               otherwise
  full_no<part>  ``full`` without one part (budget, policy, masking, recording): what it costs

Each at concurrency 1 and 16. Prints requests/s and p50/p99 latency, the ratios against the
baselines and the ext_proc processes' resident memory; writes one JSON per run to
``bench/results/`` (kept in git: the history) and a one-line summary for the README.
Only 127.0.0.1 is ever loaded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extproc.config.envoy import render_envoy  # noqa: E402
from extproc.config.load import load_config  # noqa: E402
from extproc.dev.keys import ensure_dev_issuer, mint_token  # noqa: E402
from extproc.dev.procs import Proc, envoy_binary, free_port, free_ports, start_redis, wait_http, wait_tcp  # noqa: E402

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise our Q3 plan."}]})
CANNED = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Here is a short summary."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
})


def _sse_body(events: int = 100) -> str:
    words = ("Sure, here is the plan. Contact bob@example.com or call +1-983-264-4179 for the details of "
             "the rollout, which starts next week. ").split(" ")
    out = []
    for i in range(events):
        chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": words[i % len(words)] + " "}, "finish_reason": None}]}
        out.append("data: " + json.dumps(chunk) + "\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out)


SSE = _sse_body()


def upstream_envoy(port: int, admin: int) -> dict[str, Any]:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "up", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                             ".HttpConnectionManager",
                    "stat_prefix": "up",
                    "route_config": {"max_direct_response_body_size_bytes": 1 << 20,
                                     "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/v1/sse"},
                        "direct_response": {"status": 200, "body": {"inline_string": SSE}},
                        "response_headers_to_add": [{"header": {"key": "content-type",
                                                                "value": "text/event-stream"}}],
                    }, {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": CANNED}},
                        "response_headers_to_add": [{"header": {"key": "content-type",
                                                                "value": "application/json"}}],
                    }]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        }]},
    }


def start_upstream(work: Path, procs: list[Proc]) -> int:
    """The canned upstream Envoy (added to ``procs``, which stops it); its port."""
    up_port, up_admin = free_ports(2)
    (work / "upstream.yaml").write_text(yaml.safe_dump(upstream_envoy(up_port, up_admin)))
    procs.append(Proc("upstream", [envoy_binary(), "-c", str(work / "upstream.yaml"), "--log-level", "error",
                                   "--use-dynamic-base-id", "--concurrency", "1"], work / "upstream.log").start())
    wait_tcp("127.0.0.1", up_port, 20, procs[-1])
    return up_port


def full_policy() -> dict[str, Any]:
    """The bench policy without its approval rules (a held request is not throughput) and with
    one per-user budget whose limits the benchmark's own load never reaches."""
    pol = yaml.safe_load((REPO / "examples" / "policy-bench.yaml").read_text())["policy"]
    pol["rules"] = [r for r in pol["rules"] if r.get("action") != "require_approval"]
    pol["budgets"] = [{"id": "per-user-requests", "per": "user", "requests": 10**12, "window_seconds": 60,
                       "fail": "open"}]
    return dict(pol)


def gateway_config(work: Path, ports: dict[str, int], upstream: int, redis_url: str, name: str,
                   workers: int = 1) -> Path:
    _, jwks = ensure_dev_issuer(work / "dev")
    cfg: dict[str, Any] = {
        "version": 1,
        "workers": workers,
        "listeners": {k: {"address": "127.0.0.1", "port": ports[k]}
                      for k in ("http", "ext_proc", "admin", "admin_grpc", "envoy_admin")},
        "redis": {"url": redis_url},
        "identity": {"issuers": [{"issuer": "https://extproc.local/dev", "audiences": ["extproc"],
                                  "jwks_file": str(jwks)}]},
        "providers": [{"name": "openai", "api": "openai", "base_url": f"http://127.0.0.1:{upstream}/v1",
                       "prefix": "/openai", "credential": {"env": "BENCH_PROVIDER_KEY"}},
                      {"name": "masked", "api": "openai", "base_url": f"http://127.0.0.1:{upstream}/v1",
                       "prefix": "/masked", "credential": {"env": "BENCH_PROVIDER_KEY"}}],
        "envoy": {"access_log": False},
        "masking": {"responses": {"providers": ["masked"]}},
    }
    if "_unix" in name:  # the sidecar's layout: ext_proc over a unix socket (with the SO_PEERCRED guard)
        cfg["listeners"]["ext_proc"] = {"address": f"unix:{work / 'private' / f'ext_proc-{name}.sock'}"}
    if name.startswith("full"):
        # ``full_no<part>`` leaves one part out: what that part costs (``full_norecording`` ...).
        cfg["policy"] = full_policy()
        if "_nobudget" in name:
            del cfg["policy"]["budgets"]
        if "_nopolicy" in name:
            del cfg["policy"]
        cfg["masking"] = {"responses": {"providers": [] if "_nomasking" in name else ["openai", "masked"]}}
        if "_norecording" not in name:
            cfg["recording"] = {"mode": "best_effort", "spool": {"path": str(work / f"spool-{name}.jsonl")}}
    path = work / f"extproc-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tree_rss_kb(pid: int) -> int:
    """The resident memory of a process and its children (the worker processes)."""
    total = rss_kb(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(tree_rss_kb(int(c)) for c in children)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) and its children, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    return own + sum(tree_cpu_seconds(int(c)) for c in children)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load(port: int, token: str, concurrency: int, duration: float,
         path: str = "/openai/chat/completions") -> dict[str, float]:
    headers = [f"Authorization: Bearer {token}"]
    wrk = shutil.which("wrk")
    if wrk:
        lua = Path(tempfile.mkstemp(suffix=".lua")[1])
        lua.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(BODY)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {token}"\n'
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format("JSON {\\"requests\\":%d,\\"errors\\":%d,\\"rps\\":%f,\\"p50_ms\\":%f,'
            '\\"p99_ms\\":%f}\\n", summary.requests, summary.errors.status + summary.errors.connect + '
            "summary.errors.read + summary.errors.write + summary.errors.timeout, summary.requests / "
            "(summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000))\n"
            "end\n")
        out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "-s", str(lua),
                              f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("JSON "))
        return dict(json.loads(line[5:]))
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "loadgen.py"), "--port", str(port), "--path",
         path, "--body", BODY, "--concurrency", str(concurrency),
         "--duration", str(duration), *[a for h in headers for a in ("--header", h)]],
        capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _drop_stream_cap(node: Any, replace_with: int | None = None) -> None:
    if isinstance(node, dict):
        if "maxConcurrentStreams" in node:
            del node["maxConcurrentStreams"]
            if replace_with is not None:
                node["maxConcurrentStreams"] = replace_with
        for v in node.values():
            _drop_stream_cap(v, replace_with)
    elif isinstance(node, list):
        for v in node:
            _drop_stream_cap(v, replace_with)


def worker_streams(admin_port: int) -> dict[str, float]:
    """How the ext_proc streams spread over the workers (from the aggregated /metrics)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("extproc_worker_streams_total{"):
            out[line.split('"')[1]] = float(line.split()[-1])
    return out


def messages_per_request(admin_port: int) -> dict[str, float]:
    """ext_proc messages per request, by kind (from /metrics): what each request costs in gRPC."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts: dict[str, float] = {}
    requests = 0.0
    for line in text.splitlines():
        if line.startswith("extproc_message_seconds_count{"):
            counts[line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("extproc_requests_total{"):
            requests += float(line.split()[-1])
    return {k: round(v / requests, 2) for k, v in counts.items()} if requests else {}


def cores() -> int:
    from extproc.workers import cpu_limit

    return cpu_limit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per measurement (default 4)")
    ap.add_argument("--rows", default="envoy,noop,auth,auth_unix,full,full_wN",
                    help="comma-separated rows (default: envoy,noop,auth,auth_unix,full,full_wN); "
                         "row#2 repeats a row (interleaved A/B runs)")
    ap.add_argument("--datapath-only", action="store_true", help="skip the masker, injection, approval, tool benches")
    ap.add_argument("--out", default="", help="JSON file (default: bench/results/<UTC time>.json)")
    args = ap.parse_args()
    import logging

    logging.disable(logging.INFO)  # SDKs and servers measured here log every request at INFO

    work = Path(tempfile.mkdtemp(prefix="extproc-bench-"))
    procs: list[Proc] = []
    ncores = cores()
    started = datetime.datetime.now(datetime.UTC)
    results: dict[str, Any] = {
        "time": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "cores": ncores, "os_cpu_count": os.cpu_count(),
        "loadavg_before": list(os.getloadavg()), "duration_s": args.duration,
        "commit": _git_commit(), "loadgen": "wrk" if shutil.which("wrk") else "python", "rows": {},
    }
    env = {**os.environ, "BENCH_PROVIDER_KEY": "sk-bench-" + "x" * 32}
    try:
        redis_url = os.environ.get("REDIS_URL", "")
        if not redis_url:
            rport = free_port()
            procs.append(start_redis(rport, work))
            redis_url = f"redis://127.0.0.1:{rport}/0"
        up_port = start_upstream(work, procs)

        key, _ = ensure_dev_issuer(work / "dev")
        token = mint_token(key.read_text(), subject="bench", groups=["engineering"], ttl_seconds=7200)
        names = ("http", "ext_proc", "admin", "admin_grpc", "envoy_admin")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        wanted = [r.strip().replace("full_wN", f"full_w{ncores}") for r in args.rows.split(",") if r.strip()]

        for label in wanted:
            # ``row#2``: the same row again (interleaved repeats, for A/B comparisons on a noisy machine).
            name = label.split("#", 1)[0]
            workers = int(name.split("_w", 1)[1].split("_", 1)[0]) if "_w" in name else 1
            cfg_path = gateway_config(work, ports, up_port, redis_url, name, workers)
            cfg = load_config(cfg_path, env=env)
            gw_yaml = work / f"gateway-{name}.yaml"
            rendered = render_envoy(cfg, ext_proc=name != "envoy")
            if name.endswith("_nocap"):  # the comparison: workers on SO_REUSEPORT without the stream cap
                _drop_stream_cap(rendered)
            elif "_cap" in name:  # ``_capN``: N streams per connection instead of the rendered cap
                _drop_stream_cap(rendered, int(name.rsplit("_cap", 1)[1]))
            gw_yaml.write_text(yaml.safe_dump(rendered))
            side: Proc | None = None
            if name == "noop":
                side = Proc("noop", [sys.executable, str(REPO / "bench" / "noop_extproc.py"), "--port",
                                     str(ports["ext_proc"])], work / "noop.log").start()
                wait_tcp("127.0.0.1", ports["ext_proc"], 20, side)
            elif name != "envoy":
                launcher = ["-m", "extproc"]
                if name.endswith("_uvloop"):  # the experiment: the same server on uvloop's event loop
                    launcher = ["-c", "import asyncio, sys, uvloop; asyncio.set_event_loop_policy("
                                "uvloop.EventLoopPolicy()); from extproc.cli import main; sys.exit(main())"]
                side = Proc("extproc", [sys.executable, *launcher, "--log-level", "warning", "serve",
                                        "--config", str(cfg_path)], work / f"extproc-{name}.log", env=env,
                            cwd=str(REPO)).start()
                wait_http(f"http://127.0.0.1:{ports['admin']}/readyz", 30, side)
                if workers > 1:
                    time.sleep(1.0)  # the other workers come up beside the first
            gw = Proc("gateway", [envoy_binary(), "-c", str(gw_yaml), "--log-level", "error",
                                  "--use-dynamic-base-id", "--concurrency", "1"],
                      work / f"gateway-{name}.log").start()
            try:
                wait_http(f"http://127.0.0.1:{ports['envoy_admin']}/ready", 20, gw)
                load(ports["http"], token, 16, 1.0)  # warm up (JWKS, token cache, connections)
                row: dict[str, Any] = {}
                for c in (1, 16):
                    pid = side.popen.pid if side is not None and side.popen is not None else None
                    cpu0 = tree_cpu_seconds(pid) if pid else 0.0
                    row[f"c{c}"] = cell = load(ports["http"], token, c, args.duration)
                    if pid and cell["requests"]:
                        # The ext_proc process tree's CPU per request: what decides its throughput
                        # on a core of its own, and much steadier than req/s on a shared machine.
                        cell["cpu_us_per_req"] = round((tree_cpu_seconds(pid) - cpu0) / cell["requests"] * 1e6)
                if name == "auth":
                    # The same SSE answer (~20 KB, 100 events, PII in it) unmasked and masked.
                    for route in ("openai", "masked"):
                        for c in (1, 4):
                            results.setdefault("sse", {})[f"{route}_c{c}"] = load(
                                ports["http"], token, c, args.duration, path=f"/{route}/sse")
                if side is not None and side.popen is not None:
                    row["rss_mb"] = round(tree_rss_kb(side.popen.pid) / 1024, 1)
                if workers > 1:
                    row["streams_per_worker"] = worker_streams(ports["admin"])
                if name not in ("envoy", "noop"):
                    row["messages_per_request"] = messages_per_request(ports["admin"])
                results["rows"][label] = row
                print(f"  measured {label}", file=sys.stderr)
            finally:
                gw.stop()
                if side is not None:
                    side.stop()
        from bench.inprocess import bench_inprocess

        # While the run's Redis is up: the servicer's budgets and records use it.
        results["inprocess"] = bench_inprocess(
            ["auth", "full", "full_nobudget", "full_nopolicy", "full_nomasking", "full_norecording"], redis_url)
    finally:
        for p in reversed(procs):
            p.stop()
    results["loadavg_after"] = list(os.getloadavg())

    rows = results["rows"]
    print()
    print(f"data path overhead (load generator: {results['loadgen']}, {args.duration:.0f}s per cell, "
          f"{ncores} cores, load average {results['loadavg_before'][0]:.1f} before / "
          f"{results['loadavg_after'][0]:.1f} after)")
    print(f"{'scenario':<10} {'c1 rps':>9} {'c1 p50':>8} {'c1 p99':>8} {'c16 rps':>9} {'c16 p50':>8} "
          f"{'c16 p99':>8} {'errors':>7} {'RSS MB':>7} {'CPU us/req c1':>14} {'c16':>6}")
    for name, row in rows.items():
        c1, c16 = row["c1"], row["c16"]
        print(f"{name:<10} {c1['rps']:>9.0f} {c1['p50_ms']:>7.2f}ms {c1['p99_ms']:>7.2f}ms {c16['rps']:>9.0f} "
              f"{c16['p50_ms']:>7.2f}ms {c16['p99_ms']:>7.2f}ms {c1['errors'] + c16['errors']:>7} "
              f"{row.get('rss_mb', '-')!s:>7} {c1.get('cpu_us_per_req', '-')!s:>14} "
              f"{c16.get('cpu_us_per_req', '-')!s:>6}"
              + (f"  streams per worker {row['streams_per_worker']}" if "streams_per_worker" in row else "")
              + (f"  messages/request {row['messages_per_request']}" if "messages_per_request" in row else ""))
    ratios = compute_ratios(rows)
    print()
    for k, v in ratios.items():
        print(f"  {k:<36} {v:7.3f}")
    print("  targets (issue 15): full/noop c16 >= 0.8; full-noop c1 p50 <= 0.7 ms; auth/noop c16 >= 0.95")
    results["summary"] = summary(results, ratios)
    print()
    print("README summary: " + results["summary"])
    sse = results.get("sse")
    if sse:
        size = len(SSE.encode()) / 1e6
        print()
        print(f"masking on the data path (SSE answer of {len(SSE.encode())} bytes, 100 events)")
        for route in ("openai", "masked"):
            r1, r4 = sse[f"{route}_c1"], sse[f"{route}_c4"]
            print(f"  {('unmasked' if route == 'openai' else 'masked'):<9} c1 p50 {r1['p50_ms']:6.2f} ms   "
                  f"c4 {r4['rps'] * size:6.2f} MB/s   errors {r1['errors'] + r4['errors']}")
        added = sse["masked_c1"]["p50_ms"] - sse["openai_c1"]["p50_ms"]
        ratios["masked/unmasked SSE MB/s c4"] = sse["masked_c4"]["rps"] / sse["openai_c4"]["rps"]
        ratios["masking added p50 ms (whole answer)"] = added
        print(f"  masking adds {added:.2f} ms to the whole answer at c1 (an upper bound on time-to-first-token); "
              "target <= 1 ms")

    if "auth_unix" in rows and "auth" in rows:
        guard = bench_peer_guard()
        results["peer_guard_us"] = guard
        print()
        print(f"ext_proc over a unix socket (+ SO_PEERCRED guard) vs TCP: auth_unix/auth c16 "
              f"{rows['auth_unix']['c16']['rps'] / rows['auth']['c16']['rps']:.3f}; peer guard per stream "
              f"{guard['fast_path']} us (no new connection), {guard['scan']} us (a new connection: scan of "
              f"{guard['descriptors']} descriptors)")
    inproc = results["inprocess"]
    print()
    print("CPU per request inside ext_proc without gRPC (bench/inprocess.py): the pure machine, and the servicer "
          "with Redis")
    for row, r in inproc.items():
        print(f"  {row:<18} machine {r['machine_us']:>6} us   servicer {r['servicer_us']:>6} us")
    if args.datapath_only:
        return _write(results, ratios, args.out, started)
    from bench.masking import bench_masker, bench_ttft

    ttft = bench_ttft()
    results["ttft"] = ttft
    print(f"  time to first token, streaming upstream (20 ms/event): unmasked {ttft['fake_ttft_p50_ms']} ms, "
          f"masked {ttft['masked_ttft_p50_ms']} ms: masking adds {ttft['masking_added_ttft_ms']} ms (target <= 1 ms)")

    print()
    print("pure streaming masker, one core (target >= 20 MB/s on sparse prose)")
    results["masker"] = bench_masker()
    for name, row in results["masker"].items():
        print(f"  {name:<26} " + "   ".join(f"{k} {v}" for k, v in row.items()))

    from extproc.inject.bench import bench_inject

    inj = bench_inject(500)
    results["inject"] = inj
    print()
    print(f"sidecar injection: {json.dumps(inj)}  (target p99 < 5 ms)")

    from bench.approvals import bench_approvals

    appr = bench_approvals()
    results["approvals"] = appr
    print()
    print(f"approvals: approve -> upstream p50 {appr['approve_to_upstream_p50_ms']} ms, "
          f"p99 {appr['approve_to_upstream_p99_ms']} ms (target p99 < 50 ms); unrelated request p50 "
          f"{appr['idle_p50_ms']} ms idle vs {appr['with_50_held_p50_ms']} ms with 50 requests held")

    from bench.tools import bench_tools

    tools = bench_tools()
    results["tools"] = tools
    print(f"MCP tools/call through the gateway: p50 {tools['gateway_p50_ms']} ms vs {tools['direct_p50_ms']} ms "
          f"direct (adds {tools['added_p50_ms']} ms); p99 {tools['gateway_p99_ms']} vs {tools['direct_p99_ms']} ms")

    from bench.isolation import bench_isolation

    iso = bench_isolation()
    results["isolation"] = iso
    ratios["isolation small during/idle p50"] = iso["small_during/idle p50"]
    print()
    print(f"isolation: a {iso['big_bytes'] / 1e6:.1f} MB dense-PII prompt (status {iso['big_status']}, "
          f"{iso['big_seconds']} s) vs another caller's small requests: p50 {iso['small_idle_p50_ms']} ms idle, "
          f"{iso['small_during_p50_ms']} ms during (+{iso['small_added_p50_ms']} ms, n={iso['small_during_n']}), "
          f"errors {iso['small_errors']}  (target: +100 ms at most, no errors)")

    return _write(results, ratios, args.out, started)


def bench_peer_guard(n: int = 300) -> dict[str, float]:
    """The SO_PEERCRED guard's own cost, in this process (4 connections, 40 other sockets)."""
    import socket
    import time

    from extproc.datapath.uds import PeerGuard

    path = tempfile.mkdtemp(prefix="extproc-guard-") + "/s.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen(8)
        clients = [socket.socket(socket.AF_UNIX) for _ in range(4)]
        for c in clients:
            c.connect(path)
        held = [srv.accept()[0] for _ in clients] + [socket.socket() for _ in range(40)] + clients
        guard = PeerGuard(path, frozenset({os.getuid()}))
        guard.check()
        t0 = time.perf_counter()
        for _ in range(n):
            guard.check()
        t1 = time.perf_counter()
        for _ in range(n):
            guard._scan()
        t2 = time.perf_counter()
        out = {"fast_path": round((t1 - t0) / n * 1e6, 1), "scan": round((t2 - t1) / n * 1e6, 1),
               "descriptors": len(os.listdir("/proc/self/fd"))}
        for s in held:
            s.close()
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    return out




def _write(results: dict[str, Any], ratios: dict[str, float], out_arg: str, started: datetime.datetime) -> int:
    results["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    out = Path(out_arg) if out_arg else REPO / "bench" / "results" / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {out}")
    return 0


def compute_ratios(rows: dict[str, Any]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    noop = rows.get("noop")
    if noop is None:
        return ratios
    if "envoy" in rows:
        ratios["noop/envoy c16 throughput"] = noop["c16"]["rps"] / rows["envoy"]["c16"]["rps"]
    for name, row in rows.items():
        if name in ("envoy", "noop"):
            continue
        ratios[f"{name}/noop c16 throughput"] = row["c16"]["rps"] / noop["c16"]["rps"]
        ratios[f"{name}-noop c1 added p50 ms"] = row["c1"]["p50_ms"] - noop["c1"]["p50_ms"]
        if "cpu_us_per_req" in row["c16"] and "cpu_us_per_req" in noop["c16"]:
            # Throughput on a dedicated core, from CPU per request (steadier than req/s here).
            ratios[f"{name}/noop c16 by ext_proc CPU"] = noop["c16"]["cpu_us_per_req"] / row["c16"]["cpu_us_per_req"]
    return ratios


def summary(results: dict[str, Any], ratios: dict[str, float]) -> str:
    """One line for the README's benchmark section."""
    rows = results["rows"]
    parts = []
    for name in rows:
        if name in ("envoy", "noop"):
            continue
        parts.append(f"{name} {ratios[f'{name}/noop c16 throughput']:.2f}x the do-nothing ext_proc at c=16 "
                     f"(+{ratios[f'{name}-noop c1 added p50 ms']:.2f} ms p50 at c=1)")
    noop = rows.get("noop")
    head = (f"{results['time'][:10]}, {results['cores']} cores, load {results['loadavg_before'][0]:.1f}: "
            + (f"do-nothing ext_proc {noop['c16']['rps']:.0f} req/s at c=16; " if noop else ""))
    return head + "; ".join(parts)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
