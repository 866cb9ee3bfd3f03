"""The edge: paths that could walk around the policy, and answers to requests Envoy itself refuses.

Everything goes through the real Envoy over raw sockets or ``http.client``, so what is
asserted is exactly what a caller and the upstream see.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Mapping

import pytest

from tests.e2e.harness import Stack
from tests.e2e.test_datapath import raw

pytestmark = pytest.mark.e2e

BLOCKED = {"model": "m", "messages": [{"role": "user", "content": "tell me about project falcon"}]}
PII = {"model": "m", "messages": [{"role": "user", "content": "mail jane.doe@example.com please"}]}
#: Every spelling of "chat/completions" (or of a way out of the base path) we know of.
PATHS = [
    "/fake/chat%2Fcompletions",
    "/fake/chat%2fcompletions",
    "/fake/chat/completions;x=y",
    "/fake/chat;x=y/completions",
    "/fake/x/..%2fchat/completions",
    "/fake/x/..%2Fchat/completions",
    "/fake/..%2f..%2fadmin/chat/completions",
    "/fake/..%2f..%2f",
    "/fake/chat%252Fcompletions",
    "/fake/chat%25252Fcompletions",
    "/fake/chat%5Ccompletions",
    "/fake/chat%5ccompletions",
    "/fake/chat\\completions",
    "/fake/x/..\\chat/completions",
    "/fake/..\\..\\admin",
    "/fake/x/%2e%2e/chat/completions",
    "/fake/x/%2E%2E/%2e%2e/%2e%2e/admin",
    "/fake/x/../chat/completions",
    "/fake/../../admin",
    "/fake//chat//completions",
    "/fake/chat/completions%3Bx=y",
    "/fake/chat/completions%00",
    "/fake/chat/completions/",
    "/fake/v1/chat/completions",
    "/fake/CHAT/COMPLETIONS",
]


def _post(s: Stack, path: str, doc: Mapping[str, object]) -> tuple[int, bytes]:
    """Raw bytes on the wire: http.client would re-encode some of these paths."""
    body = json.dumps(doc).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {s.token()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    reply = _exchange(s, head.encode("latin-1") + body)
    return int(reply.split(b" ", 2)[1]), reply


def _exchange(s: Stack, data: bytes) -> bytes:
    """Send ``data`` and read the answer. Envoy answers an oversized request as soon as it has
    seen enough and closes: the rest of our send then fails (reset or broken pipe), but the
    answer is already in our receive buffer, which is what the caller got."""
    with socket.create_connection(("127.0.0.1", s.ports["http"]), timeout=20) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            if not out:
                raise
    return out


def _json_error(reply: bytes) -> dict[str, object]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), reply[:300]
    err = json.loads(body)["error"]
    assert isinstance(err, dict)
    return err


@pytest.mark.parametrize("path", PATHS)
def test_encoded_path_never_carries_blocked_content_or_raw_pii_upstream(fresh_upstream: Stack, path: str) -> None:
    s = fresh_upstream
    status, reply = _post(s, path, BLOCKED)
    # Refused as ambiguous, blocked by policy, or (normalised out of every prefix) not routed.
    assert (status, _json_error(reply)["code"]) in {(400, "invalid_path"), (403, "policy_blocked"),
                                                    (404, "no_route")}, reply[:400]
    status, reply = _post(s, path, PII)
    for seen in s.upstream.requests:
        assert b"project falcon" not in seen.body.lower()
        assert b"jane.doe@example.com" not in seen.body
        # Nothing reaches the upstream outside the provider's base path, in any spelling.
        assert seen.path.startswith("/v1/"), seen.path
        assert all(t not in seen.path.lower() for t in ("..", "%2f", "%5c", "%25", "\\", ";")), seen.path


def test_unknown_operation_body_is_still_inspected(fresh_upstream: Stack) -> None:
    """An operation the gateway does not model (here ``other``) gets every string checked."""
    s = fresh_upstream
    status, reply = _post(s, "/fake/assistants/threads", BLOCKED)
    assert status == 403 and _json_error(reply)["code"] == "policy_blocked"
    status, reply = _post(s, "/fake/assistants/threads", PII)
    assert status == 200, reply[:400]
    (seen,) = s.upstream.requests
    assert b"jane.doe@example.com" not in seen.body and b"[EMAIL]" in seen.body


def test_a_body_nobody_can_read_is_refused_unless_the_route_allows_it(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    upload = b"--b\r\nContent-Disposition: form-data; name=file; filename=a.txt\r\n\r\nproject falcon\r\n--b--\r\n"
    headers = {"authorization": f"Bearer {s.token()}", "content-type": "multipart/form-data; boundary=b"}
    r = raw(s, "POST", "/fake/audio/transcriptions", headers, upload)
    assert r.status_code == 403 and r.json()["error"]["code"] == "uninspectable_body"
    assert s.upstream.requests == []
    r = raw(s, "POST", "/fake/files", headers, upload)  # the harness allows /files on this route
    assert r.status_code == 200
    assert [seen.path for seen in s.upstream.requests] == ["/v1/files"]


# -- requests Envoy refuses itself -------------------------------------------------------------

CODEC_ERRORS: dict[str, tuple[bytes, int, str]] = {
    "http/1.0": (b"GET /fake/models HTTP/1.0\r\n\r\n", 426, "http_version_unsupported"),
    "100 KB header": (b"GET /fake/models HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
                      431, "headers_too_large"),
    "1 MB token": (b"GET /fake/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + b"e" * 1_000_000
                   + b"\r\n\r\n", 431, "headers_too_large"),
    "too many headers": (b"GET /fake/models HTTP/1.1\r\nHost: gw\r\n"
                         + b"".join(b"X-H%d: a\r\n" % i for i in range(200)) + b"\r\n", 431, "headers_too_large"),
    "CL + TE": (b"POST /fake/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "malformed_request"),
    "double Content-Length": (b"POST /fake/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                              b"Content-Length: 6\r\n\r\nhello!", 400, "malformed_request"),
    "NUL in a header": (b"GET /fake/models HTTP/1.1\r\nHost: gw\r\nX-A: a\x00b\r\n\r\n", 400, "malformed_request"),
    "NUL in the path": (b"GET /fake/mo\x00dels HTTP/1.1\r\nHost: gw\r\n\r\n", 400, "malformed_request"),
    "URI *": (b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", 400, "invalid_path"),
    "absolute URI": (b"GET http://evil.example/fake/models HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
                     401, "missing_token"),
    "escaped slash": (b"GET /fake/chat%2Fcompletions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
                      400, "invalid_path"),
    "garbage": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400, "malformed_request"),
}


@pytest.mark.parametrize("case", list(CODEC_ERRORS))
def test_every_request_envoy_refuses_gets_a_json_answer(fresh_upstream: Stack, case: str) -> None:
    s = fresh_upstream
    data, status, code = CODEC_ERRORS[case]
    reply = _exchange(s, data)
    assert reply.startswith(b"HTTP/1.1 "), f"no answer: {reply[:200]!r}"
    got = int(reply.split(b" ", 2)[1])
    err = _json_error(reply)
    assert isinstance(err["message"], str) and err["message"]
    assert (got, err["code"]) == (status, code)
    assert s.upstream.requests == []


def test_ext_proc_timeout_is_a_documented_504(fresh_upstream: Stack) -> None:
    """A frozen ext_proc server (the stack's message timeout is 5 s) fails closed with a stable code."""
    s = fresh_upstream
    popen = s.procs["extproc"].popen
    assert popen is not None
    pid = popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        status, reply = _post(s, "/fake/chat/completions", PII)
        waited = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 504, reply[:400]
    err = _json_error(reply)
    assert err["code"] == "extproc_timeout" and err["type"] == "timeout_error" and err["message"]
    assert b"ext_proc_error" not in reply and b"timeout_exceeded" not in reply
    assert waited >= 4  # it was the message timeout, not something faster
    assert s.upstream.requests == []


# -- hostile upstream answers -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["deep-json", "deep-sse"])
def test_a_hostile_upstream_answer_ends_with_a_documented_error_and_one_log_line(
        fresh_upstream: Stack, mode: str) -> None:
    """100,000 levels of nesting on a masked route: no traceback, no class name to the caller."""
    s = fresh_upstream
    log = s.procs["extproc"].log_path
    before = log.read_bytes()
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    reply = _exchange(s, (f"POST /masked/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {s.token()}\r\n"
                          f"Content-Type: application/json\r\nX-Fake-Mode: {mode}\r\nContent-Length: {len(body)}\r\n"
                          f"Connection: close\r\n\r\n").encode() + body)
    status = int(reply.split(b" ", 2)[1])
    if status == 502:  # nothing went out yet: the caller gets the error itself
        err = _json_error(reply)
        assert err["code"] == "unmaskable_response" and "nested more than 64 levels" in str(err["message"])
    else:  # the headers already went out: the answer is cut off (no final chunk) before the hostile part
        assert status == 200 and not reply.endswith(b"0\r\n\r\n"), reply[-200:]
    assert b"[[[" not in reply
    assert b"Recursion" not in reply and b"NestedTooDeep" not in reply and b"Traceback" not in reply
    new = log.read_bytes()[len(before):]
    assert b"Traceback" not in new and b"RecursionError" not in new
    cut = [line for line in new.splitlines() if b"cut off" in line]
    assert len(cut) == 1 and b"unmaskable_response" in cut[0], new[-2000:]


# -- metrics ------------------------------------------------------------------------------------


def _outcomes(s: Stack) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{s.ports['admin']}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("extproc_requests_total{") and 'provider="fake"' in line:
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_successful_requests_are_counted_ok_never_incomplete(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    before = _outcomes(s)
    auth = {"authorization": f"Bearer {s.token()}", "content-type": "application/json"}
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    sent = [
        raw(s, "POST", "/fake/chat/completions", auth, chat),
        raw(s, "POST", "/fake/chat/completions", {**auth, "x-fake-mode": "sse"}, chat),
        raw(s, "GET", "/fake/models", auth),
        raw(s, "POST", "/fake/chat/completions", {**auth, "x-fake-status": "500"}, chat),
        raw(s, "POST", "/fake/chat/completions", {**auth, "x-fake-mode": "text", "x-fake-body": ""}, chat),
    ]
    assert all(r.status_code in (200, 500) for r in sent), [r.status_code for r in sent]
    deadline = time.monotonic() + 10
    after = _outcomes(s)
    while after.get("ok", 0) - before.get("ok", 0) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.2)
        after = _outcomes(s)
    assert after.get("ok", 0) - before.get("ok", 0) == len(sent)
    assert after.get("incomplete", 0) == before.get("incomplete", 0)
