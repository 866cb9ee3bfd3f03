"""The per-request state machine: Envoy's callbacks in, decisions out. No I/O, no grpc.

One ``RequestMachine`` lives for one HTTP request (one ext_proc ``Process`` stream). The
servicer feeds it events in the order Envoy sends them and turns each returned decision into
a ``ProcessingResponse``. Where the machine needs something only I/O can provide (a verified
identity, a budget reservation in Redis), it returns a ``Need*`` request; the servicer
fulfils it and calls back. Work that must happen but need not hold the request (charging
actual token usage) is left in ``effects`` for the servicer to run.

Phases::

    START --request headers--> AUTH --identity--> REQUEST --body--> (BUDGET) --> FORWARDED
          --response headers--> RESPONSE --body ... end--> DONE
    any phase --Reply--> DONE (an immediate response; nothing more is forwarded)
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from extproc.approvals.model import ApprovalSettings, Binding, content_digest
from extproc.config.model import ProviderConfig
from extproc.datapath.inspect import (
    Inspection,
    InspectionFailed,
    InspectionJob,
    InspectionSettings,
    InspectionSpec,
    RecordSpec,
    forward_body,
)
from extproc.datapath.paths import path_problem
from extproc.datapath.scrub import LiteralScrubber
from extproc.errors import ExtprocError, error_body
from extproc.identity.model import AuthError, Identity, bearer_token
from extproc.llmapi.sse import SseError
from extproc.llmapi.usage import Usage, UsageTracker
from extproc.masking import MaskingProfile
from extproc.masking.responses import (
    AnswerRefused,
    BodyMasker,
    Uncheckable,
    UnmaskableContent,
    body_masker_for,
)
from extproc.policy import Policy
from extproc.policy.model import BudgetCharge, BudgetOutcome, PolicyRequest
from extproc.policy.model import Decision as PolicyDecision
from extproc.recording.model import InteractionRecorder, RecordingSettings
from extproc.tools import mcp
from extproc.tools.guard import ToolCallGuard
from extproc.tools.model import ToolDecision, ToolPolicy, ToolRequest, argument_digest, mask_arguments

__all__ = [
    "TRANSITIONS",
    "ApprovalResult",
    "ChargeUsage",
    "Continue",
    "Decision",
    "Event",
    "Gateway",
    "NeedApproval",
    "NeedBudget",
    "NeedIdentity",
    "NeedInspection",
    "NeedRecordStart",
    "Phase",
    "ProtocolError",
    "RecordEntries",
    "Reply",
    "RequestMachine",
    "ResponseMasking",
    "Router",
    "Step",
]

#: Headers a caller may use to present its own identity; never forwarded upstream.
CALLER_AUTH_HEADERS = ("authorization", "x-api-key", "proxy-authorization")


# ---------------------------------------------------------------------------
# decisions, requests for I/O, effects


@dataclass(frozen=True, slots=True)
class Continue:
    """Let the message through, with optional header and body changes."""

    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    #: Replacement body for this message (``b""`` clears it); ``None`` leaves it unchanged.
    body: bytes | None = None
    #: Tell Envoy not to send the request body at all (nothing governs it): one round trip less.
    skip_request_body: bool = False
    #: Tell Envoy not to send the response body (nothing reads it: no credential to scrub, no
    #: masking, usage, recording or tool guard): one round trip per body chunk less.
    skip_response_body: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the caller directly; nothing (more) goes upstream."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    code: str = ""


class Stage(Protocol):
    """A response-body transformer: tool guard, ``tools/list`` filter, masker (in that order)."""

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self, chunk: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class NeedIdentity:
    """The servicer must verify ``token`` and call ``on_identity`` with the result."""

    token: str


@dataclass(frozen=True, slots=True)
class NeedBudget:
    """The servicer must reserve against ``charges`` and call ``on_budget`` with the outcome."""

    charges: tuple[BudgetCharge, ...]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class NeedInspection:
    """The servicer must run ``inspect.run_job(job)`` off the event loop (a worker process: the
    body is large) and call ``on_inspection`` with the result or an ``InspectionFailed``."""

    job: InspectionJob
    timeout_seconds: int


@dataclass(frozen=True, slots=True)
class NeedApproval:
    """The servicer must hold the request until a human decides (or the hold runs out) and
    call ``on_approval``. ``binding`` is what a grant must match exactly."""

    binding: Binding
    hold_seconds: int
    message: str


@dataclass(frozen=True, slots=True)
class ApprovalResult:
    """How a hold ended: approved | denied | pending (hold ran out) | expired | abandoned |
    no_approvers | unavailable."""

    state: str
    approval_id: str | None = None
    reason: str = ""
    #: For ``approved``: whether it was an existing grant (no hold happened).
    granted_before: bool = False


@dataclass(frozen=True, slots=True)
class NeedRecordStart:
    """The servicer must durably write ``entry`` before anything is forwarded, then call
    ``on_record_start`` (False when the store refused it: the request fails closed)."""

    entry: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RecordEntries:
    """Effect: append these entries (a start already written, or both of a refusal) and log."""

    start: dict[str, Any] | None
    complete: dict[str, Any]
    #: True when ``start`` still has to be written (a refused interaction).
    write_start: bool = False


@dataclass(frozen=True, slots=True)
class ChargeUsage:
    """Effect: correct token budgets with the provider-reported usage."""

    charges: tuple[BudgetCharge, ...]
    actual_tokens: int
    estimated_tokens: int
    reserved_at: float


Decision = Continue | Reply
#: What a request-side event returns: a decision, or a request for I/O.
Step = Continue | Reply | NeedIdentity | NeedBudget | NeedApproval | NeedRecordStart | NeedInspection


class ProtocolError(ExtprocError):
    """Envoy sent a message the machine cannot accept in its current phase."""


class Phase(enum.Enum):
    START = "start"
    AUTH = "auth"
    REQUEST = "request"
    INSPECT = "inspect"
    HOLD = "hold"
    BUDGET = "budget"
    RECORD = "record"
    FORWARDED = "forwarded"
    RESPONSE = "response"
    DONE = "done"


class Event(enum.Enum):
    """What can happen to a machine: a message from Envoy, or the answer to a ``Need*``."""

    REQUEST_HEADERS = "request headers"
    IDENTITY = "an identity"
    REQUEST_BODY = "a request body"
    REQUEST_TRAILERS = "request trailers"
    INSPECTION = "an inspection result"
    APPROVAL = "an approval outcome"
    BUDGET = "a budget outcome"
    RECORD_START = "a recording outcome"
    RESPONSE_HEADERS = "response headers"
    RESPONSE_BODY = "a response body"
    RESPONSE_TRAILERS = "response trailers"


#: The state table: which events each phase accepts, and the phases each may lead to (an
#: immediate ``Reply`` always leads to DONE). Every ``on_*`` method refuses an event its phase
#: does not accept with a ``ProtocolError`` (Envoy, or the servicer, sent something out of
#: order); ``tests/unit/test_machine.py`` walks every (phase, event) pair and checks that every
#: path it drives lands in a phase the table allows.
TRANSITIONS: Mapping[tuple[Phase, Event], frozenset[Phase]] = {
    (Phase.START, Event.REQUEST_HEADERS): frozenset(
        {Phase.AUTH, Phase.REQUEST, Phase.HOLD, Phase.BUDGET, Phase.RECORD, Phase.FORWARDED, Phase.DONE}),
    (Phase.AUTH, Event.IDENTITY): frozenset(
        {Phase.REQUEST, Phase.HOLD, Phase.BUDGET, Phase.RECORD, Phase.FORWARDED, Phase.DONE}),
    (Phase.REQUEST, Event.REQUEST_BODY): frozenset(
        {Phase.INSPECT, Phase.HOLD, Phase.BUDGET, Phase.RECORD, Phase.FORWARDED, Phase.DONE}),
    # A large body was inspected in a worker process; the decision then goes on as for any body.
    (Phase.INSPECT, Event.INSPECTION): frozenset({Phase.HOLD, Phase.BUDGET, Phase.RECORD, Phase.FORWARDED, Phase.DONE}),
    # The body was skipped (nothing governs it), but Envoy may still send one: let it pass.
    (Phase.FORWARDED, Event.REQUEST_BODY): frozenset({Phase.FORWARDED}),
    (Phase.REQUEST, Event.REQUEST_TRAILERS): frozenset({Phase.FORWARDED}),
    (Phase.HOLD, Event.APPROVAL): frozenset({Phase.BUDGET, Phase.RECORD, Phase.FORWARDED, Phase.DONE}),
    (Phase.BUDGET, Event.BUDGET): frozenset({Phase.RECORD, Phase.FORWARDED, Phase.DONE}),
    (Phase.RECORD, Event.RECORD_START): frozenset({Phase.FORWARDED, Phase.DONE}),
    # Envoy's own answer to a request that failed before it was routed to us.
    (Phase.START, Event.RESPONSE_HEADERS): frozenset({Phase.RESPONSE, Phase.DONE}),
    # An upstream may answer before the request body was sent (e.g. an early 4xx).
    (Phase.REQUEST, Event.RESPONSE_HEADERS): frozenset({Phase.RESPONSE, Phase.DONE}),
    (Phase.FORWARDED, Event.RESPONSE_HEADERS): frozenset({Phase.RESPONSE, Phase.DONE}),
    (Phase.RESPONSE, Event.RESPONSE_BODY): frozenset({Phase.RESPONSE, Phase.DONE}),
    (Phase.RESPONSE, Event.RESPONSE_TRAILERS): frozenset({Phase.DONE}),
}


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
class ResponseMasking:
    """Where model answers are masked, and with what."""

    profile: MaskingProfile | None = None
    #: Provider names whose answers are masked; None means every provider.
    providers: frozenset[str] | None = None
    #: Callers in these groups get unmasked answers (e.g. a PII-cleared team).
    exempt_groups: frozenset[str] = frozenset()
    max_buffer_bytes: int = 1 << 20
    #: Binary answers on a masked route: ``block`` (502) or ``allow``.
    on_unmaskable: str = "block"
    #: A signed Anthropic thinking block that needed masking: ``mask`` (signature dropped)
    #: or ``refuse`` (the answer is ended with an error).
    signed_thinking: str = "mask"

    def applies(self, provider: str, identity: Identity | None) -> bool:
        if self.profile is None:
            return False
        if self.providers is not None and provider not in self.providers:
            return False
        return not (identity is not None and self.exempt_groups & set(identity.groups))


_EMPTY_PROFILE = MaskingProfile([])


class _LiteralProfiles:
    """Caches ``profile.with_literals(credentials)``: compiling detectors per request is waste."""

    def __init__(self) -> None:
        # Keyed by the profile object itself (identity), not id(): the key keeps it alive, so a
        # reloaded profile can never collide with a collected one's address.
        self._cache: dict[tuple[MaskingProfile, tuple[str, ...]], MaskingProfile] = {}

    def get(self, profile: MaskingProfile | None, literals: Sequence[str]) -> MaskingProfile:
        base = profile or _EMPTY_PROFILE
        key = (base, tuple(sorted(literals)))
        got = self._cache.get(key)
        if got is None:
            if len(self._cache) > 64:
                self._cache.clear()
            got = self._cache[key] = base.with_literals(literals)
        return got


@dataclass(frozen=True, slots=True)
class Gateway:
    """What every request machine shares: routes, credentials, policy, masking."""

    router: Router
    credential: Callable[[str], str | None]
    #: Every credential the gateway knows; scrubbed from every response.
    all_credentials: Callable[[], Sequence[str]]
    #: The wall clock and a source of unique ids, handed in: the machine reads no globals.
    clock: Callable[[], float]
    new_id: Callable[[], str]
    #: A monotonic timer for the policy-latency metric.
    timer: Callable[[], float]
    policy: Policy = field(default_factory=Policy.empty)
    #: False when no policy is configured: request bodies are then not even sent to us.
    governed: bool = False
    #: None when approvals are not configured: ``require_approval`` then fails closed.
    approvals: ApprovalSettings | None = None
    #: None when interactions are not recorded.
    recording: RecordingSettings | None = None
    #: Tool calls on MCP routes and in model answers.
    tools: ToolPolicy = field(default_factory=ToolPolicy.empty)
    #: What to do with a forbidden tool call in a model's answer: ``remove`` it or ``error``.
    model_tool_calls: str = "remove"
    masking: ResponseMasking = field(default_factory=ResponseMasking)
    literal_profiles: _LiteralProfiles = field(default_factory=_LiteralProfiles)
    #: Where request bodies are inspected (inline, or in a worker process when large).
    inspection: InspectionSettings = field(default_factory=InspectionSettings)
    #: What a worker process needs to inspect like this gateway; None: always inline.
    inspection_spec: InspectionSpec | None = None


# ---------------------------------------------------------------------------
# the machine


@dataclass(slots=True)
class RequestInfo:
    """What the machine learned about the request; read by metrics, logs and recording."""

    #: The gateway's own id for this request (the record's id; what the client is told).
    request_id: str = "-"
    #: The client's ``x-request-id`` when it has a safe shape (see ``client_request_id``):
    #: a correlation attribute kept on the record, never a key.
    client_request_id: str | None = None
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
    decision: PolicyDecision | None = None
    policy_seconds: float = 0.0
    budget: BudgetOutcome | None = None
    #: Entities masked in the response (type -> count; never values).
    response_masked: Counter[str] = field(default_factory=Counter)
    usage: Usage | None = None
    approval: ApprovalResult | None = None
    #: Tool-call decisions (MCP requests and model answers), for metrics and the record.
    tool_decisions: list[ToolDecision] = field(default_factory=list)
    #: Tools removed from ``tools/list`` answers, and pinned tools whose definition changed.
    tools_hidden: list[str] = field(default_factory=list)
    pin_mismatches: list[str] = field(default_factory=list)
    #: Why the answer was cut off (exception class and message): for the log line only.
    failure: str | None = None


#: A client's ``x-request-id`` is kept (as a correlation attribute) only in this shape.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def client_request_id(value: str | None) -> str | None:
    """The client's ``x-request-id`` if it is a bounded token of safe characters, else None.

    Callers pick this value, so it never identifies anything: two callers may send the same
    one, and a hostile one may send anything. ``-`` is what Envoy logs for "absent".
    """
    if value is None or value == "-" or _CLIENT_REQUEST_ID.fullmatch(value) is None:
        return None
    return value


#: Where Envoy (as rendered) puts the client's ``x-request-id`` before it generates its own.
CLIENT_REQUEST_ID_HEADER = "x-extproc-client-request-id"


class RequestMachine:
    def __init__(self, gateway: Gateway, *, request_id: str | None = None) -> None:
        """``request_id`` is generated by the gateway for this request alone (the servicer's id
        factory, else ``gateway.new_id``); the machine never takes a request's identity from the
        caller."""
        self._gw = gateway
        self.phase = Phase.START
        self.info = RequestInfo(request_id=request_id or gateway.new_id(), started_at=gateway.clock())
        self.effects: list[ChargeUsage | RecordEntries] = []
        self._provider: ProviderConfig | None = None
        self._scrubber: LiteralScrubber | None = None
        self._masker: BodyMasker | None = None
        self._usage: UsageTracker | None = None
        self._request_eos = False
        self._headers: Mapping[str, str] = {}
        self._pending_body: Continue | None = None
        self._raw_body: bytes | None = None
        self._token: str | None = None
        self._rec: InteractionRecorder | None = None
        self._start_entry: dict[str, Any] | None = None
        self._stages: list[Stage] = []
        self._mcp_parsed: mcp.Parsed | None = None
        self._mcp_held_index = -1
        self._mcp_list_ids: list[str | int] = []
        self._mask_results = False
        self._mcp_filter: mcp.McpResponseFilter | None = None
        self._guard: ToolCallGuard | None = None
        self._reserved_at = 0.0
        #: From an offloaded inspection: the body to forward and the record's request fields.
        self._inspected: Inspection | None = None
        self._response_skipped = False

    # -- request side --------------------------------------------------------

    def on_request_headers(self, headers: Mapping[str, str], end_of_stream: bool) -> Step:
        self._accept(Event.REQUEST_HEADERS)
        info = self.info
        # Envoy as rendered moves the client's id to CLIENT_REQUEST_ID_HEADER (empty when there
        # was none: the x-request-id it sends then is its own); another Envoy may pass the
        # client's as x-request-id. Either way it is only a correlation attribute.
        mine = headers.get(CLIENT_REQUEST_ID_HEADER)
        info.client_request_id = client_request_id(mine if mine is not None else headers.get("x-request-id"))
        info.method = headers.get(":method", "")
        info.path = headers.get(":path", "")
        self._headers = headers
        self._request_eos = end_of_stream
        problem = path_problem(info.path)
        if problem is not None:
            # Before routing: the operation, and so which rules apply, is read from the path.
            return self._reply(400, "invalid_path", f"{problem}; send the plain path the API documents")
        provider = self._gw.router.match(info.path)
        if provider is None:
            return self._reply(404, "no_route", "no provider is configured for this path")
        self._provider = provider
        info.provider = provider.name
        if not provider.authenticate:
            return self._admitted()
        token = bearer_token(headers.get("authorization"), headers.get("x-api-key"))
        if token is None:
            return self._reply(401, "missing_token", "missing bearer token: send 'Authorization: Bearer <JWT>'")
        self.phase = Phase.AUTH
        self._token = token
        return NeedIdentity(token)

    def on_identity(self, result: Identity | AuthError) -> Step:
        self._accept(Event.IDENTITY)
        if isinstance(result, AuthError):
            return self._reply(result.status, result.code, result.message)
        self.info.identity = result
        return self._admitted()

    def _admitted(self) -> Step:
        """The caller may use this route: inject the credential, then policy (if any)."""
        self._start_recording()
        forward = self._forward()
        if isinstance(forward, Reply):
            return forward
        is_mcp = self._provider is not None and self._provider.api == "mcp"
        if not self._gw.governed and self._rec is None and not is_mcp:
            self.phase = Phase.FORWARDED
            if self._request_eos:
                return forward
            return Continue(forward.set_headers, forward.remove_headers, skip_request_body=True)
        if not self._gw.governed and not is_mcp:  # recorded only: the body is needed for the record
            if not self._request_eos:
                return forward
            return self._release(forward)
        if not self._request_eos:
            return forward  # a body follows: policy runs on it
        return self._decide(None, forward)

    def on_request_body(self, body: bytes, end_of_stream: bool) -> Step:
        self._accept(Event.REQUEST_BODY)
        if self.phase is Phase.FORWARDED:
            if not self._gw.governed and not self._request_eos:
                return Continue()  # we asked Envoy to skip it; nothing governs it if it comes anyway
            raise ProtocolError("unexpected a request body in phase forwarded")
        if not end_of_stream:
            # BUFFERED mode sends the whole body at once; a partial one means a config drift.
            raise ProtocolError("request body arrived in pieces; the request body mode must be BUFFERED")
        limits = self._gw.inspection
        if len(body) > limits.max_bytes:
            return self._reply(413, "body_too_large",
                               f"the request body ({len(body)} bytes) is larger than the {limits.max_bytes} bytes "
                               "this gateway inspects; nothing was sent")
        p = self._provider
        if p is not None and p.api == "mcp":
            return self._decide_mcp(body, Continue())
        if self._gw.inspection_spec is not None and limits.workers and len(body) >= limits.offload_bytes:
            return self._offload(body)
        if not self._gw.governed:
            self._raw_body = body
            return self._release(Continue())
        return self._decide(body, Continue())

    def _offload(self, body: bytes) -> NeedInspection:
        """A large body: policy and the record's masking run in a worker (see ``inspect``)."""
        spec = self._gw.inspection_spec
        assert spec is not None
        self._raw_body = body
        self.phase = Phase.INSPECT
        self._pending_body = Continue()
        req = self._policy_request(body) if self._gw.governed else None
        record: RecordSpec | None = None
        rec, settings = self._rec, self._gw.recording
        if rec is not None and settings is not None:
            profile = self._gw.literal_profiles.get(settings.masking, self._gw.all_credentials())
            extra = (self._token,) if self._token and "JWT" not in profile.entities else ()
            record = RecordSpec(credentials=tuple(self._gw.all_credentials()), extra=extra,
                                max_body_bytes=settings.max_body_bytes, raw_too=True)
        api = self._provider.api if self._provider is not None else ""
        job = InspectionJob(spec=spec, body=body, api=api, request=req, record=record)
        return NeedInspection(job, self._gw.inspection.timeout_seconds)

    def on_inspection(self, result: Inspection | InspectionFailed) -> Step:
        self._accept(Event.INSPECTION)
        self.phase = Phase.REQUEST
        forward = self._pending_body or Continue()
        if isinstance(result, InspectionFailed):
            # The record keeps the size only: masking the body here is the work that failed.
            size = len(self._raw_body or b"")
            self._inspected = Inspection(None, None, None, {"body": "", "bytes": size, "truncated": True,
                                                            "masked": {}})
            if result.reason == "timeout":
                return self._reply(503, "inspection_timeout",
                                   f"the request body could not be inspected within "
                                   f"{self._gw.inspection.timeout_seconds}s; nothing was sent")
            return self._reply(503, "inspection_failed", "the request body could not be inspected; nothing was sent")
        self._inspected = result
        d = result.decision
        if d is None:  # recorded only: no policy governs this route
            return self._release(forward)
        if not isinstance(d.mask_counts, MappingProxyType):
            d = dataclasses.replace(d, mask_counts=MappingProxyType(dict(d.mask_counts)))
        self.info.policy_seconds = result.policy_seconds
        return self._decided(d, forward)

    def on_record_start(self, written: bool) -> Decision:
        self._accept(Event.RECORD_START)
        if not written:
            self._start_entry = None  # nothing is forwarded: no interaction to complete
            return self._reply(503, "recording_unavailable",
                               "the interaction cannot be recorded right now and recording is required; "
                               "nothing was sent")
        self.phase = Phase.FORWARDED
        assert self._pending_body is not None
        return self._pending_body

    def on_budget(self, outcome: BudgetOutcome) -> Step:
        self._accept(Event.BUDGET)
        self.info.budget = outcome
        if not outcome.allowed:
            if outcome.status == 429:
                msg = f"budget '{outcome.budget_id}' is exhausted ({outcome.limit}); retry after {outcome.retry_after}s"
                extra = (("retry-after", str(outcome.retry_after or 1)),)
                return self._reply(429, "budget_exceeded", msg, extra_headers=extra, budget_id=outcome.budget_id)
            return self._reply(503, "budget_unavailable",
                               f"budget '{outcome.budget_id}' cannot be checked right now and fails closed")
        assert self._pending_body is not None
        return self._release(self._pending_body)

    def on_request_trailers(self) -> Decision:
        self._accept(Event.REQUEST_TRAILERS)
        self.phase = Phase.FORWARDED
        return Continue()

    # -- response side -------------------------------------------------------

    def on_response_headers(self, headers: Mapping[str, str], end_of_stream: bool) -> Decision:
        self._accept(Event.RESPONSE_HEADERS)
        if self.phase is Phase.START:
            # Envoy's own answer to a request that never reached us (it failed before routing):
            # nothing went upstream, so there is nothing to mask; its body is still scrubbed.
            self.phase = Phase.DONE if end_of_stream else Phase.RESPONSE
            self._scrubber = LiteralScrubber(self._gw.all_credentials())
            return Continue()
        # Forwarded: the answer (the upstream's, or Envoy's about the upstream) carries the
        # gateway's id, whatever the upstream put there. Before that (the request body not yet
        # released) it is Envoy's own reply, which already names Envoy's id in its body.
        ours = self.phase is Phase.FORWARDED
        self.phase = Phase.DONE if end_of_stream else Phase.RESPONSE
        try:
            self.info.status = int(headers.get(":status", "0"))
        except ValueError:
            self.info.status = 0
        secrets = self._gw.all_credentials()
        self._scrubber = scrubber = LiteralScrubber(secrets)
        set_headers: list[tuple[str, str]] = [("x-request-id", self.info.request_id)] if ours else []
        for name, value in headers.items():
            if name.startswith(":") or (ours and name == "x-request-id"):
                continue
            clean = scrubber.scrub_text(value)
            if clean != value:
                set_headers.append((name, clean))
                self.info.secrets_scrubbed += 1
        ctype = headers.get("content-type", "")
        if self._rec is not None:
            self._rec.response_headers(self.info.status or 0, now=self._gw.clock(), content_type=ctype)
        if not end_of_stream:
            refused = self._setup_tools(ctype) or self._setup_masking(ctype, secrets)
            if refused is not None:
                return refused
            d = self.info.decision
            if (d is not None and d.budgets) or self._rec is not None:
                self._usage = UsageTracker(ctype)
        if not end_of_stream and not secrets and not self._stages and self._usage is None and self._rec is None:
            # Nothing reads the body: it streams through Envoy untouched, length and all.
            self._response_skipped = True
            self._finish_response()
            return Continue(set_headers=tuple(set_headers), skip_response_body=True)
        # Body chunks may change length (scrubbing, masking), so the upstream's length is void.
        remove = ("content-length",) if not end_of_stream and "content-length" in headers else ()
        if end_of_stream:
            self._finish_response()
        return Continue(set_headers=tuple(set_headers), remove_headers=remove)

    def on_response_body(self, body: bytes, end_of_stream: bool) -> Decision:
        if self._response_skipped:
            return Continue()  # we asked Envoy not to send it; nothing reads it if it comes anyway
        self._accept(Event.RESPONSE_BODY)
        scrubber = self._scrubber
        assert scrubber is not None
        if self._usage is not None:
            self._usage.feed(body)
        out = body
        try:
            for stage in self._stages:
                out = stage.finish(out) if end_of_stream else stage.feed(out)
        except (Uncheckable, SseError, AnswerRefused) as exc:
            # Nothing unchecked may pass: end the response instead (Envoy resets it).
            self.info.failure = f"{type(exc).__name__}: {exc}"
            return self._reply(502, "unmaskable_response", f"the answer could not be checked: {exc}")
        except Exception as exc:
            # The class name goes to the one-line log (``info.failure``), never to the caller.
            self.info.failure = f"{type(exc).__name__}: {str(exc)[:200]}"
            return self._reply(502, "unmaskable_response", "the answer could not be checked")
        before = scrubber.replaced
        out = scrubber.feed(out)
        if end_of_stream:
            held = scrubber.flush()
            if held:
                out += held
        self.info.response_bytes += len(out)
        self.info.secrets_scrubbed += scrubber.replaced - before
        if self._rec is not None:
            self._rec.response_chunk(out, self._gw.clock())
        if end_of_stream:
            self._finish_response()
        if out is body:
            return Continue()
        return Continue(body=out)

    def on_response_trailers(self) -> Decision:
        self._accept(Event.RESPONSE_TRAILERS)
        # Trailers end the body without an end_of_stream chunk; what a masker still holds is
        # dropped, never leaked.
        self._finish_response()
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
            set_headers.append((p.auth_header, p.auth_scheme + secret))
        # The gateway's id goes upstream and into Envoy's access log and response header
        # (which Envoy copies from the request's x-request-id).
        set_headers.append(("x-request-id", self.info.request_id))
        setting = {k for k, _ in set_headers}
        remove = tuple(h for h in (*CALLER_AUTH_HEADERS, CLIENT_REQUEST_ID_HEADER) if h not in setting)
        return Continue(set_headers=tuple(set_headers), remove_headers=remove)

    def _policy_request(self, body: bytes | None) -> PolicyRequest:
        p, ident = self._provider, self.info.identity
        assert p is not None
        path = self.info.path.split("?", 1)[0][len(p.prefix):] or "/"
        return PolicyRequest(
            user=ident.user if ident else "",
            groups=ident.groups if ident else (),
            issuer=ident.issuer if ident else "",
            workload=ident.workload if ident else None,
            provider=p.name,
            api=p.api,
            method=self.info.method,
            path=path,
            content_type=self._headers.get("content-type", ""),
            body=body,
        )

    def _decide(self, body: bytes | None, forward: Continue) -> Step:
        """Policy on the whole request; ``forward`` is what to send when it passes."""
        req = self._policy_request(body)
        self._raw_body = body
        t0 = self._gw.timer()
        d = self._gw.policy.evaluate(req)
        self.info.policy_seconds = self._gw.timer() - t0
        return self._decided(d, forward)

    def _decided(self, d: PolicyDecision, forward: Continue) -> Step:
        p, ident, body = self._provider, self.info.identity, self._raw_body
        assert p is not None
        path = self.info.path.split("?", 1)[0][len(p.prefix):] or "/"
        self.info.decision = d
        if d.action == "block":
            code = "policy_blocked" if d.status != 400 else "unreadable_body"
            if d.status >= 500:
                code = "policy_error"
            return self._reply(d.status, code, d.message, rule_id=d.rule_id)
        if d.opaque and p.api in ("openai", "anthropic") and not p.allows_uninspectable(path):
            # Content rules cannot see into it, so on a model API it would be a way around them.
            return self._reply(403, "uninspectable_body",
                               f"this request's body is not JSON, so the gateway cannot apply the content policy "
                               f"to it; {p.name!r} forwards such bodies only on paths listed in its "
                               f"allow_uninspectable setting")
        if d.action == "require_approval":
            settings = self._gw.approvals
            if settings is None:
                return self._reply(403, "approval_unavailable",
                                   (d.message or "this request needs a human approval")
                                   + "; approvals are not configured on this gateway, so it cannot be sent",
                                   rule_id=d.rule_id)
            self.phase = Phase.HOLD
            self._pending_body = forward
            binding = Binding(
                user=ident.user if ident else "",
                issuer=ident.issuer if ident else "",
                provider=p.name,
                route=path,
                content_digest=content_digest(body, api=p.api),
                policy_version=self._gw.policy.version,
                rule_id=d.rule_id or "",
            )
            return NeedApproval(binding, settings.hold_seconds, d.message)
        return self._proceed(d, forward)

    def on_approval(self, result: ApprovalResult) -> Step:
        self._accept(Event.APPROVAL)
        self.info.approval = result
        d = self.info.decision
        assert d is not None and self._pending_body is not None
        rid, aid = d.rule_id, result.approval_id
        if result.state == "approved":
            return self._proceed(d, self._pending_body)
        if self._mcp_parsed is not None:
            states = {"denied": f"denied{': ' + result.reason if result.reason else ''}",
                      "pending": f"pending: ask an approver to run `extproc approvals approve {aid}`, then retry"}
            refusal = mcp.Refusal(f"tool call needs approval {aid}: {states.get(result.state, result.state)}", rid,
                                  code=mcp.APPROVAL_DENIED, reason=f"approval_{result.state}")
            return self._jsonrpc_reply(mcp.blocked_reply(self._mcp_parsed, {self._mcp_held_index: refusal}),
                                       f"approval_{result.state}", approval_id=aid)
        if result.state == "denied":
            why = f": {result.reason}" if result.reason else ""
            return self._reply(403, "approval_denied", f"approval {aid} was denied{why}", rule_id=rid,
                               approval_id=aid)
        if result.state == "pending":
            return self._reply(
                403, "approval_pending",
                f"{d.message or 'this request needs approval'}. Approval {aid} is pending; ask an approver to run "
                f"`extproc approvals approve {aid}`, then send the same request again.",
                rule_id=rid, approval_id=aid)
        if result.state == "no_approvers":
            return self._reply(403, "approval_unavailable", result.reason or "nobody may approve this request",
                               rule_id=rid)
        if result.state == "unavailable":
            return self._reply(503, "approval_unavailable", "approvals cannot be reached right now; nothing was sent",
                               rule_id=rid, approval_id=aid)
        return self._reply(403, f"approval_{result.state}", f"approval {aid} is {result.state}; nothing was sent",
                           rule_id=rid, approval_id=aid)

    def _decide_mcp(self, body: bytes, forward: Continue) -> Step:
        """A JSON-RPC body on an MCP route: validate it, then govern every ``tools/call``."""
        p, ident = self._provider, self.info.identity
        assert p is not None
        self._raw_body = body
        parsed = mcp.parse_body(body)
        if isinstance(parsed, mcp.JsonRpcFailure):
            return self._jsonrpc_reply(mcp.failure_reply(parsed), "invalid_jsonrpc", status=400)
        self._mcp_parsed = parsed
        user, groups = (ident.user, ident.groups) if ident else ("", ())
        refusals: dict[int, mcp.Refusal] = {}
        held: tuple[int, mcp.ToolCall, ToolDecision] | None = None
        messages = list(parsed.messages)
        changed = False
        for i, msg in enumerate(parsed.messages):
            if msg.method == "tools/list" and msg.id is not None:
                self._mcp_list_ids.append(msg.id)
            call = mcp.tool_call(msg)
            if call is None:
                continue
            td = self._gw.tools.evaluate(ToolRequest(user, groups, p.name, call.name, call.arguments))
            self.info.tool_decisions.append(td)
            if td.mode != "enforce":
                continue
            if td.action == "block":
                refusals[i] = mcp.Refusal(td.message or f"tool '{call.name}' is not allowed by policy", td.rule_id)
            elif td.action == "require_approval" and held is None:
                held = (i, call, td)
            elif td.action == "require_approval":
                refusals[i] = mcp.Refusal("only one tool call per request can be held for approval", td.rule_id)
            if td.mask_arguments and isinstance(msg.params, dict):
                masked, counts = mask_arguments(call.arguments, self._masking_profile())
                if counts:
                    messages[i] = msg.with_params({**msg.params, "arguments": masked})
                    changed = True
            self._mask_results = self._mask_results or td.mask_results
        if refusals:
            reply = mcp.blocked_reply(parsed, refusals)
            return self._jsonrpc_reply(reply, "tool_blocked", status=200 if reply else 202,
                                       rule_id=next(iter(refusals.values())).rule_id)
        new_body = mcp.encode(messages, parsed.batch) if changed else None
        first = held[2] if held else next((t for t in self.info.tool_decisions if t.mode == "enforce"), None)
        d = PolicyDecision(action="require_approval" if held else "mask" if changed else "allow", mode="enforce",
                           rule_id=first.rule_id if first else None, message=first.message if first else "",
                           status=200, body=new_body, operation="tools/call" if self.info.tool_decisions else "mcp")
        self.info.decision = d
        if held is not None:
            settings = self._gw.approvals
            index, call, td = held
            if settings is None:
                refusal = mcp.Refusal("this tool call needs approval, and approvals are not configured", td.rule_id,
                                      code=mcp.APPROVAL_DENIED, reason="approval_unavailable")
                return self._jsonrpc_reply(mcp.blocked_reply(parsed, {index: refusal}), "approval_unavailable")
            self._mcp_held_index = index
            self.phase = Phase.HOLD
            self._pending_body = forward
            binding = Binding(user=user, issuer=ident.issuer if ident else "", provider=p.name,
                              route=f"tools/call:{call.name}",
                              content_digest=argument_digest(call.name, call.arguments),
                              policy_version=self._gw.tools.version, rule_id=td.rule_id or "")
            return NeedApproval(binding, settings.hold_seconds, td.message)
        return self._proceed(d, forward)

    def _tool_records(self) -> list[dict[str, Any]] | None:
        if self._mcp_parsed is None:
            return None
        out = []
        decisions = iter(self.info.tool_decisions)
        for msg in self._mcp_parsed.messages:
            call = mcp.tool_call(msg)
            if call is None:
                continue
            td = next(decisions, None)
            out.append({"tool": call.name, "server": td.server if td else None,
                        "argument_digest": argument_digest(call.name, call.arguments),
                        "action": td.action if td else None, "mode": td.mode if td else None,
                        "rule_id": td.rule_id if td else None})
        return out

    def _masking_profile(self) -> MaskingProfile:
        from extproc.masking import default_profile

        return self._gw.masking.profile or default_profile()

    def _jsonrpc_reply(self, body: bytes, code: str, *, status: int = 200, rule_id: str | None = None,
                       approval_id: str | None = None) -> Reply:
        """An answer in the protocol's own terms: JSON-RPC errors go back as HTTP 200 (400 for bodies
        that are not JSON-RPC at all), so MCP clients surface them as tool errors."""
        reply = self._reply(status, code, "", rule_id=rule_id, approval_id=approval_id)
        headers = tuple((k, v) for k, v in reply.headers if k not in ("www-authenticate",))
        return Reply(status=status, body=body, headers=headers, code=code)

    def _proceed(self, d: PolicyDecision, forward: Continue) -> Step:
        """After policy (and any approval): rewritten body, usage reporting, budgets."""
        p, body = self._provider, self._raw_body
        assert p is not None
        ins = self._inspected
        new_body = ins.forward if ins is not None else forward_body(d, body, p.api)
        if new_body is not None:
            forward = Continue(
                set_headers=(*forward.set_headers, ("content-length", str(len(new_body)))),
                remove_headers=forward.remove_headers,
                body=new_body,
            )
        if d.budgets:
            self.phase = Phase.BUDGET
            self._pending_body = forward
            self._reserved_at = self._gw.clock()
            return NeedBudget(d.budgets, d.prompt_tokens)
        return self._release(forward)

    def _release(self, forward: Continue) -> Step:
        """The request may leave: first (when recording) the start of its record is written."""
        if self._rec is None:
            self.phase = Phase.FORWARDED
            return forward
        d = self.info.decision
        body = forward.body if forward.body is not None else self._raw_body
        ins = self._inspected
        # A worker masked the body it would forward; anything else is masked here.
        recorded = ins.recorded if ins is not None and (forward.body is None or forward.body is ins.forward) else None
        self._rec.tools = self._tool_records()
        self._start_entry = self._rec.forwarded(
            body, decision=d, approval_id=self.info.approval.approval_id if self.info.approval else None,
            model=d.model if d else None, operation=d.operation if d else None, now=self._gw.clock(),
            recorded=recorded,
        )
        self.phase = Phase.RECORD
        self._pending_body = forward
        return NeedRecordStart(self._start_entry)

    def _start_recording(self) -> None:
        settings, p = self._gw.recording, self._provider
        if settings is None or p is None:
            return
        now = self._gw.clock()
        # The profile with the credentials is cached (compiling detectors per request costs more
        # than the rest of the record). The caller's token is a verified JWT, which the JWT
        # detector masks; only a profile without that detector needs it as a literal.
        profile = self._gw.literal_profiles.get(settings.masking, self._gw.all_credentials())
        extra = (self._token,) if self._token and "JWT" not in profile.entities else ()
        self._rec = rec = InteractionRecorder(settings, profile, now=now, secrets=extra,
                                              interaction_id=self._gw.new_id())
        rec.request(
            request_id=self.info.request_id, client_request_id=self.info.client_request_id,
            method=self.info.method, path=self.info.path.split("?", 1)[0],
            provider=p.name, route=self.info.path.split("?", 1)[0][len(p.prefix):] or "/",
            caller=self.info.identity, session_header=self._headers.get(settings.session_header),
        )

    def _setup_masking(self, content_type: str, secrets: Sequence[str]) -> Reply | None:
        p = self._provider
        assert p is not None
        m = self._gw.masking
        api = p.api if p.api in ("openai", "anthropic") else "generic"
        pii = m.applies(p.name, self.info.identity) or self._mask_results
        is_sse = content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
        if not pii and not (is_sse and secrets):
            return None  # the byte scrubber alone guards the credential in contiguous bodies
        base = (m.profile or self._masking_profile()) if pii else None
        profile = self._gw.literal_profiles.get(base, secrets)
        try:
            self._masker = body_masker_for(content_type or "application/octet-stream", api, profile,
                                           max_buffer=m.max_buffer_bytes, signed_thinking=m.signed_thinking)
            self._stages.append(self._masker)
        except UnmaskableContent:
            if pii and m.on_unmaskable == "block":
                return self._reply(502, "unmaskable_response",
                                   f"the answer's content type cannot be masked: {content_type or 'none'}")
        return None

    def _setup_tools(self, content_type: str) -> Reply | None:
        """Response stages that govern tools: ``tools/list`` filtering on MCP routes, and the
        guard on tool calls a model emits. They run before masking."""
        p, ident, tools = self._provider, self.info.identity, self._gw.tools
        assert p is not None
        if tools.is_empty:
            return None
        user, groups = (ident.user, ident.groups) if ident else ("", ())
        if p.api == "mcp" and self._mcp_list_ids:
            def allowed(name: str) -> bool:
                return tools.may_call(user, groups, p.name, name)

            self._mcp_filter = mcp.McpResponseFilter(
                self._mcp_list_ids, allowed, tools.pins_for(p.name) or None, tools.on_pin_mismatch,
                content_type=content_type or "application/json",
            )
            self._stages.append(self._mcp_filter)
        elif p.api in ("openai", "anthropic"):
            self._guard = ToolCallGuard(tools, user, groups, "openai" if p.api == "openai" else "anthropic",
                                        "error" if self._gw.model_tool_calls == "error" else "remove",
                                        content_type=content_type or "application/json", provider=p.name)
            self._stages.append(self._guard)
        return None

    def _finish_response(self) -> None:
        self.phase = Phase.DONE
        if self._mcp_filter is not None:
            self.info.tools_hidden.extend(self._mcp_filter.removed)
            self.info.pin_mismatches.extend(self._mcp_filter.pin_mismatches)
        if self._guard is not None:
            self.info.tool_decisions.extend(self._guard.decisions)
        if self._masker is not None:
            self.info.response_masked.update(self._masker.counts)
        d = self.info.decision
        if self._usage is not None:
            usage = self._usage.finish()
            self.info.usage = usage
            if usage is not None and d is not None and any(c.tokens_limit for c in d.budgets):
                self.effects.append(ChargeUsage(d.budgets, usage.total, d.prompt_tokens, self._reserved_at))
        self._complete_record()

    def _complete_record(self, error: str | None = None) -> None:
        if self._rec is not None and self._start_entry is not None:
            complete = self._rec.complete(self.info.usage, now=self._gw.clock(), error=error)
            guard, label = self._guard, self._rec.label
            if guard is not None and guard.decisions:
                complete["model_tool_calls"] = [
                    {"tool": label(td.tool), "action": td.action, "rule_id": td.rule_id, "mode": td.mode}
                    for td in guard.decisions
                ]
            f = self._mcp_filter
            if f is not None and (f.removed or f.pin_mismatches):
                complete["tools_hidden"] = [label(t) for t in f.removed]
                complete["pin_mismatches"] = [label(t) for t in f.pin_mismatches]
            self.effects.append(RecordEntries(self._start_entry, complete))
            self._start_entry = None

    def _reply(self, status: int, code: str, message: str, *, rule_id: str | None = None,
               budget_id: str | None = None, approval_id: str | None = None,
               extra_headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        was = self.phase
        self.phase = Phase.DONE
        self.info.status = status
        self.info.error_code = code
        rid = self.info.request_id
        headers: list[tuple[str, str]] = [("content-type", "application/json"), ("x-extproc-error", code),
                                          *extra_headers]
        if rid != "-":
            headers.append(("x-request-id", rid))
        if status == 401:
            headers.append(("www-authenticate", 'Bearer realm="extproc"'))
        extra: dict[str, Any] = {}
        if rule_id:
            extra["rule_id"] = rule_id
            headers.append(("x-extproc-rule", rule_id))
        if budget_id:
            extra["budget_id"] = budget_id
        if approval_id:
            extra["approval_id"] = approval_id
            headers.append(("x-extproc-approval", approval_id))
        api = self._provider.api if self._provider is not None else ""
        body = error_body(status, code, message, rid, flavour=api if api in ("openai", "anthropic") else "any",
                          **extra)
        self._record_refusal(was, status, code, body, approval_id)
        return Reply(status=status, body=body, headers=tuple(headers), code=code)

    def _record_refusal(self, was: Phase, status: int, code: str, reply: bytes, approval_id: str | None) -> None:
        rec = self._rec
        if rec is None:
            return  # before admission (no route, no identity): an unknown caller is not recorded
        if self._start_entry is not None:
            self._complete_record(error=code)  # forwarded, then cut off (e.g. an unmaskable answer)
            return
        if was in (Phase.RESPONSE, Phase.DONE):
            return
        d = self.info.decision
        rec.tools = self._tool_records()
        ins = self._inspected
        start, complete = rec.refused(status, code, body=self._raw_body, reply=reply, decision=d,
                                      approval_id=approval_id, model=d.model if d else None,
                                      operation=d.operation if d else None, now=self._gw.clock(),
                                      recorded=ins.recorded_raw if ins is not None else None)
        self.effects.append(RecordEntries(start, complete, write_start=True))

    def _accept(self, event: Event) -> None:
        if (self.phase, event) not in TRANSITIONS:
            raise ProtocolError(f"unexpected {event.value} in phase {self.phase.value}")

