"""Start Envoy with the flags its bootstrap cannot carry: ``--concurrency`` above all.

Envoy reads the number of worker threads only from the command line; left alone it starts
one per CPU of the *node*, which under a 1-CPU container limit means dozens of workers
fighting over one CPU's quota. ``extproc envoy run`` takes it from ``envoy.concurrency`` in
the extproc configuration, or else from the container's CPU limit (cgroup ``cpu.max``,
rounded up), and ``exec``s Envoy so Envoy keeps the container's PID and its signals.

The argument building is pure (:func:`envoy_argv`, :func:`workers_from_cpu_max`); only
:func:`read_cpu_limit_workers` and :func:`run` touch the file system and the process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["envoy_argv", "read_cpu_limit_workers", "run", "workers_from_cfs", "workers_from_cpu_max"]

#: cgroup v2 (unified) and v1 locations of the container's CPU quota.
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CFS_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def workers_from_cpu_max(text: str) -> int | None:
    """``"150000 100000"`` -> 2 (a 1.5-CPU limit rounds up); ``"max 100000"`` -> None (no limit)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return workers_from_cfs(parts[0], parts[1])


def workers_from_cfs(quota: str, period: str) -> int | None:
    """cgroup v1: quota ``-1`` means no limit."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))


def read_cpu_limit_workers() -> int | None:
    """The container's CPU limit rounded up, or None when there is none (or no cgroup info)."""
    try:
        return workers_from_cpu_max(CPU_MAX.read_text())
    except OSError:
        pass
    try:
        return workers_from_cfs(CFS_QUOTA.read_text().strip(), CFS_PERIOD.read_text().strip())
    except OSError:
        return None


def envoy_argv(
    envoy: str,
    bootstrap: str,
    *,
    concurrency: int | None,
    cpu_limit_workers: int | None,
    log_level: str = "info",
    extra: Sequence[str] = (),
) -> list[str]:
    """The Envoy command line: the configured concurrency wins, then the CPU limit; with
    neither, Envoy's own default (one worker per CPU it sees)."""
    argv = [envoy, "-c", bootstrap, "--log-level", log_level]
    workers = concurrency or cpu_limit_workers
    if workers:
        argv += ["--concurrency", str(workers)]
    return argv + list(extra)


def run(config_file: str, bootstrap: str, log_level: str, extra: Sequence[str]) -> None:
    """Replace this process with Envoy (never returns)."""
    from extproc.config.load import load_config
    from extproc.dev.procs import envoy_binary

    cfg = load_config(config_file)
    argv = envoy_argv(
        envoy_binary(),
        bootstrap,
        concurrency=cfg.envoy.concurrency,
        cpu_limit_workers=read_cpu_limit_workers(),
        log_level=log_level,
        extra=extra,
    )
    os.execv(argv[0], argv)  # noqa: S606 - becoming Envoy is the point
