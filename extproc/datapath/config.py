"""The ``inspection:`` section, typed: when a request body is inspected in a worker process,
how many workers there are, how long an inspection may take and how large a body may be."""

from __future__ import annotations

from typing import Annotated

from extproc.config.types import Between, Section

__all__ = ["TIMEOUT_MARGIN_SECONDS", "InspectionSettings"]

#: ``inspection.timeout_seconds`` must stay this far under ``envoy.max_message_timeout_seconds``.
TIMEOUT_MARGIN_SECONDS = 5


class InspectionSettings(Section):
    """The ``inspection:`` section."""

    #: Request bodies of at least this many bytes are inspected in a worker process.
    offload_bytes: Annotated[int, Between(0, 1 << 30)] = 64 * 1024
    #: Worker processes (0: everything inline, on the event loop). Needs a restart to change.
    workers: Annotated[int, Between(0, 64)] = 2
    #: Longest a request's offloaded inspection may take (queueing included): past it, 503
    #: ``inspection_timeout`` and the worker is replaced.
    timeout_seconds: Annotated[int, Between(1, 3600)] = 30
    #: Larger request bodies are refused without inspection: 413 ``body_too_large``.
    max_bytes: Annotated[int, Between(1024, 1 << 30)] = 8 * 1024 * 1024
