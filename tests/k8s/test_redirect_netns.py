"""The redirect init container, for real: the injected pod with ``extproc.io/redirect``
runs in its own network namespace (:mod:`tests.k8s.podrunner`), the init container's exact
script installs its iptables rules (Debian's iptables, as root with NET_ADMIN/NET_RAW only,
on a read-only root with /run from the emptyDir), and processes of the pod then try to
reach the provider's addresses, IPv4 and IPv6, as the app's uid and as the sidecar's."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.podrunner import ContainerFailed, ImageRoot, PodNetwork, PodRunner, require_root
from tests.k8s.test_pod_runs import (
    APP_IMAGE,
    IMAGE,
    ISSUER,
    OPENAI_KEY,
    app_pod,
    host_image,
    injected,
    runner,
    settings,
)
from tests.k8s.world import World, world

SIDECAR_UID = 47001
APP_UID = 1000

PROBE = r"""
import http.client, json, socket, ssl, sys
host4, host6, token = sys.argv[1], sys.argv[2], sys.argv[3]

def tls(host):
    try:
        s = socket.create_connection((host, 443), timeout=5)
    except OSError as e:
        return "connect-failed:" + type(e).__name__
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with ctx.wrap_socket(s, server_hostname="api.openai.com") as t:
            return "tls-ok" if t.getpeercert(binary_form=True) else "tls-no-cert"
    except (ssl.SSLError, OSError) as e:
        return "tls-failed:" + type(e).__name__

def plain(host):
    try:
        c = http.client.HTTPConnection(host, 80, timeout=20)
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        c.request("POST", "/openai/chat/completions", body=body,
                  headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        r = c.getresponse()
        return "%d %s" % (r.status, r.read().decode()[:300])
    except OSError as e:
        return "connect-failed:" + type(e).__name__

print(json.dumps({"tls4": tls(host4), "tls6": tls(host6), "http4": plain(host4), "http6": plain(host6)}))
"""


LEGACY = (
    "update-alternatives --quiet --set iptables /usr/sbin/iptables-legacy",
    "update-alternatives --quiet --set ip6tables /usr/sbin/ip6tables-legacy",
    # an image has no lock file yet (the host running these tests may have one in /run)
    "rm -f /run/xtables.lock",
)


def images(backend: str) -> dict[str, ImageRoot]:
    """The host as the image, with Debian's default (nft) or the legacy iptables backend;
    legacy takes its lock in /run/xtables.lock, which needs the writable /run."""
    base = host_image()
    img = replace(base, setup=base.setup + (LEGACY if backend == "legacy" else ()))
    return {IMAGE: img, APP_IMAGE: img}


@pytest.fixture(params=["nft", "legacy"])
def redirected(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[PodRunner, PodNetwork, World, dict[str, Any]]]:
    require_root()
    if shutil.which("iptables") is None or shutil.which("ip6tables") is None:
        raise RuntimeError("iptables is missing: run tests/k8s/setup-host.sh (apt-get install iptables)")
    with PodNetwork() as net, world(net.host_ip, tmp_path, ISSUER, host_ip6=net.host_ip6) as w:
        pod_in = app_pod(["sleep", "3600"], uid=APP_UID)
        pod_in["metadata"]["annotations"] = {"extproc.io/redirect": "true"}
        pod = injected(settings(), pod_in)
        assert pod["spec"]["initContainers"][0]["name"] == "extproc-redirect"
        pr = runner(pod, w, net, tmp_path / "pod", {"openai": OPENAI_KEY}, images=images(request.param))
        try:
            started = pr.start_pod()
            yield pr, net, w, started
        finally:
            pr.stop()


def probe(pr: PodRunner, started: dict[str, Any], net: PodNetwork, w: World, uid: int) -> dict[str, str]:
    token = w.token("system:serviceaccount:team-a:default", "extproc")
    rc, out = pr.exec_out(started["app"], pr.container("app"),
                          ["python3", "-c", PROBE, net.host_ip, net.host_ip6, token], timeout=60, uid=uid)
    assert rc == 0, out
    got: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    return got


def test_app_traffic_to_the_provider_is_governed_or_refused(
    redirected: tuple[PodRunner, PodNetwork, World, dict[str, Any]],
) -> None:
    pr, net, w, started = redirected
    got = probe(pr, started, net, w, APP_UID)
    # Plain HTTP to the provider's address lands on the sidecar and is governed: the
    # provider sees the provider key, never the caller's token.
    assert got["http4"].startswith("200 ") and "Hello from the fake." in got["http4"], got
    (seen,) = w.upstream.requests
    assert seen.headers["authorization"] == "Bearer " + OPENAI_KEY.decode()
    # Direct HTTPS lands on Envoy's plain-HTTP listener: the handshake fails.
    assert got["tls4"].startswith("tls-failed"), got
    # IPv6: Envoy listens on IPv4 only, so IPv6 to the governed ports is refused outright.
    assert got["tls6"] == "connect-failed:ConnectionRefusedError", got
    assert got["http6"] == "connect-failed:ConnectionRefusedError", got
    assert len(w.upstream.requests) == 1  # nothing else reached the provider


def test_the_sidecar_uid_goes_out_and_is_the_documented_exception(
    redirected: tuple[PodRunner, PodNetwork, World, dict[str, Any]],
) -> None:
    """The sidecar's own egress is not redirected (that is how Envoy reaches the provider);
    so an app container running as the sidecar's uid escapes the redirect."""
    pr, net, w, started = redirected
    got = probe(pr, started, net, w, SIDECAR_UID)
    assert got["tls4"] == "tls-ok" and got["tls6"] == "tls-ok", got
    # Plain HTTP goes straight to the provider's port 80, ungoverned (no key added).
    assert got["http4"].startswith("200 ")
    assert all(r.headers.get("authorization") != "Bearer " + OPENAI_KEY.decode() for r in w.upstream.requests)


def test_legacy_iptables_needs_the_writable_run(tmp_path: Path) -> None:
    """Without the /run emptyDir (the spec before issue 14) the legacy backend cannot take
    its lock on the read-only root and the init container fails: the pod never starts."""
    require_root()
    pod_in = app_pod(["sleep", "3600"], uid=APP_UID)
    pod_in["metadata"]["annotations"] = {"extproc.io/redirect": "true"}
    pod = injected(settings(), pod_in)
    redirect = pod["spec"]["initContainers"][0]
    del redirect["volumeMounts"]
    with PodNetwork() as net, world(net.host_ip, tmp_path, ISSUER) as w:
        pr = runner(pod, w, net, tmp_path / "pod", {"openai": OPENAI_KEY}, images=images("legacy"))
        try:
            pr.prepare_volumes()
            with pytest.raises(ContainerFailed) as failed:
                pr.run_to_completion(redirect)
            assert "xtables.lock" in str(failed.value)
        finally:
            pr.stop()
