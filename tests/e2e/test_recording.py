"""Session recording through the real data path: every interaction recorded, masked, chained,
readable only by auditors, replayable; crash- and Redis-failure behaviour."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rec(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A replica with a Redis of its own: these tests stop it and tamper with it."""
    with Stack(tmp_path_factory.mktemp("recorded"), parent=stack, own_redis=True).running() as s:
        yield s


def auditor(s: Stack) -> str:
    return s.token("audrey", groups=("auditors",))


def client(s: Stack, token: str, prefix: str = "/masked") -> openai.OpenAI:
    return openai.OpenAI(api_key=token, base_url=s.gateway + prefix, max_retries=0, timeout=30)


def show(s: Stack, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:  # the completion is written just after the response ends
        r = s.cli("sessions", "show", request_id, "--json", token=auditor(s))
        if r.returncode == 0:
            doc: dict[str, Any] = json.loads(r.stdout)
            if doc.get("complete") or time.monotonic() > deadline:
                return doc
        elif time.monotonic() > deadline:
            raise AssertionError(r.stderr)
        time.sleep(0.1)


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def rid_of(resp: Any) -> str:
    return str(resp.headers["x-request-id"])


def test_plain_streamed_blocked_masked_and_denied_are_recorded(rec: Stack) -> None:
    s = rec
    user = f"rita-{uuid.uuid4().hex[:6]}"
    token = s.token(user)
    c = client(s, token)
    plain = c.chat.completions.with_raw_response.create(
        model="gpt-x", messages=[{"role": "user", "content": "Mail bob@example.com please"}],  # type: ignore[arg-type]
        extra_headers={"x-fake-texts": json.dumps(["Sure, carol@example.org"]), "x-session-id": "sess-1"})
    streamed = c.chat.completions.with_raw_response.create(
        model="gpt-x", messages=[{"role": "user", "content": "stream it"}], stream=True,  # type: ignore[arg-type]
        extra_headers={"x-fake-mode": "sse", "x-fake-delay-ms": "30", "x-session-id": "sess-1",
                       "x-fake-texts": json.dumps(["Call ", "+1-983-", "264-4179", " now"])})
    received = "".join(ch.choices[0].delta.content or "" for ch in streamed.parse() if ch.choices)
    with pytest.raises(openai.PermissionDeniedError) as blocked:
        c.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "project falcon?"}])  # type: ignore[arg-type]

    p = show(s, rid_of(plain))
    assert p["complete"] is True and p["forwarded"] is True
    assert p["caller"]["user"] == user and p["session_id"] == "sess-1"
    assert p["decision"]["action"] == "mask" and p["decision"]["rule_id"] == "mask-contact-data"
    assert "bob@example.com" not in json.dumps(p) and "[EMAIL]" in p["request"]["body"]
    assert p["status"] == 200 and p["usage"]["total_tokens"] == 8
    response_text = json.dumps(p["response"])
    assert "carol@example.org" not in response_text and "[EMAIL]" in response_text
    assert p["latency_ms"] >= 0 and p["forwarded_at_ms"] >= p["received_at_ms"]
    assert p["completed_at_ms"] >= p["forwarded_at_ms"]

    st = show(s, rid_of(streamed))
    assert st["stream"] is True and st["complete"] is True and len(st["response"]["chunks"]) >= 4
    assert st["first_byte_at_ms"] is not None
    assert received == "Call [PHONE] now"  # masked for the client on the /masked route
    replay = s.cli("sessions", "replay", rid_of(streamed), "--speed", "0", "--response-only", token=auditor(s))
    assert replay.returncode == 0, replay.stderr
    assert "983-264" not in replay.stdout
    replayed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in replay.stdout.splitlines()
                       if line.startswith("data: {") and json.loads(line[6:]).get("choices"))
    assert replayed == received  # the stream re-emitted is the one the client saw

    b = show(s, blocked.value.response.headers["x-request-id"])
    assert b["forwarded"] is False and b["decision"]["rule_id"] == "no-project-falcon"
    assert b["status"] == 403

    ls = s.cli("sessions", "list", "--user", user, "--json", token=auditor(s))
    assert ls.returncode == 0, ls.stderr
    assert {rid_of(plain), rid_of(streamed)} <= {r["request_id"] for r in lines(ls.stdout)}
    denied = s.cli("sessions", "list", "--json", token=s.token("eve", groups=("engineering",)))
    assert denied.returncode != 0  # only auditors read records


