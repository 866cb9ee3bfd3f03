"""Process lifecycle: start the ext_proc gRPC server, the admin gRPC and HTTP endpoints, and
shut them down gracefully.

Shutdown (SIGTERM or SIGINT) goes: mark health NOT_SERVING and ``/readyz`` 503 so nothing new
is routed here, stop accepting new streams, let in-flight streams (HTTP requests, possibly long
SSE answers) finish within ``shutdown_grace_seconds``, then cancel what is left. A second
signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST

from extproc import __version__
from extproc.admin.http import Request, Response, serve_http
from extproc.admin.metrics import Metrics, exposition
from extproc.api.admin.v1 import admin_pb2, admin_pb2_grpc
from extproc.approvals import api as approvals_api
from extproc.approvals.gate import ApprovalGate
from extproc.approvals.ids import make_owner_id
from extproc.approvals.notify import Notifier
from extproc.approvals.store import ApprovalStore
from extproc.approvals.waiter import ApprovalWaiter
from extproc.config.load import load_config
from extproc.config.model import Config, ConfigError
from extproc.datapath.machine import Gateway
from extproc.datapath.runtime import build_gateway
from extproc.datapath.servicer import ExternalProcessor
from extproc.identity.credentials import CredentialStore
from extproc.identity.jwt import Authenticator
from extproc.recording import api as sessions_api
from extproc.recording.store import RecordsStore
from extproc.store import RedisStore
from extproc.workers import spool_path_for, worker_index

__all__ = ["ServerState", "assert_upb_backend", "serve"]

log = logging.getLogger("extproc.server")

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


def assert_upb_backend() -> None:
    """Refuse to run on the pure-Python protobuf backend: it is an order of magnitude slower."""
    from google.protobuf.internal import api_implementation

    kind = api_implementation.Type()
    if kind != "upb":
        raise RuntimeError(
            f"protobuf is using the {kind!r} backend; extproc needs 'upb' "
            "(unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION and install the protobuf wheel)"
        )


@dataclass
class ServerState:
    config: Config
    credentials: CredentialStore
    gateway: Gateway
    authenticator: Authenticator
    store: RedisStore
    metrics: Metrics
    started_at: float
    serving: bool = False
    redis_ok: bool = False
    redis_checked_at: float = 0.0

    async def check_redis(self) -> bool:
        now = time.monotonic()
        if now - self.redis_checked_at > 2.0:
            self.redis_checked_at = now
            self.redis_ok = await self.store.ping()
        return self.redis_ok


class AdminService(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(self, state: ServerState, processor: ExternalProcessor) -> None:
        self._state = state
        self._processor = processor

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Status:
        s = self._state
        cfg = s.config
        redis_ok = await s.check_redis()
        return admin_pb2.Status(
            version=__version__,
            config_version=cfg.version,
            config_source=cfg.source,
            uptime_seconds=time.monotonic() - s.started_at,
            ready=s.serving and redis_ok,
            redis_ok=redis_ok,
            inflight_streams=self._processor.inflight,
            providers=[
                admin_pb2.Provider(
                    name=p.name,
                    api=p.api,
                    prefix=p.prefix,
                    base_url=p.base_url,
                    credential_available=p.credential is None or s.gateway.credential(p.name) is not None,
                )
                for p in cfg.providers
            ],
            issuers=[i.issuer for i in cfg.issuers],
        )


def _admin_http(state: ServerState) -> Callable[[Request], Awaitable[Response]]:
    async def handle(req: Request) -> Response:
        if req.method != "GET":
            return Response.json(405, b'{"error":"method not allowed"}')
        if req.path == "/healthz":
            return Response.json(200, b'{"status":"ok"}')
        if req.path == "/readyz":
            ok = state.serving and await state.check_redis()
            if ok:
                return Response.json(200, b'{"status":"ready"}')
            why = "shutting down" if not state.serving else "redis unreachable"
            return Response.json(503, json.dumps({"status": "not ready", "reason": why}).encode())
        if req.path == "/metrics":
            body = exposition(state.metrics.registry)
            return Response(200, [("content-type", CONTENT_TYPE_LATEST)], body)
        return Response.json(404, b'{"error":"not found"}')

    return handle


def build_state(config: Config, metrics: Metrics | None = None, *, worker: int = 0) -> ServerState:
    creds = CredentialStore(config.providers)
    gateway = build_gateway(config, creds)
    return ServerState(
        config=config,
        credentials=creds,
        gateway=gateway,
        authenticator=Authenticator(config.issuers),
        store=RedisStore(config.redis_url),
        metrics=metrics or Metrics(worker=worker),
        started_at=time.monotonic(),
    )


class Reloader:
    """Hot reload of the governed sections (policy, masking) on SIGHUP or when the file changes.

    A new ``Gateway`` is built and validated completely before it is swapped in; an invalid
    file is rejected with a log line and the old one keeps serving. Streams in flight hold the
    ``Gateway`` they started with, so they finish under the policy they began under. Changes
    to listeners, providers, identity or Redis need a restart (Envoy's config derives from
    them) and are reported, not applied.
    """

    RESTART_KEYS = ("listeners", "providers", "identity", "redis", "envoy", "workers")
    RELOADED_KEYS = ("policy", "masking", "approvals", "recording", "tools")

    def __init__(self, state: ServerState, interval: float = 1.0) -> None:
        self._state = state
        self._interval = interval
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._state.config.source)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                self.reload("file change")

    def reload(self, why: str = "request") -> bool:
        s = self._state
        try:
            new = load_config(s.config.source)
            gateway = build_gateway(new, s.credentials)
        except ConfigError as exc:
            log.error("configuration reload (%s) rejected, the previous one keeps serving: %s", why, exc)
            s.metrics.config_reloads.labels("rejected").inc()
            return False
        # Turning approvals or recording on or off needs the stores and API started at boot:
        # keep what runs (a reload must never make every request fail closed).
        for key in ("approvals", "recording"):
            if (getattr(gateway, key) is None) != (getattr(s.gateway, key) is None):
                log.warning("configuration reload (%s): turning %s on or off needs a restart; kept as it was",
                            why, key)
                gateway = replace(gateway, **{key: getattr(s.gateway, key)})
        changed = [k for k in self.RESTART_KEYS if new.raw.get(k) != s.config.raw.get(k)]
        if changed:
            log.warning("configuration reload (%s): changes to %s need a restart and were not applied",
                        why, ", ".join(changed))
        s.gateway = gateway
        s.config = replace(s.config, raw={**s.config.raw, **{k: new.raw.get(k) for k in self.RELOADED_KEYS}},
                           version=new.version)
        s.metrics.config_reloads.labels("applied").inc()
        log.info("configuration reloaded (%s): policy version %s", why, gateway.policy.version)
        return True


async def _maintain_records(records: RecordsStore, metrics: Metrics, interval: float = 2.0) -> None:
    """Flush the spool, apply retention, and export the store's counters."""
    while True:
        await records.maintain(time.time())
        for name, value in records.counters().items():
            metrics.records.labels(name).set(value)
        await asyncio.sleep(interval)


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    assert_upb_backend()
    index = worker_index()
    state = build_state(config, worker=index or 0)
    await state.authenticator.preload()
    if not await state.check_redis():
        log.warning(
            "redis at %s is not reachable yet; /readyz reports not ready until it is", _redact_url(config.redis_url)
        )

    gate: ApprovalGate | None = None
    waiter: ApprovalWaiter | None = None
    notifier: Notifier | None = None
    maintain: asyncio.Task[None] | None = None
    if state.gateway.approvals is not None:
        settings = state.gateway.approvals
        notifier = Notifier(settings.webhooks)
        waiter = ApprovalWaiter(state.store.client)
        await waiter.start()
        owner = make_owner_id()
        approval_store = ApprovalStore(state.store.client, notifier=notifier)
        gate = ApprovalGate(approval_store, waiter, owner)
        maintain = asyncio.create_task(approval_store.maintain(owner))
    # A worker of a supervisor (``workers:`` > 1): the ext_proc port is shared (SO_REUSEPORT),
    # the admin endpoints are worker 0's, and the recording spool is a file of its own.
    admin_here = index in (None, 0)
    records: RecordsStore | None = None
    records_task: asyncio.Task[None] | None = None
    if state.gateway.recording is not None:
        rec = state.gateway.recording
        rec = replace(rec, spool=replace(rec.spool, path=spool_path_for(rec.spool.path, index)))
        records = RecordsStore(state.store.client, rec)
        records_task = asyncio.create_task(_maintain_records(records, state.metrics))
    processor = ExternalProcessor(lambda: state.gateway, lambda: state.authenticator, state.metrics, state.store,
                                  approvals=gate, records=records)
    health_servicer = health.aio.HealthServicer()
    options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ext_options = options if index is None else [("grpc.so_reuseport", 1), *options[1:]]

    grpc_server = grpc.aio.server(options=ext_options)
    ep_grpc.add_ExternalProcessorServicer_to_server(processor, grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    ext_addr = f"{config.ext_proc.address}:{config.ext_proc.port}"
    if grpc_server.add_insecure_port(ext_addr) == 0:
        raise OSError(f"cannot listen on {ext_addr} (ext_proc)")

    admin_grpc = grpc.aio.server(options=options)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(state, processor), admin_grpc)
    if records is not None:
        sessions_api.add_to_server(
            admin_grpc, store=records, authenticator=lambda: state.authenticator,
            settings=lambda: state.gateway.recording or records.settings,
        )
    if waiter is not None and state.gateway.approvals is not None:
        approvals_api.add_to_server(admin_grpc, redis=state.store.client, authenticator=state.authenticator,
                                    settings=state.gateway.approvals, waiter=waiter, notifier=notifier)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, admin_grpc)
    admin_addr = f"{config.admin.grpc.address}:{config.admin.grpc.port}"
    if admin_here and admin_grpc.add_insecure_port(admin_addr) == 0:
        raise OSError(f"cannot listen on {admin_addr} (admin gRPC)")

    http = await serve_http(_admin_http(state), config.admin.http.address, config.admin.http.port) \
        if admin_here else None
    await grpc_server.start()
    if admin_here:
        await admin_grpc.start()
    for svc in ("", EXT_PROC_SERVICE):
        await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    state.serving = True
    log.info(
        "extproc %s serving%s: ext_proc on %s, admin gRPC on %s, admin HTTP on %s:%d (config %s, version %s)",
        __version__,
        "" if index is None else f" (worker {index})",
        ext_addr,
        admin_addr,
        config.admin.http.address,
        config.admin.http.port,
        config.source,
        config.version,
    )
    if ready is not None:
        ready.set()

    stop = asyncio.Event()
    signals = 0

    def on_signal(sig: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("received %s: draining (grace %.0fs)", signal.Signals(sig).name, config.shutdown_grace_seconds)
            stop.set()
        else:
            log.warning("second signal: stopping now")
            grace_cut.set()

    grace_cut = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    reloader = Reloader(state)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
    watcher = asyncio.create_task(reloader.watch())

    try:
        await stop.wait()
    finally:
        watcher.cancel()
        state.serving = False
        for svc in ("", EXT_PROC_SERVICE):
            await health_servicer.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        stopping = asyncio.create_task(grpc_server.stop(config.shutdown_grace_seconds))
        cut = asyncio.create_task(grace_cut.wait())
        await asyncio.wait({stopping, cut}, return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            await grpc_server.stop(0)
            await stopping
        cut.cancel()
        if admin_here:
            await admin_grpc.stop(1)
        if maintain is not None:
            maintain.cancel()
        if records_task is not None:
            records_task.cancel()
        if records is not None:
            with contextlib.suppress(Exception):
                await records.maintain(time.time())  # flush what was spooled while we can
        if waiter is not None:
            await waiter.close()
        if notifier is not None:
            await notifier.close()
        if http is not None:
            http.close()
        await state.store.close()
        log.info("extproc stopped")


def _redact_url(url: str) -> str:
    """A Redis URL for logs: any password is removed."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
