"""Just-in-time approval through the real data path: the request is held at the gateway and
nothing reaches the provider until an authorised human decides (with the real CLI)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e

DEAL = "Please review this term sheet"


def ask(s: Stack, token: str, text: str = DEAL, *, timeout: float = 30) -> Any:
    c = openai.OpenAI(api_key=token, base_url=s.gateway + "/fake", max_retries=0, timeout=timeout)
    return c.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])  # type: ignore[arg-type]


def pending_ids(s: Stack, approver: str) -> set[str]:
    r = s.cli("approvals", "list", "--json", token=approver)
    assert r.returncode == 0, r.stderr
    return {a["id"] for a in json.loads(r.stdout)}


def pending_id(s: Stack, approver: str, *, timeout: float = 5.0, exclude: set[str] | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = s.cli("approvals", "list", "--json", token=approver)
        assert r.returncode == 0, r.stderr
        ids = [a["id"] for a in json.loads(r.stdout) if a["id"] not in (exclude or set())]
        if ids:
            return str(ids[0])
        time.sleep(0.1)
    raise AssertionError("no pending approval appeared")


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        yield ex


def unique_user(prefix: str = "u") -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_held_until_approved_by_the_cli_then_forwarded_once(fresh_upstream: Stack,
                                                            pool: concurrent.futures.ThreadPoolExecutor) -> None:
    s = fresh_upstream
    approver = s.token(unique_user("lee"), groups=("legal",))
    before = pending_ids(s, approver)
    fut = pool.submit(ask, s, s.token(unique_user()))
    aid = pending_id(s, approver, exclude=before)
    assert not fut.done() and s.upstream.requests == []  # held, nothing forwarded
    r = s.cli("approvals", "approve", aid, "--reason", "looks fine", token=approver)
    assert r.returncode == 0, r.stderr
    out = fut.result(timeout=10)
    assert out.choices[0].message.content
    assert len(s.upstream.requests) == 1
    assert json.loads(s.upstream.requests[0].body)["messages"][0]["content"] == DEAL
    # The record of the interaction carries the approval reference.
    rid = s.upstream.requests[0].headers["x-request-id"]
    auditor = s.token("audrey", groups=("auditors",))
    deadline = time.monotonic() + 30  # polls until true; the bound only stops a broken run
    while True:
        shown = s.cli("sessions", "show", rid, "--json", token=auditor)
        if (shown.returncode == 0 and json.loads(shown.stdout).get("complete")) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    record = json.loads(shown.stdout)
    assert record["approval_id"] == aid and record["decision"]["action"] == "require_approval"


def test_deny_returns_403_with_the_reason(fresh_upstream: Stack, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    s = fresh_upstream
    approver = s.token(unique_user("lee"), groups=("legal",))
    before = pending_ids(s, approver)
    fut = pool.submit(ask, s, s.token(unique_user()))
    aid = pending_id(s, approver, exclude=before)
    assert s.cli("approvals", "deny", aid, "--reason", "not this quarter", token=approver).returncode == 0
    with pytest.raises(openai.PermissionDeniedError) as exc:
        fut.result(timeout=10)
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "approval_denied" and "not this quarter" in body["message"]
    assert s.upstream.requests == []


def test_hold_timeout_then_retry_after_approval_and_binding(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    user = unique_user()
    approver = s.token(unique_user("lee"), groups=("legal",))
    t0 = time.monotonic()
    with pytest.raises(openai.PermissionDeniedError) as exc:
        ask(s, s.token(user))
    assert 3.5 < time.monotonic() - t0 < 9  # held for hold_seconds (4), then answered
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "approval_pending"
    aid = body["approval_id"]
    assert f"extproc approvals approve {aid}" in body["message"]
    assert exc.value.response.headers["x-extproc-approval"] == aid
    assert s.upstream.requests == []

    assert s.cli("approvals", "approve", aid, token=approver).returncode == 0
    # Another user, or a changed prompt, cannot ride on this grant: held again (and times out).
    with pytest.raises(openai.PermissionDeniedError) as other:
        ask(s, s.token(unique_user()))
    assert isinstance(other.value.body, dict) and other.value.body["approval_id"] != aid
    with pytest.raises(openai.PermissionDeniedError) as changed:
        ask(s, s.token(user), DEAL + " (v2)")
    assert isinstance(changed.value.body, dict) and changed.value.body["approval_id"] != aid
    assert s.upstream.requests == []
    # The original caller's identical retry passes at once, without a new hold.
    t0 = time.monotonic()
    assert ask(s, s.token(user)).choices[0].message.content
    assert time.monotonic() - t0 < 2
    assert len(s.upstream.requests) == 1
    # A once-grant is used up.
    with pytest.raises(openai.PermissionDeniedError):
        ask(s, s.token(user))


def test_self_approval_and_outsiders_are_refused(fresh_upstream: Stack,
                                                 pool: concurrent.futures.ThreadPoolExecutor) -> None:
    s = fresh_upstream
    lawyer = unique_user("lee")
    approver = s.token(unique_user("lee"), groups=("legal",))
    before = pending_ids(s, approver)
    fut = pool.submit(ask, s, s.token(lawyer, groups=("legal",)))
    aid = pending_id(s, approver, exclude=before)
    own = s.cli("approvals", "approve", aid, token=s.token(lawyer, groups=("legal",)))
    assert own.returncode != 0 and "cannot decide" in own.stderr
    outsider = s.cli("approvals", "approve", aid, token=s.token(unique_user(), groups=("engineering",)))
    assert outsider.returncode != 0, outsider.stdout
    nobody = s.cli("approvals", "approve", aid, token="not-a-jwt")
    assert nobody.returncode != 0
    with pytest.raises(openai.PermissionDeniedError):
        fut.result(timeout=10)  # still pending when the hold runs out
    assert s.upstream.requests == []


def test_approval_given_on_another_replica_releases_the_held_request(
    fresh_upstream: Stack, pool: concurrent.futures.ThreadPoolExecutor, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    s = fresh_upstream
    other = Stack(tmp_path_factory.mktemp("approval-replica"), parent=s).start()
    try:
        approver = s.token(unique_user("lee"), groups=("legal",))
        before = pending_ids(s, approver)
        fut = pool.submit(ask, s, s.token(unique_user()))  # held by the first ext_proc process
        aid = pending_id(other, approver, exclude=before)
        r = s.cli("approvals", "approve", aid, token=approver, admin=other)  # decided through the second
        assert r.returncode == 0, r.stderr
        assert fut.result(timeout=10).choices[0].message.content
        assert len(s.upstream.requests) == 1
    finally:
        other.stop()


def test_many_held_requests_do_not_block_other_traffic(long_holds: Stack) -> None:
    """50 requests held at once; unrelated requests complete while every one of them is still
    pending; then all 50 are released explicitly (denied) and end with 403 at once."""
    import grpc

    from extproc.api.admin.v1 import approvals_pb2 as pb
    from extproc.api.admin.v1 import approvals_pb2_grpc as pb_grpc

    s = long_holds
    s.upstream.reset()
    approver = s.token(unique_user("lee"), groups=("legal",))
    md = [("authorization", f"Bearer {approver}")]
    before = pending_ids(s, approver)
    with concurrent.futures.ThreadPoolExecutor(60) as ex:
        # The client waits longer than the hold: only the explicit release below ends them.
        held = [ex.submit(ask, s, s.token(unique_user()), timeout=300) for _ in range(50)]
        with grpc.insecure_channel(f"127.0.0.1:{s.ports['admin_grpc']}") as ch:
            stub = pb_grpc.ApprovalsStub(ch)
            deadline = time.monotonic() + 60
            ids: set[str] = set()
            while len(ids) < 50 and time.monotonic() < deadline:  # every hold is registered
                listed = stub.ListPending(pb.ListPendingRequest(limit=500), metadata=md, timeout=10)
                ids = {a.id for a in listed.approvals} - before
                time.sleep(0.2)
            assert len(ids) == 50
            for _ in range(10):  # unrelated requests go through while all 50 are held
                out = ask(s, s.token(unique_user()), "hello there")
                assert out.choices[0].message.content
            assert [f for f in held if f.done()] == []  # nothing ended the holds: they are all pending
            assert len(s.upstream.requests) == 10
            for aid in ids:
                stub.Deny(pb.DecideRequest(id=aid, reason="test over"), metadata=md, timeout=10)
        for f in held:
            with pytest.raises(openai.PermissionDeniedError) as exc:
                f.result(timeout=120)
            assert exc.value.body["code"] == "approval_denied"  # type: ignore[index]
    assert len(s.upstream.requests) == 10


def test_ext_proc_dying_during_a_hold_fails_the_request_closed(
    fresh_upstream: Stack, pool: concurrent.futures.ThreadPoolExecutor, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import signal

    s = fresh_upstream
    other = Stack(tmp_path_factory.mktemp("dying-replica"), parent=s)
    with other.running():
        approver = s.token(unique_user("lee"), groups=("legal",))
        before = pending_ids(other, approver)
        fut = pool.submit(ask, other, other.token(unique_user()))
        aid = pending_id(other, approver, exclude=before)
        other.procs["extproc"].signal(signal.SIGKILL)
        with pytest.raises(openai.InternalServerError) as exc:
            fut.result(timeout=15)
        assert exc.value.status_code == 503
        # Approving now releases nothing: the request is gone and was never forwarded.
        assert s.cli("approvals", "approve", aid, token=approver).returncode == 0
        time.sleep(0.5)
        assert s.upstream.requests == []
