"""The JSON Schema is generated from the configuration types, committed, and used by editors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from extproc.cli import main
from extproc.config.model import parse_config
from extproc.config.schema import SCHEMA_PATH, config_schema, render_schema
from extproc.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in [*REPO.glob("examples/*.yaml"), *REPO.glob("k8s/**/extproc.yaml")]
                 if "providers:" in p.read_text())
BASE = yaml.safe_load((REPO / "examples" / "extproc.yaml").read_text())


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def test_committed_schema_is_current() -> None:
    # Regenerate with: extproc config schema -o extproc/config/extproc.schema.json
    assert SCHEMA_PATH.read_text() == render_schema(), "extproc/config/extproc.schema.json is stale"


def test_cli_prints_the_schema(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_schema()
    out = tmp_path / "s.json"
    assert main(["config", "schema", "-o", str(out)]) == 0
    assert out.read_text() == render_schema()


def test_schema_is_valid_draft_2020_12_and_closed() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert all(d.get("additionalProperties") is False for d in schema["$defs"].values() if d.get("type") == "object")
    assert set(schema["properties"]) == {"version", "listeners", "redis", "identity", "providers", "envoy",
                                         "shutdown_grace_seconds", "policy", "masking", "approvals", "recording",
                                         "tools", "inspection", "workers"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configurations_conform(path: Path) -> None:
    _validator().validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name == "examples"], ids=lambda p: p.name)
def test_examples_point_editors_at_the_schema(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert m, first
    assert (path.parent / m.group(1)).resolve() == SCHEMA_PATH


def _with(**sections: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(sections)
    return data


@pytest.mark.parametrize(
    "data",
    [
        _with(policy={"rulez": []}),
        _with(policy={"rules": [{"id": "a", "action": "deny"}]}),
        _with(policy={"budgets": [{"id": "b"}]}),
        _with(policy={"rules": [{"id": "a", "action": "block", "match": {"content": {"regexp": ["x"]}}}]}),
        _with(listeners={"http": {"port": 70000}}),
        _with(approvals={"hold_seconds": 0}),
        _with(recording={"mode": "sometimes"}),
        _with(tools={"rules": [{"id": "a", "action": "block", "match": {"arguments": [{"path": "x"}]}}]}),
        _with(masking={"styles": {"EMAIL": "rot13"}}),
        _with(providers=[{"name": "x", "base_url": "http://x", "credential": {}}]),
    ],
)
def test_schema_rejects_what_the_loader_rejects(data: dict[str, Any]) -> None:
    assert not _validator().is_valid(data)
    with pytest.raises(ConfigError):
        parse_config(data, env={})
