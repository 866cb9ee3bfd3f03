"""Runs last (file order): after every end-to-end test has pushed tokens, provider keys and PII
through the gateway, none of them is in any process's log or in the metrics."""

from __future__ import annotations

import urllib.request

import pytest

from tests.e2e.harness import Stack, all_stacks

pytestmark = pytest.mark.e2e


def test_no_credential_or_token_in_any_log_or_metric(stack: Stack) -> None:
    stacks = all_stacks()
    assert stacks
    logs = b"".join(s.all_log_bytes() for s in stacks)
    assert len(logs) > 1000  # the processes did log (access log, interaction lines)
    for secret in {stack.credential, stack.anthropic_credential, "sk-ant-rotated-" + "x" * 20}:
        assert secret.encode() not in logs
    assert b"eyJ" not in logs  # no JWT (its header segment) was ever logged
    assert b"bob@example.com" not in logs  # interaction log lines carry no bodies
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['admin']}/metrics", timeout=5) as r:
        metrics = r.read()
    assert stack.credential.encode() not in metrics and b"eyJ" not in metrics
