from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Stack, all_stacks


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")).running() as s:
        yield s


@pytest.fixture(scope="session", autouse=True)
def no_secret_anywhere(stack: Stack) -> Iterator[None]:
    """After every end-to-end test has pushed tokens, provider keys and PII through the gateway,
    none of them is in any process's log or in the metrics. Runs at the end of the session
    whatever order the tests ran in (a failure here is reported as an error of the session)."""
    yield
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


@pytest.fixture
def fresh_upstream(stack: Stack) -> Stack:
    stack.upstream.reset()
    return stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for s in all_stacks():
            report.sections.append(("stack logs", s.logs_text()))
