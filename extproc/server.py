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
from urllib.parse import parse_qs

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
from extproc.config.model import Config
from extproc.datapath.machine import Gateway
from extproc.datapath.runtime import build_gateway
from extproc.datapath.servicer import ExternalProcessor
from extproc.datapath.uds import PeerGuard, bind_umask, prepare_socket_path
from extproc.datapath.workers import InspectorPool
from extproc.errors import ConfigError
from extproc.identity.credentials import CredentialStore
from extproc.identity.issuer import IssuerDiscoveryError, discover_issuers, issuer_mismatches
from extproc.identity.jwt import Authenticator, _http_get_json
from extproc.recording import api as sessions_api
from extproc.recording.store import RecordsStore
from extproc.store import RedisStore
from extproc.workers import spool_path_for, worker_index, worker_socket_path

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
    records: RecordsStore | None = None

    async def check_redis(self) -> bool:
        now = time.monotonic()
        if now - self.redis_checked_at > 2.0:
            self.redis_checked_at = now
            self.redis_ok = await self.store.ping()
            self.metrics.redis_up.set(1 if self.redis_ok else 0)
        return self.redis_ok

    async def readiness(self, require_redis: bool) -> tuple[bool, dict[str, object]]:
        """Ready = serving and every configured credential file readable. Redis is reported,
        not required: without it the requests that need it (budgets, recording, approvals)
        fail closed with 503, and a pod taken out of its Services would fail every request
        instead. ``require_redis`` (``/readyz?require=redis``) is for callers that want it."""
        redis_ok = await self.check_redis()
        creds = self.credentials.file_problems()
        unreadable = sorted(n for n, why in creds.items() if why != "missing")
        detail: dict[str, object] = {
            "redis": "up" if redis_ok else "down",
            "credentials": {p.name: creds.get(p.name, "ok") for p in self.config.providers if p.credential},
        }
        if self.records is not None:
            # The recording backlog is detail, not a reason to stop routing here: requests are
            # served (and recorded directly) while the spool drains in the background.
            detail["recording"] = self.records.status()
        reasons = []
        if not self.serving:
            reasons.append("shutting down")
        if unreadable:
            reasons.append("credential files unreadable: " + ", ".join(unreadable))
        if require_redis and not redis_ok:
            reasons.append("redis unreachable")
        if reasons:
            return False, {"status": "not ready", "reason": "; ".join(reasons), **detail}
        return True, {"status": "ready", **detail}


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
            ready=(await s.readiness(require_redis=False))[0],
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
            query = parse_qs(req.target.split("?", 1)[1]) if "?" in req.target else {}
            ok, detail = await state.readiness(require_redis="redis" in query.get("require", []))
            return Response.json(200 if ok else 503, json.dumps(detail, sort_keys=True).encode())
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
        store=RedisStore(config.redis_url, prefix=config.redis_prefix),
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
    RELOADED_KEYS = ("policy", "masking", "approvals", "recording", "tools", "inspection")

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
        changed = [k for k in self.RESTART_KEYS if getattr(new.file, k) != getattr(s.config.file, k)]
        if changed:
            log.warning("configuration reload (%s): changes to %s need a restart and were not applied",
                        why, ", ".join(changed))
        s.gateway = gateway
        kept = s.config.file.model_copy(update={k: getattr(new.file, k) for k in self.RELOADED_KEYS})
        s.config = replace(s.config, file=kept, version=new.version, lines=new.lines)
        s.metrics.config_reloads.labels("applied").inc()
        log.info("configuration reloaded (%s): policy version %s", why, gateway.policy.version)
        return True


