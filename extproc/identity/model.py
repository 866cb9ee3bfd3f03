"""Who is calling, as the rest of the program sees it: pure types, no I/O.

``jwt`` verifies tokens and produces an :class:`Identity`; the data path, policy, approvals and
recording only ever read one.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.errors import ExtprocError

__all__ = ["AuthError", "Identity", "bearer_token"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as established from a verified token."""

    user: str
    groups: tuple[str, ...]
    issuer: str
    subject: str
    expires_at: float
    #: For Kubernetes service-account tokens: ``system:serviceaccount:<namespace>:<name>``.
    workload: str | None = None


class AuthError(ExtprocError):
    """A request without a usable identity. ``code`` is stable, ``message`` is safe to show."""

    def __init__(self, code: str, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status



def bearer_token(authorization: str | None, api_key: str | None = None) -> str | None:
    """The caller's token: ``Authorization: Bearer`` first, else ``x-api-key``.

    The Anthropic SDK sends its ``api_key`` as ``x-api-key``; accepting the JWT there lets
    that SDK be pointed at the gateway without code beyond ``api_key=<token>``.
    """
    if authorization:
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return rest.strip()
        return None
    if api_key and api_key.count(".") == 2:
        return api_key.strip()
    return None
