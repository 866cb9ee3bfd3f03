"""HTTPS adapter for the sidecar injector: ``POST /mutate`` and ``GET /healthz``.

All decisions live in :mod:`extproc.inject.patch`; this module only moves bytes. The
certificate and key are re-read when their files change (cert-manager rotates them in
place), checked at most once per second on accept.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from extproc.inject.patch import handle_admission
from extproc.inject.settings import InjectSettings, SettingsError, load_settings

__all__ = ["MAX_BODY_BYTES", "InjectorServer", "make_server", "register", "serve"]

log = logging.getLogger("extproc.inject")

#: An AdmissionReview carries the pod twice at most; etcd caps objects at ~1.5 MiB.
MAX_BODY_BYTES = 8 * 1024 * 1024
_SOCKET_TIMEOUT = 10.0
#: Concurrent connections (each one thread). The API server keeps a few keep-alive
#: connections per replica; 64 leaves room for retries and several API servers.
DEFAULT_MAX_CONNECTIONS = 64


class _HandshakeFailed(Exception):
    """The TLS handshake did not complete (reported once, by ``handle_error``)."""


class _ReloadingTLS:
    """An SSLContext rebuilt when the certificate or key file changes."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = self._mtimes()
        self.context = self._build()

    def _mtimes(self) -> tuple[float, float]:
        return os.stat(self.cert_file).st_mtime, os.stat(self.key_file).st_mtime

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= 1.0:
                self._checked = now
                try:
                    stamp = self._mtimes()
                    if stamp != self._stamp:
                        self.context = self._build()
                        self._stamp = stamp
                        log.info("reloaded TLS certificate %s", self.cert_file)
                except (OSError, ssl.SSLError) as exc:  # half-written rotation: keep the old one
                    log.warning("cannot reload TLS certificate: %s", exc)
            return self.context


class InjectorServer(ThreadingHTTPServer):
    """One handler thread per connection, but at most ``max_connections`` of them: a
    connection beyond that is closed at once (the API server retries, and a flood of idle
    connections must not become a flood of threads). Every read and write has a timeout,
    so an idle or stalled connection frees its thread after ``timeout`` seconds."""

    daemon_threads = True
    # The API server retries; a small accept backlog is plenty.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        settings: InjectSettings,
        tls: _ReloadingTLS | None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = _SOCKET_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.tls = tls
        self.max_connections = max_connections
        self.conn_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._refused_logged_at = -1e18
        self.refused = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            now = time.monotonic()
            if now - self._refused_logged_at >= 10.0:  # one line per 10 s, not one per connection
                self._refused_logged_at = now
                log.warning("%d connections open (the maximum): refusing new ones (%d so far)",
                            self.max_connections, self.refused)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line per failed connection (a port scan or a bad client is not a traceback)."""
        exc = sys.exc_info()[1]
        where = client_address[0] if isinstance(client_address, tuple) else client_address
        if isinstance(exc, ssl.SSLError | _HandshakeFailed):
            log.warning("TLS handshake with %s failed: %s", where, exc)
        elif isinstance(exc, TimeoutError | ConnectionError):
            log.info("connection with %s ended: %s", where, exc or type(exc).__name__)
        else:
            log.error("connection with %s failed: %s: %s", where, type(exc).__name__, exc)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        sock.settimeout(self.conn_timeout)
        # One response = headers + body in two writes; without NODELAY, Nagle and the
        # peer's delayed ACK add ~40 ms to every review on a keep-alive connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            # Handshake later, in the handler thread, so a slow client cannot stall accept().
            sock = self.tls.current().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


class _Handler(BaseHTTPRequestHandler):
    server: InjectorServer
    protocol_version = "HTTP/1.1"
    server_version = "extproc-inject"
    sys_version = ""

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                raise _HandshakeFailed(str(exc) or type(exc).__name__) from None
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/mutate":
            self._send(404, {"error": "not found"})
            return
        ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            self._send(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "Content-Type must be application/json"})
            return
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "chunked bodies are not accepted"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body larger than {MAX_BODY_BYTES} bytes"}
            )
            return
        body = self.rfile.read(length)
        status, doc = handle_admission(body, self.server.settings)
        resp = doc.get("response") if status == 200 else None
        if isinstance(resp, dict):
            log.info(
                "uid=%s allowed=%s %s",
                resp.get("uid"),
                resp.get("allowed"),
                (resp.get("auditAnnotations") or {}).get("injection")
                or (resp.get("status") or {}).get("message"),
            )
        else:
            log.warning("rejected request: %s", doc.get("error"))
        self._send(status, doc)


def make_server(
    cert_file: str | None,
    key_file: str | None,
    host: str,
    port: int,
    settings: InjectSettings,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    timeout: float = _SOCKET_TIMEOUT,
) -> InjectorServer:
    """Bind (port 0 picks a free one); TLS unless both files are None (tests only)."""
    tls = _ReloadingTLS(cert_file, key_file) if cert_file and key_file else None
    if tls is None and (cert_file or key_file):
        raise ValueError("set both cert_file and key_file")
    return InjectorServer((host, port), settings, tls, max_connections=max_connections, timeout=timeout)


def serve(
    cert_file: str,
    key_file: str,
    host: str,
    port: int,
    settings: InjectSettings,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    timeout: float = _SOCKET_TIMEOUT,
) -> None:
    """Serve until SIGTERM/SIGINT (graceful: in-flight reviews finish)."""
    server = make_server(cert_file, key_file, host, port, settings, max_connections=max_connections,
                         timeout=timeout)

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    log.info(
        "extproc injector listening on https://%s:%d (mode %s)", host, server.server_address[1], settings.mode
    )
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings(args.settings) if args.settings else InjectSettings()
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    for f in (args.tls_cert, args.tls_key):
        if not Path(f).is_file():
            log.error("TLS file not found: %s", f)
            return 2
    serve(args.tls_cert, args.tls_key, args.host, args.port, settings, max_connections=args.max_connections,
          timeout=args.timeout)
    return 0


def register(subparsers: Any) -> None:
    """Add ``extproc inject``; the parser's ``func(args) -> int`` runs it."""
    p = subparsers.add_parser(
        "inject",
        help="run the Kubernetes sidecar-injecting admission webhook (HTTPS)",
        description="Serve POST /mutate (AdmissionReview v1) and GET /healthz over HTTPS.",
    )
    p.add_argument("--tls-cert", required=True, help="PEM certificate (chain) the API server verifies")
    p.add_argument("--tls-key", required=True, help="PEM private key")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443)")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help=f"concurrent connections, one thread each (default {DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--timeout", type=float, default=_SOCKET_TIMEOUT,
                   help=f"seconds a read or write may stall, idle keep-alive included (default {_SOCKET_TIMEOUT:g})")
    p.add_argument("--settings", default=None, help="injector settings YAML (default: built-in defaults)")
    p.set_defaults(func=_run)
