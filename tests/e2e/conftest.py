from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Stack, all_stacks


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")).running() as s:
        yield s


@pytest.fixture(scope="module")
def long_holds(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second replica whose holds last two minutes: a hold ends only because a test ends it
    (the main stack's 4-second holds race a loaded machine's CLI calls)."""
    extra = {"approvals": {"hold_seconds": 120, "ttl_seconds": 300, "grant": "once",
                           "rules": {"deal-approval": {"groups": ["legal"]},
                                     "email-needs-approval": {"groups": ["legal"]}}}}
    with Stack(tmp_path_factory.mktemp("long-holds"), parent=stack, extra_config=extra).running() as s:
        yield s


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
