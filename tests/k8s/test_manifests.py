"""Every file in k8s/ and every rendered overlay: valid Kubernetes, hardened, consistent."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from extproc.config.envoy import dump_yaml, render_envoy
from extproc.config.load import load_config
from extproc.inject.settings import parse_settings
from tests.k8s.kustomize import KustomizeError, build, referenced_files

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
ENVOY = ROOT / ".venv" / "bin" / "envoy"
#: The Kubernetes versions the manifests must be valid for (strict: no unknown fields).
K8S_VERSIONS = ["1.34", kubernetes_validate.utils.latest_version()]

KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
ENTRY_POINTS = [
    K8S / "base",
    *sorted((K8S / "overlays").glob("*")),
    K8S / "tenant",
    K8S / "overlays/gateway/tenant",
]
CONFIG_DIRS = [K8S / "base/config", K8S / "overlays/gateway/config"]


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def validate(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_every_overlay_is_tested() -> None:
    assert {rel(p) for p in ENTRY_POINTS if p.is_dir()} >= {
        "k8s/base",
        "k8s/overlays/dev",
        "k8s/overlays/gateway",
        "k8s/overlays/production",
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=rel)
def test_rendered_output_validates(entry: Path, version: str) -> None:
    objects = build(entry)
    assert objects
    for obj in objects:
        validate(obj, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_file_validates(version: str) -> None:
    """Each YAML file in k8s/ is a kustomization, a generator input, or complete objects."""
    inputs: set[Path] = set()
    for d in KUSTOMIZATIONS:
        k = yaml.safe_load((d / "kustomization.yaml").read_text())
        for field in ("configMapGenerator", "secretGenerator"):
            for spec in k.get(field, []):
                for entry in spec.get("files", []):
                    inputs.add((d / entry.split("=")[-1]).resolve())
    checked = 0
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.resolve() in inputs:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            validate(doc, version)
            checked += 1
    assert checked >= 15


def test_no_orphan_files() -> None:
    """A manifest nobody includes is a manifest nobody tests in context."""
    used: set[Path] = set()
    for entry in ENTRY_POINTS:
        used |= referenced_files(entry)
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name.endswith(".example.yaml"):
            continue
        assert path.resolve() in used, f"{rel(path)} is not referenced by any kustomization"


def test_settings_files_parse() -> None:
    found = [p for p in K8S.rglob("settings.yaml")]
    assert len(found) >= 3
    for p in found:
        parse_settings(yaml.safe_load(p.read_text()))


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
    ]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=rel)
def test_workloads_are_hardened(entry: Path) -> None:
    for name, spec in _pod_specs(build(entry)):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", 1) != 0, where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where
            long_running = c in spec["containers"] or c.get("restartPolicy") == "Always"
            if long_running:
                assert "readinessProbe" in c and "livenessProbe" in c, where


@pytest.mark.parametrize("entry", [K8S / "base", K8S / "overlays/dev", K8S / "overlays/production"], ids=rel)
def test_pdbs_cover_every_deployment(entry: Path) -> None:
    objects = build(entry)
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for o in objects:
        if o["kind"] == "Deployment" and o["spec"]["replicas"] > 1:
            labels = o["spec"]["template"]["metadata"]["labels"]
            assert any(
                all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items()) for p in pdbs
            ), o["metadata"]["name"]


def test_overlay_differences() -> None:
    def get(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
        return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)

    dev, prod, gw = (
        build(K8S / "overlays/dev"),
        build(K8S / "overlays/production"),
        build(K8S / "overlays/gateway"),
    )
    assert get(dev, "Deployment", "extproc-injector")["spec"]["replicas"] == 1
    assert get(dev, "Deployment", "extproc-redis")["spec"]["replicas"] == 1
    assert get(prod, "Deployment", "extproc-injector")["spec"]["replicas"] == 3
    assert get(prod, "PodDisruptionBudget", "extproc-injector")["spec"] == {
        "minAvailable": 2,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "extproc-injector"}},
    }
    prod_settings = parse_settings(
        yaml.safe_load(get(prod, "ConfigMap", "extproc-injector-settings")["data"]["settings.yaml"])
    )
    assert prod_settings.extproc_env[0]["name"] == "REDIS_URL"
    gw_settings = parse_settings(
        yaml.safe_load(get(gw, "ConfigMap", "extproc-injector-settings")["data"]["settings.yaml"])
    )
    assert gw_settings.mode == "gateway"
    assert gw_settings.gateway_url.startswith("http://extproc-gateway.extproc-system.svc")
    assert "0.0.0.0,   port: 10000" in get(gw, "ConfigMap", "extproc-config")["data"]["extproc.yaml"]
    assert len(get(gw, "ValidatingAdmissionPolicy", "extproc-require-injection")["spec"]["validations"]) == 1
    for objects in (dev, prod, gw):
        assert all(
            o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "extproc"
            for o in objects
            if o["metadata"]["name"].startswith("extproc-injector")
        )


def test_webhook_and_safety_net_agree() -> None:
    objects = build(K8S / "base")
    hook = next(o for o in objects if o["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    binding = next(o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding")
    policy = next(o for o in objects if o["kind"] == "ValidatingAdmissionPolicy")
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["clientConfig"]["service"] == {
        "name": "extproc-injector",
        "namespace": "extproc-system",
        "path": "/mutate",
        "port": 443,
    }
    if hook["failurePolicy"] == "Ignore":
        # An uninjected pod must be refused by something that cannot be down.
        assert binding["spec"]["policyName"] == policy["metadata"]["name"]
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert binding["spec"]["matchResources"]["namespaceSelector"] == hook["namespaceSelector"]
    excluded = next(
        e for e in hook["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name"
    )
    assert "extproc-system" in excluded["values"]
    service = next(
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "extproc-injector"
    )
    assert service["spec"]["ports"][0]["port"] == 443


def test_gateway_network_policies() -> None:
    gw = build(K8S / "overlays/gateway")
    pol = next(o for o in gw if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "extproc-gateway")
    assert pol["spec"]["egress"] == [{}]  # the gateway reaches the internet
    assert pol["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"extproc.io/inject": "enabled"}}}
    ]
    tenant = build(K8S / "overlays/gateway/tenant")
    (app,) = tenant
    assert app["spec"]["podSelector"] == {} and app["spec"]["policyTypes"] == ["Egress"]
    targets = []
    for rule in app["spec"]["egress"]:
        for peer in rule["to"]:
            assert "ipBlock" not in peer  # nothing reaches the internet directly
            targets.append(peer["podSelector"]["matchLabels"])
    assert targets == [{"app.kubernetes.io/name": "extproc-gateway"}, {"k8s-app": "kube-dns"}]
    injector = next(
        o for o in gw if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "extproc-injector"
    )
    assert injector["spec"]["egress"] == [] and "Egress" in injector["spec"]["policyTypes"]


@pytest.mark.parametrize("config_dir", CONFIG_DIRS, ids=rel)
def test_envoy_config_is_fresh(config_dir: Path) -> None:
    cfg = load_config(config_dir / "extproc.yaml", env={})
    if os.environ.get("UPDATE_GOLDEN") == "1":
        cfg = load_config(rel(config_dir / "extproc.yaml"), env={})  # a relative source in the header
        (config_dir / "envoy.yaml").write_text(dump_yaml(cfg))
    committed = yaml.safe_load((config_dir / "envoy.yaml").read_text())
    assert committed == render_envoy(cfg), (
        f"{rel(config_dir / 'envoy.yaml')} is stale: extproc envoy render "
        f"{rel(config_dir / 'extproc.yaml')} -o {rel(config_dir / 'envoy.yaml')}  (or UPDATE_GOLDEN=1)"
    )


@pytest.mark.parametrize("config_dir", CONFIG_DIRS, ids=rel)
def test_envoy_config_validates(config_dir: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(config_dir / "envoy.yaml"), "--log-level", "warn"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]


def test_kubernetes_flavoured_config() -> None:
    cfg = load_config(K8S / "base/config/extproc.yaml", env={})
    assert cfg.redis_url == "redis://extproc-redis.extproc-system.svc:6379/0"
    (issuer,) = cfg.issuers
    assert issuer.issuer == "https://kubernetes.default.svc.cluster.local"
    assert issuer.jwks_url == "https://kubernetes.default.svc/openid/v1/jwks"
    assert issuer.audiences == ("extproc",)
    assert {p.name: p.credential.file for p in cfg.providers if p.credential} == {
        "openai": "/var/run/secrets/extproc/providers/openai",
        "anthropic": "/var/run/secrets/extproc/providers/anthropic",
    }
    # Pod-local listeners; only the probe/metrics endpoint faces the pod IP.
    assert cfg.listener.address == cfg.ext_proc.address == cfg.envoy_admin.address == "127.0.0.1"
    assert cfg.tls is None
    assert load_config(
        K8S / "base/config/extproc.yaml", env={"REDIS_URL": "rediss://r:6380/0"}
    ).redis_url == ("rediss://r:6380/0")


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [../outside.yaml]\n")
    with pytest.raises(KustomizeError, match="outside"):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("images: [{name: x}]\n")
    with pytest.raises(KustomizeError, match="unsupported"):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator: [{name: c, literals: [a=b]}]\n")
    with pytest.raises(KustomizeError, match="hash"):
        build(tmp_path)


def test_strict_validation_catches_typos() -> None:
    """Guard the guard: an unknown field must fail strict validation."""
    objects = build(K8S / "base")
    deploy = next(o for o in objects if o["kind"] == "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deploy, "1.34")
