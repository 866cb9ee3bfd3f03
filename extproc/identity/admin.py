"""Authentication and authorisation for the admin gRPC API.

Callers send ``authorization: Bearer <JWT>`` metadata; the token is verified exactly like a
data-path caller's (same issuers, same checks). Each RPC then says which groups or users may
call it. Failures abort the RPC with UNAUTHENTICATED / PERMISSION_DENIED and a safe message.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from extproc.identity.jwt import Authenticator
from extproc.identity.model import AuthError, Identity, bearer_token

__all__ = ["authenticate_rpc", "require_member"]


async def authenticate_rpc(context: grpc.aio.ServicerContext, authenticator: Authenticator) -> Identity:
    md = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    token = bearer_token(md.get("authorization"))
    try:
        return await authenticator.authenticate(token)
    except AuthError as exc:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        raise AssertionError("unreachable") from None


async def require_member(
    context: grpc.aio.ServicerContext,
    identity: Identity,
    *,
    groups: Iterable[str] = (),
    users: Iterable[str] = (),
    what: str = "call this method",
) -> None:
    """Abort with PERMISSION_DENIED unless the identity is one of ``users`` or in ``groups``."""
    if identity.user in set(users) or set(identity.groups) & set(groups):
        return
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{identity.user} may not {what}")
