"""`extproc policy check | test | explain`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extproc.policy.cli import run

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "examples" / "policy-demo.yaml")
CASES = str(ROOT / "examples" / "policy-cases.yaml")
BENCH = str(ROOT / "examples" / "policy-bench.yaml")


def _config(tmp_path: Path, policy: str) -> str:
    base = (ROOT / "examples" / "extproc.yaml").read_text()
    f = tmp_path / "cfg.yaml"
    f.write_text(base + "\n" + policy)
    return str(f)


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "check", DEMO]) == 0
    assert "OK" in capsys.readouterr().out
    assert run(["policy", "check", BENCH]) == 0
    assert "20 rule(s)" in capsys.readouterr().out


def test_check_points_at_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _config(
        tmp_path,
        "policy:\n  rules:\n    - id: a\n      action: block\n      match:\n        content: {regex: ['(?=x)']}\n",
    )
    assert run(["policy", "check", f]) == 2
    err = capsys.readouterr().err
    assert "policy.rules[0].match.content.regex[0]" in err and "lookahead" in err
    lines = Path(f).read_text().splitlines()
    line = int(err.split(f + ":", 1)[1].split(":", 1)[0])
    assert "regex" in lines[line - 1] or "content" in lines[line - 1]


def test_demo_cases_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "test", DEMO, CASES]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.strip().splitlines()[-1].startswith("PASS: 13/13")


def test_a_wrong_expectation_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _config(tmp_path, "policy:\n  rules:\n    - {id: b, action: block, match: {content: {keywords: [x]}}}\n")
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "- name: right\n  request: {user: a, provider: openai, path: /chat/completions,"
        " body: {model: m, messages: [{role: user, content: x}]}}\n  expect: {action: block, rule_id: b}\n"
        "- name: wrong\n  request: {user: a, provider: openai, path: /openai/chat/completions,"
        " body: {model: m, messages: [{role: user, content: x}]}}\n  expect: {action: allow}\n"
    )
    assert run(["policy", "test", f, str(cases)]) == 1
    out = capsys.readouterr().out
    assert "PASS right" in out and "FAIL wrong: action: expected 'allow', got 'block'" in out
    assert "FAIL: 1/2" in out


def test_bad_cases_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _config(tmp_path, "")
    cases = tmp_path / "cases.yaml"
    cases.write_text("- name: x\n  request: {provider: nope}\n  expect: {action: allow}\n")
    assert run(["policy", "test", f, str(cases)]) == 2
    assert "unknown provider 'nope'" in capsys.readouterr().err


def test_explain_prints_every_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _config(
        tmp_path,
        "policy:\n  rules:\n"
        "    - {id: s, action: block, mode: shadow, match: {content: {keywords: [x]}}}\n"
        "    - {id: m, action: mask, match: {content: {keywords: [x]}}}\n",
    )
    request = {
        "user": "a",
        "provider": "anthropic",
        "path": "/v1/messages",
        "body": {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x y"}]},
    }
    assert run(["policy", "explain", f, "--request", json.dumps(request)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "mask" and out["mode"] == "shadow" and out["shadow_rule_id"] == "s"
    assert [m["rule_id"] for m in out["matches"]] == ["s", "m"]
    assert out["body"]["messages"][0]["content"] == "[REDACTED:m] y"
    req_file = tmp_path / "req.json"
    req_file.write_text(json.dumps(request))
    assert run(["policy", "explain", f, "--request", f"@{req_file}"]) == 0
    assert json.loads(capsys.readouterr().out)["operation"] == "messages"
    assert run(["policy", "explain", f, "--request", "{nope"]) == 2
