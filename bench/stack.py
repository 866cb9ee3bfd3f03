"""The real stack (Envoy, extproc, Redis and the fakes of ``tests/e2e/harness.py``) for the
bench scripts that measure through the gateway, and the one request most of them send.

A script run as ``python bench/<name>.py`` has ``bench/`` on its path, not the repository:
it puts the repository first itself before importing this module.
"""

from __future__ import annotations

import http.client
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.e2e.harness import Stack

__all__ = ["Stack", "post_chat", "running_stack", "workdir"]


def workdir(name: str) -> Path:
    """A fresh directory for one bench's stack; kept afterwards, for its logs."""
    return Path(tempfile.mkdtemp(prefix=f"extproc-bench-{name}-"))


@contextmanager
def running_stack(work: Path, extra_config: dict[str, Any] | None = None) -> Iterator[Stack]:
    """A started stack in ``work``, stopped on the way out however the bench ends.

    Without ``extra_config`` recording is off: these benches measure the gateway's own work,
    and a record per request would add Redis Streams writes to every number.
    """
    s = Stack(work, extra_config={"recording": None} if extra_config is None else extra_config).start()
    try:
        yield s
    finally:
        s.stop()


def post_chat(s: Stack, token: str, body: str, timeout: float) -> int:
    """POST ``body`` to the fake provider's chat completions as ``token``; the status, body read."""
    c = http.client.HTTPConnection("127.0.0.1", s.ports["http"], timeout=timeout)
    try:
        c.request("POST", "/fake/chat/completions", body=body,
                  headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()
