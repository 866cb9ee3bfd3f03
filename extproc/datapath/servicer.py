"""The gRPC ext_proc servicer: a thin adapter between Envoy's messages and ``RequestMachine``.

All decisions are made by the machine; this module only converts protobufs to events and
decisions back to protobufs, and fulfils the machine's I/O requests (identity verification).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
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
from extproc.datapath.machine import (
    ApprovalResult,
    ChargeUsage,
    Continue,
    Decision,
    Gateway,
    NeedApproval,
    NeedBudget,
    NeedIdentity,
    NeedRecordStart,
    Phase,
    ProtocolError,
    RecordEntries,
    Reply,
    RequestMachine,
    Step,
)
from extproc.datapath.runtime import HOLD_GRACE_SECONDS
from extproc.identity.jwt import Authenticator
from extproc.identity.model import AuthError, Identity
from extproc.policy import budgets
from extproc.policy.model import BudgetOutcome
from extproc.recording.model import interaction_log_line
from extproc.recording.store import RecordingUnavailable, RecordsStore
from extproc.store import RedisStore

__all__ = ["ExternalProcessor"]

log = logging.getLogger("extproc.servicer")
#: One JSON line per recorded interaction (no bodies): for log shippers.
interaction_log = logging.getLogger("extproc.interactions")

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


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


#: The response body is not sent (see ``Continue.skip_response_body``); the rest as configured.
_SKIP_RESPONSE_BODY = epf.ProcessingMode(
    request_header_mode=epf.ProcessingMode.SEND,
    response_header_mode=epf.ProcessingMode.SEND,
    request_body_mode=epf.ProcessingMode.BUFFERED,
    response_body_mode=epf.ProcessingMode.NONE,
    request_trailer_mode=epf.ProcessingMode.SKIP,
    response_trailer_mode=epf.ProcessingMode.SKIP,
)

#: Everything as configured, minus the request body (see ``Continue.skip_request_body``).
_SKIP_REQUEST_BODY = epf.ProcessingMode(
    request_header_mode=epf.ProcessingMode.SEND,
    response_header_mode=epf.ProcessingMode.SEND,
    request_body_mode=epf.ProcessingMode.NONE,
    response_body_mode=epf.ProcessingMode.STREAMED,
    request_trailer_mode=epf.ProcessingMode.SKIP,
    response_trailer_mode=epf.ProcessingMode.SKIP,
)


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
    ) -> None:
        # Callables, so a configuration reload swaps what new streams see while streams in
        # flight keep the objects they started with.
        self._gateway = gateway
        self._authenticator = authenticator
        self._metrics = metrics
        self._store = store
        self._approvals = approvals
        self._records = records
        self._background: set[asyncio.Task[None]] = set()
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
        gateway = self._gateway()
        machine = RequestMachine(gateway)
        auth = self._authenticator()
        self.inflight += 1
        m.streams_inflight.inc()
        m.worker_streams_here.inc()
        outcome = "incomplete"
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                t0 = time.perf_counter()
                resp: ep.ProcessingResponse | None = None
                async for resp in self._handle(machine, gateway, auth, req, kind):
                    if resp.HasField("override_message_timeout"):
                        yield resp  # before a hold: not the answer to this message yet
                assert resp is not None
                hist = self._message_seconds.get(kind or "")
                if hist is not None:
                    hist.observe(time.perf_counter() - t0)
                yield resp
                if resp.HasField("immediate_response"):
                    outcome = machine.info.error_code or "refused"
                    return
            outcome = "ok" if machine.info.status is not None else "incomplete"
        except ProtocolError as exc:
            outcome = "protocol_error"
            m.stream_errors.labels("protocol").inc()
            log.warning("ext_proc protocol error for request %s: %s", machine.info.request_id, exc)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        finally:
            # Envoy may end the stream right after its last answer, before the loop sees the end
            # (the generator is then closed at a ``yield``): a request that got its answer is ok.
            if outcome == "incomplete" and machine.info.status is not None and machine.info.error_code is None \
                    and machine.phase is Phase.DONE:
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
        for eff in machine.effects:
            coro = self._charge(eff) if isinstance(eff, ChargeUsage) else self._record(eff)
            task = asyncio.create_task(coro)
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        machine.effects.clear()

    async def _record(self, eff: RecordEntries) -> None:
        if self._records is None:
            return
        if eff.write_start and eff.start is not None:
            try:
                await self._records.append_start(eff.start)
            except RecordingUnavailable:
                self._metrics.stream_errors.labels("recording").inc()
        await self._records.append_complete(eff.complete)
        if interaction_log.isEnabledFor(logging.INFO):  # the line costs a JSON encoding per request
            interaction_log.info(json.dumps(interaction_log_line(eff.start or {}, eff.complete), default=str))

    async def _charge(self, eff: ChargeUsage) -> None:
        ok = await budgets.charge_usage(self._store.client, eff.charges, actual_tokens=eff.actual_tokens,
                                        estimated_tokens=eff.estimated_tokens, now=eff.reserved_at)
        if not ok:
            self._metrics.stream_errors.labels("usage_charge").inc()

    async def _reserve(self, machine: RequestMachine, need: NeedBudget) -> BudgetOutcome:
        out = await budgets.check_and_reserve(self._store.client, need.charges, prompt_tokens=need.prompt_tokens,
                                              now=time.time())
        if out.unavailable and out.allowed:
            log.warning("budgets not enforced for request %s: redis unavailable (%s)", machine.info.request_id,
                        out.error)
        return out

    async def _record_start(self, need: NeedRecordStart) -> bool:
        if self._records is None:
            return False
        try:
            await self._records.append_start(need.entry)
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
        while True:
            if isinstance(d, NeedIdentity):
                d = machine.on_identity(await self._authenticate(auth, d))
            elif isinstance(d, NeedBudget):
                d = machine.on_budget(await self._reserve(machine, d))
            elif isinstance(d, NeedRecordStart):
                d = machine.on_record_start(await self._record_start(d))
            elif isinstance(d, NeedApproval):
                yield ep.ProcessingResponse(
                    override_message_timeout=duration_pb2.Duration(seconds=d.hold_seconds + HOLD_GRACE_SECONDS))
                d = machine.on_approval(await self._approve(machine, gateway, d))
            else:
                yield d
                return

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

    async def _handle(
        self, machine: RequestMachine, gateway: Gateway, auth: Authenticator, req: ep.ProcessingRequest,
        kind: str | None,
    ) -> AsyncIterator[ep.ProcessingResponse]:
        """Yields this message's answer last; anything before it is a message-timeout extension."""
        d: Step
        if kind == "request_headers":
            d = machine.on_request_headers(_headers(req.request_headers), req.request_headers.end_of_stream)
        elif kind == "request_body":
            d = machine.on_request_body(req.request_body.body, req.request_body.end_of_stream)
        elif kind == "response_headers":
            r = machine.on_response_headers(_headers(req.response_headers), req.response_headers.end_of_stream)
            if isinstance(r, Reply):
                yield _immediate(r)
                return
            resp = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=_common(r)))
            if r.skip_response_body:
                resp.mode_override.CopyFrom(_SKIP_RESPONSE_BODY)
            yield resp
            return
        elif kind == "response_body":
            r = machine.on_response_body(req.response_body.body, req.response_body.end_of_stream)
            yield _immediate(r) if isinstance(r, Reply) else ep.ProcessingResponse(
                response_body=ep.BodyResponse(response=_common(r)))
            return
        elif kind == "request_trailers":
            machine.on_request_trailers()
            yield ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
            return
        elif kind == "response_trailers":
            machine.on_response_trailers()
            yield ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
            return
        else:
            raise ProtocolError(f"unsupported ext_proc message {kind!r}")
        async for out in self._fulfil(machine, gateway, auth, d):
            yield out if isinstance(out, ep.ProcessingResponse) else self._request_response(kind, out)
