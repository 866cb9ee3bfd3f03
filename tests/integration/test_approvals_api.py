"""The Approvals gRPC API and the ``extproc approvals`` CLI against a real server and Redis.

A ``grpc.aio`` server on 127.0.0.1 serves the real servicer; callers present tokens from the
development issuer (``extproc.dev.keys``), verified by a real ``Authenticator``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from extproc.api.admin.v1 import approvals_pb2 as pb
from extproc.api.admin.v1 import approvals_pb2_grpc as pb_grpc
from extproc.approvals import cli as approvals_cli
from extproc.approvals.api import add_to_server
from extproc.approvals.ids import new_approval_id
from extproc.approvals.model import Approval, ApprovalSettings, Binding, content_digest, new_approval
from extproc.approvals.store import ApprovalStore
from extproc.approvals.waiter import ApprovalWaiter
from extproc.config.model import IssuerConfig
from extproc.dev.keys import DEV_AUDIENCE, DEV_ISSUER, ensure_dev_issuer, mint_token
from extproc.identity.jwt import Authenticator
from extproc.identity.model import Identity

SETTINGS = ApprovalSettings.from_config(
    {"rules": {"secrets": {"groups": ["sec"]}, "two-man": {"groups": ["sec"], "quorum": 2}}}
)


@dataclass
class Env:
    store: ApprovalStore
    waiter: ApprovalWaiter
    stub: Any
    target: str
    key_pem: str

    def token(self, user: str, *groups: str) -> str:
        return mint_token(self.key_pem, subject=user, groups=list(groups))

    def md(self, user: str, *groups: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token(user, *groups)}")]

    async def held(self, *, user: str = "alice", rule: str = "secrets", text: str = "hi") -> Approval:
        requester = Identity(user=user, groups=("eng", "sec"), issuer=DEV_ISSUER, subject=user, expires_at=0)
        b = Binding(
            user=user,
            issuer=DEV_ISSUER,
            provider="openai",
            route="/chat/completions",
            content_digest=content_digest(json.dumps({"m": text}).encode(), api="openai"),
            policy_version="pv1",
            rule_id=rule,
        )
        return await self.store.create(new_approval(
            approval_id=new_approval_id(), binding=b, requester=requester, settings=SETTINGS, now=time.time()))


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Env]:
    key_path, jwks_path = ensure_dev_issuer(tmp_path)
    issuer = IssuerConfig(
        issuer=DEV_ISSUER,
        audiences=(DEV_AUDIENCE,),
        jwks_url=None,
        jwks_file=str(jwks_path),
        jwks_ca_file=None,
        jwks_token_file=None,
        user_claim="sub",
        groups_claim="groups",
        clock_skew_seconds=30,
        algorithms=(),
    )
    prefix = f"extproc-test:{uuid.uuid4().hex}:"
    redis = Redis.from_url(os.environ["REDIS_URL"])
    waiter = ApprovalWaiter(redis, prefix=prefix)
    await waiter.start()
    server = grpc.aio.server()
    add_to_server(server, redis=redis, authenticator=Authenticator([issuer]), settings=SETTINGS, waiter=waiter,
                  prefix=prefix)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        yield Env(ApprovalStore(redis, prefix=prefix), waiter, pb_grpc.ApprovalsStub(channel), target,
                  key_path.read_text())
    finally:
        await channel.close()
        await server.stop(0)
        await waiter.close()
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


def run(tmp_path: Path, fn: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(tmp_path) as env:
            await fn(env)

    asyncio.run(main())


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value.code(), exc.value.details() or ""


# -- the API --------------------------------------------------------------------------------


def test_unauthenticated(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a = await env.held()
        code, _ = await status_of(env.stub.ListPending(pb.ListPendingRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, msg = await status_of(
            env.stub.Approve(pb.DecideRequest(id=a.id), metadata=[("authorization", "Bearer a.b.c")])
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED and "token" in msg
        # a token from an issuer this server does not trust
        foreign = mint_token(env.key_pem, subject="bob", groups=["sec"], issuer="https://evil")
        code, _ = await status_of(
            env.stub.Approve(pb.DecideRequest(id=a.id), metadata=[("authorization", f"Bearer {foreign}")])
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        got = await env.store.get(a.id)
        assert got is not None and got.state == "pending" and not got.decisions

    run(tmp_path, body)


def test_approve_and_refusals(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a = await env.held()
        # the requester is in the approver group, and still may not approve herself
        code, msg = await status_of(env.stub.Approve(pb.DecideRequest(id=a.id), metadata=env.md("alice", "sec")))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "cannot decide" in msg
        code, msg = await status_of(env.stub.Approve(pb.DecideRequest(id=a.id), metadata=env.md("dave", "eng")))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "dave" in msg
        code, _ = await status_of(env.stub.Get(pb.GetApprovalRequest(id=a.id), metadata=env.md("dave", "eng")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        listed = await env.stub.ListPending(pb.ListPendingRequest(), metadata=env.md("dave", "eng"))
        assert list(listed.approvals) == []
        listed = await env.stub.ListPending(pb.ListPendingRequest(), metadata=env.md("bob", "sec"))
        assert [x.id for x in listed.approvals] == [a.id]
        mine = await env.stub.Get(pb.GetApprovalRequest(id=a.id), metadata=env.md("alice"))
        assert mine.state == "pending" and mine.requester.user == "alice"

        got = await env.stub.Approve(pb.DecideRequest(id=a.id, reason="fine"), metadata=env.md("bob", "sec"))
        assert got.state == "approved" and got.decisions[0].approver.user == "bob" and got.grant_expires_at > 0
        late = pb.DecideRequest(id=a.id, reason="x")
        code, msg = await status_of(env.stub.Deny(late, metadata=env.md("carol", "sec")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "approved" in msg
        code, _ = await status_of(env.stub.Get(pb.GetApprovalRequest(id="apr_" + "q" * 20), metadata=env.md("bob")))
        assert code == grpc.StatusCode.NOT_FOUND
        code, _ = await status_of(env.stub.Get(pb.GetApprovalRequest(id="nope"), metadata=env.md("bob")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT

    run(tmp_path, body)


def test_deny_quorum_and_wake(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a = await env.held(rule="two-man")
        held = asyncio.create_task(env.waiter.wait(a.id, timeout=10))
        code, _ = await status_of(env.stub.Deny(pb.DecideRequest(id=a.id), metadata=env.md("bob", "sec")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # a denial needs a reason
        one = await env.stub.Approve(pb.DecideRequest(id=a.id), metadata=env.md("bob", "sec"))
        assert (one.state, one.approvals, one.quorum) == ("pending", 1, 2)
        code, _ = await status_of(env.stub.Approve(pb.DecideRequest(id=a.id), metadata=env.md("bob", "sec")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION  # one vote each
        await asyncio.sleep(0.05)
        assert not held.done()
        two = await env.stub.Approve(pb.DecideRequest(id=a.id), metadata=env.md("carol", "sec"))
        assert two.state == "approved"
        assert (await asyncio.wait_for(held, 1)).state == "approved"

        b = await env.held(text="other")
        denied = await env.stub.Deny(pb.DecideRequest(id=b.id, reason="no secrets"), metadata=env.md("carol", "sec"))
        assert denied.state == "denied" and denied.decisions[0].reason == "no secrets"

    run(tmp_path, body)


def test_watch(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a = await env.held()
        call = env.stub.Watch(pb.WatchRequest(include_pending=True), metadata=env.md("bob", "sec"))
        first = await asyncio.wait_for(call.read(), 5)
        assert (first.event, first.approval.id) == ("pending", a.id)
        b = await env.held(text="second")
        ev = await asyncio.wait_for(call.read(), 5)
        assert (ev.event, ev.approval.id) == ("created", b.id)
        await env.stub.Approve(pb.DecideRequest(id=a.id), metadata=env.md("carol", "sec"))
        ev = await asyncio.wait_for(call.read(), 5)
        assert (ev.event, ev.approval.id, ev.approval.state) == ("approved", a.id, "approved")
        call.cancel()

        # a non-approver's watch sees nothing of alice's requests
        other = env.stub.Watch(pb.WatchRequest(include_pending=True), metadata=env.md("dave", "eng"))
        c = await env.held(text="third")
        await env.stub.Deny(pb.DecideRequest(id=c.id, reason="r"), metadata=env.md("bob", "sec"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.read(), 0.3)
        other.cancel()

        code, _ = await status_of(env.stub.Watch(pb.WatchRequest()).read())
        assert code == grpc.StatusCode.UNAUTHENTICATED

    run(tmp_path, body)


# -- the CLI (through a local parser: register() is what `extproc` will call) ---------------


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="extproc")
    approvals_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXTPROC_TOKEN", raising=False)

    async def body(env: Env) -> None:
        a = await env.held()
        bob, dave, alice = env.token("bob", "sec"), env.token("dave", "eng"), env.token("alice", "sec")

        async def run_cli(*argv: str) -> tuple[int, str, str]:
            rc = await asyncio.to_thread(cli, ["approvals", *argv, "--admin", env.target])
            out = capsys.readouterr()
            return rc, out.out, out.err

        rc, out, _ = await run_cli("list", "--token", bob)
        assert rc == 0 and a.id in out and "alice" in out and "0/1" in out
        rc, out, _ = await run_cli("list", "--token", bob, "--json")
        assert rc == 0 and [x["id"] for x in json.loads(out)] == [a.id]
        rc, out, _ = await run_cli("show", a.id, "--token", bob)
        assert rc == 0 and "state:      pending" in out and "group sec" in out

        rc, _, err = await run_cli("approve", a.id, "--token", alice)
        assert rc == 1 and "permission denied" in err and "cannot decide" in err
        rc, _, err = await run_cli("approve", a.id, "--token", dave)
        assert rc == 1 and "permission denied" in err
        rc, _, err = await run_cli("approve", a.id, "--token", "not-a-jwt")
        assert rc == 1 and "not authenticated" in err
        rc, _, err = await run_cli("approve", a.id)
        assert rc == 2 and "EXTPROC_TOKEN" in err
        rc, _, err = await run_cli("approve", "apr_short", "--token", bob)
        assert rc == 2 and "not an approval id" in err

        monkeypatch.setenv("EXTPROC_TOKEN", bob)
        rc, out, _ = await run_cli("approve", a.id, "--reason", "looks fine")
        assert rc == 0 and f"{a.id}: approved" in out
        rc, _, err = await run_cli("deny", a.id, "--reason", "late")
        assert rc == 1 and "cannot do that now" in err

        b = await env.held(text="b")
        with pytest.raises(SystemExit) as exc:
            cli(["approvals", "deny", b.id])  # --reason is required
        assert exc.value.code == 2
        capsys.readouterr()
        rc, out, _ = await run_cli("deny", b.id, "--reason", "no", "--json")
        assert rc == 0 and json.loads(out)["state"] == "denied"

        c = await env.held(text="c")
        watch = asyncio.create_task(run_cli("watch", "--count", "2", "--json"))
        await asyncio.sleep(0.5)  # the watch has printed c as pending by now
        await env.store.decide(c.id, Identity("carol", ("sec",), DEV_ISSUER, "carol", 0), "approve")
        rc, out, _ = await asyncio.wait_for(watch, 10)
        events = [json.loads(line) for line in out.splitlines()]
        assert rc == 0 and [(e["event"], e["approval"]["id"]) for e in events] == [
            ("pending", c.id),
            ("approved", c.id),
        ]

        rc = await asyncio.to_thread(cli, ["approvals", "list", "--token", bob, "--admin", "127.0.0.1:1",
                                           "--timeout", "1"])
        assert rc == 1 and "cannot reach the admin API at 127.0.0.1:1" in capsys.readouterr().err

    run(tmp_path, body)
