"""The per-request state machine: Envoy's callbacks in, decisions out. No I/O, no grpc.

One ``RequestMachine`` lives for one HTTP request (one ext_proc ``Process`` stream). The
servicer feeds it events in the order Envoy sends them and turns each returned decision into
a ``ProcessingResponse``. Where the machine needs something only I/O can provide (a verified
identity), it returns a ``Need*`` request; the servicer fulfils it and calls back.

Phases::

    START --request headers--> (AUTH) --identity--> REQUEST --body--> FORWARDED
          --response headers--> RESPONSE --body ... end--> DONE
    any phase --Reply--> DONE (an immediate response; nothing more is forwarded)
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .config import ProviderConfig
from .errors import error_body
from .identity import AuthError, Identity, bearer_token
from .scrub import LiteralScrubber, scrub_text

__all__ = [
    "Continue",
    "Decision",
    "Gateway",
    "NeedIdentity",
    "ProtocolError",
    "Reply",
    "RequestMachine",
    "Router",
]

#: Headers a caller may use to present its own identity; never forwarded upstream.
CALLER_AUTH_HEADERS = ("authorization", "x-api-key", "proxy-authorization")


# ---------------------------------------------------------------------------
# decisions


@dataclass(frozen=True, slots=True)
class Continue:
    """Let the message through, with optional header and body changes."""

    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    #: Replacement body for this message (``b""`` clears it); ``None`` leaves it unchanged.
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the caller directly; nothing (more) goes upstream."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    code: str = ""


@dataclass(frozen=True, slots=True)
class NeedIdentity:
    """The servicer must verify ``token`` and call ``on_identity`` with the result."""

    token: str


Decision = Continue | Reply


class ProtocolError(Exception):
    """Envoy sent a message the machine cannot accept in its current phase."""


class Phase(enum.Enum):
    START = "start"
    AUTH = "auth"
    REQUEST = "request"
    FORWARDED = "forwarded"
    RESPONSE = "response"
    DONE = "done"


# ---------------------------------------------------------------------------
# routing and the shared, immutable gateway state


class Router:
    """Maps a request path to its provider by the longest configured prefix."""

    def __init__(self, providers: Sequence[ProviderConfig]) -> None:
        self._routes = sorted(providers, key=lambda p: len(p.prefix), reverse=True)

    def match(self, path: str) -> ProviderConfig | None:
        path = path.split("?", 1)[0]
        for p in self._routes:
            if path == p.prefix or path.startswith(p.prefix + "/"):
                return p
        return None


@dataclass(frozen=True, slots=True)
class Gateway:
    """What every request machine shares: routes and where credentials come from."""

    router: Router
    credential: Callable[[str], str | None]
    #: Every credential the gateway knows; scrubbed from every response.
    all_credentials: Callable[[], Sequence[str]]
    clock: Callable[[], float] = time.time


# ---------------------------------------------------------------------------
# the machine


@dataclass(slots=True)
class RequestInfo:
    """What the machine learned about the request; read by metrics and (later) recording."""

    request_id: str = "-"
    method: str = ""
    path: str = ""
    provider: str | None = None
    identity: Identity | None = None
    status: int | None = None
    error_code: str | None = None
    started_at: float = 0.0
    response_bytes: int = 0
    #: Injected credentials found and replaced in the response (headers and body).
    secrets_scrubbed: int = 0
    extra: dict[str, object] = field(default_factory=dict)


class RequestMachine:
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self.phase = Phase.START
        self.info = RequestInfo(started_at=gateway.clock())
        self._provider: ProviderConfig | None = None
        self._scrubber: LiteralScrubber | None = None
        self._credential: str | None = None
        self._request_eos = False

    # -- request side --------------------------------------------------------

    def on_request_headers(self, headers: Mapping[str, str], end_of_stream: bool) -> Decision | NeedIdentity:
        self._expect(Phase.START, "request headers")
        info = self.info
        info.request_id = headers.get("x-request-id") or "-"
        info.method = headers.get(":method", "")
        info.path = headers.get(":path", "")
        self._request_eos = end_of_stream
        provider = self._gw.router.match(info.path)
        if provider is None:
            return self._reply(404, "no_route", "no provider is configured for this path")
        self._provider = provider
        info.provider = provider.name
        if not provider.authenticate:
            return self._forward()
        token = bearer_token(headers.get("authorization"), headers.get("x-api-key"))
        if token is None:
            return self._reply(
                401, "missing_token", "missing bearer token: send 'Authorization: Bearer <JWT>'"
            )
        self.phase = Phase.AUTH
        return NeedIdentity(token)

    def on_identity(self, result: Identity | AuthError) -> Decision:
        self._expect(Phase.AUTH, "an identity")
        if isinstance(result, AuthError):
            return self._reply(result.status, result.code, result.message)
        self.info.identity = result
        return self._forward()

    def on_request_body(self, body: bytes, end_of_stream: bool) -> Decision:
        if self.phase is Phase.DONE:
            raise ProtocolError("request body after the request was answered")
        self._expect(Phase.REQUEST, "a request body")
        if end_of_stream:
            self.phase = Phase.FORWARDED
        return Continue()

    def on_request_trailers(self) -> Decision:
        self._expect(Phase.REQUEST, "request trailers")
        self.phase = Phase.FORWARDED
        return Continue()

    # -- response side -------------------------------------------------------

    def on_response_headers(self, headers: Mapping[str, str], end_of_stream: bool) -> Decision:
        if self.phase not in (Phase.REQUEST, Phase.FORWARDED):
            raise ProtocolError(f"response headers in phase {self.phase.value}")
        self.phase = Phase.DONE if end_of_stream else Phase.RESPONSE
        try:
            self.info.status = int(headers.get(":status", "0"))
        except ValueError:
            self.info.status = 0
        secrets = self._gw.all_credentials()
        self._scrubber = LiteralScrubber(secrets)
        set_headers: list[tuple[str, str]] = []
        for name, value in headers.items():
            if name.startswith(":"):
                continue
            clean = scrub_text(value, secrets)
            if clean != value:
                set_headers.append((name, clean))
                self.info.secrets_scrubbed += 1
        # Body chunks may change length (scrubbing, masking), so the upstream's length is void.
        remove = ("content-length",) if not end_of_stream and "content-length" in headers else ()
        return Continue(set_headers=tuple(set_headers), remove_headers=remove)

    def on_response_body(self, body: bytes, end_of_stream: bool) -> Decision:
        self._expect(Phase.RESPONSE, "a response body")
        scrubber = self._scrubber
        assert scrubber is not None
        before = scrubber.replaced
        out = scrubber.feed(body)
        if end_of_stream:
            out += scrubber.flush()
            self.phase = Phase.DONE
        self.info.response_bytes += len(out)
        self.info.secrets_scrubbed += scrubber.replaced - before
        if out is body:
            return Continue()
        return Continue(body=out)

    def on_response_trailers(self) -> Decision:
        self._expect(Phase.RESPONSE, "response trailers")
        self.phase = Phase.DONE
        # Trailers end the body without an end_of_stream chunk; what is held is a strict
        # prefix of a secret and too short to matter, but it is dropped, never leaked.
        return Continue()

    # -- helpers --------------------------------------------------------------

    def _forward(self) -> Decision:
        p = self._provider
        assert p is not None
        self.phase = Phase.FORWARDED if self._request_eos else Phase.REQUEST
        set_headers: list[tuple[str, str]] = [(k, v) for k, v in p.headers.items()]
        if p.credential is not None:
            secret = self._gw.credential(p.name)
            if secret is None:
                return self._reply(
                    503,
                    "credential_unavailable",
                    f"the gateway has no credential for provider '{p.name}' ({p.credential.describe()})",
                )
            self._credential = secret
            set_headers.append((p.auth_header, p.auth_scheme + secret))
        setting = {k for k, _ in set_headers}
        remove = tuple(h for h in CALLER_AUTH_HEADERS if h not in setting)
        return Continue(set_headers=tuple(set_headers), remove_headers=remove)

    def _reply(self, status: int, code: str, message: str) -> Reply:
        self.phase = Phase.DONE
        self.info.status = status
        self.info.error_code = code
        rid = self.info.request_id
        headers: list[tuple[str, str]] = [("content-type", "application/json"), ("x-extproc-error", code)]
        if rid != "-":
            headers.append(("x-request-id", rid))
        if status == 401:
            headers.append(("www-authenticate", 'Bearer realm="extproc"'))
        return Reply(status=status, body=error_body(status, code, message, rid), headers=tuple(headers), code=code)

    def _expect(self, phase: Phase, what: str) -> None:
        if self.phase is not phase:
            raise ProtocolError(f"unexpected {what} in phase {self.phase.value}")
