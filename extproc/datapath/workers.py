"""Worker processes that inspect large request bodies off the event loop.

Why processes: the detectors are pure Python around ``re2`` and hold the GIL while they scan, so
a thread would still stall every other stream (measured: 1 MB of dense PII holds the loop for
seconds). Each worker is a process started through a ``forkserver`` (never ``fork``: the parent
runs gRPC threads), with a pipe; it compiles the policy and the recording profile once per
configuration version (``inspect.Compiled``) and runs ``inspect.run_job`` for one job at a time.
Workers run at a lower CPU priority than the event loop, so small requests keep their latency
while a big body is scanned.

Bound on work: a job that is not done within its timeout (queueing included) is answered with
``InspectionFailed("timeout")`` and its worker is killed and replaced, so a pathological body
costs at most ``timeout_seconds`` of one core. A worker that dies fails only its own job.

Like every ``spawn``/``forkserver`` child, a worker re-imports the parent's main script unless
it is a package ``__main__`` (``python -m extproc``) or guarded by ``if __name__ ==
"__main__"`` (the ``extproc`` console script is); a custom launcher must be guarded too.
Memory: the workers (and the forkserver and multiprocessing's resource tracker behind them) are
started on the first body that needs one, not with the server: most deployments never see a body
over ``offload_bytes``, and the four processes cost ~118 MB resident (~57 MB proportional, since
the workers share the forkserver's pages) at idle (docs/performance.md, "Memory"). The first
large body pays their start-up (about a second; it counts against its timeout). Once started a
worker is about 35 MB resident; scanning a body costs a few times its size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from extproc.datapath.inspect import Compiled, Inspection, InspectionFailed, InspectionJob, InspectionSpec, run_job

__all__ = ["InspectorPool"]

log = logging.getLogger("extproc.inspect")

#: How much lower a worker's CPU priority is than the server's.
_NICE = 5


def _serve(conn: Connection) -> None:
    """A worker's main loop: one job in, one result out, until the pipe closes."""
    with contextlib.suppress(OSError):
        os.nice(_NICE)
    compiled = Compiled()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        result: Inspection | InspectionFailed | None
        try:
            if isinstance(job, InspectionSpec):  # a warm-up: compile ahead of the first job
                compiled.get(job)
                result = None
            else:
                result = run_job(job, compiled, time.perf_counter)
        except Exception as exc:  # a bug must fail this job closed, not the worker
            result = InspectionFailed("error", type(exc).__name__)
        try:
            conn.send(result)
        except (OSError, ValueError):
            return


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), name="extproc-inspect", daemon=True)
        self.proc.start()
        child.close()

    def call(self, msg: object) -> Any:
        """Blocking: runs in a thread of the pool's executor."""
        self.conn.send(msg)
        return self.conn.recv()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.join(1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class InspectorPool:
    """``workers`` processes; ``run`` sends a job to an idle one and waits for it (or the timeout).

    The processes are started by the first ``run`` (``lazy``, the default) or by ``start``."""

    def __init__(self, workers: int, *, start_method: str = "forkserver", lazy: bool = True) -> None:
        self.size = workers
        self.lazy = lazy
        self._spec: InspectionSpec | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The forkserver imports the inspection code once; each worker starts from there.
            self._ctx.set_forkserver_preload(["extproc.datapath.inspect"])
        # One thread per worker: each waits on its worker's pipe.
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=workers + 2,
                                                              thread_name_prefix="inspect")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self.busy = 0
        self.queued = 0
        self.timeouts = 0
        self.failures = 0

    async def start(self, spec: InspectionSpec | None = None) -> None:
        """Remember ``spec`` (the workers compile it when they start); unless lazy, start them now."""
        self._spec = spec
        if not self.lazy:
            await self._ensure_started()

    def _ensure_started(self) -> asyncio.Task[None]:
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start_all())
        return self._starting

    @property
    def started(self) -> int:
        """Worker processes running now (0 until the first job, when lazy)."""
        return len(self._all)

    async def _start_all(self) -> None:
        loop = asyncio.get_running_loop()

        async def one() -> None:
            # Each worker is idle as soon as it is up: the first job need not wait for the others.
            w = await loop.run_in_executor(self._threads, self._spawn, self._spec)
            self._idle.put_nowait(w)

        results = await asyncio.gather(*(one() for _ in range(self.size - len(self._all))), return_exceptions=True)
        failed = [r for r in results if isinstance(r, Exception)]
        for r in failed:
            log.error("cannot start an inspection worker: %s", r)
        if failed:
            self._starting = None  # the next job tries again to start the missing ones

    def _spawn(self, spec: InspectionSpec | None) -> _Worker:
        w = _Worker(self._ctx)
        if self._closed:  # closed while this one was starting (in a thread): it must not outlive the pool
            w.kill()
            w.close()
            raise RuntimeError("the inspection pool is closed")
        self._all.add(w)
        if spec is not None:
            try:
                w.call(spec)
            except (EOFError, OSError):
                log.warning("an inspection worker failed to start")
        return w

    async def run(self, job: InspectionJob, timeout: float) -> Inspection | InspectionFailed:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._ensure_started()  # the first job starts the workers; their start-up is in its bound
        self.queued += 1
        try:
            worker = await asyncio.wait_for(self._idle.get(), timeout)
        except TimeoutError:
            self.timeouts += 1
            return InspectionFailed("timeout", "no worker was free")
        finally:
            self.queued -= 1
        self.busy += 1
        fut = loop.run_in_executor(self._threads, worker.call, job)
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
        except TimeoutError:
            self.timeouts += 1
            log.warning("request inspection ran past %.0fs: its worker is replaced", timeout)
            await self._replace(worker, fut)
            return InspectionFailed("timeout")
        except (EOFError, OSError) as exc:
            self.failures += 1
            log.error("an inspection worker died (%s): it is replaced", type(exc).__name__)
            await self._replace(worker, fut)
            return InspectionFailed("error", type(exc).__name__)
        except asyncio.CancelledError:
            # The stream went away mid-job; the worker's answer would arrive into the next job.
            await asyncio.shield(self._replace(worker, fut))
            raise
        finally:
            self.busy -= 1
        if isinstance(result, InspectionFailed):
            self.failures += 1
        self._idle.put_nowait(worker)
        return result if isinstance(result, Inspection | InspectionFailed) else InspectionFailed("error")

    async def _replace(self, worker: _Worker, fut: asyncio.Future[Any]) -> None:
        worker.kill()
        self._all.discard(worker)
        with contextlib.suppress(BaseException):
            await fut  # the waiting thread sees the pipe's end (EOF) once the process is gone
        worker.close()
        loop = asyncio.get_running_loop()
        try:
            fresh = await loop.run_in_executor(self._threads, self._spawn, None)
        except Exception as exc:
            log.error("cannot start an inspection worker: %s", exc)
            return
        self._idle.put_nowait(fresh)

    def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
        for w in list(self._all):
            w.kill()
            w.close()
        self._all.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
