"""Checks across sections: `extproc config check` refuses approvers for a rule that cannot hold."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config.model import parse_config
from extproc.datapath.runtime import validate_sections
from extproc.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE: dict[str, Any] = yaml.safe_load((REPO / "examples" / "extproc.yaml").read_text())


def _with(approval_rules: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE)
    data["policy"] = {"rules": [
        {"id": "deal-approval", "match": {"content": {"keywords": ["term sheet"]}}, "action": "require_approval"},
        {"id": "no-falcon", "match": {"content": {"keywords": ["falcon"]}}, "action": "block"},
    ]}
    data["tools"] = {"rules": [{"id": "mail-approval", "match": {"tool": "send_email"}, "action": "require_approval"}]}
    data["approvals"] = {"rules": approval_rules}
    return data


def test_approvers_for_existing_holding_rules_pass() -> None:
    validate_sections(parse_config(_with({"deal-approval": {"groups": ["legal"]},
                                          "mail-approval": {"users": ["lee"]}, "*": {"groups": ["sec"]}}), env={}))


@pytest.mark.parametrize(("rid", "why"), [("deal-aproval", "names no rule"), ("no-falcon", "not a require_approval")])
def test_approvers_for_a_missing_or_non_holding_rule_are_refused(rid: str, why: str) -> None:
    cfg = parse_config(_with({rid: {"groups": ["legal"]}}), env={})
    with pytest.raises(ConfigError, match=why) as exc:
        validate_sections(cfg)
    assert f"approvals.rules.{rid}" in str(exc.value) and "deal-approval" in str(exc.value)
