"""Validation of the policy section: precise errors with file, line and key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extproc.errors import ConfigError
from extproc.policy import Policy

ROOT = Path(__file__).resolve().parents[2]


def _err(raw: Any, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        Policy.from_config(raw, **kw)
    return exc.value


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ([], "policy", "must be a mapping"),
        ({"mode": "audit"}, "policy.mode", "enforce, shadow"),
        ({"rulez": []}, "policy.rulez", "did you mean 'rules'"),
        ({"rules": {}}, "policy.rules", "must be a list"),
        ({"rules": [{"action": "block"}]}, "policy.rules[0]", "missing required key 'id'"),
        ({"rules": [{"id": "a"}]}, "policy.rules[0]", "missing required key 'action'"),
        ({"rules": [{"id": "a b", "action": "block"}]}, "policy.rules[0].id", "letters, digits"),
        (
            {"rules": [{"id": "a", "action": "deny"}]},
            "policy.rules[0].action",
            "allow, mask, require_approval, block",
        ),
        (
            {"rules": [{"id": "a", "action": "block"}, {"id": "a", "action": "allow"}]},
            "policy.rules[1].id",
            "already used by policy.rules[0]",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "match": {"users": []}}]},
            "policy.rules[0].match.users",
            "must not be empty",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "match": {"groups": [1]}}]},
            "policy.rules[0].match.groups[0]",
            "non-empty string",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "match": {"operations": ["chatt"]}}]},
            "policy.rules[0].match.operations[0]",
            "must be one of",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "match": {"content": {}}}]},
            "policy.rules[0].match.content",
            "at least one of",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "match": {"content": {"regex": ["(a)\\1"]}}}]},
            "policy.rules[0].match.content.regex[0]",
            "backreferences",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "match": {"content": {"keywords": ["  "]}}}]},
            "policy.rules[0].match.content.keywords[0]",
            "non-space",
        ),
        ({"rules": [{"id": "a", "action": "mask"}]}, "policy.rules[0].match", "needs 'content'"),
        (
            {"rules": [{"id": "a", "action": "allow", "message": "hi"}]},
            "policy.rules[0].message",
            "only shown",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "masking": {}}]},
            "policy.rules[0].masking",
            "only applies",
        ),
        (
            {
                "rules": [
                    {
                        "id": "a",
                        "action": "mask",
                        "match": {"content": {"keywords": ["x"]}},
                        "masking": {"replacement": "{value}"},
                    }
                ]
            },
            "policy.rules[0].masking.replacement",
            "{rule}",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "unless": {"content": {"keywords": ["x"]}}}]},
            "policy.rules[0].unless.content",
            "not content",
        ),
        (
            {"rules": [{"id": "a", "action": "block", "unless": {}}]},
            "policy.rules[0].unless",
            "must not be empty",
        ),
        ({"budgets": [{"id": "b"}]}, "policy.budgets[0]", "needs a limit"),
        ({"budgets": [{"id": "b", "requests": 0}]}, "policy.budgets[0].requests", "between 1"),
        ({"budgets": [{"id": "b", "requests": True}]}, "policy.budgets[0].requests", "integer"),
        ({"budgets": [{"id": "b", "requests": 1, "per": "team"}]}, "policy.budgets[0].per", "user, group"),
        (
            {"budgets": [{"id": "b", "requests": 1, "fail": "maybe"}]},
            "policy.budgets[0].fail",
            "closed, open",
        ),
        (
            {"budgets": [{"id": "b", "requests": 1, "match": {"content": {"keywords": ["x"]}}}]},
            "policy.budgets[0].match.content",
            "not content",
        ),
        (
            {"budgets": [{"id": "b", "requests": 1}, {"id": "b", "tokens": 1}]},
            "policy.budgets[1].id",
            "already",
        ),
    ],
)
def test_errors_name_the_key_path_and_the_problem(raw: Any, path: str, fragment: str) -> None:
    err = _err(raw)
    assert err.path == path
    assert fragment in err.message


def test_errors_carry_file_and_nearest_line() -> None:
    lines = {"policy": 10, "policy.rules": 11, "policy.rules[0]": 12, "policy.rules[0].match": 14}
    err = _err({"rules": [{"id": "a", "action": "mask", "match": {}}]}, file="x.yaml", lines=lines)
    assert (err.file, err.line) == ("x.yaml", 14)
    assert str(err).startswith("x.yaml:14: policy.rules[0].match: ")
    err = _err({"rules": [{"id": "a"}]}, file="x.yaml", lines=lines)
    assert err.line == 12  # a missing key is reported on its mapping's line


def test_none_is_an_empty_policy_and_versions_are_stable() -> None:
    p = Policy.from_config(None)
    assert p.rules == () and p.budgets == ()
    a = Policy.from_config({"rules": [{"id": "x", "action": "block"}], "mode": "enforce"})
    b = Policy.from_config({"mode": "enforce", "rules": [{"action": "block", "id": "x"}]})
    c = Policy.from_config({"rules": [{"id": "y", "action": "block"}]})
    assert a.version == b.version != c.version
    assert len(a.version) == 16


def test_string_shorthand_for_lists() -> None:
    p = Policy.from_config({"rules": [{"id": "a", "action": "block", "match": {"users": "alice"}}]})
    assert p.rules[0].selector.users is not None and p.rules[0].selector.users.patterns == ("alice",)


def test_global_shadow_mode_is_the_default_of_every_rule() -> None:
    p = Policy.from_config(
        {
            "mode": "shadow",
            "rules": [{"id": "a", "action": "block"}, {"id": "b", "action": "block", "mode": "enforce"}],
        }
    )
    assert [r.mode for r in p.rules] == ["shadow", "enforce"]
