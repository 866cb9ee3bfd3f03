"""`extproc config check` names file, line and key path for typical mistakes in every section.

Each case appends a section to the example configuration; ``# <-`` marks the line the error
must point at (the key itself, or the mapping that lacks a key).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main

REPO = Path(__file__).resolve().parents[2]
# The example's base sections (listeners, redis, identity, providers), without its policy etc.
BASE = (REPO / "examples" / "extproc.yaml").read_text().split("\npolicy:", 1)[0] + "\n"

CASES = [
    # base sections (edited in place)
    ("listeners-port", None, ("port: 9100}", "port: 9100, prot: 1}  # <-"), "listeners.admin.prot",
     "did you mean 'port'"),
    ("redis-url", None, ("url: ${REDIS_URL:-redis://127.0.0.1:6379/0}", "url: http://x  # <-"), "redis.url",
     "redis://"),
    ("issuer-alg", None, ("audiences: [extproc]", "audiences: [extproc]\n      algorithms: [HS256]  # <-"),
     "identity.issuers[0].algorithms[0]", "not allowed"),
    ("provider-api", None, ("api: openai\n", "api: opanai  # <-\n"), "providers[0].api",
     "must be one of openai, anthropic, generic, mcp"),
    ("envoy-range", "envoy:\n  message_timeout_ms: 10  # <-\n", None, "envoy.message_timeout_ms",
     "between 50 and 60000"),
    # policy
    ("policy-key", "policy:\n  rules:\n    - id: a\n      action: block\n      mach: {users: bob}  # <-\n", None,
     "policy.rules[0].mach", "did you mean 'match'"),
    ("policy-action", "policy:\n  rules:\n    - id: a\n      action: deny  # <-\n", None,
     "policy.rules[0].action", "must be one of allow, mask, require_approval, block"),
    ("policy-missing", "policy:\n  rules:\n    - id: a  # <-\n      description: no action\n", None,
     "policy.rules[0]", "missing required key 'action'"),
    ("policy-detector", "policy:\n  rules:\n    - id: a\n      action: mask\n      match:\n        content:\n"
     "          detectors: [EMAILS]  # <-\n", None, "policy.rules[0].match.content.detectors[0]",
     "did you mean 'EMAIL'"),
    # masking
    ("masking-style", "masking:\n  styles:\n    EMAIL: rot13  # <-\n", None, "masking.styles.EMAIL", "unknown style"),
    ("masking-responses", "masking:\n  responses:\n    providers: [demo, nope]  # <-\n", None,
     "masking.responses.providers[1]", "unknown provider 'nope'"),
    # a missing key is reported on the line of the mapping that lacks it
    ("masking-hash", "masking:  # <-\n  styles: {EMAIL: hash}\n", None, "masking.hash_key", "required"),
    # approvals
    ("approvals-hold", "approvals:\n  hold_seconds: 900  # <-\n  ttl_seconds: 1000\n", None,
     "approvals.hold_seconds", "max_message_timeout_seconds"),
    ("approvals-quorum", "approvals:\n  rules:\n    secrets:\n      users: [a]\n      quorum: 2  # <-\n", None,
     "approvals.rules.secrets.quorum", "only 1 user"),
    ("approvals-hook", "approvals:\n  webhooks:\n    - url: ftp://x  # <-\n", None, "approvals.webhooks[0].url",
     "http:// or https://"),
    # recording
    ("recording-mode", "recording:\n  mode: sometimes  # <-\n", None, "recording.mode",
     "must be one of required, best_effort"),
    ("recording-type", "recording:\n  retention:\n    max_entries: lots  # <-\n", None,
     "recording.retention.max_entries", "must be an integer"),
    ("recording-flag", "recording:\n  enabled: yes please  # <-\n", None, "recording.enabled", "true or false"),
    # tools
    ("tools-operator", "tools:\n  rules:\n    - id: a\n      action: block\n      match:\n        arguments:\n"
     "          - {path: q}  # <-\n", None, "tools.rules[0].match.arguments[0]", "needs an operator"),
    ("tools-pin", "tools:\n  pins:\n    crm:\n      search: abc  # <-\n", None, "tools.pins.crm.search",
     "sha256 fingerprint"),
    ("tools-model-calls", "tools:\n  model_calls: drop  # <-\n", None, "tools.model_calls", "remove, error"),
]


@pytest.mark.parametrize(("name", "append", "replace", "path", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_config_check_points_at_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, append: str | None,
    replace: tuple[str, str] | None, path: str, fragment: str,
) -> None:
    text = BASE
    if replace is not None:
        assert replace[0] in text
        text = text.replace(replace[0], replace[1], 1)
    if append is not None:
        text += "\n" + append
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "# <-" in t)
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    assert main(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}:{line}: {path}: " in err, err
    assert fragment in err, err



def test_a_key_without_a_value_takes_its_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `key:` with nothing after it is YAML null: read as "not set", as the hand-written readers did.
    text = BASE.replace("http:        {address: 127.0.0.1, port: 10000}", "http:        {address: , port: 10000}")
    text += "approvals:\n  hold_seconds:\n  rules:\n    \"*\": {groups: [legal]}\n"
    f = tmp_path / "nulls.yaml"
    f.write_text(text)
    assert main(["config", "check", str(f)]) == 0, capsys.readouterr().err
    from extproc.config.load import load_config

    cfg = load_config(f, env={})
    assert cfg.listener.address == "127.0.0.1"
    assert cfg.file.approvals is not None and cfg.file.approvals.hold_seconds == 120
