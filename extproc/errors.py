"""One vocabulary for failure: the project's exception base, and the error bodies the gateway
itself produces.

Every exception the project raises on purpose derives from :class:`ExtprocError`, so a caller
(the CLI, the servicer, a test) can catch "ours" apart from bugs. Classes that callers already
catch as ``ValueError`` keep that base too.

The bodies follow OpenAI's shape, ``{"error": {"message", "type", "code"}}``, which both the
``openai`` and ``anthropic`` SDKs surface as typed exceptions by status; ``"type": "error"``
at the top level also makes them valid Anthropic error envelopes. Every body carries the
request id, which also comes back in the ``x-request-id`` header.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ERROR_TYPES",
    "ConfigError",
    "ExtprocError",
    "GatewayError",
    "StoreUnavailable",
    "error_body",
    "located_error",
]


class ExtprocError(Exception):
    """Base of every error the project raises deliberately."""


class ConfigError(ExtprocError, ValueError):
    """A configuration problem, located by file, line and key path."""

    def __init__(self, message: str, *, path: str = "", file: str = "", line: int | None = None) -> None:
        self.message = message
        self.path = path
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


def located_error(message: str, *, path: str, file: str, lines: Mapping[str, int] | None) -> ConfigError:
    """A ``ConfigError`` at ``path``; a key that is missing has no line of its own, so the
    nearest enclosing key's line is reported. Every section loader uses this."""
    lines = lines or {}
    probe = path
    line = lines.get(probe)
    while line is None and probe:
        shorter = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe)
        if shorter == probe:
            break
        probe = shorter
        line = lines.get(probe)
    return ConfigError(message, path=path, file=file, line=line)


class StoreUnavailable(ExtprocError):
    """The shared store (Redis) did not answer, or answered with an error. Callers fail closed."""


ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


@dataclass(frozen=True, slots=True)
class GatewayError:
    status: int
    code: str
    message: str


def error_body(status: int, code: str, message: str, request_id: str, **extra: object) -> bytes:
    err: dict[str, object] = {
        "message": message,
        "type": ERROR_TYPES.get(status, "api_error"),
        "code": code,
        "request_id": request_id,
    }
    err.update(extra)
    return json.dumps({"type": "error", "error": err}, separators=(",", ":")).encode()
