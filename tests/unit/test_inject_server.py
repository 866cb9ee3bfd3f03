"""The HTTPS adapter: a real server on 127.0.0.1 with a throwaway certificate."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.inject.bench import bench_inject, sample_review, self_signed
from extproc.inject.server import MAX_BODY_BYTES, InjectorServer, make_server, register
from extproc.inject.settings import InjectSettings


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
def server(tls: tuple[Path, Path]) -> Iterator[InjectorServer]:
    srv = make_server(str(tls[0]), str(tls[1]), "127.0.0.1", 0, InjectSettings())
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


def connect(srv: InjectorServer, cafile: Path) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(cafile))
    return http.client.HTTPSConnection("127.0.0.1", srv.server_address[1], context=ctx, timeout=10)


def test_mutate_over_https(server: InjectorServer, tls: tuple[Path, Path]) -> None:
    conn = connect(server, tls[0])
    for i in range(3):  # keep-alive: several reviews on one connection
        conn.request(
            "POST",
            "/mutate",
            body=json.dumps(sample_review(f"u-{i}")),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
        assert doc["response"]["uid"] == f"u-{i}" and doc["response"]["allowed"] is True
        assert json.loads(base64.b64decode(doc["response"]["patch"]))
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [
        ("GET", "/nope", {}, None, 404),
        ("POST", "/validate", {"Content-Type": "application/json"}, b"{}", 404),
        ("POST", "/mutate", {"Content-Type": "text/plain"}, b"{}", 415),
        ("POST", "/mutate", {"Content-Type": "application/json"}, b"not json", 400),
        ("POST", "/mutate", {"Content-Type": "application/json"}, b'{"kind": "AdmissionReview"}', 400),
    ],
)
def test_http_errors(
    server: InjectorServer,
    tls: tuple[Path, Path],
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
) -> None:
    conn = connect(server, tls[0])
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    assert resp.status == status
    assert "error" in json.loads(resp.read())


def test_body_size_limit(server: InjectorServer, tls: tuple[Path, Path]) -> None:
    conn = connect(server, tls[0])
    conn.putrequest("POST", "/mutate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()  # the body is never sent: the server answers from the headers
    resp = conn.getresponse()
    assert resp.status == 413


def test_plain_http_client_is_refused(server: InjectorServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse().read()


def test_certificate_rotation_is_picked_up(
    server: InjectorServer, tls: tuple[Path, Path], tmp_path: Path
) -> None:
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    new_cert, new_key = self_signed(new_dir)
    time.sleep(1.1)  # the reload check runs at most once a second
    shutil.copy(new_key, tls[1])
    shutil.copy(new_cert, tls[0])
    deadline = time.monotonic() + 5
    while True:
        try:
            conn = connect(server, new_cert)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            break
        except ssl.SSLError:
            assert time.monotonic() < deadline, "new certificate never served"
            time.sleep(0.2)


def test_register_adds_the_inject_subcommand(tls: tuple[Path, Path]) -> None:
    parser = argparse.ArgumentParser(prog="extproc")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["inject", "--tls-cert", str(tls[0]), "--tls-key", str(tls[1]), "--settings", "s.yaml"]
    )
    assert args.command == "inject" and args.port == 8443 and callable(args.func)
    missing = parser.parse_args(["inject", "--tls-cert", "/nonexistent", "--tls-key", "/nonexistent"])
    assert missing.func(missing) == 2  # a clear error, not a traceback


def test_bench_inject_reports_percentiles() -> None:
    result = bench_inject(20)
    assert result["n"] == 20
    for k in ("pure_p50_ms", "pure_p99_ms", "https_p50_ms", "https_p99_ms"):
        assert result[k] > 0
    assert result["pure_p50_ms"] <= result["pure_p99_ms"]
