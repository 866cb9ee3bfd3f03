"""The one admin-API client plumbing for the command line (``approvals``, ``sessions``,
``status``): where the server is, whose token to send, and what a refusal means in words.

The CLIs never import grpc at module level: ``extproc --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from extproc.errors import ExtprocError

__all__ = ["DEFAULT_ADMIN", "AdminCallError", "add_admin_arguments", "channel", "explain", "token_metadata"]

DEFAULT_ADMIN = "127.0.0.1:50052"


class AdminCallError(ExtprocError):
    """A call to the admin API was refused or could not be made; the message says why, for a person.
    ``usage`` is True for mistakes the caller can fix before calling (exit code 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def add_admin_arguments(p: argparse.ArgumentParser, *, token_help: str, timeout: float) -> None:
    p.add_argument("--admin", default=os.environ.get("EXTPROC_ADMIN", DEFAULT_ADMIN),
                   help=f"admin gRPC address (default: $EXTPROC_ADMIN or {DEFAULT_ADMIN})")
    p.add_argument("--token", help=f"{token_help} (default: $EXTPROC_TOKEN)")
    p.add_argument("--timeout", type=float, default=timeout, help=f"seconds per call (default: {timeout:g})")


def token_metadata(args: argparse.Namespace, *, who: str) -> tuple[tuple[str, str], ...]:
    """``authorization`` metadata from ``--token`` or ``$EXTPROC_TOKEN``; a usage error without one."""
    token = (getattr(args, "token", None) or os.environ.get("EXTPROC_TOKEN") or "").strip()
    if not token:
        raise AdminCallError(
            f"no token: pass --token or set EXTPROC_TOKEN to {who} "
            "(the local stack: export EXTPROC_TOKEN=$(extproc token --sub NAME --groups GROUP))",
            usage=True,
        )
    return (("authorization", f"Bearer {token}"),)


@contextmanager
def channel(target: str) -> Iterator[Any]:
    """An insecure channel to the admin API (it listens on loopback or inside the cluster);
    an ``RpcError`` inside becomes an :class:`AdminCallError` with :func:`explain`'s words."""
    import grpc

    with grpc.insecure_channel(target) as ch:
        try:
            yield ch
        except grpc.RpcError as exc:
            raise AdminCallError(explain(exc, target)) from None


def explain(exc: Any, target: str, *, api: str = "admin") -> str:
    import grpc

    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"not authenticated: {details} (check --token / EXTPROC_TOKEN; tokens expire)"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"permission denied: {details}"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"not found: {details}"
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return f"cannot do that now: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the admin API at {target}: {details}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"the server at {target} does not serve this {api} API"
    return f"{code.name}: {details}"
