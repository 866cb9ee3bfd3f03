"""The pod the injector produces (from the golden output) is one that works."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anthropic
import kubernetes_validate  # type: ignore[import-untyped]
import openai
import pytest

from extproc.config.load import load_config
from tests.k8s.kustomize import build

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
ENVOY = ROOT / ".venv" / "bin" / "envoy"


def patched(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads((GOLDEN / f"{name}.expected.json").read_text())["patched_pod"]
    assert pod is not None
    return pod


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("name", ["inject_full", "inject_bare", "inject_redirect", "gateway_inject_full"])
def test_patched_pod_is_a_valid_pod(name: str) -> None:
    kubernetes_validate.validate(patched(name), "1.34", strict=True)


def test_native_sidecars_start_before_the_app() -> None:
    pod = patched("inject_full")
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["extproc-envoy", "extproc-server", "migrate"]
    for sidecar in inits[:2]:
        assert sidecar["restartPolicy"] == "Always"
    assert "restartPolicy" not in inits[2]
    server = inits[1]
    # The startup probe gates the app containers on both listeners being ready.
    probe = " ".join(server["startupProbe"]["exec"]["command"])
    assert "127.0.0.1:9100/readyz" in probe and "127.0.0.1:9901/ready" in probe
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9100}
    assert server["command"] == ["extproc", "serve", "--config", "/etc/extproc/extproc.yaml"]
    assert inits[0]["args"] == ["-c", "/etc/extproc/envoy.yaml", "--log-level", "info"]
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert mounts["/etc/extproc"] == "extproc-config"
    assert mounts["/var/run/secrets/extproc/providers"] == "extproc-provider-keys"
    assert mounts["/var/run/secrets/kubernetes.io/serviceaccount"] == "extproc-kube-api"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["extproc-config"]["configMap"]["name"] == "extproc-config"
    assert volumes["extproc-provider-keys"]["secret"]["secretName"] == "extproc-provider-keys"
    token = volumes["extproc-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "extproc"


def test_sidecars_match_the_configmap_config() -> None:
    """Paths and ports the injector assumes are the ones the sidecar config uses."""
    cfg = load_config(ROOT / "k8s/base/config/extproc.yaml", env={})
    pod = patched("inject_full")
    app_env = env_of(pod["spec"]["containers"][0])
    assert (
        app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{cfg.listener.port}{cfg.provider('openai').prefix}"
    )
    assert (
        app_env["ANTHROPIC_BASE_URL"]
        == f"http://127.0.0.1:{cfg.listener.port}{cfg.provider('anthropic').prefix}"
    )
    issuer = cfg.issuers[0]
    server = pod["spec"]["initContainers"][1]
    mount_dirs = {m["mountPath"] for m in server["volumeMounts"]}
    for f in (
        issuer.jwks_ca_file,
        issuer.jwks_token_file,
        *(p.credential.file for p in cfg.providers if p.credential),
    ):
        assert f is not None and os.path.dirname(f) in mount_dirs, f
    assert server["ports"][0]["containerPort"] == cfg.admin.http.port
    assert cfg.admin.http.address == "0.0.0.0"  # kubelet probes reach the pod IP


def test_app_env_points_sdks_at_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = patched("inject_full")
    for container in pod["spec"]["containers"] + pod["spec"]["initContainers"][2:]:
        env = env_of(container)
        for k in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert str(openai.OpenAI(api_key="x").base_url).startswith("http://127.0.0.1:10000/openai")
        assert str(anthropic.Anthropic(api_key="x").base_url).startswith("http://127.0.0.1:10000/anthropic")
        assert env["EXTPROC_TOKEN_FILE"] == "/var/run/secrets/extproc/identity/token"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/var/run/secrets/extproc/identity"] == "extproc-token"
        # No TLS listener in the base settings: the trust store is left alone.
        assert "SSL_CERT_FILE" not in env and "REQUESTS_CA_BUNDLE" not in env


def test_gateway_mode_env(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = patched("gateway_inject_full")
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["migrate"]
    monkeypatch.setenv("OPENAI_BASE_URL", env_of(pod["spec"]["containers"][0])["OPENAI_BASE_URL"])
    url = str(openai.OpenAI(api_key="x").base_url)
    assert url.startswith("http://extproc-gateway.extproc-system.svc.cluster.local/openai")


def test_redirect_init_container() -> None:
    pod = patched("inject_redirect")
    first = pod["spec"]["initContainers"][0]
    assert first["name"] == "extproc-redirect" and "restartPolicy" not in first
    assert first["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    script = first["command"][2]
    assert "--uid-owner 101 -j RETURN" in script  # Envoy's own traffic leaves
    assert "--dports 80,443 -j REDIRECT --to-ports 10000" in script
    envoy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "extproc-envoy")
    assert envoy["securityContext"]["runAsUser"] == 101
    # Only the redirect container gains capabilities.
    for c in pod["spec"]["initContainers"][1:] + pod["spec"]["containers"]:
        assert "add" not in c.get("securityContext", {}).get("capabilities", {})


def test_envoy_configmap_content_validates(tmp_path: Path) -> None:
    """The envoy.yaml the injected Envoy reads (ConfigMap data, as mounted) passes validate mode."""
    pod = patched("inject_full")
    (configmap,) = [o for o in build(ROOT / "k8s/tenant") if o["kind"] == "ConfigMap"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "extproc-config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    etc = tmp_path / "etc"
    etc.mkdir()
    for key, text in configmap["data"].items():
        (etc / key).write_text(text)
    envoy = pod["spec"]["initContainers"][0]
    args = [a.replace("/etc/extproc", str(etc)) for a in envoy["args"]]
    run = subprocess.run(
        [str(ENVOY), "--mode", "validate", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]
