"""Builds the shared, immutable ``Gateway`` from a loaded configuration.

The whole file was validated once into typed sections (``config.model``); here each
section is compiled into the runtime object its capability runs (``Policy``,
``MaskingProfile``, ``ToolPolicy``...). A hot reload builds a new ``Gateway`` and swaps it
in whole; requests in flight keep the one they started with.
"""

from __future__ import annotations

import time
import uuid

from extproc.approvals.config import HOLD_GRACE_SECONDS
from extproc.approvals.model import ApprovalSettings
from extproc.config.model import Config
from extproc.datapath.machine import Gateway, ResponseMasking, Router
from extproc.identity.credentials import CredentialStore
from extproc.masking import MaskingProfile
from extproc.policy import Policy
from extproc.recording.model import RecordingSettings
from extproc.tools.policy import ToolPolicy

__all__ = ["HOLD_GRACE_SECONDS", "approvals", "build_gateway", "response_masking", "validate_sections"]



def response_masking(cfg: Config) -> ResponseMasking:
    spec = cfg.file.masking
    if spec is None:
        return ResponseMasking()
    resp = spec.responses
    return ResponseMasking(
        profile=MaskingProfile.from_spec(spec) if resp.enabled else None,
        providers=frozenset(resp.providers) if resp.providers is not None else None,
        exempt_groups=frozenset(resp.exempt_groups),
        max_buffer_bytes=resp.max_buffer_bytes,
        on_unmaskable=resp.on_unmaskable,
    )


def policy(cfg: Config) -> Policy:
    spec = cfg.file.policy
    if spec is None:
        return Policy.empty()
    return Policy.from_section(spec, cfg.file.masking)


def approvals(cfg: Config) -> ApprovalSettings | None:
    spec = cfg.file.approvals
    return ApprovalSettings.from_section(spec) if spec is not None else None


def recording(cfg: Config) -> RecordingSettings | None:
    spec = cfg.file.recording
    if spec is None or not spec.enabled:
        return None
    return RecordingSettings.from_section(spec)


def tools(cfg: Config) -> tuple[ToolPolicy, str]:
    """The ``tools:`` section and what happens to forbidden tool calls in model answers."""
    spec = cfg.file.tools
    if spec is None:
        return ToolPolicy.empty(), "remove"
    return ToolPolicy.from_section(spec), spec.model_calls


def validate_sections(cfg: Config) -> None:
    """Compile every section, so ``config check`` and start-up refuse what a reload would."""
    policy(cfg)
    response_masking(cfg)
    approvals(cfg)
    recording(cfg)
    tools(cfg)


def build_gateway(cfg: Config, creds: CredentialStore) -> Gateway:
    tool_policy, model_calls = tools(cfg)
    return Gateway(
        router=Router(cfg.providers),
        credential=creds.get,
        all_credentials=creds.all_values,
        clock=time.time,
        new_id=lambda: uuid.uuid4().hex,
        timer=time.perf_counter,
        policy=policy(cfg),
        governed=cfg.file.policy is not None,
        approvals=approvals(cfg),
        recording=recording(cfg),
        tools=tool_policy,
        model_tool_calls=model_calls,
        masking=response_masking(cfg),
    )

