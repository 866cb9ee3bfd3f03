"""Approval webhooks against a local HTTP receiver: retries, formats, failures that cost nothing."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from redis.asyncio import Redis

from extproc.admin.http import Request, Response, serve_http
from extproc.approvals.ids import new_approval_id
from extproc.approvals.model import Approval, ApprovalSettings, Binding, Webhook, content_digest, new_approval
from extproc.approvals.notify import Notifier
from extproc.approvals.store import ApprovalStore
from extproc.identity.model import Identity

ALICE = Identity("alice", ("eng",), "https://idp", "alice", 0)
BOB = Identity("bob", ("sec",), "https://idp", "bob", 0)
SETTINGS = ApprovalSettings.from_config({"rules": {"*": {"groups": ["sec"]}}})


@dataclass
class Receiver:
    """Answers ``fail_first`` requests with 503, then 200; records every body it got."""

    fail_first: int = 0
    status_after: int = 200
    bodies: list[dict[str, object]] = field(default_factory=list)
    hits: int = 0
    url: str = ""

    async def handle(self, req: Request) -> Response:
        self.hits += 1
        if req.method != "POST" or req.headers.get("content-type") != "application/json":
            return Response.json(400, b"{}")
        if self.hits <= self.fail_first:
            return Response.json(503, b'{"error":"down"}')
        self.bodies.append(json.loads(req.body))
        return Response.json(self.status_after, b"{}")


@asynccontextmanager
async def receiving(rcv: Receiver) -> AsyncIterator[Receiver]:
    server = await serve_http(rcv.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rcv.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rcv
    finally:
        server.close()
        await server.wait_closed()


def approval(text: str = "x") -> Approval:
    b = Binding("alice", "https://idp", "openai", "/chat/completions",
                content_digest(text.encode(), api="openai"), "pv1", "secrets")
    return new_approval(approval_id=new_approval_id(), binding=b, requester=ALICE, settings=SETTINGS, now=time.time())


def test_retries_until_delivered() -> None:
    async def main() -> None:
        async with receiving(Receiver(fail_first=2)) as rcv:
            n = Notifier([Webhook(url=rcv.url, format="slack", retries=3, timeout_seconds=2)], backoff_base=0.01)
            a = approval()
            t0 = time.monotonic()
            n.notify("created", a)
            assert time.monotonic() - t0 < 0.05  # never blocks the caller
            await n.drain(5)
            assert (rcv.hits, n.delivered, n.failed) == (3, 1, 0)
            text = str(rcv.bodies[0]["text"])
            assert a.id in text and f"extproc approvals approve {a.id}" in text and "alice" in text

    asyncio.run(main())


def test_gives_up_quietly() -> None:
    async def main() -> None:
        async with receiving(Receiver(fail_first=100)) as rcv:
            n = Notifier(
                [Webhook(url=rcv.url, retries=2, timeout_seconds=2), Webhook(url="http://127.0.0.1:1/x", retries=1)],
                backoff_base=0.01,
            )
            n.notify("created", approval())
            await n.drain(5)
            assert rcv.hits == 3 and n.failed == 2 and n.delivered == 0
        async with receiving(Receiver(status_after=404)) as rcv:
            n = Notifier([Webhook(url=rcv.url, retries=5)], backoff_base=0.01)
            n.notify("created", approval())
            await n.drain(5)
            assert rcv.hits == 1 and n.failed == 1  # a 404 is not retried
        n = Notifier([Webhook(url=None, url_env="NOPE_NOT_SET")], env={})
        n.notify("created", approval())
        await n.drain(1)
        assert n.failed == 1

    asyncio.run(main())


def test_store_notifies_created_and_decided(redis_url: str) -> None:
    async def main() -> None:
        prefix = f"extproc-test:{uuid.uuid4().hex}:"
        redis = Redis.from_url(os.environ["REDIS_URL"])
        try:
            async with receiving(Receiver()) as rcv:
                n = Notifier([Webhook(url=rcv.url)], backoff_base=0.01)
                store = ApprovalStore(redis, prefix=prefix, notifier=n)
                a = await store.create(approval())
                await store.decide(a.id, BOB, "deny", "not today")
                await n.drain(5)
                assert [b["event"] for b in rcv.bodies] == ["created", "decided"]
                last = rcv.bodies[1]["approval"]
                assert isinstance(last, dict) and last["state"] == "denied" and "body" not in last
                # a webhook that is down never stops the approval itself
                down = Notifier([Webhook(url="http://127.0.0.1:1/x", retries=0)])
                store2 = ApprovalStore(redis, prefix=prefix, notifier=down)
                b = await store2.create(approval("y"))
                assert (await store2.decide(b.id, BOB, "approve")).state == "approved"
                await down.close(2)
        finally:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()

    asyncio.run(main())
