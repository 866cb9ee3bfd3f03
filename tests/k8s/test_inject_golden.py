"""Golden AdmissionReview tests for the sidecar injector.

``golden/requests/NAME.json`` is an AdmissionReview request as the API server sends it;
``golden/NAME.expected.json`` holds the HTTP status, the full response, the decoded JSON
Patch and the pod after applying it. Regenerate with ``UPDATE_GOLDEN=1 pytest tests/k8s``
and review the diff. Cases named ``gateway_*`` use the gateway overlay's settings, the
others the base settings (k8s/base/injector/settings.yaml).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from extproc.inject.patch import handle_admission
from extproc.inject.settings import InjectSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
REQUESTS = GOLDEN / "requests"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

BASE_SETTINGS = load_settings(ROOT / "k8s/base/injector/settings.yaml")
GATEWAY_SETTINGS = load_settings(ROOT / "k8s/overlays/gateway/settings.yaml")


def settings_for(name: str) -> InjectSettings:
    return GATEWAY_SETTINGS if name.startswith("gateway_") else BASE_SETTINGS


def run_case(name: str) -> dict[str, Any]:
    request = json.loads((REQUESTS / f"{name}.json").read_text())
    status, doc = handle_admission(json.dumps(request).encode(), settings_for(name))
    result: dict[str, Any] = {"http_status": status, "review": doc, "patch": None, "patched_pod": None}
    resp = doc.get("response", {})
    if "patch" in resp:
        ops = json.loads(base64.b64decode(resp["patch"]))
        result["patch"] = ops
        result["patched_pod"] = jsonpatch.apply_patch(request["request"]["object"], ops)
    return result


def load_golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.expected.json").read_text())
    return data


CASES = sorted(p.stem for p in REQUESTS.glob("*.json"))


def test_cases_cover_the_brief() -> None:
    required = {
        "inject_full",
        "inject_bare",
        "inject_redirect",
        "inject_dry_run",
        "inject_v1beta1",
        "skip_already_injected",
        "skip_optout_annotation",
        "skip_optout_label",
        "skip_host_network",
        "skip_own_namespace",
        "error_not_a_pod",
        "gateway_inject_full",
    }
    assert required <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    got = run_case(name)
    path = GOLDEN / f"{name}.expected.json"
    if UPDATE:
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"no golden for {name}; run with UPDATE_GOLDEN=1"
    assert got == load_golden(name)


@pytest.mark.parametrize("name", CASES)
def test_response_envelope(name: str) -> None:
    request = json.loads((REQUESTS / f"{name}.json").read_text())
    got = run_case(name)
    assert got["http_status"] == 200
    review = got["review"]
    assert review["apiVersion"] == request["apiVersion"]
    assert review["kind"] == "AdmissionReview"
    assert review["response"]["uid"] == request["request"]["uid"]
    if name.startswith("inject_") or name.startswith("gateway_inject"):
        assert review["response"]["allowed"] is True
        assert review["response"]["patchType"] == "JSONPatch"
        assert got["patched_pod"]["metadata"]["annotations"]["extproc.io/injected"]
    if name.startswith("skip_"):
        assert review["response"]["allowed"] is True
        assert "patch" not in review["response"]
        assert review["response"]["auditAnnotations"]["injection"].startswith("skipped")


def test_already_injected_fixture_is_the_injected_pod() -> None:
    """The idempotency fixture must stay the output of inject_full (so it tracks changes)."""
    fixture = json.loads((REQUESTS / "skip_already_injected.json").read_text())
    if UPDATE:
        fixture["request"]["object"] = run_case("inject_full")["patched_pod"]
        (REQUESTS / "skip_already_injected.json").write_text(
            json.dumps(fixture, indent=2, sort_keys=True) + "\n"
        )
    assert fixture["request"]["object"] == load_golden("inject_full")["patched_pod"]


def test_dry_run_gets_the_same_patch() -> None:
    # The injector has no side effects, so a dryRun review is answered identically.
    assert run_case("inject_dry_run")["patch"] == run_case("inject_full")["patch"]


def test_error_follows_failure_policy() -> None:
    got = run_case("error_not_a_pod")["review"]["response"]
    assert got["allowed"] is (BASE_SETTINGS.failure_policy == "Ignore")
    assert "Pod" in got["status"]["message"]


def test_annotation_key_is_escaped_in_the_patch() -> None:
    ops = run_case("inject_full")["patch"]
    paths = [op["path"] for op in ops]
    assert "/metadata/annotations/extproc.io~1injected" in paths
    bare = run_case("inject_bare")["patch"]
    assert {"/metadata/annotations", "/spec/initContainers", "/spec/volumes", "/spec/containers/0/env"} <= {
        op["path"] for op in bare
    }
