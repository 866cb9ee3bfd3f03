"""Request inspection as one self-contained job: the policy decision, the body to forward, and the
masked copy of the body for the record.

Scanning a body for PII is pure-Python and ``re2`` work that holds the GIL; a few megabytes of
dense PII take seconds. The machine therefore hands bodies of at least
``InspectionSettings.offload_bytes`` to the servicer as a :class:`NeedInspection`
(``extproc.datapath.machine``), and the servicer runs :func:`run_job` in a worker process
(``extproc.datapath.workers``); smaller bodies are inspected inline, as before. Everything a job
carries is plain, picklable data: the worker rebuilds (and caches) the policy and the recording
profile from the configuration sections in :class:`InspectionSpec`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extproc.config.types import validate_section
from extproc.datapath.config import TIMEOUT_MARGIN_SECONDS, InspectionSettings
from extproc.errors import ConfigError
from extproc.masking import MaskingProfile
from extproc.masking.config import ProfileSpec
from extproc.policy import Decision, Policy, PolicyRequest
from extproc.policy.loader import PolicySection
from extproc.recording.model import record_body, recording_profile

__all__ = [
    "Compiled",
    "Inspection",
    "InspectionFailed",
    "InspectionJob",
    "InspectionSettings",
    "InspectionSpec",
    "RecordSpec",
    "forward_body",
    "inspection_settings",
    "run_job",
    "with_stream_usage",
]

def inspection_settings(raw: Any, *, max_message_timeout_seconds: int) -> InspectionSettings:
    """Validate an ``inspection:`` mapping (None means the defaults) on its own; a whole file's
    is validated with it (``ConfigFile``), which makes the same check against Envoy's timeout."""
    s = validate_section(InspectionSettings, raw, path="inspection")
    if s.timeout_seconds + TIMEOUT_MARGIN_SECONDS > max_message_timeout_seconds:
        raise ConfigError(
            f"must leave {TIMEOUT_MARGIN_SECONDS} s under envoy.max_message_timeout_seconds "
            f"({max_message_timeout_seconds}): Envoy would cut the request before its inspection ends",
            path="inspection.timeout_seconds")
    return s


@dataclass(frozen=True, slots=True)
class InspectionSpec:
    """The configuration a worker needs: the validated sections (plain, picklable models)."""

    key: str
    policy: PolicySection | None
    #: The top-level ``masking:`` section (its profile keys; ``responses`` is not used here).
    masking: ProfileSpec | None
    #: ``recording.masking`` (None: every built-in detector); unused when ``recording`` is False.
    recording_masking: ProfileSpec | None
    recording: bool

    @classmethod
    def of(cls, policy: PolicySection | Mapping[str, Any] | None, masking: ProfileSpec | None,
           recording_masking: ProfileSpec | None, recording: bool) -> InspectionSpec:
        if policy is not None and not isinstance(policy, PolicySection):
            policy = validate_section(PolicySection, policy, path="policy")
        doc = json.dumps([None if x is None else x.model_dump(mode="json")
                          for x in (policy, masking, recording_masking)] + [recording], sort_keys=True, default=str)
        return cls(hashlib.sha256(doc.encode()).hexdigest()[:16], policy, masking, recording_masking, recording)


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """How to mask the recorded copy: the recording profile plus these literals."""

    #: Every provider credential (masked literally, like ``Gateway.literal_profiles``).
    credentials: tuple[str, ...]
    #: The caller's raw token, when the profile has no JWT detector.
    extra: tuple[str, ...]
    max_body_bytes: int
    #: Also mask the body as received (it may be refused after inspection: budgets, approvals).
    raw_too: bool


@dataclass(frozen=True, slots=True)
class InspectionJob:
    spec: InspectionSpec
    body: bytes
    api: str
    #: None when no policy governs the route (only the record is made).
    request: PolicyRequest | None
    record: RecordSpec | None


@dataclass(frozen=True, slots=True)
class Inspection:
    decision: Decision | None
    #: The body to forward when it differs from the one received (masked, or with stream usage).
    forward: bytes | None
    #: The record's ``request`` field for the forwarded body, and for the body as received.
    recorded: dict[str, Any] | None = None
    recorded_raw: dict[str, Any] | None = None
    policy_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class InspectionFailed:
    """``timeout`` (past ``timeout_seconds``) or ``error`` (the worker failed or died)."""

    reason: str
    detail: str = ""


def with_stream_usage(body: bytes) -> bytes:
    """Ask OpenAI to report usage in the final stream chunk, so token budgets are charged."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict):
        return body
    opts = doc.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return body
    doc["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def forward_body(d: Decision | None, body: bytes | None, api: str) -> bytes | None:
    """The body to send upstream when it is not ``body`` itself: the policy's rewrite, and on
    OpenAI streams with token budgets a request for usage in the last chunk."""
    if d is None:
        return None
    new = d.body
    if body is not None and d.stream and api == "openai" and any(c.tokens_limit for c in d.budgets):
        new = with_stream_usage(new if new is not None else body)
    return new


class Compiled:
    """A worker's compiled policies and recording profiles, by spec key (a reload adds one)."""

    def __init__(self) -> None:
        self._specs: dict[str, tuple[Policy | None, MaskingProfile | None]] = {}
        self._literal: dict[tuple[str, tuple[str, ...]], MaskingProfile] = {}

    def get(self, spec: InspectionSpec) -> tuple[Policy | None, MaskingProfile | None]:
        got = self._specs.get(spec.key)
        if got is None:
            if len(self._specs) > 8:
                self._specs.clear()
                self._literal.clear()
            policy = None if spec.policy is None else Policy.from_section(spec.policy, spec.masking)
            rec = MaskingProfile.from_spec(spec.recording_masking) if spec.recording else None
            got = self._specs[spec.key] = (policy, rec)
        return got

    def record_profile(self, spec: InspectionSpec, base: MaskingProfile, r: RecordSpec) -> MaskingProfile:
        key = (spec.key, tuple(sorted(r.credentials)))
        lit = self._literal.get(key)
        if lit is None:
            lit = self._literal[key] = base.with_literals(r.credentials)
        return recording_profile(lit, r.extra)


def run_job(job: InspectionJob, compiled: Compiled, clock: Any = None) -> Inspection:
    """What the worker does. ``clock`` (a ``perf_counter``) only measures ``policy_seconds``."""
    policy, rec_base = compiled.get(job.spec)
    d: Decision | None = None
    seconds = 0.0
    if job.request is not None and policy is not None:
        t0 = clock() if clock else 0.0
        d = policy.evaluate(job.request)
        seconds = (clock() - t0) if clock else 0.0
        # MappingProxyType does not pickle; the parent makes it read-only again.
        d = dataclasses.replace(d, mask_counts=dict(d.mask_counts))
    fwd = forward_body(d, job.body, job.api) if d is None or d.action != "block" else None
    recorded = recorded_raw = None
    r = job.record
    if r is not None and rec_base is not None:
        profile = compiled.record_profile(job.spec, rec_base, r)
        if d is None or d.action != "block":
            recorded = record_body(profile, r.max_body_bytes, fwd if fwd is not None else job.body)
        if r.raw_too or (d is not None and d.action == "block"):
            recorded_raw = recorded if fwd is None and recorded is not None else \
                record_body(profile, r.max_body_bytes, job.body)
    return Inspection(d, fwd, recorded, recorded_raw, seconds)