def test_no_record_holds_a_credential_token_or_masked_pii(rec: Stack) -> None:
    s = rec
    token = s.token(f"pat-{uuid.uuid4().hex[:6]}")
    key = s.credential
    client(s, token, "/fake").chat.completions.create(
        model="m", messages=[{"role": "user", "content": "my card 4242 4242 4242 4242, bob@example.com"}],  # type: ignore[arg-type]
        extra_headers={"x-fake-texts": json.dumps([f"your key {key} and 257-28-8896"])})
    with pytest.raises(openai.AuthenticationError):
        client(s, token, "/fake").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}],  # type: ignore[arg-type]
            extra_headers={"x-fake-status": "401", "x-fake-echo-credential": "1"})
    time.sleep(0.5)
    r = redis.Redis.from_url(s.redis_url)
    dump = b""
    for k in r.scan_iter("extproc:*"):
        t = r.type(k)
        if t == b"stream":
            dump += json.dumps([[i.decode(), {a.decode(): b.decode() for a, b in f.items()}]
                                for i, f in r.xrange(k)]).encode()
        elif t == b"string":
            dump += r.get(k) or b""
        elif t == b"hash":
            dump += json.dumps({a.decode(): b.decode() for a, b in r.hgetall(k).items()}).encode()
    assert len(dump) > 1000
    for secret in (key, token, token.split(".")[2], "4242 4242 4242 4242", "bob@example.com", "257-28-8896"):
        assert secret.encode() not in dump, secret[:12]
    spool = s.workdir / "spool.jsonl"
    assert not spool.exists() or key.encode() not in spool.read_bytes()


def _rewrite(r: redis.Redis, entries: list[Any], change: Any) -> None:
    """Rebuild the stream with the same ids, one entry changed (a stream has no in-place edit)."""
    pipe = r.pipeline()
    pipe.delete("extproc:records")
    for sid, fields in entries:
        pipe.xadd("extproc:records", change(sid, dict(fields)), id=sid)
    pipe.execute()


def test_verify_detects_an_edited_and_a_deleted_record(rec: Stack) -> None:
    s = rec
    for i in range(3):
        client(s, s.token()).chat.completions.create(model="m", messages=[{"role": "user", "content": f"n{i}"}])  # type: ignore[arg-type]
    time.sleep(0.5)
    ok = s.cli("sessions", "verify", token=auditor(s))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    r = redis.Redis.from_url(s.redis_url)
    entries = r.xrange("extproc:records")
    victim = entries[len(entries) // 2][0]

    def edit(sid: bytes, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
        if sid == victim:
            key = next(k for k in fields if fields[k].startswith(b"{"))
            fields[key] = fields[key].replace(b'"status":200', b'"status":201', 1).replace(b'"POST"', b'"GET"', 1)
        return fields

    _rewrite(r, entries, edit)
    edited = s.cli("sessions", "verify", token=auditor(s))
    assert edited.returncode == 1 and victim.decode() in edited.stdout + edited.stderr
    _rewrite(r, entries, lambda sid, f: f)  # restored: valid again
    assert s.cli("sessions", "verify", token=auditor(s)).returncode == 0

    r.xdel("extproc:records", victim)
    deleted = s.cli("sessions", "verify", token=auditor(s))
    assert deleted.returncode == 1
    following = entries[len(entries) // 2 + 1][0].decode()
    assert following in deleted.stdout + deleted.stderr
    _rewrite(r, entries, lambda sid, f: f)


def test_sigkill_mid_stream_leaves_an_incomplete_record(rec: Stack) -> None:
    s = rec
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        def stream() -> str:
            st = client(s, s.token()).chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "go"}], stream=True,  # type: ignore[arg-type]
                extra_headers={"x-fake-mode": "sse", "x-fake-delay-ms": "200",
                               "x-fake-texts": json.dumps([f"w{i} " for i in range(20)])})
            rid = rid_of(st)
            try:
                for _ in st.parse():
                    pass
            except Exception:
                pass
            return rid

        fut = ex.submit(stream)
        time.sleep(1.0)
        s.procs["extproc"].signal(signal.SIGKILL)
        rid = fut.result(timeout=20)
    s.procs["extproc"].popen.wait(5)  # type: ignore[union-attr]
    s.start_extproc()
    doc = show(s, rid)
    assert doc["forwarded"] is True
    assert doc["complete"] is False
    ls = s.cli("sessions", "show", rid, token=auditor(s))
    assert "incomplete" in ls.stdout.lower()


