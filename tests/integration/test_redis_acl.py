"""Tenant isolation in a shared Redis: one ACL user per namespace, confined to its key
prefix (k8s/components/redis-acl/users.acl.template), shown against a real redis-server
started with that ACL file. Each tenant's own stores (records, approvals, budgets) work
under it; the other tenant's credentials read nothing of theirs."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from extproc.approvals.ids import new_approval_id
from extproc.approvals.model import ApprovalSettings, Binding, content_digest, new_approval
from extproc.approvals.store import ApprovalStore
from extproc.approvals.waiter import ApprovalWaiter
from extproc.config.load import load_config
from extproc.dev.procs import Proc, find_redis_server, free_port, wait_tcp
from extproc.identity.model import Identity
from extproc.policy import BudgetCharge
from extproc.policy.budgets import check_and_reserve
from extproc.recording.model import RecordingSettings, SpoolSettings
from extproc.recording.store import RecordsStore
from tests.integration.test_records_store import record

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "k8s/components/redis-acl/users.acl.template"
PASSWORDS = {"team-a": "pw-a-0123456789", "team-b": "pw-b-0123456789"}


def acl_file(namespaces: dict[str, str]) -> str:
    lines = [ln for ln in TEMPLATE.read_text().splitlines() if ln and not ln.startswith("#")]
    out = [ln for ln in lines if "{NS}" not in ln]
    tenant = [ln for ln in lines if "{NS}" in ln]
    assert len(tenant) == 1
    for ns, pw in namespaces.items():
        out.append(tenant[0].replace("{NS}", ns).replace("{PASSWORD_SHA256}", hashlib.sha256(pw.encode()).hexdigest()))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = find_redis_server()
    assert binary, "no redis-server"
    d = tmp_path_factory.mktemp("redis-acl")
    (d / "users.acl").write_text(acl_file(PASSWORDS))
    port = free_port()
    proc = Proc("redis-acl", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(d), "--aclfile", str(d / "users.acl")],
                d / "redis.log").start()
    try:
        wait_tcp("127.0.0.1", port, 10, proc)
        yield port
    finally:
        proc.stop()


def client(port: int, ns: str) -> Redis:
    return Redis.from_url(f"redis://extproc-{ns}:{PASSWORDS[ns]}@127.0.0.1:{port}/0", socket_timeout=5)


def prefix_for(ns: str) -> str:
    cfg = load_config(ROOT / "k8s/base/config/extproc.yaml", env={"EXTPROC_NAMESPACE": ns})
    return cfg.redis_prefix


def ident(user: str, *groups: str) -> Identity:
    return Identity(user=user, groups=groups, issuer="https://idp", subject=user, expires_at=time.time() + 3600)


def test_the_shipped_config_prefixes_keys_by_namespace() -> None:
    assert prefix_for("team-a") == "extproc:team-a:"
    assert prefix_for("team-b") == "extproc:team-b:"


def test_a_tenant_works_and_the_other_reads_nothing(acl_redis: int, tmp_path: Path) -> None:
    async def main() -> None:
        a, b = client(acl_redis, "team-a"), client(acl_redis, "team-b")
        pa, pb = prefix_for("team-a"), prefix_for("team-b")
        try:
            # team-a: records, approvals (with the pub/sub waiter) and budgets under its ACL user.
            rs = RecordsStore(a, RecordingSettings(spool=SpoolSettings(path=str(tmp_path / "s"), max_bytes=1 << 20)),
                              prefix=pa, retry_interval=0)
            await record(rs, "r1", user="system:serviceaccount:team-a:app")
            assert [r["request_id"] for r in await rs.list()] == ["r1"]
            assert rs.spooled == 0 and rs.failed == 0
            assert (await rs.trim(time.time())) is not None  # retention (SCAN + trims) is allowed
            settings = ApprovalSettings.from_config({"rules": {"secrets": {"groups": ["sec"], "quorum": 1}}})
            store = ApprovalStore(a, prefix=pa)
            waiter = ApprovalWaiter(a, prefix=pa)
            await waiter.start()
            binding = Binding(user="alice", issuer="https://idp", provider="openai", route="/chat/completions",
                              content_digest=content_digest(b'{"messages":["x"]}', api="openai"),
                              policy_version="pv1", rule_id="secrets")
            appr = await store.create(new_approval(binding, requester=ident("alice"), settings=settings,
                                                   now=time.time(), approval_id=new_approval_id()))
            waiting = asyncio.create_task(waiter.wait(appr.id, timeout=10))
            await asyncio.sleep(0.1)
            await store.decide(appr.id, ident("bob", "sec"), "approve", "ok")
            assert (await waiting).state == "approved"
            await waiter.close()
            charge = BudgetCharge(budget_id="b", key="budget:b:user:alice", window_seconds=60, requests_limit=5,
                                  tokens_limit=None, fail="closed")
            out = await check_and_reserve(a, [charge], prompt_tokens=1, now=time.time(), prefix=pa)
            assert out.allowed and not out.unavailable

            # team-b's credentials: every read of team-a's keys is refused.
            names = [k async for k in a.scan_iter(match=f"{pa}*")]
            assert len(names) >= 5
            for key in names:
                kind = (await a.type(key)).decode()
                with pytest.raises(NoPermissionError):
                    if kind == "stream":
                        await b.xrange(key)
                    elif kind == "hash":
                        await b.hgetall(key)
                    elif kind == "zset":
                        await b.zrange(key, 0, -1)
                    elif kind == "set":
                        await b.smembers(key)
                    else:
                        await b.dump(key)
            with pytest.raises(NoPermissionError):
                await b.set(f"{pa}budget:b:user:alice:0", b"1")
            with pytest.raises(NoPermissionError):
                await b.delete(*names)
            # ...also through extproc's own code, if team-b's config named team-a's prefix.
            stolen = RecordsStore(b, rs.settings, prefix=pa, retry_interval=0)
            with pytest.raises((NoPermissionError, ResponseError)):
                await stolen.get("r1")
            refused = await check_and_reserve(b, [charge], prompt_tokens=1, now=time.time(), prefix=pa)
            assert refused.unavailable and not refused.allowed and refused.status == 503  # fails closed
            # Scripts cannot reach across either (EVAL checks the keys it touches).
            with pytest.raises((NoPermissionError, ResponseError)):
                await b.eval("return redis.call('GET', KEYS[1])", 1, f"{pa}x")
            with pytest.raises((NoPermissionError, ResponseError)):
                await b.eval(f"return redis.call('GET', '{pa}x')", 1, f"{pb}x")
            # No pub/sub on team-a's approval channel, no KEYS, no admin commands.
            with pytest.raises(NoPermissionError):
                await b.publish(f"{pa}approvals:events", b"{}")
            ps = b.pubsub()
            with pytest.raises(NoPermissionError):
                await ps.subscribe(f"{pa}approvals:events")
                for _ in range(20):  # redis-py reports the refusal when the reply is read
                    await ps.get_message(timeout=0.1)
            await ps.aclose()
            for cmd in (("KEYS", "*"), ("FLUSHALL",), ("CONFIG", "GET", "*"), ("ACL", "LIST"), ("MONITOR",)):
                with pytest.raises(NoPermissionError):
                    await b.execute_command(*cmd)
            # team-b's own prefix works.
            await b.set(f"{pb}x", b"1")
            assert await b.get(f"{pb}x") == b"1"
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


def test_the_default_user_is_off(acl_redis: int) -> None:
    async def main() -> None:
        c = Redis(host="127.0.0.1", port=acl_redis, socket_timeout=5)
        try:
            with pytest.raises((AuthenticationError, NoPermissionError)):
                await c.get("extproc:team-a:x")
        finally:
            await c.aclose()

    asyncio.run(main())
