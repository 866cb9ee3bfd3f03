"""The Sessions admin API and the ``extproc sessions`` CLI against a real gRPC server and Redis.

Only auditors may read records; the CLI lists, shows, replays (text equal to what was
delivered, masked), exports and verifies (exit 1 with the first break when tampered).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from redis.asyncio import Redis

from extproc.api.admin.v1 import sessions_pb2, sessions_pb2_grpc
from extproc.config.model import IssuerConfig
from extproc.dev.keys import DEV_AUDIENCE, DEV_ISSUER, ensure_dev_issuer, mint_token
from extproc.identity.jwt import Authenticator
from extproc.identity.model import Identity
from extproc.recording.api import add_to_server
from extproc.recording.cli import register
from extproc.recording.model import AuditorSettings, InteractionRecorder, RecordingSettings, SpoolSettings
from extproc.recording.store import RecordsStore

URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/13"
T = TypeVar("T")
CRED = "sk-demo-INJECTED-credential-0123456789"
CHUNKS = [b'data: {"text": "Hello"}\n\n', b'data: {"text": " wor', b'ld, mail me at eve@exam',
          b'ple.com, key ' + CRED[:12].encode(), CRED[12:].encode() + b'"}\n\n', b"data: [DONE]\n\n"]


class Api:
    """A grpc.aio server with the Sessions service, on its own event loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        self.prefix = f"extproc-test:{uuid.uuid4().hex}:"
        key_path, jwks_path = ensure_dev_issuer(tmp)
        self.key = key_path.read_text()
        self.issuer = IssuerConfig(
            issuer=DEV_ISSUER, audiences=(DEV_AUDIENCE,), jwks_url=None, jwks_file=str(jwks_path),
            jwks_ca_file=None, jwks_token_file=None, user_claim="sub", groups_claim="groups",
            clock_skew_seconds=30, algorithms=(),
        )
        self.settings = RecordingSettings(
            auditors=AuditorSettings(groups=("security",), users=("carol",)),
            spool=SpoolSettings(path=str(tmp / "spool.jsonl")),
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.addr = self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> str:
        self.client = Redis.from_url(URL)
        self.store = RecordsStore(self.client, self.settings, prefix=self.prefix)
        self.server = grpc.aio.server()
        add_to_server(self.server, store=self.store, authenticator=Authenticator([self.issuer]),
                      settings=lambda: self.settings)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    async def _stop(self) -> None:
        await self.server.stop(0)
        keys = [k async for k in self.client.scan_iter(match=f"{self.prefix}*")]
        if keys:
            await self.client.delete(*keys)
        await self.client.aclose()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def token(self, sub: str, groups: tuple[str, ...] = ()) -> str:
        return mint_token(self.key, subject=sub, groups=list(groups))

    def record(self, rid: str, *, user: str = "alice", step: float = 0.1) -> None:
        async def go() -> None:
            t = time.time()
            rec = InteractionRecorder(self.settings, now=t, interaction_id=uuid.uuid4().hex, secrets=(CRED,))
            rec.request(request_id=rid, method="POST", path="/demo/chat/completions", provider="demo",
                        route="/chat/completions", caller=Identity(user, ("eng",), DEV_ISSUER, user, 0.0))
            await self.store.append_start(rec.forwarded(b'{"stream": true}', now=t + 0.001))
            rec.response_headers(200, now=t + 0.01, content_type="text/event-stream")
            for i, c in enumerate(CHUNKS):
                rec.response_chunk(c, t + 0.02 + i * step)
            await self.store.append_complete(rec.complete({"input_tokens": 5, "output_tokens": 9}, now=t + 1))

        self.run(go())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    a = Api(tmp_path_factory.mktemp("sessions-api"))
    a.record("req-a")
    a.record("req-b", user="bob")
    try:
        yield a
    finally:
        a.close()


def cli(api: Api, *argv: str, token: str | None = None) -> int:
    p = argparse.ArgumentParser(prog="extproc")
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["sessions", argv[0], "--admin", api.addr, "--token", token or api.token("carol"), *argv[1:]])
    rc: int = args.func(args)
    return rc


def expected_text() -> str:
    return ('data: {"text": "Hello"}\n\ndata: {"text": " world, mail me at [EMAIL], key [SECRET]"}\n\n'
            "data: [DONE]\n\n")


