"""k8s/quickstart.sh against a fake cluster (tests/k8s/fake_kubectl.py): every manifest it
applies renders and validates (Kubernetes 1.34, strict), in an order the API server and
the pods accept, for both certificate paths; the self-signed path rotates."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "k8s/quickstart.sh"
EKS_ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"


def quickstart(
    tmp_path: Path, *args: str, cert_manager: bool = False, egress: bool = False
) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "kubectl"
    fake.write_text(f"#!/bin/sh\ncd {ROOT} && exec {sys.executable} -m tests.k8s.fake_kubectl \"$@\"\n")
    fake.chmod(0o755)
    state = tmp_path / "state.json"
    if cert_manager and not state.exists():
        state.write_text(json.dumps({"objects": {}, "log": [], "cert_manager": True}))
    env = {**os.environ, "KUBECTL": str(fake), "FAKE_KUBE_STATE": str(state), "FAKE_ISSUER": EKS_ISSUER,
           "EGRESS": "1" if egress else "0"}
    # The script's relative paths must not depend on the caller's directory.
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def state_of(tmp_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((tmp_path / "state.json").read_text())
    return doc


def keys(tmp_path: Path) -> None:
    (tmp_path / "openai.key").write_text("sk-quickstart\n")


def cert(data_b64: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(data_b64))


def test_self_signed_install_and_rotation(tmp_path: Path) -> None:
    keys(tmp_path)
    run = quickstart(tmp_path, "install", "team-a", str(tmp_path / "openai.key"))
    assert run.returncode == 0, run.stderr
    st = state_of(tmp_path)
    objs, log = st["objects"], st["log"]
    # Dependency order: namespace, certificate, injector (ready only with its Secret), tenant, label last.
    order = [e for e in log if e.startswith(("Namespace/", "Secret/extproc-system", "ready", "label"))]
    assert order[0] == "Namespace//extproc-system"
    assert log.index("Secret/extproc-system/extproc-injector-tls") < log.index(
        "ready Deployment/extproc-system/extproc-injector")
    assert log[-1] == "label Namespace//team-a extproc.io/inject=enabled"
    ca = cert(objs["Secret/extproc-system/extproc-injector-ca"]["data"]["tls.crt"])
    leaf = cert(objs["Secret/extproc-system/extproc-injector-tls"]["data"]["tls.crt"])
    webhook = objs["MutatingWebhookConfiguration//extproc-injector"]["webhooks"][0]
    assert cert(webhook["clientConfig"]["caBundle"]) == ca  # the webhook trusts the CA, not the leaf
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "extproc-injector.extproc-system.svc" in sans
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 90
    # The discovered issuer reaches every sidecar through the injector's settings.
    settings = objs["ConfigMap/extproc-system/extproc-injector-settings"]["data"]["settings.yaml"]
    assert f'value: "{EKS_ISSUER}"' in settings and "EXTPROC_TOKEN_ISSUER" in settings
    assert "restart Deployment/extproc-system/extproc-injector" in log
    # The tenant namespace got its config and keys before its label.
    assert "ConfigMap/team-a/extproc-config" in objs and "Secret/team-a/extproc-provider-keys" in objs

    rotated = quickstart(tmp_path, "rotate-cert")
    assert rotated.returncode == 0, rotated.stderr
    objs = state_of(tmp_path)["objects"]
    new_leaf = cert(objs["Secret/extproc-system/extproc-injector-tls"]["data"]["tls.crt"])
    assert new_leaf.serial_number != leaf.serial_number
    new_leaf.verify_directly_issued_by(ca)
    assert cert(objs["MutatingWebhookConfiguration//extproc-injector"]["webhooks"][0]["clientConfig"]["caBundle"]) == ca


def test_cert_manager_install(tmp_path: Path) -> None:
    keys(tmp_path)
    run = quickstart(tmp_path, "install", "team-a", str(tmp_path / "openai.key"), cert_manager=True, egress=True)
    assert run.returncode == 0, run.stderr
    objs = state_of(tmp_path)["objects"]
    assert "Certificate/extproc-system/extproc-injector" in objs
    assert "Secret/extproc-system/extproc-injector-ca" not in objs  # no self-signed CA
    webhook = objs["MutatingWebhookConfiguration//extproc-injector"]
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]  # cert-manager's cainjector fills it
    ann = webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    certificate = objs["Certificate/extproc-system/extproc-injector"]
    assert ann == "extproc-system/extproc-injector" == f"extproc-system/{certificate['metadata']['name']}"
    assert certificate["spec"]["secretName"] == "extproc-injector-tls"
    assert "NetworkPolicy/team-a/extproc-sidecar-egress" in objs  # EGRESS=1
    rotated = quickstart(tmp_path, "rotate-cert")
    assert rotated.returncode != 0 and "cert-manager rotates by itself" in rotated.stderr


def test_the_fake_cluster_refuses_a_wrong_order(tmp_path: Path) -> None:
    """The checks above can fail: labelling before the namespace has its config is refused."""
    keys(tmp_path)
    fake_run = quickstart(tmp_path, "plan")
    assert fake_run.returncode == 0
    env = {**os.environ, "FAKE_KUBE_STATE": str(tmp_path / "s.json")}
    steps = [["create", "namespace", "team-a", "--dry-run=client", "-o", "yaml"]]
    made = subprocess.run([sys.executable, "-m", "tests.k8s.fake_kubectl", *steps[0]], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    applied = subprocess.run([sys.executable, "-m", "tests.k8s.fake_kubectl", "apply", "-f", "-"], cwd=ROOT, env=env,
                             input=made.stdout, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    label = subprocess.run([sys.executable, "-m", "tests.k8s.fake_kubectl", "label", "namespace", "team-a",
                            "extproc.io/inject=enabled"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert label.returncode == 1 and "labelled before ConfigMap extproc-config" in label.stderr


@pytest.mark.parametrize("tls", ["self-signed", "cert-manager"])
def test_plan_lists_what_install_applies(tmp_path: Path, tls: str) -> None:
    run = quickstart(tmp_path, "plan", tls)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].endswith("k8s/base/namespace.yaml") and lines[-1].endswith("k8s/tenant")
    assert any("components/cert-manager" in ln for ln in lines) == (tls == "cert-manager")
