"""The sidecar's internals are not the app's: ext_proc and Envoy's admin on unix sockets in a
private directory, readiness and stats on a read-only listener, the real Envoy and ext_proc."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sidecar(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("sidecar"), parent=stack, unix=True).running() as s:
        yield s


def http(method: str, url: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_requests_flow_over_the_unix_socket(sidecar: Stack) -> None:
    s = sidecar
    c = openai.OpenAI(api_key=s.token(), base_url=s.gateway + "/fake", max_retries=0, timeout=30)
    out = c.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}])  # type: ignore[arg-type]
    assert out.parse().choices[0].message.content
    assert s.upstream.requests[-1].headers["authorization"] == f"Bearer {s.credential}"
    cfg = json.loads(json.dumps(s.config()))
    assert cfg["listeners"]["ext_proc"]["address"].startswith("unix:")


def test_the_sockets_are_private_files(sidecar: Stack) -> None:
    ext = sidecar.private / "ext_proc.sock"
    admin = sidecar.private / "envoy_admin.sock"
    assert stat.S_ISSOCK(os.stat(ext).st_mode) and stat.S_IMODE(os.stat(ext).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(admin).st_mode) and stat.S_IMODE(os.stat(admin).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sidecar.private).st_mode) & 0o007 == 0  # others cannot even look in


def test_the_probe_listener_serves_readiness_and_stats_and_nothing_else(sidecar: Stack) -> None:
    base = f"http://127.0.0.1:{sidecar.ports['envoy_probe']}"
    status, body = http("GET", base + "/ready")
    assert status == 200 and body.strip() == b"LIVE"
    status, body = http("GET", base + "/stats/prometheus")
    assert status == 200 and b"envoy_cluster_upstream_rq" in body
    for method, path in [("POST", "/quitquitquit"), ("GET", "/quitquitquit"), ("POST", "/drain_listeners"),
                         ("POST", "/runtime_modify?x=1"), ("POST", "/logging?level=trace"), ("GET", "/config_dump"),
                         ("POST", "/ready"), ("POST", "/stats/prometheus"), ("GET", "/ready/../quitquitquit"),
                         ("GET", "//quitquitquit"), ("POST", "/healthcheck/fail")]:
        status, _ = http(method, base + path)
        assert status == 404, (method, path, status)
    assert http("GET", base + "/ready")[0] == 200  # still serving: nothing above reached the admin