def test_only_auditors_may_read(api: Api) -> None:
    with grpc.insecure_channel(api.addr) as ch:
        stub = sessions_pb2_grpc.SessionsStub(ch)
        calls = [
            lambda md: stub.List(sessions_pb2.ListRecordsRequest(), metadata=md, timeout=10),
            lambda md: stub.Get(sessions_pb2.GetRecordRequest(request_id="req-a"), metadata=md, timeout=10),
            lambda md: list(stub.Export(sessions_pb2.ExportRecordsRequest(), metadata=md, timeout=10)),
            lambda md: stub.Verify(sessions_pb2.VerifyRecordsRequest(), metadata=md, timeout=10),
        ]
        outsider = (("authorization", f"Bearer {api.token('mallory', ('eng',))}"),)
        for call in calls:
            with pytest.raises(grpc.RpcError) as ei:
                call(outsider)
            assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as ei:
                call(())
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for md in ((("authorization", f"Bearer {api.token('dana', ('security',))}"),),
                   (("authorization", f"Bearer {api.token('carol')}"),)):
            res = calls[0](md)
            assert {r.request_id for r in res.records} >= {"req-a", "req-b"}
            detail = calls[1](md)
            assert detail.summary.user == "alice" and detail.summary.complete
            assert json.loads(detail.json)["response"]["masked"] == {"EMAIL": 1, "SECRET": 1}
            assert len(calls[2](md)) == 4
            assert calls[3](md).ok
        with pytest.raises(grpc.RpcError) as ei:
            stub.Get(sessions_pb2.GetRecordRequest(request_id="nope"), metadata=md, timeout=10)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_replay_re_emits_the_delivered_text(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    assert cli(api, "replay", "req-a", "--speed", "0", "--response-only") == 0
    assert time.monotonic() - t0 < 2.0
    out = capsys.readouterr().out
    assert out == expected_text()
    assert CRED not in out and "eve@example.com" not in out

    t0 = time.monotonic()
    assert cli(api, "replay", "req-a", "--speed", "2") == 0
    assert time.monotonic() - t0 >= 0.2  # five recorded gaps of 100 ms (minus held text), halved
    out = capsys.readouterr().out
    assert "caller    alice" in out and "--- response (" in out and out.endswith("\n--- end ---\n")
    body = out.split(" ---\n", 2)[2].rsplit("\n--- end ---\n", 1)[0]
    assert body == expected_text()


def test_cli_list_show_export_verify(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli(api, "list", "--user", "bob", "--json") == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["request_id"] for r in rows] == ["req-b"] and rows[0]["total_tokens"] == 14

    assert cli(api, "list", "--since", "1h") == 0
    table = capsys.readouterr().out
    assert "req-a" in table and "req-b" in table

    assert cli(api, "show", "req-b") == 0
    out = capsys.readouterr().out
    assert "caller    bob" in out and "[EMAIL]" in out

    assert cli(api, "export") == 0
    export = tmp_path / "export.jsonl"
    export.write_text(capsys.readouterr().out)
    assert len(export.read_text().splitlines()) == 4
    assert cli(api, "verify", "--file", str(export)) == 0
    assert "OK: 4 entries" in capsys.readouterr().out

    assert cli(api, "verify") == 0
    assert "OK" in capsys.readouterr().out
    assert cli(api, "list", token=api.token("mallory")) == 1
    assert "error: permission denied:" in capsys.readouterr().err


def test_cli_verify_reports_the_first_break(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = Api(tmp_path)
    try:
        for i in range(3):
            a.record(f"t{i}", step=0)
        ids = a.run(_ids(a))
        a.run(_xdel(a, ids[2]))
        assert cli(a, "verify") == 1
        out = capsys.readouterr().out
        assert f"BROKEN at {ids[3]}" in out and "deleted" in out
        assert cli(a, "verify", "--to", ids[1]) == 0
    finally:
        with contextlib.suppress(Exception):
            a.close()


async def _ids(a: Api) -> list[str]:
    return [e[0].decode() for e in await a.client.xrange(a.store.keys.stream)]


async def _xdel(a: Api, eid: str) -> None:
    await a.client.xdel(a.store.keys.stream, eid)
