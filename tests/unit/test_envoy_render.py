"""Every Envoy config in envoy/ is a fresh render, and passes the real `envoy --mode validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extproc.config.envoy import dump_yaml, render_envoy
from extproc.config.load import load_config
from extproc.dev.keys import ensure_dev_tls
from extproc.dev.procs import validate_envoy_config

REPO = Path(__file__).resolve().parents[2]
#: committed Envoy config -> the extproc config it is rendered from
RENDERED = {REPO / "envoy" / "envoy.yaml": REPO / "examples" / "extproc.yaml"}


def test_every_config_in_envoy_dir_is_known() -> None:
    assert set(REPO.joinpath("envoy").glob("*.yaml")) == set(RENDERED)
    assert not (REPO / "envoy" / "__init__.py").exists()


@pytest.mark.parametrize("envoy_yaml", sorted(RENDERED), ids=lambda p: p.name)
def test_committed_config_is_fresh(envoy_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    src = RENDERED[envoy_yaml].relative_to(REPO)
    fresh = dump_yaml(load_config(src, env={}))
    assert envoy_yaml.read_text() == fresh, f"stale: run `extproc envoy render {src} -o {envoy_yaml.relative_to(REPO)}`"


@pytest.mark.parametrize("envoy_yaml", sorted(RENDERED), ids=lambda p: p.name)
def test_committed_config_validates_with_real_envoy(envoy_yaml: Path, tmp_path: Path) -> None:
    # Relative paths (the development certificate) resolve against the working directory.
    ensure_dev_tls(tmp_path / ".run/tls/gateway.crt", tmp_path / ".run/tls/gateway.key")
    ok, out = validate_envoy_config(envoy_yaml, cwd=tmp_path)
    assert ok, out


def _find(d: object, key: str) -> list[object]:
    found: list[object] = []
    if isinstance(d, dict):
        for k, v in d.items():
            if k == key:
                found.append(v)
            found += _find(v, key)
    elif isinstance(d, list):
        for v in d:
            found += _find(v, key)
    return found


def test_rendered_config_properties() -> None:
    cfg = load_config(REPO / "examples" / "extproc.yaml", env={})
    doc = render_envoy(cfg)
    (proc,) = {yaml.safe_dump(p) for p in _find(doc, "typedConfig")
               if isinstance(p, dict) and p.get("@type", "").endswith("ext_proc.v3.ExternalProcessor")}
    p = yaml.safe_load(proc)
    assert p.get("failureModeAllow", False) is False  # fail closed
    assert p["processingMode"]["responseBodyMode"] == "STREAMED"
    assert p["messageTimeout"] == "2s" and p["maxMessageTimeout"] == "600s"
    routes = _find(doc, "routes")[0]
    assert {r["name"] for r in routes} >= {"openai", "openai-exact"}  # type: ignore[index]
    assert all(r["requestHeadersToRemove"] == ["accept-encoding"] for r in routes)  # type: ignore[union-attr]
    assert all(r["route"]["timeout"] == "0s" for r in routes)  # type: ignore[union-attr]
    clusters = {c["name"]: c for c in doc["staticResources"]["clusters"]}
    tls = clusters["provider_openai"]["transportSocket"]["typedConfig"]
    assert tls["sni"] == "api.openai.com"
    vc = tls["commonTlsContext"]["validationContext"]
    assert vc["trustedCa"]["filename"] == "/etc/ssl/certs/ca-certificates.crt"
    assert vc["matchTypedSubjectAltNames"][0]["matcher"]["exact"] == "api.openai.com"
    assert "transportSocket" not in clusters["provider_demo"]  # plain-HTTP demo upstream


def test_every_example_renders_and_validates(tmp_path: Path) -> None:
    ensure_dev_tls(tmp_path / ".run/tls/gateway.crt", tmp_path / ".run/tls/gateway.key")
    for src in sorted((REPO / "examples").glob("*.yaml")):
        data = yaml.safe_load(src.read_text())
        if not isinstance(data, dict) or "providers" not in data:
            continue  # not an extproc configuration (e.g. a policy test-cases file)
        out = tmp_path / f"{src.stem}.envoy.yaml"
        out.write_text(dump_yaml(load_config(src, env={})))
        ok, msg = validate_envoy_config(out, cwd=tmp_path)
        assert ok, f"{src.name}: {msg}"
