"""ext_proc on a unix socket: the file mode and the SO_PEERCRED check each keep a foreign
uid out, with the real gRPC server and a real client in another process under another uid."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.datapath.uds import PeerGuard, bind_umask, prepare_socket_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")

OTHER_UID = 65534  # nobody

#: A client in its own process under OTHER_UID: one ext_proc message, prints what came back.
CLIENT = textwrap.dedent("""
    import os, sys, grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep, external_processor_pb2_grpc as g
    os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))  # imports done: now the app
    ch = grpc.insecure_channel("unix:" + sys.argv[1])
    try:
        for r in g.ExternalProcessorStub(ch).Process(iter([ep.ProcessingRequest()]), timeout=5):
            print("ANSWER", r.WhichOneof("response")); break
        print("NO-ANSWER")
    except grpc.RpcError as e:
        print("REFUSED", e.code().name)
""")


class Echo(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Answers every message like the real servicer would after its guard: the guard is the
    thing under test."""

    def __init__(self, guard: PeerGuard) -> None:
        self.guard = guard

    async def Process(self, it: AsyncIterator[ep.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[ep.ProcessingResponse]:
        if not self.guard.check():
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "peer not allowed")
        async for _ in it:
            yield ep.ProcessingResponse(request_headers=ep.HeadersResponse())


def run_client(sock: str, uid: int) -> str:
    out = subprocess.run([sys.executable, "-c", CLIENT, sock, str(uid), str(uid)], capture_output=True,
                         text=True, timeout=30, check=False)
    return out.stdout + out.stderr


async def serve(sock: str, mode: int, allowed: frozenset[int]) -> tuple[grpc.aio.Server, PeerGuard]:
    guard = PeerGuard(sock, allowed)
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(Echo(guard), server)
    prepare_socket_path(sock)
    with bind_umask():
        assert server.add_insecure_port(f"unix:{sock}")
    os.chmod(sock, mode)
    await server.start()
    return server, guard


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Traversable by the other uid (pytest's tmp_path is not): the socket's own mode and
    # SO_PEERCRED are under test.
    d = Path(tempfile.mkdtemp(prefix="extproc-uds-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_allowed_uid_is_answered_and_a_foreign_uid_refused_by_peercred(sockdir: Path) -> None:
    asyncio.run(_allowed_and_foreign(str(sockdir / "ext_proc.sock")))


async def _allowed_and_foreign(sock: str) -> None:
    # mode 0666 on purpose: only SO_PEERCRED stands between the other uid and the server
    server, guard = await serve(sock, 0o666, frozenset({os.getuid()}))
    try:
        own = await asyncio.to_thread(run_client, sock, os.getuid())
        assert "ANSWER request_headers" in own, own
        other = await asyncio.to_thread(run_client, sock, OTHER_UID)
        assert "ANSWER" not in other and ("REFUSED" in other), other
        assert guard.refused == 1
        again = await asyncio.to_thread(run_client, sock, os.getuid())  # Envoy keeps working
        assert "ANSWER request_headers" in again, again
    finally:
        await server.stop(0)


def test_the_socket_file_mode_keeps_a_foreign_uid_out(sockdir: Path) -> None:
    asyncio.run(_file_mode(str(sockdir / "ext_proc.sock")))


async def _file_mode(sock: str) -> None:
    server, guard = await serve(sock, 0o660, frozenset({os.getuid(), OTHER_UID}))  # peercred would allow it
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        other = await asyncio.to_thread(run_client, sock, OTHER_UID)
        assert "REFUSED UNAVAILABLE" in other, other  # connect() itself fails: EACCES
        assert guard.refused == 0
    finally:
        await server.stop(0)


def test_a_non_socket_at_the_path_is_not_replaced(tmp_path: Path) -> None:
    f = tmp_path / "ext_proc.sock"
    f.write_text("data")
    with pytest.raises(OSError, match="not a socket"):
        prepare_socket_path(str(f))
    assert f.read_text() == "data"
