"""Identifiers the approvals model is handed rather than making itself (it reads no clock,
randomness or host state, so it can be tested with plain values)."""

from __future__ import annotations

import os
import secrets
import socket

__all__ = ["make_owner_id", "new_approval_id"]

_BOOT = secrets.token_hex(6)


def new_approval_id() -> str:
    return "apr_" + secrets.token_urlsafe(15)


def make_owner_id() -> str:
    """``host:pid:boot``: names this process; ``boot`` is random per start, so a restarted
    process reusing a pid never mistakes its predecessor's held approvals for its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{_BOOT}"
