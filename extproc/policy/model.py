"""The values policy evaluation takes and returns; the data path builds and reads these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ACTIONS",
    "BUDGET_SCOPES",
    "FAIL_MODES",
    "MODES",
    "SEVERITY",
    "BudgetCharge",
    "BudgetOutcome",
    "Decision",
    "PolicyRequest",
    "RuleMatch",
]

ACTIONS: tuple[str, ...] = ("allow", "mask", "require_approval", "block")
#: Most restrictive wins; the order is the one a reviewer expects: refusing beats asking,
#: asking beats rewriting, rewriting beats passing through.
SEVERITY: Mapping[str, int] = MappingProxyType({a: i for i, a in enumerate(ACTIONS)})
MODES: tuple[str, ...] = ("enforce", "shadow")
BUDGET_SCOPES: tuple[str, ...] = ("user", "group", "route", "model", "global")
FAIL_MODES: tuple[str, ...] = ("closed", "open")

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    user: str
    groups: tuple[str, ...]
    issuer: str
    workload: str | None
    #: Provider name, and its API flavour (openai | anthropic | generic | mcp).
    provider: str
    api: str
    method: str
    #: Path after the provider prefix, without the query string.
    path: str
    content_type: str
    body: bytes | None


@dataclass(frozen=True, slots=True)
class RuleMatch:
    rule_id: str
    action: str
    mode: str


@dataclass(frozen=True, slots=True)
class BudgetCharge:
    """One budget this request counts against."""

    budget_id: str
    #: Stable Redis key suffix, e.g. ``budget:per-user:user:alice``; the window is appended.
    key: str
    window_seconds: int
    requests_limit: int | None
    tokens_limit: int | None
    #: What to do when Redis cannot be reached: ``closed`` refuses (503), ``open`` lets through.
    fail: str


@dataclass(frozen=True, slots=True)
class Decision:
    #: The enforced outcome: allow | block | mask | require_approval.
    action: str
    #: ``shadow`` when a shadow-mode match would have been more restrictive than ``action``.
    mode: str
    #: The rule that decided ``action``; None for the default outcome or an unreadable body.
    rule_id: str | None
    #: For the caller; written by the policy author, never the matched pattern or text.
    message: str
    #: 403 for block, 400 for an unreadable body, 200 otherwise.
    status: int
    #: Every rule that matched, enforce and shadow, in file order.
    matches: tuple[RuleMatch, ...] = ()
    #: The rewritten body when masking is enforced (also with require_approval, to be sent
    #: once approved); None means "send the body unchanged".
    body: bytes | None = None
    operation: str = "other"
    model: str | None = None
    stream: bool = False
    #: Entity name (``EMAIL``) or ``rule:<id>`` for keyword/regex masks -> replacements made.
    mask_counts: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    prompt_tokens: int = 0
    #: Budgets to reserve against; empty when the request is blocked.
    budgets: tuple[BudgetCharge, ...] = ()
    # -- beyond the data-path contract: what metrics, logs and `policy explain` want --
    #: The action and rule a shadow match would have enforced (when ``mode == "shadow"``).
    shadow_action: str | None = None
    shadow_rule_id: str | None = None
    #: Why the body could not be read (the caller sees it in ``message`` when blocked).
    error: str | None = None
    max_output_tokens: int | None = None
    policy_version: str = ""
    #: The request carries a body nothing could read (see ``Extraction.opaque``).
    opaque: bool = False


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    allowed: bool
    #: 200 allowed, 429 a budget is exhausted, 503 Redis unreachable and a budget fails closed.
    status: int = 200
    #: The first budget that refused (exhausted, or unavailable and failing closed).
    budget_id: str | None = None
    #: ``requests`` or ``tokens``: which limit of ``budget_id`` was reached.
    limit: str | None = None
    #: Seconds until the window of ``budget_id`` resets (for ``Retry-After``).
    retry_after: int | None = None
    #: Redis could not be reached; with ``allowed`` this means budgets were not enforced.
    unavailable: bool = False
    #: Why Redis failed; an exception class name and message, no request data.
    error: str | None = None
