"""The injected pod, run for real: the pod spec the webhook emits, its containers started as
local processes by :mod:`tests.k8s.podrunner` (kubelet's order, users, mounts, modes), the
shipped tenant ConfigMap as the config, and a request from the app container answered
through the sidecars. The outside world (API server JWKS, provider, Redis, DNS) is
:mod:`tests.k8s.world`."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.inject.patch import apply_json_patch, handle_admission
from extproc.inject.settings import InjectSettings, parse_settings
from tests.k8s.kustomize import build
from tests.k8s.podrunner import (
    ContainerFailed,
    ImageRoot,
    PodNetwork,
    PodRunner,
    Sources,
    materialise,
    readable_by,
    require_root,
    supplemental_groups,
)
from tests.k8s.world import World, world

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/extproc/extproc:0.1.0"
APP_IMAGE = "example.com/app:1"
#: EKS-style issuer: the token issuer is set per overlay (EXTPROC_TOKEN_ISSUER), not assumed.
ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
OPENAI_KEY = b"sk-podrunner-openai-0123456789"

APP = """
import json, os, sys, urllib.error, urllib.request
token = open(os.environ["EXTPROC_TOKEN_FILE"]).read().strip()
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", data=body,
                             headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print("STATUS", r.status, "BODY", r.read().decode())
except urllib.error.HTTPError as e:
    print("STATUS", e.code, "BODY", e.read().decode())
"""


def host_image() -> ImageRoot:
    """The host stands in for the extproc image: the same contract (extproc, envoy, python3
    on PATH). The venv's interpreter lives under /root, made traversable in the overlay."""
    return ImageRoot(
        path=f"{ROOT / '.venv' / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        setup=("chmod o+x /root",),
    )


def settings(**extra: Any) -> InjectSettings:
    data = yaml.safe_load((ROOT / "k8s/base/injector/settings.yaml").read_text())
    data["extproc_env"] = [{"name": "EXTPROC_TOKEN_ISSUER", "value": ISSUER}]  # pinned, as an overlay may
    data.update(extra)
    return parse_settings(data)


def injected(s: InjectSettings, pod: dict[str, Any]) -> dict[str, Any]:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "podrunner-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": pod,
        },
    }
    status, doc = handle_admission(json.dumps(review).encode(), s)
    assert status == 200 and doc["response"]["allowed"], doc
    import base64

    patch = json.loads(base64.b64decode(doc["response"]["patch"]))
    out: dict[str, Any] = apply_json_patch(pod, patch)
    return out


def app_pod(command: list[str], uid: int = 1000) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "team-a"},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": APP_IMAGE,
                    "command": command,
                    "securityContext": {"runAsUser": uid, "runAsGroup": uid, "runAsNonRoot": True},
                }
            ]
        },
    }


def tenant_config_map() -> dict[str, str]:
    (cm,) = [o for o in build(ROOT / "k8s/tenant") if o["kind"] == "ConfigMap"]
    data: dict[str, str] = cm["data"]
    return data


def sources(w: World, provider_keys: Mapping[str, bytes]) -> Sources:
    def token(audience: str | None, ttl: int) -> str:
        return w.token("system:serviceaccount:team-a:default", audience or "https://kubernetes.default.svc", ttl)

    return Sources(
        config_maps={"extproc-config": tenant_config_map(), "kube-root-ca.crt": {"ca.crt": w.ca_pem}},
        secrets={"extproc-provider-keys": dict(provider_keys)},
        token=token,
    )


@pytest.fixture
def pod_env(tmp_path: Path) -> Iterator[tuple[PodNetwork, World]]:
    require_root()
    with PodNetwork() as net, world(net.host_ip, tmp_path, ISSUER) as w:
        yield net, w


def runner(
    pod: dict[str, Any],
    w: World,
    net: PodNetwork,
    work: Path,
    keys: Mapping[str, bytes],
    images: Mapping[str, ImageRoot] | None = None,
) -> PodRunner:
    return PodRunner(
        pod, sources(w, keys), work, net,
        images=images or {IMAGE: host_image(), APP_IMAGE: host_image()},
        hosts=w.hosts,
        extra_files={"/etc/ssl/certs/ca-certificates.crt": w.trust_store()},
    )


def wait_exit(r: Any, timeout: float = 60) -> str:
    r.popen.wait(timeout)
    out: str = r.output()
    return out


