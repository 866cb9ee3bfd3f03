"""Latency of the sidecar injector: the pure decision, and a full HTTPS round trip.

``bench_inject(n)`` returns p50/p99 in milliseconds for both, measured on a typical
two-container pod; the HTTPS numbers use one keep-alive connection to a server on
127.0.0.1 with a throwaway self-signed certificate.
"""

from __future__ import annotations

import http.client
import json
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from extproc import certs
from extproc.inject.patch import handle_admission
from extproc.inject.server import make_server
from extproc.inject.settings import InjectSettings

__all__ = ["bench_inject", "sample_review", "self_signed"]


def sample_review(uid: str = "bench-0000") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "dryRun": False,
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "agent-", "labels": {"app": "agent"}, "annotations": {"a": "b"}},
                "spec": {
                    "containers": [
                        {
                            "name": "agent",
                            "image": "example/agent:1",
                            "env": [{"name": "LOG", "value": "info"}],
                        },
                        {"name": "metrics", "image": "example/metrics:1"},
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write a throwaway self-signed certificate for ``host``; returns (cert, key) paths."""
    cert_pem, key_pem = certs.self_signed([host], common_name=host, days=1)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return cert_path, key_path


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_inject(n: int = 1000, settings: InjectSettings | None = None) -> dict[str, Any]:
    settings = settings or InjectSettings()
    body = json.dumps(sample_review()).encode()

    pure: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _doc = handle_admission(body, settings)
        pure.append((time.perf_counter() - t0) * 1000)
        assert status == 200

    https: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(Path(tmp))
        server = make_server(str(cert), str(key), "127.0.0.1", 0, settings)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            ctx = ssl.create_default_context(cafile=str(cert))
            conn = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=ctx, timeout=10)
            headers = {"Content-Type": "application/json"}
            for _ in range(n):
                t0 = time.perf_counter()
                conn.request("POST", "/mutate", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                https.append((time.perf_counter() - t0) * 1000)
                assert resp.status == 200
            conn.close()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    return {
        "n": n,
        "pure_p50_ms": round(statistics.median(pure), 4),
        "pure_p99_ms": round(_pct(pure, 0.99), 4),
        "https_p50_ms": round(statistics.median(https), 4),
        "https_p99_ms": round(_pct(https, 0.99), 4),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(bench_inject(500), indent=2))
