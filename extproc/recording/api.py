"""The ``extproc.api.admin.v1.Sessions`` gRPC service: auditors read session records.

Every RPC authenticates the caller's bearer token (``extproc.identity.admin``) and then requires
membership of ``recording.auditors`` (groups or users); nobody else may read records, and an
empty auditor list means nobody at all. Each successful read is logged (who read what), so
access to the records is itself auditable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from redis.exceptions import RedisError, ResponseError

from extproc.api.admin.v1 import sessions_pb2, sessions_pb2_grpc
from extproc.identity.admin import authenticate_rpc, require_member
from extproc.identity.jwt import Authenticator
from extproc.identity.model import Identity
from extproc.recording.model import RecordingSettings, summarize
from extproc.recording.store import RecordsStore

__all__ = ["MAX_LIST", "SessionsService", "add_to_server", "summary_message"]

log = logging.getLogger("extproc.recording.api")

MAX_LIST = 1000
_UNAVAILABLE = (RedisError, OSError, TimeoutError)


def _resolve(value: Any) -> Any:
    return value() if callable(value) else value


def summary_message(s: Mapping[str, Any]) -> sessions_pb2.RecordSummary:
    return sessions_pb2.RecordSummary(
        request_id=s.get("request_id") or "",
        interaction_id=s.get("interaction_id") or "",
        session_id=s.get("session_id") or "",
        user=s.get("user") or "",
        provider=s.get("provider") or "",
        route=s.get("route") or "",
        model=s.get("model") or "",
        operation=s.get("operation") or "",
        action=s.get("action") or "",
        status=int(s.get("status") or 0),
        received_at_ms=int(s.get("received_at_ms") or 0),
        latency_ms=int(s.get("latency_ms") or 0),
        total_tokens=int(s.get("total_tokens") or 0),
        stream=bool(s.get("stream")),
        complete=bool(s.get("complete")),
        forwarded=bool(s.get("forwarded")),
    )


class SessionsService(sessions_pb2_grpc.SessionsServicer):  # type: ignore[misc]
    """``store``, ``authenticator`` and ``settings`` may be objects or zero-argument callables
    returning the current one (so a configuration reload is picked up)."""

    def __init__(
        self,
        store: RecordsStore | Callable[[], RecordsStore],
        authenticator: Authenticator | Callable[[], Authenticator],
        settings: RecordingSettings | Callable[[], RecordingSettings],
    ) -> None:
        self._store = store
        self._authenticator = authenticator
        self._settings = settings

    def store(self) -> RecordsStore:
        s: RecordsStore = _resolve(self._store)
        return s

    async def _auditor(self, context: grpc.aio.ServicerContext, what: str) -> Identity:
        auth: Authenticator = _resolve(self._authenticator)
        settings: RecordingSettings = _resolve(self._settings)
        identity = await authenticate_rpc(context, auth)
        await require_member(context, identity, groups=settings.auditors.groups, users=settings.auditors.users,
                             what="read session records")
        log.info("session records: %s by %s (%s)", what, identity.user, identity.issuer)
        return identity

    async def List(
        self, request: sessions_pb2.ListRecordsRequest, context: grpc.aio.ServicerContext
    ) -> sessions_pb2.ListRecordsResponse:
        await self._auditor(context, "list")
        limit = request.limit if request.limit > 0 else 50
        try:
            rows = await self.store().list(
                user=request.user or None,
                session=request.session or None,
                decision=request.decision or None,
                provider=request.provider or None,
                model=request.model or None,
                since=request.since or None,
                until=request.until or None,
                limit=min(limit, MAX_LIST),
            )
        except _UNAVAILABLE as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the record store is unreachable: {type(exc).__name__}")
            raise AssertionError("unreachable") from None
        return sessions_pb2.ListRecordsResponse(records=[summary_message(r) for r in rows])

    async def Get(
        self, request: sessions_pb2.GetRecordRequest, context: grpc.aio.ServicerContext
    ) -> sessions_pb2.RecordDetail:
        await self._auditor(context, f"get {request.request_id}")
        if not request.request_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        try:
            view = await self.store().get(request.request_id)
        except _UNAVAILABLE as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the record store is unreachable: {type(exc).__name__}")
            raise AssertionError("unreachable") from None
        if view is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no record of request {request.request_id}")
            raise AssertionError("unreachable")
        return sessions_pb2.RecordDetail(
            summary=summary_message(summarize(view)), json=json.dumps(view, ensure_ascii=False, sort_keys=True)
        )

    async def Export(
        self, request: sessions_pb2.ExportRecordsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sessions_pb2.ExportRecordsChunk]:
        await self._auditor(context, "export")
        try:
            async for line in self.store().export(request.since or None, request.until or None):
                yield sessions_pb2.ExportRecordsChunk(line=json.dumps(line, ensure_ascii=False, sort_keys=True))
        except _UNAVAILABLE as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the record store is unreachable: {type(exc).__name__}")

    async def Verify(
        self, request: sessions_pb2.VerifyRecordsRequest, context: grpc.aio.ServicerContext
    ) -> sessions_pb2.VerifyRecordsResponse:
        await self._auditor(context, "verify")
        try:
            res = await self.store().verify(request.from_id or None, request.to_id or None)
        except ResponseError as exc:  # e.g. a malformed stream id
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid range: {exc}")
            raise AssertionError("unreachable") from None
        except _UNAVAILABLE as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the record store is unreachable: {type(exc).__name__}")
            raise AssertionError("unreachable") from None
        return sessions_pb2.VerifyRecordsResponse(
            ok=res.ok, checked=res.checked, first_break_id=res.first_break_id or "", reason=res.reason
        )


def add_to_server(
    server: grpc.aio.Server,
    *,
    store: RecordsStore | Callable[[], RecordsStore],
    authenticator: Authenticator | Callable[[], Authenticator],
    settings: RecordingSettings | Callable[[], RecordingSettings],
) -> None:
    sessions_pb2_grpc.add_SessionsServicer_to_server(SessionsService(store, authenticator, settings), server)