def test_injected_pod_serves_a_governed_request(pod_env: tuple[PodNetwork, World], tmp_path: Path) -> None:
    net, w = pod_env
    pod = injected(settings(), app_pod(["python3", "-c", APP]))
    pr = runner(pod, w, net, tmp_path / "pod", {"openai": OPENAI_KEY, "anthropic": b"sk-ant-podrunner"})
    try:
        started = pr.start_pod()
        out = wait_exit(started["app"])
        assert "STATUS 200" in out, out + pr.logs()
        assert "Hello from the fake." in out
        # Governed: the provider saw the provider key, never the caller's token.
        (seen,) = w.upstream.requests
        assert seen.path == "/v1/chat/completions"
        assert seen.headers["authorization"] == "Bearer " + OPENAI_KEY.decode()
        # The JWKS came from the API server, with the sidecar's own API token.
        assert "/openid/v1/jwks" in w.jwks_requests
        # Readiness and liveness reach the admin listener at the pod IP, as kubelet does.
        server = pr.container("extproc-server")
        assert pr.probe(started["extproc-server"], server, server["readinessProbe"])
        assert pr.probe(started["extproc-server"], server, server["livenessProbe"])
        # Envoy was started by `extproc envoy run`: the process is Envoy itself.
        cmdline = Path(f"/proc/{started['extproc-envoy'].popen.pid}/cmdline").read_bytes().split(b"\0")
        assert Path(cmdline[0].decode()).name == "envoy", cmdline
        assert b"-c" in cmdline and b"/etc/extproc/envoy.yaml" in cmdline
    finally:
        pr.stop()


def test_redis_outage_keeps_the_pod_ready_and_fails_closed(
    pod_env: tuple[PodNetwork, World], tmp_path: Path
) -> None:
    """Readiness does not depend on Redis; /readyz and /metrics say Redis is down."""
    net, w = pod_env
    pod = injected(settings(), app_pod(["sleep", "3600"]))
    pr = runner(pod, w, net, tmp_path / "pod", {"openai": OPENAI_KEY})
    try:
        assert w.redis is not None
        w.redis.stop()
        started = pr.start_pod()  # the startup probe passes without Redis
        server = pr.container("extproc-server")
        assert pr.probe(started["extproc-server"], server, server["readinessProbe"])
        url = f"http://{net.pod_ip}:{server['ports'][0]['containerPort']}"
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                detail = json.loads(r.read())
            if detail["redis"] == "down" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert detail["status"] == "ready" and detail["redis"] == "down", detail
        assert detail["credentials"] == {"openai": "ok", "anthropic": "missing"}
        try:
            urllib.request.urlopen(url + "/readyz?require=redis", timeout=5)
            raise AssertionError("readyz?require=redis answered 200 with Redis down")
        except urllib.error.HTTPError as e:
            assert e.code == 503
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            assert "extproc_redis_up 0.0" in r.read().decode()
    finally:
        pr.stop()


def test_unreadable_provider_key_stops_the_sidecar_with_a_clear_line(
    pod_env: tuple[PodNetwork, World], tmp_path: Path
) -> None:
    """The old 0440 mode, without fsGroup, leaves the key root:root 0440: the sidecar must
    refuse to start, saying why, instead of serving 503s behind a green probe."""
    net, w = pod_env
    pod = injected(settings(), app_pod(["sleep", "3600"]))
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "extproc-provider-keys")
    vol["secret"]["defaultMode"] = 0o440
    pr = runner(pod, w, net, tmp_path / "pod", {"openai": OPENAI_KEY})
    try:
        with pytest.raises(ContainerFailed) as failed:
            pr.start_pod()
        assert failed.value.running.name == "extproc-server"
        out = failed.value.running.output()
        assert "credential for provider openai: file /var/run/secrets/extproc/providers/openai is unreadable" in out
        assert "Traceback" not in out
        assert OPENAI_KEY.decode() not in out
    finally:
        pr.stop()


