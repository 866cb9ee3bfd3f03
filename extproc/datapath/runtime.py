"""Builds the shared, immutable ``Gateway`` from a loaded configuration.

The base configuration (listeners, providers, identity) is parsed by ``config.py``; the
sections owned by later capabilities (``policy``, ``masking``) are parsed here by their own
modules, with errors located in the same file. A hot reload builds a new ``Gateway`` and
swaps it in whole; requests in flight keep the one they started with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from extproc.approvals.model import ApprovalSettings
from extproc.config.model import Config, ConfigError, located_error
from extproc.datapath.machine import Gateway, ResponseMasking, Router
from extproc.identity.credentials import CredentialStore
from extproc.masking import MaskingProfile
from extproc.policy import Policy
from extproc.recording.model import RecordingSettings
from extproc.tools.policy import ToolPolicy

__all__ = ["HOLD_MARGIN", "approvals", "build_gateway", "response_masking", "validate_sections"]

#: Seconds a held request's message timeout is extended beyond the hold itself.
HOLD_MARGIN = 5

_RESPONSE_KEYS = {"enabled", "providers", "exempt_groups", "max_buffer_bytes", "on_unmaskable"}


def _profile_config(raw: Any) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a mapping", path="masking")
    return {k: v for k, v in raw.items() if k != "responses"}


def response_masking(cfg: Config) -> ResponseMasking:
    raw = cfg.file.masking
    if raw is None:
        return ResponseMasking()
    err = _located(cfg)
    profile_cfg = _profile_config(raw)
    try:
        profile = MaskingProfile.from_config(profile_cfg, path="masking")
    except ConfigError as exc:
        raise err(exc.path or "masking", exc.message) from None
    resp = raw.get("responses") or {}
    if not isinstance(resp, Mapping):
        raise err("masking.responses", "must be a mapping")
    for key in resp:
        if key not in _RESPONSE_KEYS:
            raise err(f"masking.responses.{key}", f"unknown key; allowed: {', '.join(sorted(_RESPONSE_KEYS))}")
    enabled = resp.get("enabled", True)
    if not isinstance(enabled, bool):
        raise err("masking.responses.enabled", "must be true or false")
    providers = resp.get("providers")
    names = {p.name for p in cfg.providers}
    if providers is not None:
        if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
            raise err("masking.responses.providers", "must be a list of provider names")
        for i, p in enumerate(providers):
            if p not in names:
                raise err(f"masking.responses.providers[{i}]", f"unknown provider {p!r}")
    exempt = resp.get("exempt_groups", [])
    if not isinstance(exempt, list) or not all(isinstance(g, str) for g in exempt):
        raise err("masking.responses.exempt_groups", "must be a list of group names")
    max_buffer = resp.get("max_buffer_bytes", 1 << 20)
    if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or not 1024 <= max_buffer <= 64 << 20:
        raise err("masking.responses.max_buffer_bytes", "must be an integer between 1024 and 67108864")
    on_unmaskable = resp.get("on_unmaskable", "block")
    if on_unmaskable not in ("block", "allow"):
        raise err("masking.responses.on_unmaskable", "must be 'block' or 'allow'")
    return ResponseMasking(
        profile=profile if enabled else None,
        providers=frozenset(providers) if providers is not None else None,
        exempt_groups=frozenset(exempt),
        max_buffer_bytes=max_buffer,
        on_unmaskable=on_unmaskable,
    )


def policy(cfg: Config) -> Policy:
    raw = cfg.file.policy
    if raw is None:
        return Policy.empty()
    return Policy.from_config(raw, file=cfg.source, lines=cfg.lines,
                              masking_config=_profile_config(cfg.file.masking))


def approvals(cfg: Config) -> ApprovalSettings | None:
    raw = cfg.file.approvals
    if raw is None:
        return None
    settings = ApprovalSettings.from_config(raw, file=cfg.source, lines=cfg.lines)
    limit = cfg.envoy.max_message_timeout_seconds
    if settings.hold_seconds + HOLD_MARGIN > limit:
        raise _located(cfg)(
            "approvals.hold_seconds",
            f"a hold of {settings.hold_seconds}s needs envoy.max_message_timeout_seconds >= "
            f"{settings.hold_seconds + HOLD_MARGIN} (it is {limit}): Envoy would cut the held request",
        )
    return settings


def recording(cfg: Config) -> RecordingSettings | None:
    raw = cfg.file.recording
    if raw is None:
        return None
    settings = RecordingSettings.from_config(raw, file=cfg.source, lines=cfg.lines)
    return settings if settings.enabled else None


def tools(cfg: Config) -> tuple[ToolPolicy, str]:
    """The ``tools:`` section and what happens to forbidden tool calls in model answers."""
    raw = cfg.file.tools
    if raw is None:
        return ToolPolicy.empty(), "remove"
    if not isinstance(raw, Mapping):
        raise _located(cfg)("tools", "must be a mapping")
    model_calls = raw.get("model_calls", "remove")
    if model_calls not in ("remove", "error"):
        raise _located(cfg)("tools.model_calls", "must be 'remove' (drop the call) or 'error' (end the answer)")
    rest = {k: v for k, v in raw.items() if k != "model_calls"}
    return ToolPolicy.from_config(rest, file=cfg.source, lines=cfg.lines), model_calls


def validate_sections(cfg: Config) -> None:
    """Every section, so ``config check`` and start-up refuse what a reload would refuse."""
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
        policy=policy(cfg),
        governed=cfg.file.policy is not None,
        approvals=approvals(cfg),
        recording=recording(cfg),
        tools=tool_policy,
        model_tool_calls=model_calls,
        masking=response_masking(cfg),
    )


def _located(cfg: Config) -> Callable[[str, str], ConfigError]:
    def make(path: str, message: str) -> ConfigError:
        return located_error(message, path=path, file=cfg.source, lines=cfg.lines)

    return make
