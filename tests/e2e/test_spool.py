"""Redis going away and coming back must not cost requests (issue 13, point 4).

A replica with a real redis-server of its own, stopped and started again. In ``required`` mode
requests fail closed while Redis is away, answers streaming at the time are completed from the
spool, and from the moment the gateway sees Redis again no request fails. In ``best_effort``
mode 2,000 entries are spooled during the outage and flushed in the background after it while
requests keep being served, and every one of them reaches Redis.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import yaml

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sp(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("spool")
    extra = {"recording": {"mode": "required", "auditors": {"groups": ["auditors"]},
                           "spool": {"path": str(work / "spool.jsonl"), "max_bytes": 64 << 20}},
             # Envoy's default: a request waiting on a flush would be cut at 2 s (504).
             "envoy": {"message_timeout_ms": 2000, "max_request_bytes": 1024 * 1024}}
    with Stack(work, parent=stack, own_redis=True, extra_config=extra).running() as s:
        yield s


def post(s: Stack, token: str, content: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    c = http.client.HTTPConnection("127.0.0.1", s.ports["http"], timeout=60)
    try:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
        c.request("POST", "/fake/chat/completions", body=body,
                  headers={"authorization": f"Bearer {token}", "content-type": "application/json", **(headers or {})})
        r = c.getresponse()
        text = r.read().decode()
        return r.status, r.getheader("x-request-id") or "", text
    finally:
        c.close()


def readyz(s: Stack) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.ports['admin']}/readyz", timeout=5) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        doc = json.loads(exc.read())
    return doc


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def entries(s: Stack) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(s.redis_url)
    return [json.loads(f[b"entry"]) for _, f in r.xrange("extproc:records")]


def set_mode(s: Stack, mode: str) -> None:
    cfg = yaml.safe_load(s.config_path.read_text())
    cfg["recording"]["mode"] = mode
    s.config_path.write_text(yaml.safe_dump(cfg))
    s.stop_extproc()
    s.start_extproc()


class Traffic:
    """Requests sent back to back from a few threads until stopped; every outcome kept."""

    def __init__(self, s: Stack, token: str, threads: int = 2) -> None:
        self.s, self.token = s, token
        self.results: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            status, _, text = post(self.s, self.token, f"traffic {n}-{i}")
            self.results.append((time.monotonic(), status, text[:200]))
            i += 1

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def test_required_mode_serves_again_at_once_and_loses_no_completion(sp: Stack) -> None:
    s = sp
    set_mode(s, "required")
    token = s.token("streamer")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        # Ten answers streaming slowly while Redis goes away: their starts are written, their
        # completions can only be spooled.
        slow = [pool.submit(post, s, token, f"stream {i}", {"x-fake-mode": "sse", "x-fake-delay-ms": "300"})
                for i in range(10)]
        wait_for(lambda: len([r for r in s.upstream.requests if b"stream " in r.body]) >= 10, 30, "streams began")
        s.procs["redis"].stop()
        streamed = [f.result(60) for f in slow]
    assert [st for st, _, _ in streamed] == [200] * 10
    status, _, text = post(s, token, "while redis is away")
    assert status == 503 and json.loads(text)["error"]["code"] == "recording_unavailable"  # fails closed
    assert readyz(s)["recording"]["spool_pending"] >= 10

    s.restart_redis()
    wait_for(lambda: readyz(s)["recording"]["redis"] == "up", 30, "the gateway sees Redis again")
    with Traffic(s, s.token("after-required")) as traffic:
        wait_for(lambda: readyz(s)["recording"]["spool_pending"] == 0, 60, "the spool drained")
        time.sleep(0.5)
    assert traffic.results and all(st == 200 for _, st, _ in traffic.results), \
        [r for r in traffic.results if r[1] != 200][:3]
    completes = {e["request_id"] for e in entries(s) if e["kind"] == "complete"}
    assert {rid for _, rid, _ in streamed} <= completes  # every forwarded answer's completion


def test_best_effort_flushes_2000_spooled_entries_in_the_background(sp: Stack) -> None:
    s = sp
    set_mode(s, "best_effort")
    token = s.token("spooler")
    s.procs["redis"].stop()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            sent = list(pool.map(lambda i: post(s, token, f"offline {i}"), range(1000)))
        assert all(st == 200 for st, _, _ in sent)
        # Records are written off the request path (the last completions a few ms after their
        # answers): every entry reaches the spool, not necessarily before the last answer.
        wait_for(lambda: readyz(s)["recording"]["spool_pending"] >= 2000, 30, "every entry spooled")
    finally:
        s.restart_redis()
    with Traffic(s, s.token("after-best-effort")) as traffic:
        wait_for(lambda: readyz(s)["recording"]["spool_pending"] == 0, 120, "the spool drained")
        time.sleep(0.5)
    failed = [r for r in traffic.results if r[1] != 200]
    assert traffic.results and not failed, failed[:3]
    got = entries(s)
    want = {rid for _, rid, _ in sent}
    for kind in ("start", "complete"):
        assert {e["request_id"] for e in got if e["kind"] == kind} >= want, kind
    assert len([e for e in got if e["request_id"] in want]) == 2000  # each exactly once
