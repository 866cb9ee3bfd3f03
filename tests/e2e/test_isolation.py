"""One caller's huge, PII-dense prompt must not stall anyone else (issue 13, point 2).

Through the real Envoy with its default message timeout (2 s) and body limit (8 MiB): the big
request is inspected in a worker process while small requests from another caller are answered
normally; both succeed. No time bound is asserted (the machine may be loaded): the small
requests must *complete while the big one is still being inspected*.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e

UNIT = "Reach bob.smith@example.com or +1 415 555 0132, cc alice@corp.example.org. "


@pytest.fixture(scope="module")
def iso(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    extra = {"envoy": {"message_timeout_ms": 2000, "max_request_bytes": 8 * 1024 * 1024},
             "inspection": {"offload_bytes": 65536, "workers": 1, "timeout_seconds": 240}}
    with Stack(tmp_path_factory.mktemp("isolation"), parent=stack, extra_config=extra).running() as s:
        yield s


def post(s: Stack, body: bytes, token: str, timeout: float) -> tuple[int, str]:
    req = urllib.request.Request(s.gateway + "/fake/chat/completions", data=body, method="POST",
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def inflight(s: Stack) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{s.ports['admin']}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return next(float(x.split()[-1]) for x in text.splitlines()
                if x.startswith("extproc_offloaded_inspections_inflight "))


def test_a_huge_dense_pii_prompt_does_not_hold_up_other_callers(iso: Stack) -> None:
    s = iso
    text = UNIT * (2_500_000 // len(UNIT))
    big_body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    big: dict[str, Any] = {}

    def send_big() -> None:
        big["status"], big["body"] = post(s, big_body.encode(), s.token("mallory"), 600)
        big["done_at"] = time.monotonic()

    t = threading.Thread(target=send_big)
    t.start()
    deadline = time.monotonic() + 60
    while inflight(s) < 1:  # the big body has reached a worker
        assert t.is_alive() and time.monotonic() < deadline, big
        time.sleep(0.05)

    small_done: list[float] = []
    for i in range(3):
        small = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"hi {i}, bob@example.com"}]})
        status, answer = post(s, small.encode(), s.token("alice"), 60)
        assert status == 200, answer
        small_done.append(time.monotonic())
    # Not queued behind the big one: all answered while it is still being inspected.
    assert inflight(s) >= 1 and t.is_alive()

    t.join(600)
    assert big.get("status") == 200, big
    assert big["done_at"] > max(small_done)
    upstream_bodies = [r.body for r in s.upstream.requests if len(r.body) > 1_000_000]
    assert upstream_bodies, "the big request never reached the upstream"
    assert b"bob.smith@example.com" not in upstream_bodies[-1]  # masked by policy, in the worker
