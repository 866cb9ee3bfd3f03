"""The injector refuses pod specs that dissolve the app/sidecar boundary (pure), and says why."""

from __future__ import annotations

import base64
import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.inject.bench import sample_review, self_signed
from extproc.inject.boundary import ANNOTATION_ALLOW_WEAK, PRIVATE_DIR, PRIVATE_VOLUME, boundary_problems
from extproc.inject.patch import ENVOY_CONTAINER, EXTPROC_CONTAINER, apply_json_patch, mutate
from extproc.inject.server import InjectorServer, make_server
from extproc.inject.settings import InjectSettings

SIDECAR = InjectSettings()
GATEWAY = InjectSettings(mode="gateway")


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    base["spec"].update(spec)
    return base


def app(**sc: Any) -> dict[str, Any]:
    return pod(containers=[{"name": "app", "image": "app:1", "securityContext": sc}])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (pod(shareProcessNamespace=True), "shareProcessNamespace"),
        (pod(hostNetwork=True), "hostNetwork"),
        (app(runAsUser=SIDECAR.envoy_uid), f"uid {SIDECAR.envoy_uid}, a sidecar's uid"),
        (app(runAsUser=SIDECAR.extproc_uid), f"uid {SIDECAR.extproc_uid}, a sidecar's uid"),
        (pod(securityContext={"runAsUser": SIDECAR.extproc_uid}), "runAsUser"),
        (app(runAsGroup=SIDECAR.envoy_uid), "socket's group"),
        (pod(securityContext={"fsGroup": SIDECAR.envoy_uid}), "socket's group"),
        (pod(securityContext={"supplementalGroups": [5, SIDECAR.envoy_uid]}), "socket's group"),
        (app(privileged=True), "is privileged"),
        (app(capabilities={"add": ["SYS_PTRACE"]}), "SYS_PTRACE"),
        (app(capabilities={"add": ["CAP_SYS_PTRACE"]}), "CAP_SYS_PTRACE"),
        (app(capabilities={"add": ["all"]}), "ALL"),
        (pod(initContainers=[{"name": "init", "image": "x", "securityContext": {"privileged": True}}]),
         "container init is privileged"),
    ],
)
def test_each_dissolving_spec_is_named(spec: dict[str, Any], fragment: str) -> None:
    problems = boundary_problems(spec, SIDECAR)
    assert len(problems) == 1 and fragment in problems[0], problems


def test_an_ordinary_pod_keeps_the_boundary() -> None:
    assert boundary_problems(app(runAsUser=1000, runAsGroup=1000, capabilities={"add": ["NET_BIND_SERVICE"]}),
                             SIDECAR) == []
    assert boundary_problems(pod(shareProcessNamespace=False, hostNetwork=False), SIDECAR) == []


def test_gateway_mode_only_cares_about_host_network() -> None:
    assert boundary_problems(pod(shareProcessNamespace=True), GATEWAY) == []
    assert boundary_problems(app(privileged=True), GATEWAY) == []
    assert "hostNetwork" in boundary_problems(pod(hostNetwork=True), GATEWAY)[0]


def review(p: dict[str, Any], ns: str = "team-a") -> dict[str, Any]:
    r = sample_review("u-1")
    r["request"]["object"] = p
    r["request"]["namespace"] = ns
    return r


def test_refused_with_the_reason_in_the_admission_response() -> None:
    out = mutate(review(pod(shareProcessNamespace=True)), SIDECAR)["response"]
    assert out["allowed"] is False and "patch" not in out
    assert out["status"]["code"] == 403 and "shareProcessNamespace" in out["status"]["message"]
    assert ANNOTATION_ALLOW_WEAK in out["status"]["message"]  # how to proceed knowingly


def test_the_annotation_downgrades_to_a_warning_and_injects() -> None:
    p = pod(shareProcessNamespace=True)
    p["metadata"]["annotations"] = {ANNOTATION_ALLOW_WEAK: "true"}
    out = mutate(review(p), SIDECAR)["response"]
    assert out["allowed"] is True and out["patchType"] == "JSONPatch"
    assert any("shareProcessNamespace" in w and ANNOTATION_ALLOW_WEAK in w for w in out["warnings"])


def test_opted_out_pods_and_the_own_namespace_are_not_refused() -> None:
    p = pod(hostNetwork=True)
    p["metadata"]["annotations"] = {"extproc.io/inject": "false"}
    assert mutate(review(p), SIDECAR)["response"]["allowed"] is True
    assert mutate(review(pod(hostNetwork=True), ns=SIDECAR.own_namespace), SIDECAR)["response"]["allowed"] is True


def test_the_private_volume_is_mounted_into_the_two_sidecars_only() -> None:
    p = pod()
    out = mutate(review(copy.deepcopy(p)), SIDECAR)["response"]
    patched = apply_json_patch(p, json.loads(base64.b64decode(out["patch"])))
    spec = patched["spec"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == PRIVATE_VOLUME]
    assert vol["emptyDir"]["medium"] == "Memory"
    mounted = {c["name"] for key in ("containers", "initContainers") for c in spec[key]
               for m in c.get("volumeMounts") or [] if m["name"] == PRIVATE_VOLUME}
    assert mounted == {ENVOY_CONTAINER, EXTPROC_CONTAINER}
    (ext,) = [c for c in spec["initContainers"] if c["name"] == EXTPROC_CONTAINER]
    assert ext["securityContext"]["runAsGroup"] == SIDECAR.envoy_uid  # the socket's group: Envoy's
    assert {"name": "EXTPROC_ENVOY_UID", "value": str(SIDECAR.envoy_uid)} in ext["env"]
    assert all(m["mountPath"] == PRIVATE_DIR for m in ext["volumeMounts"] if m["name"] == PRIVATE_VOLUME)


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[tuple[InjectorServer, Path]]:
    cert, key = self_signed(tmp_path)
    srv = make_server(str(cert), str(key), "127.0.0.1", 0, InjectSettings())
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv, cert
    srv.shutdown()
    srv.server_close()
    t.join(5)


def test_the_webhook_refuses_over_https(webhook: tuple[InjectorServer, Path]) -> None:
    import http.client
    import ssl

    srv, cert = webhook
    conn = http.client.HTTPSConnection("127.0.0.1", srv.server_address[1],
                                       context=ssl.create_default_context(cafile=str(cert)), timeout=10)
    for spec, fragment in [(pod(shareProcessNamespace=True), "shareProcessNamespace"),
                           (pod(hostNetwork=True), "hostNetwork"),
                           (app(runAsUser=SIDECAR.envoy_uid), "a sidecar's uid"),
                           (app(privileged=True, capabilities={"add": ["SYS_PTRACE"]}), "SYS_PTRACE")]:
        conn.request("POST", "/mutate", body=json.dumps(review(spec)), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        assert resp.status == 200
        assert doc["response"]["allowed"] is False and fragment in doc["response"]["status"]["message"]
