from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Stack

_STACKS: list[Stack] = []


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stack"))
    _STACKS.append(s)
    try:
        s.start()
    except Exception:
        print(s.logs_text())
        s.stop()
        raise
    yield s
    s.stop()


@pytest.fixture
def fresh_upstream(stack: Stack) -> Stack:
    stack.upstream.reset()
    return stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for s in _STACKS:
            report.sections.append(("stack logs", s.logs_text()))
