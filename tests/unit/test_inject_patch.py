"""Unit tests of the injector's pure logic: JSON Patch, decisions, malformed reviews."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.inject.patch import (
    JsonPatchError,
    apply_json_patch,
    escape_pointer,
    handle_admission,
    mutate,
)
from extproc.inject.settings import CaBundle, InjectSettings

S = InjectSettings()


def review(pod: Any, **request: Any) -> dict[str, Any]:
    req = {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": "team-a",
        "operation": "CREATE",
        "object": pod,
    }
    req.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}], **spec}}


def ops_of(resp: dict[str, Any]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(resp["response"]["patch"]))
    return ops


def injected(p: dict[str, Any], s: InjectSettings = S) -> dict[str, Any]:
    out: dict[str, Any] = apply_json_patch(p, ops_of(mutate(review(p), s)))
    return out


# ---------------------------------------------------------------------------- JSON Patch


def test_escape_pointer() -> None:
    assert escape_pointer("extproc.io/injected") == "extproc.io~1injected"
    assert escape_pointer("a~b/c") == "a~0b~1c"
    doc = apply_json_patch({"m": {}}, [{"op": "add", "path": "/m/" + escape_pointer("a~1/b"), "value": 1}])
    assert doc == {"m": {"a~1/b": 1}}


def test_apply_json_patch_rfc6902_basics() -> None:
    doc = {"a": [1, 3], "b": {"c": 1}}
    out = apply_json_patch(
        doc,
        [
            {"op": "add", "path": "/a/1", "value": 2},
            {"op": "add", "path": "/a/-", "value": 4},
            {"op": "replace", "path": "/b/c", "value": 2},
            {"op": "remove", "path": "/a/0"},
            {"op": "test", "path": "/a", "value": [2, 3, 4]},
        ],
    )
    assert out == {"a": [2, 3, 4], "b": {"c": 2}}
    assert doc == {"a": [1, 3], "b": {"c": 1}}  # not modified in place
    for bad in (
        [{"op": "add", "path": "/missing/x", "value": 1}],
        [{"op": "add", "path": "/a/5", "value": 1}],
        [{"op": "add", "path": "/a/01", "value": 1}],
        [{"op": "remove", "path": "/nope"}],
        [{"op": "test", "path": "/b/c", "value": 9}],
        [{"op": "move", "path": "/a", "from": "/b"}],
    ):
        with pytest.raises(JsonPatchError):
            apply_json_patch(doc, bad)


# ---------------------------------------------------------------------------- decisions


def test_absent_collections_are_created_whole() -> None:
    p = {"spec": {"containers": [{"name": "app", "image": "x"}]}}  # not even metadata
    ops = ops_of(mutate(review(p), S))
    paths = {o["path"] for o in ops}
    assert {"/metadata", "/metadata/annotations", "/spec/initContainers", "/spec/volumes"} <= paths
    assert {"/spec/containers/0/env", "/spec/containers/0/volumeMounts"} <= paths
    assert not any(path.endswith("/-") for path in paths)
    out = apply_json_patch(p, ops)
    assert "extproc.io/injected" in out["metadata"]["annotations"]


def test_existing_collections_are_appended_to() -> None:
    p = pod(volumes=[{"name": "v", "emptyDir": {}}], initContainers=[{"name": "init", "image": "i"}])
    p["metadata"]["annotations"] = {"keep": "me"}
    p["spec"]["containers"][0]["env"] = [
        {"name": "A", "value": "1"},
        {"name": "OPENAI_BASE_URL", "value": "x"},
    ]
    out = injected(p)
    assert out["metadata"]["annotations"]["keep"] == "me"
    assert out["spec"]["volumes"][0]["name"] == "v"
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["extproc-envoy", "extproc-server", "init"]
    env = out["spec"]["containers"][0]["env"]
    assert env[0] == {"name": "A", "value": "1"}
    assert [e["name"] for e in env].count("OPENAI_BASE_URL") == 1  # replaced, not duplicated
    assert {e["name"]: e["value"] for e in env}["OPENAI_BASE_URL"] == "http://127.0.0.1:10000/openai"
    # the pre-existing init container got the env too (patched before the indices shifted)
    assert "EXTPROC_TOKEN_FILE" in {e["name"] for e in out["spec"]["initContainers"][2]["env"]}
    record = json.loads(out["metadata"]["annotations"]["extproc.io/injected"])
    assert record["initContainers"] == ["extproc-envoy", "extproc-server"] and record["mode"] == "sidecar"


def test_injection_is_idempotent() -> None:
    once = injected(pod())
    resp = mutate(review(once), S)["response"]
    assert "patch" not in resp and resp["allowed"] is True


def test_forged_annotation_does_not_prevent_injection() -> None:
    p = pod()
    p["metadata"]["annotations"] = {"extproc.io/injected": "{}"}
    out = injected(p)
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["extproc-envoy", "extproc-server"]


@pytest.mark.parametrize(
    ("meta", "spec", "reason"),
    [
        ({"annotations": {"extproc.io/inject": "false"}}, {}, "annotation"),
        ({"labels": {"extproc.io/inject": "disabled"}}, {}, "label"),
        ({"annotations": {"extproc.io/allow-weak-boundary": "true"}}, {"hostNetwork": True}, "hostNetwork"),
        ({}, {"volumes": [{"name": "extproc-config", "emptyDir": {}}]}, "conflict"),
    ],
)
def test_skips(meta: dict[str, Any], spec: dict[str, Any], reason: str) -> None:
    p = pod(**spec)
    p["metadata"].update(meta)
    resp = mutate(review(p), S)["response"]
    assert resp["allowed"] is True and "patch" not in resp
    assert reason in resp["auditAnnotations"]["injection"]


def test_own_namespace_and_other_operations_are_skipped() -> None:
    assert "patch" not in mutate(review(pod(), namespace="extproc-system"), S)["response"]
    assert "patch" not in mutate(review(pod(), operation="DELETE", object=None), S)["response"]


def test_dry_run_answer_is_identical() -> None:
    a = mutate(review(pod()), S)
    b = mutate(review(pod(), dryRun=True), S)
    assert a == b


def test_tls_gateway_sets_ca_variables_only_with_a_bundle() -> None:
    plain = injected(pod())["spec"]["containers"][0]["env"]
    assert not {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"} & {e["name"] for e in plain}
    tls = InjectSettings(gateway_url="https://127.0.0.1:10443", ca_bundle=CaBundle(config_map="extproc-ca-bundle"))
    out = injected(pod(), tls)
    env = {e["name"]: e["value"] for e in out["spec"]["containers"][0]["env"]}
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == "/var/run/secrets/extproc/ca/ca.crt"
    assert env["OPENAI_BASE_URL"] == "https://127.0.0.1:10443/openai"
    assert {"name": "extproc-ca", "configMap": {"name": "extproc-ca-bundle"}} in out["spec"]["volumes"]


def test_gateway_mode_adds_no_sidecars_and_ignores_redirect() -> None:
    gw = InjectSettings(mode="gateway", gateway_url="http://extproc-gateway.extproc-system.svc")
    p = pod()
    p["metadata"]["annotations"] = {"extproc.io/redirect": "true"}
    resp = mutate(review(p), gw)
    out = apply_json_patch(p, ops_of(resp))
    assert "initContainers" not in out["spec"]
    assert [v["name"] for v in out["spec"]["volumes"]] == ["extproc-token"]
    assert any("ignored in gateway mode" in w for w in resp["response"]["warnings"])


# ---------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b"42", b'{"request": {}}', b'{"request": {"uid": 7}}', b'{"apiVersion": "v1"}'],
)
def test_no_uid_means_http_400(body: bytes) -> None:
    status, doc = handle_admission(body, S)
    assert status == 400 and isinstance(doc["error"], str) and doc["error"]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r.update(apiVersion="admission.k8s.io/v2"),
        lambda r: r.update(kind="Pod"),
        lambda r: r["request"].update(kind={"group": "", "version": "v1", "kind": "Service"}),
        lambda r: r["request"].update(object="pod"),
        lambda r: r["request"]["object"]["spec"].update(containers={}),
        lambda r: r["request"]["object"]["spec"].update(volumes=[1]),
        lambda r: r["request"]["object"]["metadata"].update(annotations={"a": 1}),
        lambda r: r["request"].update(dryRun="yes"),
    ],
)
@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
def test_malformed_with_uid_follows_failure_policy(mangle: Any, policy: str) -> None:
    r = review(pod())
    mangle(r)
    status, doc = handle_admission(json.dumps(r).encode(), InjectSettings(failure_policy=policy))  # type: ignore[arg-type]
    assert status == 200
    resp = doc["response"]
    assert resp["uid"] == "u-1"
    assert resp["allowed"] is (policy == "Ignore")
    assert resp["status"]["message"].startswith("extproc injector:")
    assert "patch" not in resp


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    status, _doc = handle_admission(json.dumps(value).encode(), S)
    assert status in (200, 400)


pod_keys = st.sampled_from(
    [
        "metadata",
        "spec",
        "containers",
        "initContainers",
        "volumes",
        "env",
        "name",
        "annotations",
        "labels",
        "hostNetwork",
        "ports",
        "volumeMounts",
        "containerPort",
    ]
)
pod_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(0, 20000)
    | st.sampled_from(["x", "false", "extproc-token", "app"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(pod_keys, children, max_size=5),
    max_leaves=30,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod_like, st.sampled_from(["Ignore", "Fail"]))
def test_arbitrary_pods_in_a_valid_envelope(obj: Any, policy: str) -> None:
    """Inside a well-formed envelope, any object: an answer with the uid; a patch that applies."""
    s = InjectSettings(failure_policy=policy)  # type: ignore[arg-type]
    status, doc = handle_admission(json.dumps(review(obj)).encode(), s)
    assert status == 200 and doc["response"]["uid"] == "u-1"
    if "patch" in doc["response"]:
        out = apply_json_patch(obj, ops_of(doc))
        assert "extproc.io/injected" in out["metadata"]["annotations"]


# ---------------------------------------------------------------------------- redirect ports


def _redirected(annotations: dict[str, str]) -> dict[str, Any]:
    p = pod()
    p["metadata"]["annotations"] = {"extproc.io/redirect": "true", **annotations}
    return p


def test_redirect_ports_from_the_annotation() -> None:
    out = injected(_redirected({"extproc.io/redirect-ports": "80, 443,8443,443"}))
    script = out["spec"]["initContainers"][0]["command"][2]
    assert "--dports 80,443,8443 -j REDIRECT --to-ports 10000" in script
    assert "--dports 80,443,8443 -j REJECT --reject-with tcp-reset" in script


def test_more_than_15_ports_are_split_into_multiport_rules() -> None:
    ports = ",".join(str(p) for p in range(8000, 8020))
    script = injected(_redirected({"extproc.io/redirect-ports": ports}))["spec"]["initContainers"][0]["command"][2]
    assert script.count("-j REDIRECT") == 2 and "--dports 8015,8016,8017,8018,8019 -j REDIRECT" in script


@pytest.mark.parametrize("bad", ["", "http", "80,0", "80;443", "70000", "-1"])
def test_invalid_redirect_ports_skip_injection_with_a_warning(bad: str) -> None:
    resp = mutate(review(_redirected({"extproc.io/redirect-ports": bad})), S)["response"]
    assert "patch" not in resp and resp["allowed"] is True
    assert any("extproc.io/redirect-ports" in w for w in resp["warnings"])


def test_the_redirect_exempts_the_sidecar_uid_once() -> None:
    script = injected(_redirected({}))["spec"]["initContainers"][0]["command"][2]
    assert script.count("--uid-owner 47001") == 2  # IPv4 and IPv6, not twice each
