"""Without a policy (or recording) the gateway still authenticates, injects and scrubs, and tells Envoy not to
send request bodies at all (one round trip less); the body still reaches the upstream intact."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def plain(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Without a policy there is no deal-approval rule to name approvers for (config check refuses it).
    approvals = {"hold_seconds": 4, "ttl_seconds": 300, "grant": "once",
                 "rules": {"email-needs-approval": {"groups": ["legal"]}}}
    off = {"policy": None, "masking": None, "recording": None, "approvals": approvals}
    with Stack(tmp_path_factory.mktemp("plain"), parent=stack, extra_config=off).running() as s:
        yield s


def test_body_skipped_by_ext_proc_but_forwarded_intact(plain: Stack) -> None:
    plain.upstream.reset()
    big = "x" * 200_000 + " project falcon bob@example.com"
    c = openai.OpenAI(api_key=plain.token(), base_url=plain.gateway + "/fake", max_retries=0)
    out = c.chat.completions.create(model="m", messages=[{"role": "user", "content": big}])  # type: ignore[arg-type]
    assert out.choices[0].message.content
    seen = plain.upstream.requests[0]
    assert json.loads(seen.body)["messages"][0]["content"] == big  # ungoverned: not blocked, not masked
    assert seen.headers["authorization"] == f"Bearer {plain.credential}"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="nope", base_url=plain.gateway + "/fake", max_retries=0).models.list()
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{plain.ports['admin']}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    counts = {line.split("{")[1].split('"')[1]: float(line.split()[-1])
              for line in metrics.splitlines() if line.startswith("extproc_message_seconds_count{")}
    assert counts["request_headers"] >= 1 and counts["response_body"] >= 1
    assert counts["request_body"] == 0  # Envoy honoured the mode override