async def _maintain_records(records: RecordsStore, metrics: Metrics, interval: float = 2.0) -> None:
    """Apply retention and export the store's counters (the spool is flushed by
    ``RecordsStore.run_flusher``, in the background)."""
    ticks = 0
    while True:
        if ticks % 15 == 0:
            await records.maintain(time.time())
        ticks += 1
        for name, value in records.counters().items():
            metrics.records.labels(name).set(value)
        await asyncio.sleep(interval / 15)


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    assert_upb_backend()
    index = worker_index()
    try:
        config = config.with_issuers(await discover_issuers(config.issuers, _http_get_json))
    except IssuerDiscoveryError as exc:
        log.error("token issuer discovery failed (issuer: discover): %s", exc)
        raise SystemExit(3) from None
    state = build_state(config, worker=index or 0)
    await state.authenticator.preload()
    await issuer_mismatches(config.issuers, _http_get_json)
    unreadable = {n: why for n, why in state.credentials.file_problems().items() if why != "missing"}
    if unreadable:
        # A key the sidecar cannot read is a deployment error (Secret mode / fsGroup): stop
        # here, visibly, rather than serve and fail every call to that provider.
        for name, why in sorted(unreadable.items()):
            src = next(p.credential for p in config.providers if p.name == name)
            log.error("credential for provider %s: file %s is %s; fix the Secret volume's defaultMode "
                      "or the pod's fsGroup", name, src.file if src else "?", why)
        raise SystemExit(3)
    for name, why in sorted(state.credentials.file_problems().items()):
        log.warning("credential for provider %s is %s: its requests get 503 credential_unavailable", name, why)
    if not await state.check_redis():
        log.warning(
            "redis at %s is not reachable yet: requests that need it (budgets, recording, approvals) fail "
            "closed with 503 until it is; /readyz reports it without failing", _redact_url(config.redis_url)
        )

    gate: ApprovalGate | None = None
    waiter: ApprovalWaiter | None = None
    notifier: Notifier | None = None
    maintain: asyncio.Task[None] | None = None
    if state.gateway.approvals is not None:
        settings = state.gateway.approvals
        notifier = Notifier(settings.webhooks)
        waiter = ApprovalWaiter(state.store.client, prefix=config.redis_prefix)
        await waiter.start()
        owner = make_owner_id()
        approval_store = ApprovalStore(state.store.client, prefix=config.redis_prefix, notifier=notifier)
        gate = ApprovalGate(approval_store, waiter, owner)
        maintain = asyncio.create_task(approval_store.maintain(owner))
    # A worker of a supervisor (``workers:`` > 1): the ext_proc port is shared (SO_REUSEPORT),
    # the admin endpoints are worker 0's, and the recording spool is a file of its own.
    admin_here = index in (None, 0)
    records: RecordsStore | None = None
    records_redis: RedisStore | None = None
    records_tasks: list[asyncio.Task[None]] = []
    if state.gateway.recording is not None:
        # A client of its own: one retry, no backoff (the default backs off for seconds, which
        # kept requests waiting after Redis came back).
        records_redis = RedisStore(config.redis_url, retries=1)
        rec = state.gateway.recording
        rec = replace(rec, spool=rec.spool.model_copy(update={"path": spool_path_for(rec.spool.path, index)}))
        records = RecordsStore(records_redis.client, rec, prefix=config.redis_prefix)
        state.records = records
        records_tasks = [asyncio.create_task(_maintain_records(records, state.metrics)),
                         asyncio.create_task(records.run_flusher())]
    inspector: InspectorPool | None = None
    if state.gateway.inspection.workers and state.gateway.inspection_spec is not None:
        inspector = InspectorPool(state.gateway.inspection.workers)
        await inspector.start(state.gateway.inspection_spec)
    ext = config.ext_proc
    # Each worker has a unix socket of its own (Envoy lists them all); on TCP they share the port.
    ext_socket = worker_socket_path(ext.unix_path, index) if ext.unix_path is not None else None
    guard: PeerGuard | None = None
    if ext_socket is not None:
        guard = PeerGuard(ext_socket, frozenset(ext.peer_uids or (os.getuid(),)))
    processor = ExternalProcessor(lambda: state.gateway, lambda: state.authenticator, state.metrics, state.store,
                                  approvals=gate, records=records, inspector=inspector,
                                  max_message_timeout=config.envoy.max_message_timeout_seconds,
                                  peer_guard=guard)
    health_servicer = health.aio.HealthServicer()
    options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ext_options = options if index is None or ext_socket is not None else [("grpc.so_reuseport", 1), *options[1:]]

    grpc_server = grpc.aio.server(options=ext_options)
    ep_grpc.add_ExternalProcessorServicer_to_server(processor, grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    ext_addr = f"unix:{ext_socket}" if ext_socket is not None else ext.target
    if ext_socket is not None:
        prepare_socket_path(ext_socket)
        with bind_umask():  # created 0600; then exactly the configured mode
            bound = grpc_server.add_insecure_port(ext_addr)
        if bound:
            # The group is ours (Envoy's, in the sidecar), not one inherited from a setgid
            # volume (an fsGroup emptyDir would hand it to every container of the pod).
            os.chown(ext_socket, -1, os.getegid())
            os.chmod(ext_socket, ext.socket_mode)
    else:
        bound = grpc_server.add_insecure_port(ext_addr)
    if bound == 0:
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
                                    settings=state.gateway.approvals, waiter=waiter, notifier=notifier,
                                    prefix=config.redis_prefix)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, admin_grpc)
    admin_grpc_here = admin_here and config.admin.grpc.enabled
    admin_addr = f"{config.admin.grpc.address}:{config.admin.grpc.port}" if admin_grpc_here else "off"
    if admin_grpc_here and admin_grpc.add_insecure_port(admin_addr) == 0:
        raise OSError(f"cannot listen on {admin_addr} (admin gRPC)")

    http = await serve_http(_admin_http(state), config.admin.http.address, config.admin.http.port) \
        if admin_here else None
    await grpc_server.start()
    if admin_grpc_here:
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
    redis_watch = asyncio.create_task(_watch_redis(state))

    try:
        await stop.wait()
    finally:
        watcher.cancel()
        redis_watch.cancel()
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
        if admin_grpc_here:
            await admin_grpc.stop(1)
        if maintain is not None:
            maintain.cancel()
        for task in records_tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state.store.batcher.drain(), 5)  # usage charges sent at the end
        if records is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(records.drain(), 5)  # records submitted by the last streams
            with contextlib.suppress(Exception):
                await records.maintain(time.time())  # flush what was spooled while we can
        if waiter is not None:
            await waiter.close()
        if notifier is not None:
            await notifier.close()
        if http is not None:
            http.close()
        if inspector is not None:
            inspector.close()
        await state.store.close()
        if records_redis is not None:
            await records_redis.close()
        log.info("extproc stopped")


async def _watch_redis(state: ServerState, interval: float = 5.0) -> None:
    """Keep ``extproc_redis_up`` current when nothing probes, and log transitions once."""
    last: bool | None = state.redis_ok
    while True:
        await asyncio.sleep(interval)
        ok = await state.check_redis()
        if ok != last:
            if ok:
                log.info("redis is reachable again")
            else:
                log.warning("redis is unreachable: budgets, recording and approvals fail closed (503)")
            last = ok


def _redact_url(url: str) -> str:
    """A Redis URL for logs: any password is removed."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
