"""ext_proc over a unix domain socket, with the peer's uid checked (``SO_PEERCRED``).

In sidecar mode the ext_proc server hands out provider credentials (header mutations) to
whoever speaks ext_proc to it, so only Envoy may. Three locks, each enough on its own:

1. the socket lives in a volume mounted only into the Envoy and ext_proc containers (the app
   cannot see the path at all);
2. the socket file has mode 0600/0660 (owner ext_proc, group Envoy's);
3. every connection's peer uid (``SO_PEERCRED``, set by the kernel at ``connect``) must be
   in ``peer_uids``.

grpc.aio accepts connections itself and exposes neither the file descriptor nor the peer's
credentials (``context.peer()`` is just ``unix:``), and gRPC's local credentials only
check that the transport is a unix socket. The accepted sockets are, however, file
descriptors of this very process: ``PeerGuard`` finds the ones that are connections to our
socket (``/proc/self/fd`` -> ``getsockname()``), reads ``SO_PEERCRED`` on a duplicate and
shuts down any connection whose peer is not allowed. It runs at the start of every ext_proc
stream, before the first message is read; a stream can only exist on a connection that was
already accepted, so a foreign peer's stream never gets an answer. Connections already
checked are remembered by socket inode; while ``/proc/net/unix`` lists no connection to our
socket that was not inspected, a stream costs that one read (measured by ``make bench``,
row ``auth-unix``); a new connection costs one scan of ``/proc/self/fd``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PeerGuard", "bind_umask", "peer_uid", "prepare_socket_path", "unix_path"]

log = logging.getLogger("extproc.uds")

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def unix_path(address: str) -> str | None:
    """``/run/x.sock`` for ``unix:/run/x.sock`` (also ``unix:///run/x.sock``), else None."""
    if not address.startswith("unix:"):
        return None
    path = address[len("unix:"):]
    if path.startswith("//"):
        path = path[2:]
    return path


@contextlib.contextmanager
def bind_umask(mask: int = 0o177) -> Iterator[None]:
    """Create the socket file 0600 from the start: ``chmod`` afterwards would leave a window."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def prepare_socket_path(path: str) -> None:
    """Create the socket's directory (0750) if missing and remove a stale socket file."""
    p = Path(path)
    if not p.parent.exists():
        p.parent.mkdir(mode=0o750, parents=True)
    if p.is_socket():
        p.unlink()
    elif p.exists():
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


class PeerGuard:
    """Only peers whose uid is in ``allowed`` keep a connection to the socket at ``path``."""

    def __init__(self, path: str, allowed: frozenset[int]) -> None:
        self.path = path
        self.allowed = allowed
        #: ``socket:[inode]`` -> True (an allowed peer), False (a foreign one, already shut
        #: down: it can send nothing more and receive nothing), None (another socket); pruned
        #: to the descriptors that still exist.
        self._seen: dict[str, bool | None] = {}
        #: ``socket:[inode]`` of every descriptor inspected by the last scan.
        self._inspected: set[str] = set()
        self._path_bytes = os.fsencode(path)
        self.refused = 0

    def check(self) -> bool:
        """Shut down every connection from a peer that is not allowed; False if there was one.

        Fast path: ``/proc/net/unix`` (one read) lists the sockets bound to our path, i.e. the
        listener and every connection accepted on it, by inode. When all of them were
        inspected before, nothing new can be answered and the descriptors need no scan."""
        known = self._known_inodes()
        if known is not None and known <= self._inspected:
            return True
        return self._scan()

    def _known_inodes(self) -> set[str] | None:
        try:
            with open("/proc/net/unix", "rb") as f:
                data = f.read()
        except OSError:
            return None
        out = set()
        for line in data.splitlines()[1:]:
            parts = line.split(None, 7)
            # Num RefCount Protocol Flags Type St Inode Path
            if len(parts) == 8 and parts[7] == self._path_bytes:
                out.add(f"socket:[{parts[6].decode()}]")
        return out

    def _scan(self) -> bool:
        clean = True
        present: dict[str, bool | None] = {}
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return False  # cannot check: fail closed
        for name in fds:
            try:
                link = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue  # closed meanwhile (or the listing's own descriptor)
            if not link.startswith("socket:"):
                continue
            known = self._seen[link] if link in self._seen else self._inspect(int(name))
            if known is False and link not in self._seen:
                clean = False  # found (and shut down) just now: this stream may be on it
            present[link] = known
        # Other sockets (None) are remembered too, or inspecting each one on every stream would
        # be the cost. Safe: Linux numbers socket inodes from a counter (get_next_ino) that
        # only repeats after 2**32 sockets, so a cached inode is never a newer connection.
        self._seen = present
        self._inspected = set(present)
        return clean

    def _inspect(self, fd: int) -> bool | None:
        """True: an allowed peer of our socket; False: a foreign one (now shut down); None:
        another socket (remembered too, so it is not inspected again)."""
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            return None
        try:
            if s.family != socket.AF_UNIX or s.getsockname() != self.path or _is_listener(s):
                return None
            try:
                uid = peer_uid(s)
            except OSError:
                uid = -1  # no credentials: not allowed
            if uid in self.allowed:
                return True
            self.refused += 1
            log.warning("ext_proc: refused a connection from uid %d on %s (allowed: %s)",
                        uid, self.path, ", ".join(map(str, sorted(self.allowed))))
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            return False
        finally:
            s.close()  # the duplicate only; gRPC's descriptor stays open (but shut down)


def _is_listener(s: socket.socket) -> bool:
    try:
        return bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
