"""The error bodies the gateway itself produces.

They follow OpenAI's shape, ``{"error": {"message", "type", "code"}}``, which both the
``openai`` and ``anthropic`` SDKs surface as typed exceptions by status; ``"type": "error"``
at the top level also makes them valid Anthropic error envelopes. Every body carries the
request id, which also comes back in the ``x-request-id`` header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["ERROR_TYPES", "GatewayError", "error_body"]

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    426: "invalid_request_error",
    431: "invalid_request_error",
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
