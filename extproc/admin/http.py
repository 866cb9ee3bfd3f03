"""A small asyncio HTTP/1.1 server on h11, for the admin port, the demo model and the injector.

Only what those need: keep-alive, request bodies with ``content-length`` or chunked
encoding up to a size limit, and responses that are either bytes or an async iterator of
chunks (sent with chunked encoding, flushed as they come: SSE works).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11

__all__ = ["Request", "Response", "serve_http"]

log = logging.getLogger("extproc.http")

MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterator[bytes] = b""

    @classmethod
    def json(cls, status: int, data: bytes, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status, [("content-type", "application/json"), *(headers or [])], data)


Handler = Callable[[Request], Awaitable[Response]]


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_body: int = MAX_BODY,
) -> asyncio.Server:
    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _connection(handler, reader, writer, max_body)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception:
            log.exception("http connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(on_conn, host, port, ssl=ssl_context, limit=1 << 20)


async def _connection(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    while True:
        req: h11.Request | None = None
        body = bytearray()
        too_large = False
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await _send_simple(conn, writer, exc.error_status_hint, b'{"error":"bad request"}')
                return
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data and conn.their_state is not h11.DONE:
                    conn.receive_data(b"")
                    if req is None:
                        return
                    continue
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                req = event
            elif isinstance(event, h11.Data):
                if len(body) + len(event.data) > max_body:
                    too_large = True
                else:
                    body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert req is not None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        request = Request(req.method.decode(), req.target.decode("latin-1"), headers, bytes(body))
        if too_large:
            resp = Response.json(413, b'{"error":"request body too large"}')
        else:
            try:
                resp = await handler(request)
            except Exception:
                log.exception("handler failed for %s %s", request.method, request.path)
                resp = Response.json(500, b'{"error":"internal error"}')
        await _send(conn, writer, resp)
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response) -> None:
    headers = list(resp.headers)
    names = {k.lower() for k, _ in headers}
    streaming = not isinstance(resp.body, bytes | bytearray)
    if streaming:
        headers.append(("transfer-encoding", "chunked"))
    elif "content-length" not in names:
        headers.append(("content-length", str(len(resp.body))))  # type: ignore[arg-type]
    writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers)) or b"")
    if streaming:
        async for chunk in resp.body:  # type: ignore[union-attr]
            if chunk:
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
                await writer.drain()
    elif resp.body:
        writer.write(conn.send(h11.Data(data=resp.body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


async def _send_simple(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    with contextlib.suppress(h11.LocalProtocolError):
        await _send(conn, writer, Response.json(status, body, [("connection", "close")]))
