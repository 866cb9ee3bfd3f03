"""``workers: 2``: the ext_proc server runs as two processes behind one port. Envoy's streams
reach both, a configuration change reaches both, and ``/metrics`` adds both up."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("workers"), parent=stack, extra_config={"workers": 2}).running() as s:
        _wait_for_workers(s, 2)
        yield s


def _metrics(s: Stack) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{s.ports['admin']}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _samples(text: str, name: str) -> dict[str, float]:
    """``labels -> value`` for one metric family's samples."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def _wait_for_workers(s: Stack, n: int) -> None:
    """Both workers log that they serve (the second may come up just after /readyz answers)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = s.procs["extproc"].output(200_000)
        if all(f"(worker {i})" in log for i in range(n)):
            return
        time.sleep(0.1)
    raise AssertionError(s.logs_text())


def _chat(s: Stack, token: str, text: str) -> int:
    """One chat completion through the gateway; its HTTP status."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(s.gateway + "/fake/chat/completions", data=body, method="POST",
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_streams_spread_over_workers_and_metrics_add_up(two: Stack) -> None:
    token = two.token()
    before = _samples(_metrics(two), "extproc_requests_total")
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: _chat(two, token, f"hello {i}"), range(96)))
    assert codes == [200] * 96
    # Streams are accounted when they close, just after the caller has its answer.
    deadline = time.monotonic() + 10
    while True:
        text = _metrics(two)
        seen = sum(_samples(text, "extproc_requests_total").values()) - sum(before.values())
        if seen >= 96 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    per_worker = _samples(text, "extproc_worker_streams_total")
    assert set(per_worker) == {'{worker="0"}', '{worker="1"}'}, per_worker
    assert all(v > 0 for v in per_worker.values()), per_worker  # both processes served streams
    after = _samples(text, "extproc_requests_total")
    # The aggregate counts every request once, whichever worker handled it. (By outcome: a
    # stream Envoy resets before its last message reaches ext_proc is counted "incomplete"
    # although the caller had its answer; rare, and not what this test is about.)
    assert sum(after.values()) - sum(before.values()) == 96, after
    assert sum(per_worker.values()) >= 96


def test_a_configuration_change_reaches_every_worker(two: Stack) -> None:
    token = two.token()
    assert _chat(two, token, "tell me about kestrel nine") == 200
    cfg = yaml.safe_load(two.config_path.read_text())
    cfg["policy"]["rules"].insert(0, {"id": "no-kestrel", "match": {"content": {"keywords": ["kestrel nine"]}},
                                      "action": "block", "message": "Kestrel is confidential."})
    two.config_path.write_text(yaml.safe_dump(cfg))
    deadline = time.monotonic() + 20
    applied = 0.0
    while time.monotonic() < deadline:
        applied = _samples(_metrics(two), "extproc_config_reloads_total").get('{result="applied"}', 0.0)
        if applied >= 2:
            break
        time.sleep(0.2)
    assert applied == 2, "both workers reload the changed file"
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: _chat(two, token, f"kestrel nine {i}"), range(48)))
    assert codes == [403] * 48  # whichever worker answers, it runs the new policy
    per_worker = _samples(_metrics(two), "extproc_worker_streams_total")
    assert all(v > 0 for v in per_worker.values())


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(c) for c in fh.read().split()]


def test_a_worker_that_dies_is_started_again(two: Stack) -> None:
    import os
    import signal

    sup = two.procs["extproc"].popen
    assert sup is not None
    before = _children(sup.pid)
    assert len(before) == 2
    os.kill(before[1], signal.SIGKILL)
    deadline = time.monotonic() + 20
    now = before
    while time.monotonic() < deadline:
        now = _children(sup.pid)
        if len(now) == 2 and before[1] not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2 and before[1] not in now and before[0] in now
    _wait_for_workers(two, 2)
    time.sleep(1.0)  # the new worker binds the shared port
    token = two.token()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: _chat(two, token, f"after restart {i}"), range(32)))
    assert codes == [200] * 32


def test_on_a_unix_socket_each_worker_has_its_own_and_envoy_uses_both(
        stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The sidecar's layout: ext_proc on a unix socket. Sockets cannot be shared like a port, so
    worker i listens on ``<path>.w<i>`` (the first on the path itself), each with the peer check,
    and the rendered Envoy cluster has one endpoint per worker."""
    with Stack(tmp_path_factory.mktemp("workers-unix"), parent=stack, unix=True,
               extra_config={"workers": 2}).running() as s:
        _wait_for_workers(s, 2)
        sock = s.private / "ext_proc.sock"
        assert sock.is_socket() and (s.private / "ext_proc.sock.w1").is_socket()
        assert oct((s.private / "ext_proc.sock.w1").stat().st_mode & 0o777) == "0o660"
        token = s.token()
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda i: _chat(s, token, f"hello {i}"), range(64)))
        assert codes == [200] * 64
        deadline = time.monotonic() + 10
        per_worker: dict[str, float] = {}
        while time.monotonic() < deadline:
            per_worker = _samples(_metrics(s), "extproc_worker_streams_total")
            if sum(per_worker.values()) >= 64:
                break
            time.sleep(0.1)
        assert set(per_worker) == {'{worker="0"}', '{worker="1"}'}, per_worker
        assert all(v > 0 for v in per_worker.values()), per_worker  # Envoy balances over both sockets
