"""The error bodies the gateway itself produces.

The shape follows the route's API, so each provider's SDK parses it as its own:

* ``openai``: exactly OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (the
  gateway's ``request_id`` and, when there is one, ``rule_id`` inside ``error``, where
  OpenAI-compatible clients keep unknown members);
* ``anthropic``: Anthropic's ``{"type": "error", "error": {"type", "message"}, "request_id"}``
  (``code``, ``request_id`` and ``rule_id`` also inside ``error``, as on every route);
* anything else (generic and MCP routes, or before a route is known): the union of both,
  which either SDK reads.

Every body carries the request id, which also comes back in the ``x-request-id`` header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["ERROR_TYPES", "FLAVOURS", "GatewayError", "error_body"]

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


#: Values of ``flavour``.
FLAVOURS: tuple[str, ...] = ("openai", "anthropic", "any")


def error_body(status: int, code: str, message: str, request_id: str, *, flavour: str = "any",
               **extra: object) -> bytes:
    kind = ERROR_TYPES.get(status, "api_error")
    doc: dict[str, object]
    if flavour == "openai":
        err: dict[str, object] = {"message": message, "type": kind, "param": None, "code": code,
                                  "request_id": request_id}
        err.update(extra)
        doc = {"error": err}
    elif flavour == "anthropic":
        err = {"type": kind, "message": message, "code": code, "request_id": request_id}
        err.update(extra)
        doc = {"type": "error", "error": err, "request_id": request_id}
    else:
        err = {"message": message, "type": kind, "code": code, "request_id": request_id}
        err.update(extra)
        doc = {"type": "error", "error": err}
    return json.dumps(doc, separators=(",", ":")).encode()