@pytest.mark.parametrize("fs_group", [None, 2000])
def test_every_injected_secret_file_is_readable_by_its_container(fs_group: int | None) -> None:
    """kubelet's ownership rules applied to the emitted spec, with and without a pod fsGroup."""
    pod = injected(settings(), app_pod(["true"]))
    if fs_group is not None:
        pod["spec"]["securityContext"] = {"fsGroup": fs_group}
    src = Sources(
        config_maps={"extproc-config": tenant_config_map(), "kube-root-ca.crt": {"ca.crt": "x"}},
        secrets={"extproc-provider-keys": {"openai": b"k", "anthropic": b"k"}},
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    checked = 0
    for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        uid = (c.get("securityContext") or {}).get("runAsUser", 0)
        gid = (c.get("securityContext") or {}).get("runAsGroup", 0)
        for m in c.get("volumeMounts") or []:
            files = materialise(pod, volumes[m["name"]], src)
            for f in files or []:
                assert readable_by(f, uid, [gid, *supplemental_groups(pod)]), (c["name"], f.path, oct(f.mode))
                checked += 1
    assert checked >= 6


def test_old_secret_mode_was_unreadable() -> None:
    """The check above can fail: 0440 without fsGroup is what issue 14 found."""
    pod = injected(settings(), app_pod(["true"]))
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "extproc-provider-keys")
    vol = {**vol, "secret": {**vol["secret"], "defaultMode": 0o440}}
    (f,) = materialise(pod, vol, Sources(secrets={"extproc-provider-keys": {"openai": b"k"}})) or []
    server = next(c for c in pod["spec"]["initContainers"] if c["name"] == "extproc-server")
    assert not readable_by(f, server["securityContext"]["runAsUser"], [server["securityContext"]["runAsGroup"]])


def test_settings_default_sidecar_uid_is_uncommon() -> None:
    s = InjectSettings()
    common = {0, 101, 999, 1000, 1001, 1337, 2102, 10001, 65532, 65534}
    assert s.envoy_uid not in common and s.extproc_uid not in common


def test_gateway_pod_reads_its_provider_keys() -> None:
    """The gateway keeps 0440 and relies on its pod fsGroup: both containers can read."""
    (dep,) = [o for o in build(ROOT / "k8s/overlays/gateway") if o["kind"] == "Deployment"
              and o["metadata"]["name"] == "extproc-gateway"]
    pod = {"metadata": dep["spec"]["template"]["metadata"], "spec": dep["spec"]["template"]["spec"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    src = Sources(config_maps={"extproc-config": {"extproc.yaml": "x", "envoy.yaml": "y"}},
                  secrets={"extproc-provider-keys": {"openai": b"k"}})
    server = next(c for c in pod["spec"]["initContainers"] if c["name"] == "extproc-server")
    uid, gid = server["securityContext"]["runAsUser"], server["securityContext"]["runAsGroup"]
    (f,) = materialise(pod, volumes["provider-keys"], src) or []
    assert readable_by(f, uid, [gid, *supplemental_groups(pod)])
    pod["spec"]["securityContext"] = {k: v for k, v in pod["spec"]["securityContext"].items() if k != "fsGroup"}
    (f,) = materialise(pod, volumes["provider-keys"], src) or []
    assert not readable_by(f, uid, [gid, *supplemental_groups(pod)])  # without fsGroup: issue 14's bug


def test_issuer_is_discovered_from_the_api_server(pod_env: tuple[PodNetwork, World], tmp_path: Path) -> None:
    """No EXTPROC_TOKEN_ISSUER on an EKS-like cluster: the shipped config discovers it."""
    net, w = pod_env
    pod = injected(settings().model_copy(update={"extproc_env": ()}), app_pod(["python3", "-c", APP]))
    pr = runner(pod, w, net, tmp_path / "pod", {"openai": OPENAI_KEY})
    try:
        started = pr.start_pod()
        out = wait_exit(started["app"])
        assert "STATUS 200" in out, out + pr.logs()
        assert f"token issuer discovered from the API server: {ISSUER}" in started["extproc-server"].output()
        assert "/.well-known/openid-configuration" in w.jwks_requests
    finally:
        pr.stop()


def test_wrong_issuer_is_said_at_start_and_refused(pod_env: tuple[PodNetwork, World], tmp_path: Path) -> None:
    """A pinned EXTPROC_TOKEN_ISSUER that is not the cluster's: one clear line, and 401s."""
    net, w = pod_env
    s = settings(extproc_env=[{"name": "EXTPROC_TOKEN_ISSUER", "value": "https://kubernetes.default.svc.cluster.local"}])
    pod = injected(s, app_pod(["python3", "-c", APP]))
    pr = runner(pod, w, net, tmp_path / "pod", {"openai": OPENAI_KEY})
    try:
        started = pr.start_pod()
        out = wait_exit(started["app"])
        assert "STATUS 401" in out and "unknown_issuer" in out, out
        log = started["extproc-server"].output()
        assert f"token issuer mismatch: configured https://kubernetes.default.svc.cluster.local, but the " \
               f"cluster's API server issues tokens as {ISSUER}" in log
        assert not w.upstream.requests
    finally:
        pr.stop()
