"""The gRPC ext_proc servicer: a thin adapter between Envoy's messages and ``RequestMachine``.

All decisions are made by the machine; this module only converts protobufs to events and
decisions back to protobufs, and fulfils the machine's I/O requests (identity verification).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as epf
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2

from extproc.admin.metrics import Metrics
from extproc.approvals.gate import ApprovalGate
from extproc.datapath.inspect import Compiled, Inspection, InspectionFailed, run_job
from extproc.datapath.machine import (
    ApprovalResult,
    ChargeUsage,
    Continue,
    Decision,
    Gateway,
    NeedApproval,
    NeedBudget,
    NeedIdentity,
    NeedInspection,
    NeedRecordStart,
    Phase,
    ProtocolError,
    RecordEntries,
    Reply,
    RequestMachine,
    Step,
)
from extproc.datapath.runtime import HOLD_GRACE_SECONDS
from extproc.datapath.uds import PeerGuard
from extproc.datapath.workers import InspectorPool
from extproc.identity.jwt import Authenticator
from extproc.identity.model import AuthError, Identity
from extproc.masking import MaskingProfile, default_profile
from extproc.policy import budgets
from extproc.policy.model import BudgetOutcome
from extproc.recording.model import interaction_log_line, safe_token
from extproc.recording.store import RecordingUnavailable, RecordsStore
from extproc.store import RedisStore

__all__ = ["ExternalProcessor", "new_request_id"]

log = logging.getLogger("extproc.servicer")
#: One JSON line per recorded interaction (no bodies): for log shippers.
interaction_log = logging.getLogger("extproc.interactions")

def new_request_id() -> str:
    """The gateway's id for one request: 128 random bits, the shape of Envoy's own UUIDs."""
    return str(uuid.uuid4())


_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


_LOG_PROFILE: list[MaskingProfile] = []


def _log_id(request_id: str) -> str:
    """A request id as it may be logged: it can come from the caller (see docs/recording.md)."""
    if not _LOG_PROFILE:
        _LOG_PROFILE.append(default_profile())
    return safe_token(request_id, _LOG_PROFILE[0]) or "-"


def _headers(msg: ep.HttpHeaders) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in msg.headers.headers:
        # Envoy sends raw_value; latin-1 keeps every byte round-trippable.
        v = h.raw_value.decode("latin-1") if h.raw_value else h.value
        k = h.key
        out[k] = f"{out[k]},{v}" if k in out else v
    return out


def _mutation(d: Continue) -> ep.HeaderMutation | None:
    if not d.set_headers and not d.remove_headers:
        return None
    return ep.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1", "replace")),
                append_action=_OVERWRITE,
            )
            for k, v in d.set_headers
        ],
        remove_headers=list(d.remove_headers),
    )


def _mode(*, request_body: int, response_body: int) -> epf.ProcessingMode:
    """The processing mode Envoy is rendered with, but for the body modes (a per-stream override)."""
    return epf.ProcessingMode(
        request_header_mode=epf.ProcessingMode.SEND,
        response_header_mode=epf.ProcessingMode.SEND,
        request_body_mode=request_body,
        response_body_mode=response_body,
        request_trailer_mode=epf.ProcessingMode.SKIP,
        response_trailer_mode=epf.ProcessingMode.SKIP,
    )


#: The response body is not sent (see ``Continue.skip_response_body``); the rest as configured.
_SKIP_RESPONSE_BODY = _mode(request_body=epf.ProcessingMode.BUFFERED, response_body=epf.ProcessingMode.NONE)
#: Everything as configured, minus the request body (see ``Continue.skip_request_body``).
_SKIP_REQUEST_BODY = _mode(request_body=epf.ProcessingMode.NONE, response_body=epf.ProcessingMode.STREAMED)


def _common(d: Continue) -> ep.CommonResponse:
    common = ep.CommonResponse()
    mutation = _mutation(d)
    if mutation is not None:
        common.header_mutation.CopyFrom(mutation)
    if d.body is not None:
        if d.body:
            common.body_mutation.body = d.body
        else:
            common.body_mutation.clear_body = True
    return common


def _immediate(r: Reply) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=r.status),
            headers=ep.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1", "replace")),
                        append_action=_OVERWRITE,
                    )
                    for k, v in r.headers
                ]
            ),
            body=r.body,
            details=f"extproc_{r.code}" if r.code else "extproc",
        )
    )


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        gateway: Callable[[], Gateway],
        authenticator: Callable[[], Authenticator],
        metrics: Metrics,
        store: RedisStore,
        approvals: ApprovalGate | None = None,
        records: RecordsStore | None = None,
        inspector: InspectorPool | None = None,
        max_message_timeout: int = 600,
        new_request_id: Callable[[], str] = new_request_id,
        peer_guard: PeerGuard | None = None,
    ) -> None:
        # Callables, so a configuration reload swaps what new streams see while streams in
        # flight keep the objects they started with.
        self._gateway = gateway
        self._authenticator = authenticator
        self._metrics = metrics
        self._store = store
        self._approvals = approvals
        self._records = records
        self._inspector = inspector
        self._inline_compiled: Compiled | None = None
        self._max_message_timeout = max_message_timeout
        self._new_request_id = new_request_id
        #: Unix-socket ext_proc: only allowed peer uids (Envoy's) may be answered.
        self._peer_guard = peer_guard
        # Labelled children looked up once: a label look-up per message is measurable.
        self._message_seconds = {
            kind: metrics.message_seconds.labels(kind)
            for kind in ("request_headers", "request_body", "response_headers", "response_body",
                         "request_trailers", "response_trailers")
        }
        self.inflight = 0

    async def Process(
        self, request_iterator: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ep.ProcessingResponse]:
        m = self._metrics
        if self._peer_guard is not None and not self._peer_guard.check():
            # A foreign peer's connection was shut down; this stream may be on it. Nothing of
            # the request is read or answered (Envoy retries nothing: the request fails closed).
            m.stream_errors.labels("peer_refused").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "peer not allowed")
        gateway = self._gateway()
        machine = RequestMachine(gateway, request_id=self._new_request_id())
        auth = self._authenticator()
        self.inflight += 1
        m.streams_inflight.inc()
        m.worker_streams_here.inc()
        outcome = "incomplete"
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                t0 = time.perf_counter()
                got = self._dispatch(machine, auth, req, kind)
                resp: ep.ProcessingResponse | None = None
                if isinstance(got, ep.ProcessingResponse):
                    resp = got  # decided at once: no await, no generator (most messages)
                else:
                    async for out in self._fulfil(machine, gateway, auth, got):
                        resp = out if isinstance(out, ep.ProcessingResponse) else self._request_response(kind, out)
                        if resp.HasField("override_message_timeout"):
                            yield resp  # before a hold: not the answer to this message yet
                assert resp is not None
                hist = self._message_seconds.get(kind or "")
                if hist is not None:
                    hist.observe(time.perf_counter() - t0)
                if resp.HasField("immediate_response"):
                    outcome = machine.info.error_code or "refused"
                    if machine.info.failure is not None:
                        log.warning("answer to request %s cut off (%s): %s", machine.info.request_id,
                                    outcome, machine.info.failure)
                    yield resp
                    return
                yield resp
            outcome = "ok" if machine.info.status is not None else "incomplete"
        except ProtocolError as exc:
            outcome = "protocol_error"
            m.stream_errors.labels("protocol").inc()
            log.warning("ext_proc protocol error for request %s: %s", _log_id(machine.info.request_id), exc)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:
            outcome = "internal_error"
            m.stream_errors.labels("internal").inc()
            log.error("ext_proc failed on request %s: %s: %s", machine.info.request_id, type(exc).__name__,
                      str(exc)[:200])
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if outcome == "incomplete" and machine.phase is Phase.DONE and machine.info.error_code is None:
                # An Envoy without ext_proc_graceful_grpc_close (ours renders it on) resets the
                # stream once it has the last answer it needs, before we see the end of the
                # request iterator; the exchange itself completed.
                outcome = "ok"
            self.inflight -= 1
            m.streams_inflight.dec()
            self._account(machine, outcome)
            self._run_effects(machine)

    def _account(self, machine: RequestMachine, outcome: str) -> None:
        m, info = self._metrics, machine.info
        provider = info.provider or "-"
        m.requests.labels(provider, outcome).inc()
        if info.secrets_scrubbed:
            m.secrets_scrubbed.labels(provider).inc()
        d = info.decision
        if d is not None:
            m.policy_seconds.observe(info.policy_seconds)
            m.policy_decisions.labels(d.action, d.rule_id or "-", d.mode).inc()
            for rm in d.matches:
                if rm.mode == "shadow":
                    m.policy_shadow_matches.labels(rm.action, rm.rule_id).inc()
            for entity, n in d.mask_counts.items():
                m.masked.labels("request", entity).inc(n)
        for entity, n in info.response_masked.items():
            m.masked.labels("response", entity).inc(n)
        if info.budget is not None and not info.budget.allowed:
            m.budget_refusals.labels(info.budget.budget_id or "-", str(info.budget.status)).inc()
        if info.approval is not None:
            m.approvals.labels(info.approval.state).inc()
        for td in info.tool_decisions:
            m.tool_decisions.labels(td.action, td.rule_id or "-", td.mode, td.server or provider).inc()
        if info.tools_hidden:
            m.tools_hidden.labels(provider).inc(len(info.tools_hidden))
        if info.pin_mismatches:
            m.tool_pin_mismatches.labels(provider).inc(len(info.pin_mismatches))

    def _run_effects(self, machine: RequestMachine) -> None:
        """Records and usage charges leave without a task each: they join the next group write
        (records) or Redis batch (charges), off the request path."""
        for eff in machine.effects:
            if isinstance(eff, ChargeUsage):
                self._charge(eff)
            else:
                self._record(eff)
        machine.effects.clear()

    def _record(self, eff: RecordEntries) -> None:
        if self._records is None:
            return
        if eff.write_start and eff.start is not None:
            self._records.submit_start(eff.start).add_done_callback(self._start_recorded)
        done = self._records.submit_complete(eff.complete)
        if interaction_log.isEnabledFor(logging.INFO):  # the line costs a JSON encoding per request
            # Logged once written: the write resolves the session id the line shows.
            done.add_done_callback(lambda _f: interaction_log.info(
                json.dumps(interaction_log_line(eff.start or {}, eff.complete), default=str)))

    def _start_recorded(self, fut: asyncio.Future[str | None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:  # RecordingUnavailable (required mode)
            self._metrics.stream_errors.labels("recording").inc()

    def _charge(self, eff: ChargeUsage) -> None:
        budgets.charge_usage_nowait(self._store.batcher, eff.charges, actual_tokens=eff.actual_tokens,
                                    estimated_tokens=eff.estimated_tokens, now=eff.reserved_at,
                                    prefix=self._store.prefix, on_error=self._charge_failed)

    def _charge_failed(self, _exc: BaseException) -> None:
        self._metrics.stream_errors.labels("usage_charge").inc()

    async def _reserve(self, machine: RequestMachine, need: NeedBudget) -> BudgetOutcome:
        out = await budgets.check_and_reserve(self._store.batcher, need.charges, prompt_tokens=need.prompt_tokens,
                                              now=time.time(), prefix=self._store.prefix)
        if out.unavailable and out.allowed:
            log.warning("budgets not enforced for request %s: redis unavailable (%s)", _log_id(machine.info.request_id),
                        out.error)
        return out

    def _settle(self, machine: RequestMachine, auth: Authenticator, d: Step) -> Step:
        """Answer every ``Need*`` that needs no waiting, until the machine decides or asks for
        something that does: a token verified before (the token cache), and a ``best_effort``
        record start (it joins the next group write and is spooled, in order, if Redis does not
        take it; only ``required`` mode holds the request until written)."""
        while True:
            if isinstance(d, NeedIdentity):
                known = auth.cached(d.token)
                if known is None:
                    return d
                d = machine.on_identity(known)
            elif isinstance(d, NeedRecordStart) and self._records is not None \
                    and self._records.settings.mode != "required":
                self._records.submit_start(d.entry)
                d = machine.on_record_start(True)
            else:
                return d

    async def _record_start(self, need: NeedRecordStart) -> bool:
        """A ``required`` record start: the request waits until it is written (or refused)."""
        if self._records is None:
            return False
        try:
            await self._records.submit_start(need.entry)
        except RecordingUnavailable:
            self._metrics.stream_errors.labels("recording").inc()
            return False
        return True

    async def _authenticate(self, auth: Authenticator, need: NeedIdentity) -> Identity | AuthError:
        try:
            return await auth.authenticate(need.token)
        except AuthError as exc:
            self._metrics.auth_failures.labels(exc.code).inc()
            return exc

    async def _approve(self, machine: RequestMachine, gateway: Gateway, need: NeedApproval) -> ApprovalResult:
        gate, settings, ident = self._approvals, gateway.approvals, machine.info.identity
        if gate is None or settings is None or ident is None:
            return ApprovalResult("unavailable")
        return await gate.hold(need, ident, settings)

    async def _fulfil(
        self, machine: RequestMachine, gateway: Gateway, auth: Authenticator, d: Step
    ) -> AsyncIterator[ep.ProcessingResponse | Decision]:
        """The one place every ``Need*`` is fulfilled: feed the machine the answers until it
        decides, then yield the decision. Before an approval hold it yields the message-timeout
        extension Envoy must get first (Envoy waits ``message_timeout`` for an answer; the
        override lasts one processing state, at most ``max_message_timeout``)."""
        extended = False
        while True:
            d = self._settle(machine, auth, d)
            if isinstance(d, NeedInspection):
                # Envoy waits message_timeout for an answer; extend it once (per processing state,
                # at most max_message_timeout) to cover the inspection and, since the same state
                # may then hold for an approval, the hold too.
                wait = d.timeout_seconds + HOLD_GRACE_SECONDS
                if gateway.approvals is not None:
                    wait += gateway.approvals.hold_seconds + HOLD_GRACE_SECONDS
                yield ep.ProcessingResponse(
                    override_message_timeout=duration_pb2.Duration(seconds=min(wait, self._max_message_timeout)))
                extended = True
                d = machine.on_inspection(await self._inspect(d))
            elif isinstance(d, NeedIdentity):
                d = machine.on_identity(await self._authenticate(auth, d))
            elif isinstance(d, NeedBudget):
                d = machine.on_budget(await self._reserve(machine, d))
            elif isinstance(d, NeedRecordStart):
                d = machine.on_record_start(await self._record_start(d))
            elif isinstance(d, NeedApproval):
                if not extended:
                    yield ep.ProcessingResponse(
                        override_message_timeout=duration_pb2.Duration(seconds=d.hold_seconds + HOLD_GRACE_SECONDS))
                d = machine.on_approval(await self._approve(machine, gateway, d))
            else:
                yield d
                return

    async def _inspect(self, need: NeedInspection) -> Inspection | InspectionFailed:
        """A large body's policy and masking, in a worker process (off the event loop)."""
        job = need.job
        result: Inspection | InspectionFailed
        self._metrics.inspections_inflight.inc()
        try:
            if self._inspector is not None:
                result = await self._inspector.run(job, need.timeout_seconds)
            else:  # no worker processes: the same job, on the loop
                self._inline_compiled = self._inline_compiled or Compiled()
                result = run_job(job, self._inline_compiled, time.perf_counter)
        finally:
            self._metrics.inspections_inflight.dec()
        self._metrics.inspections.labels("ok" if isinstance(result, Inspection) else result.reason).inc()
        return result

    @staticmethod
    def _request_response(kind: str, d: Step) -> ep.ProcessingResponse:
        assert isinstance(d, Continue | Reply)
        if isinstance(d, Reply):
            return _immediate(d)
        if kind == "request_headers":
            resp = ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=_common(d)))
            if d.skip_request_body:
                resp.mode_override.CopyFrom(_SKIP_REQUEST_BODY)
            return resp
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=_common(d)))

    def _dispatch(self, machine: RequestMachine, auth: Authenticator, req: ep.ProcessingRequest,
                  kind: str | None) -> ep.ProcessingResponse | Step:
        """The machine's answer to one message: the response when it decided without waiting
        (``_settle``), else the ``Need*`` it waits on (for ``_fulfil``)."""
        d: Step
        if kind == "request_headers":
            d = machine.on_request_headers(_headers(req.request_headers), req.request_headers.end_of_stream)
        elif kind == "request_body":
            d = machine.on_request_body(req.request_body.body, req.request_body.end_of_stream)
        elif kind == "response_headers":
            r = machine.on_response_headers(_headers(req.response_headers), req.response_headers.end_of_stream)
            if isinstance(r, Reply):
                return _immediate(r)
            resp = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=_common(r)))
            if r.skip_response_body:
                resp.mode_override.CopyFrom(_SKIP_RESPONSE_BODY)
            return resp
        elif kind == "response_body":
            r = machine.on_response_body(req.response_body.body, req.response_body.end_of_stream)
            return _immediate(r) if isinstance(r, Reply) else ep.ProcessingResponse(
                response_body=ep.BodyResponse(response=_common(r)))
        elif kind == "request_trailers":
            machine.on_request_trailers()
            return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
        elif kind == "response_trailers":
            machine.on_response_trailers()
            return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
        else:
            raise ProtocolError(f"unsupported ext_proc message {kind!r}")
        d = self._settle(machine, auth, d)
        return self._request_response(kind, d) if isinstance(d, Continue | Reply) else d
