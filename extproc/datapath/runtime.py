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
from extproc.datapath.inspect import InspectionSettings, InspectionSpec
from extproc.datapath.machine import Gateway, ResponseMasking, Router
from extproc.errors import located_error
from extproc.identity.credentials import CredentialStore
from extproc.masking import MaskingProfile
from extproc.policy import Policy
from extproc.recording.model import RecordingSettings
from extproc.tools.model import ToolPolicy

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
        signed_thinking=resp.signed_thinking,
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


def inspection(cfg: Config) -> InspectionSettings:
    return cfg.file.inspection


def inspection_spec(cfg: Config) -> InspectionSpec:
    """The sections a worker process compiles to inspect exactly like this gateway."""
    rec = cfg.file.recording
    recording_on = rec is not None and rec.enabled
    return InspectionSpec.of(cfg.file.policy, cfg.file.masking, rec.masking if rec is not None else None, recording_on)


def validate_sections(cfg: Config) -> None:
    """Compile every section, so ``config check`` and start-up refuse what a reload would."""
    pol = policy(cfg)
    response_masking(cfg)
    settings = approvals(cfg)
    recording(cfg)
    tool_policy, _ = tools(cfg)
    if settings is not None:
        _check_approval_rules(cfg, settings, pol, tool_policy)


def _check_approval_rules(cfg: Config, settings: ApprovalSettings, pol: Policy, tool_policy: ToolPolicy) -> None:
    """``approvals.rules`` keys name rules that hold requests; a typo would leave a rule that
    nobody may approve (and approvers who think they cover it)."""
    holding = {r.id for r in pol.rules if r.action == "require_approval"}
    holding |= {r.id for r in tool_policy.rules if r.action == "require_approval"}
    known = {r.id for r in pol.rules} | {r.id for r in tool_policy.rules}
    for rid in settings.rules:
        if rid == "*" or rid in holding:
            continue
        what = "is not a require_approval rule" if rid in known else "names no rule in policy.rules or tools.rules"
        hint = f" (rules that hold requests: {', '.join(sorted(holding))})" if holding else ""
        raise located_error(f"{rid!r} {what}{hint}", path=f"approvals.rules.{rid}", file=cfg.source,
                            lines=cfg.lines)


def build_gateway(cfg: Config, creds: CredentialStore) -> Gateway:
    tool_policy, model_calls = tools(cfg)
    pol, settings = policy(cfg), approvals(cfg)
    if settings is not None:
        _check_approval_rules(cfg, settings, pol, tool_policy)  # a reload refuses it too
    return Gateway(
        router=Router(cfg.providers),
        credential=creds.get,
        all_credentials=creds.all_values,
        clock=time.time,
        new_id=lambda: uuid.uuid4().hex,
        timer=time.perf_counter,
        policy=pol,
        governed=cfg.file.policy is not None,
        approvals=settings,
        recording=recording(cfg),
        tools=tool_policy,
        model_tool_calls=model_calls,
        masking=response_masking(cfg),
        inspection=inspection(cfg),
        inspection_spec=inspection_spec(cfg),
    )

