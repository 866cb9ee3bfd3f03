"""ext_proc worker processes: one Python process per core the container is given.

One asyncio process uses one core. With ``workers: N`` (default: the container's CPU limit)
``extproc serve`` becomes a small supervisor that starts N copies of itself. Every worker binds
the ext_proc port with ``SO_REUSEPORT``; Envoy's ext_proc cluster is rendered with a cap on
concurrent streams per HTTP/2 connection (:data:`STREAMS_PER_CONNECTION`), so Envoy opens one
connection per few concurrent requests and the kernel spreads those connections over the
workers (without the cap Envoy keeps one connection per worker thread, and every stream lands
on whichever process accepted it).

What is per process today stays correct across workers:

* caches (verified tokens, compiled profiles) are per worker, which only costs a miss each;
* reloads: every worker watches the file itself; SIGHUP to the supervisor is forwarded;
* metrics: prometheus_client's multiprocess mode (a directory of per-process files the
  supervisor creates and cleans); ``/metrics`` on worker 0 sums every worker;
* the recording spool: one file per worker (``<path>.w<i>``), each flushed by its worker;
* on a unix socket (the sidecar) each worker listens on its own socket (``<path>.w<i>`` after
  the first), and Envoy's rendered cluster has one endpoint per worker, so there ``workers``
  must be set explicitly (``0`` means one);
* admin HTTP and admin gRPC are served by worker 0 only (their state lives in Redis).

A worker that dies is started again after a short pause; SIGTERM/SIGINT are forwarded and the
supervisor waits for the workers' graceful drain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

__all__ = ["MULTIPROC_ENV", "STREAMS_PER_CONNECTION", "WORKER_ENV", "cpu_limit", "resolve_workers",
           "spool_path_for", "supervise", "worker_index", "worker_socket_path", "worker_socket_paths"]

log = logging.getLogger("extproc.workers")

#: Set in a worker's environment: its index (0 serves the admin endpoints).
WORKER_ENV = "EXTPROC_WORKER_INDEX"
#: prometheus_client's multiprocess directory (read by prometheus_client at import).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Concurrent ext_proc streams Envoy puts on one HTTP/2 connection when there are workers
#: (measured in docs/performance.md: 1 spreads best; the connections are pooled and reused).
STREAMS_PER_CONNECTION = 1


def cpu_limit(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The cores this process may use: the cgroup CPU quota (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``) rounded up, bounded by the CPUs it may be scheduled on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        cpus = min(cpus, max(1, -(-quota[0] // quota[1])))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> tuple[int, int] | None:
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]), int(text[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return (q, p) if q > 0 and p > 0 else None


def resolve_workers(configured: int, *, unix: bool = False) -> int:
    """``workers: 0`` (the default) means one per core of the container's CPU limit on TCP. On a
    unix socket every worker listens on a socket of its own that Envoy's rendered configuration
    lists (:func:`worker_socket_paths`), so the count must be known when Envoy's configuration is
    rendered: there ``0`` means one worker."""
    if configured > 0:
        return configured
    return 1 if unix else cpu_limit()


def worker_socket_path(path: str, index: int | None) -> str:
    """The unix socket worker ``index`` listens on: the configured path for the first worker (and
    for a server without workers), ``<path>.w<i>`` for the others."""
    return path if not index else f"{path}.w{index}"


def worker_socket_paths(path: str | None, configured: int) -> list[str]:
    """Every worker's unix socket, in order (empty for TCP): Envoy's ext_proc endpoints."""
    if path is None:
        return []
    return [worker_socket_path(path, i) for i in range(resolve_workers(configured, unix=True))]


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a worker of a supervisor."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw is not None and raw.isdigit() else None


def spool_path_for(path: str, index: int | None) -> str:
    """Each worker spools to its own file: two processes appending to one file interleave."""
    return path if index is None else f"{path}.w{index}"


def supervise(argv: list[str], workers: int, *, restart_delay: float = 1.0) -> int:
    """Run ``argv`` (``extproc serve ...``) as ``workers`` processes until SIGTERM/SIGINT."""
    metrics_dir = tempfile.mkdtemp(prefix="extproc-metrics-")
    base_env = {**os.environ, MULTIPROC_ENV: metrics_dir}
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def start(i: int) -> None:
        procs[i] = subprocess.Popen(argv, env={**base_env, WORKER_ENV: str(i)}, preexec_fn=_die_with_parent)
        log.info("worker %d started (pid %d)", i, procs[i].pid)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        for i in range(workers):
            start(i)
        while True:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                code = p.poll()
                if code is None:
                    continue
                _mark_dead(p.pid, metrics_dir)
                if stopping:
                    del procs[i]
                    continue
                log.error("worker %d (pid %d) exited with %s; starting it again", i, p.pid, code)
                time.sleep(restart_delay)
                if not stopping:
                    start(i)
            if stopping and not procs:
                return 0
    finally:
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def exec_supervisor(argv: list[str], workers: int) -> NoReturn:
    """Replace this process (which has loaded and validated the configuration, and with it most
    of the project) with a fresh interpreter running only :func:`supervise`: the supervisor
    then costs a few MB instead of a whole ext_proc process's memory."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "extproc.workers", str(workers), *argv])  # noqa: S606


def main(args: list[str]) -> int:
    """``python -m extproc.workers N ARGV...``: supervise N copies of ARGV."""
    argv = args[1:]
    level = argv[argv.index("--log-level") + 1].upper() if "--log-level" in argv[:-1] else "INFO"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return supervise(argv, int(args[0]))


def _die_with_parent() -> None:
    """In the child before exec: a supervisor killed with SIGKILL takes its workers with it
    (Linux ``PR_SET_PDEATHSIG``; elsewhere the workers outlive it until stopped)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges (in-flight streams) from the aggregate."""
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, metrics_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