def test_redis_down_required_fails_closed_and_best_effort_loses_nothing(rec: Stack) -> None:
    s = rec
    user = f"bea-{uuid.uuid4().hex[:6]}"
    token = s.token(user)
    s.procs["redis"].stop()
    try:
        before = len(s.upstream.requests)
        with pytest.raises(openai.InternalServerError) as exc:
            client(s, token, "/fake").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])  # type: ignore[arg-type]
        assert exc.value.status_code == 503
        assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "recording_unavailable"
        assert len(s.upstream.requests) == before  # nothing forwarded
    finally:
        s.restart_redis()

    import yaml

    original = s.config_path.read_text()
    cfg = yaml.safe_load(original)
    cfg["recording"]["mode"] = "best_effort"
    s.config_path.write_text(yaml.safe_dump(cfg))
    try:
        s.stop_extproc()
        s.start_extproc()
        s.procs["redis"].stop()
        sent = []
        for i in range(5):
            out = client(s, token, "/fake").chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": f"best-effort {i}"}])  # type: ignore[arg-type]
            sent.append(rid_of(out))
        s.restart_redis()
        deadline = time.monotonic() + 15
        found: set[str] = set()
        while time.monotonic() < deadline and len(found) < 5:
            r = s.cli("sessions", "list", "--user", user, "--json", token=auditor(s))
            if r.returncode == 0:
                found = {x["request_id"] for x in lines(r.stdout)} & set(sent)
            time.sleep(0.3)
        assert found == set(sent)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{s.ports['admin']}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        prefix = 'extproc_records{kind="spooled"}'
        spooled = next(float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(prefix))
        assert spooled >= 10  # start and complete of each of the five
    finally:
        s.config_path.write_text(original)
        s.stop_extproc()
        s.start_extproc()


def test_two_callers_sending_the_same_x_request_id_get_separate_records(rec: Stack) -> None:
    """The caller's x-request-id is a correlation attribute: never the record's id."""
    s = rec
    shared = f"client-{uuid.uuid4().hex[:8]}"
    users = [f"ida-{uuid.uuid4().hex[:6]}", f"jon-{uuid.uuid4().hex[:6]}"]
    answers = []
    for user in users:
        answers.append(client(s, s.token(user)).chat.completions.with_raw_response.create(
            model="gpt-x", messages=[{"role": "user", "content": "hi"}],  # type: ignore[arg-type]
            extra_headers={"x-request-id": shared}))
    with pytest.raises(openai.AuthenticationError) as refused:  # an answer of the gateway's own
        client(s, "not-a-token").chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "hi"}],  # type: ignore[arg-type]
            extra_headers={"x-request-id": shared})
    ids = [rid_of(a) for a in answers]
    assert len(set(ids)) == 2 and shared not in ids  # the gateway's ids, not the caller's
    refused_id = refused.value.response.headers["x-request-id"]
    assert refused_id not in (shared, *ids)
    assert refused.value.response.json()["error"]["request_id"] == refused_id
    for user, rid in zip(users, ids, strict=True):
        doc = show(s, rid)
        assert doc["caller"]["user"] == user and doc["request_id"] == rid
        assert doc["client_request_id"] == shared
    assert s.upstream.requests[-1].headers["x-request-id"] == ids[-1]  # upstream sees the gateway's id
    assert "x-extproc-client-request-id" not in s.upstream.requests[-1].headers
    found = s.cli("sessions", "list", "--client-request-id", shared, "--json", token=auditor(s))
    assert found.returncode == 0, found.stderr
    rows = lines(found.stdout)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert {r["user"] for r in rows} == set(users) and {r["client_request_id"] for r in rows} == {shared}


def test_a_malformed_client_request_id_is_dropped(rec: Stack) -> None:
    s = rec
    answer = client(s, s.token(f"kim-{uuid.uuid4().hex[:6]}")).chat.completions.with_raw_response.create(
        model="gpt-x", messages=[{"role": "user", "content": "hi"}],  # type: ignore[arg-type]
        extra_headers={"x-request-id": "a" * 129})
    doc = show(s, rid_of(answer))
    assert doc["client_request_id"] is None and rid_of(answer) != "a" * 129


def test_without_a_client_request_id_none_is_recorded(rec: Stack) -> None:
    """Envoy generates an x-request-id when the caller sends none: that one is Envoy's, not a
    correlation id of the caller's, and is not recorded as one."""
    s = rec
    answer = client(s, s.token(f"lou-{uuid.uuid4().hex[:6]}")).chat.completions.with_raw_response.create(
        model="gpt-x", messages=[{"role": "user", "content": "hi"}])  # type: ignore[arg-type]
    doc = show(s, rid_of(answer))
    assert doc["client_request_id"] is None
