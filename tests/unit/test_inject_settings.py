from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extproc.inject.settings import InjectSettings, SettingsError, load_settings, parse_settings


def test_defaults() -> None:
    s = parse_settings(None)
    assert s == InjectSettings()
    assert s.mode == "sidecar" and s.failure_policy == "Ignore"
    assert s.extproc_image == "ghcr.io/extproc/extproc:0.1.0"
    assert s.routes == {"OPENAI_BASE_URL": "/openai", "ANTHROPIC_BASE_URL": "/anthropic"}


def test_overrides() -> None:
    s = parse_settings(
        {
            "images": {"extproc": "registry.local/extproc:dev"},
            "gateway_url": "https://127.0.0.1:10443/",
            "ca_bundle": {"config_map": "bundle"},
            "resources": {"envoy": {"limits": {"memory": "1Gi"}}},
            "extproc_env": [
                {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "r", "key": "url"}}}
            ],
        }
    )
    assert s.extproc_image == "registry.local/extproc:dev"
    assert s.gateway_url == "https://127.0.0.1:10443" and s.https
    assert s.resources["envoy"] == {"limits": {"memory": "1Gi"}}
    assert s.resources["extproc"]["requests"]["cpu"] == "100m"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"nope": 1}, "nope"),
        ({"mode": "mesh"}, "mode"),
        ({"gateway_url": "ftp://x"}, "gateway_url"),
        ({"ca_bundle": {"config_map": "b"}}, "ca_bundle"),  # with an http:// gateway
        ({"images": {"envoy": ""}}, "images.envoy"),
        ({"uids": {"envoy": 0}}, "uids.envoy"),
        ({"routes": {"bad-name": "/x"}}, "routes.bad-name"),
        ({"resources": {"envoy": {"limits": {"memory": "lots"}}}}, "resources.envoy.limits.memory"),
        ({"extproc_env": [{"name": "A"}]}, "extproc_env[0]"),
        ({"failure_policy": "Maybe"}, "failure_policy"),
        ({"redirect_ports": [0]}, "redirect_ports"),
        ([], ""),
    ],
)
def test_errors_name_the_key(data: Any, where: str) -> None:
    with pytest.raises(SettingsError) as exc:
        parse_settings(data)
    assert str(exc.value).startswith(where)


def test_load_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: [\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)
