"""Just-in-time human approval: the pure model. No I/O, no grpc, no redis.

A policy rule with ``action: require_approval`` makes the data path hold the request and ask
a human. What gets approved is a :class:`Binding`: *this* caller, *this* provider route,
*this* request content (a digest of the normalised body), under *this* policy version and
rule. An approval never transfers to a different prompt, user, route or policy.

An :class:`Approval` is an immutable record; every transition (:func:`decide`,
:func:`expire_if_due`, :func:`abandon`, :func:`consume`) returns a new record or raises
:class:`ApprovalError` with a stable ``code``. The Redis adapter (``approvals_store``) makes
the transitions atomic across replicas; this module decides what is allowed.

States::

    pending --quorum approvals--> approved   (a grant: once, or for a time window)
    pending --any deny----------> denied
    pending --ttl passes--------> expired    (treated as a denial)
    pending --holder died-------> abandoned  (the held client was failed closed)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from extproc.approvals.config import GRANT_MODES, ApprovalsSection, Webhook
from extproc.config.types import validate_section
from extproc.errors import ExtprocError
from extproc.identity.model import Identity
from extproc.strictjson import loads_strict

__all__ = [
    "APPROVAL_ID_RE",
    "GRANT_MODES",
    "PENDING",
    "STATES",
    "TERMINAL_STATES",
    "VERDICTS",
    "Approval",
    "ApprovalError",
    "ApprovalSettings",
    "ApproverRule",
    "Binding",
    "Principal",
    "Vote",
    "Webhook",
    "abandon",
    "consume",
    "content_digest",
    "decide",
    "expire_if_due",
    "grant_usable",
    "new_approval",
]

PENDING = "pending"
STATES: tuple[str, ...] = ("pending", "approved", "denied", "expired", "abandoned")
TERMINAL_STATES: frozenset[str] = frozenset(STATES) - {PENDING}
VERDICTS: tuple[str, ...] = ("approve", "deny")

#: ``apr_`` + 20 URL-safe characters (120 random bits): unguessable, so knowing an id is not
#: a capability, but it is not worth enumerating either.
APPROVAL_ID_RE = re.compile(r"^apr_[A-Za-z0-9_-]{20}$")
MAX_REASON = 500
RECORD_VERSION = 1

#: Request fields dropped before digesting, per API flavour. Only fields that change how the
#: answer is *delivered*, never what is sent to the model: a caller that retries the same
#: prompt without streaming (or a JSON-RPC client that numbers its calls) still matches its
#: approval. ``user`` and ``metadata`` are kept on purpose: they are caller-chosen strings
#: that reach the provider, and an approval covers exactly what is sent; a client retrying
#: the same request sends the same values anyway.
_VOLATILE_FIELDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "openai": frozenset({"stream", "stream_options"}),
        "anthropic": frozenset({"stream"}),
        # JSON-RPC ``id`` only correlates the answer with the call.
        "mcp": frozenset({"id"}),
        "generic": frozenset(),
    }
)


class ApprovalError(ExtprocError):
    """A refused transition. ``code`` is stable; ``message`` is safe to show the caller.

    Codes: ``not_found``, ``not_pending``, ``expired``, ``self_approval``, ``not_an_approver``,
    ``already_voted``, ``invalid``, ``no_approvers``, ``grant_unusable``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# the binding and the content digest


@dataclass(frozen=True, slots=True)
class Binding:
    """Exactly what an approval covers. Every field must match for a grant to apply."""

    user: str
    issuer: str
    provider: str
    #: The path after the provider prefix, without the query string.
    route: str
    content_digest: str
    policy_version: str
    rule_id: str

    def key(self) -> str:
        """A stable hash of all fields: the Redis index key for grants and pending requests."""
        raw = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()

    def to_dict(self) -> dict[str, str]:
        return {
            "user": self.user,
            "issuer": self.issuer,
            "provider": self.provider,
            "route": self.route,
            "content_digest": self.content_digest,
            "policy_version": self.policy_version,
            "rule_id": self.rule_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Binding:
        return cls(
            user=_str(d, "user"),
            issuer=_str(d, "issuer"),
            provider=_str(d, "provider"),
            route=_str(d, "route"),
            content_digest=_str(d, "content_digest"),
            policy_version=_str(d, "policy_version"),
            rule_id=_str(d, "rule_id"),
        )


def content_digest(body: bytes | None, *, api: str) -> str:
    """``sha256:<hex>`` of the request content, normalised so equivalent requests match.

    JSON bodies are parsed and re-serialised with sorted keys and no insignificant
    whitespace, after dropping the top-level fields in ``_VOLATILE_FIELDS[api]``. A body that
    is not JSON, or JSON with a duplicated object key, is digested byte for byte: parsers
    disagree on which duplicate wins (first or last), so normalising one would let a body the
    provider reads differently share the digest of an approved one.
    """
    prefix = b"extproc-approval-v1\x00" + api.encode() + b"\x00"
    if not body:
        return "sha256:" + hashlib.sha256(prefix + b"empty").hexdigest()
    try:
        doc = loads_strict(body)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, UnicodeDecodeError and StrictJsonError.
        return "sha256:" + hashlib.sha256(prefix + b"raw\x00" + body).hexdigest()
    if isinstance(doc, dict):
        drop = _VOLATILE_FIELDS.get(api, frozenset())
        doc = {k: v for k, v in doc.items() if k not in drop}
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(prefix + b"json\x00" + canon.encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------------------
# people


@dataclass(frozen=True, slots=True)
class Principal:
    """A snapshot of who requested or voted; what the record keeps of an :class:`Identity`."""

    user: str
    issuer: str
    groups: tuple[str, ...] = ()
    workload: str | None = None

    @classmethod
    def of(cls, who: Identity | Principal) -> Principal:
        if isinstance(who, Principal):
            return who
        return cls(user=who.user, issuer=who.issuer, groups=tuple(who.groups), workload=who.workload)

    def same_person(self, other: Principal) -> bool:
        # A user name is only unique within its issuer: alice@corp and alice@ci differ.
        return self.user == other.user and self.issuer == other.issuer

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "issuer": self.issuer, "groups": list(self.groups), "workload": self.workload}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Principal:
        groups = d.get("groups") or []
        workload = d.get("workload")
        return cls(
            user=_str(d, "user"),
            issuer=_str(d, "issuer"),
            groups=tuple(str(g) for g in groups),
            workload=str(workload) if workload is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ApproverRule:
    """Who may approve requests held by one policy rule, and how many must."""

    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    quorum: int = 1

    def admits(self, who: Principal) -> bool:
        return who.user in self.users or bool(set(who.groups) & set(self.groups))

    def to_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "users": list(self.users), "quorum": self.quorum}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ApproverRule:
        return cls(
            groups=tuple(str(g) for g in d.get("groups") or ()),
            users=tuple(str(u) for u in d.get("users") or ()),
            quorum=int(d.get("quorum", 1)),
        )


@dataclass(frozen=True, slots=True)
class Vote:
    approver: Principal
    verdict: str
    reason: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"approver": self.approver.to_dict(), "verdict": self.verdict, "reason": self.reason, "at": self.at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vote:
        return cls(
            approver=Principal.from_dict(d["approver"]),
            verdict=_str(d, "verdict"),
            reason=str(d.get("reason") or ""),
            at=float(d["at"]),
        )


# ---------------------------------------------------------------------------
# the record


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    binding: Binding
    requester: Principal
    created_at: float
    expires_at: float
    #: Snapshot of the approver rule when the request was held: a later config change
    #: cannot lower the bar for a request already waiting (the API also checks the current
    #: rule, so it cannot widen it either).
    approvers: ApproverRule
    state: str = PENDING
    decisions: tuple[Vote, ...] = ()
    grant: str = "once"
    grant_window_seconds: int = 3600
    #: The process holding the request (``make_owner_id``); None once nobody holds it.
    owner: str | None = None
    #: When the record left ``pending`` (for ``approved``: when the grant starts).
    decided_at: float | None = None
    #: How often the grant was used; ``once`` grants allow a single use.
    uses: int = 0
    last_used_at: float | None = None

    @property
    def quorum(self) -> int:
        return self.approvers.quorum

    @property
    def approved_at(self) -> float | None:
        return self.decided_at if self.state == "approved" else None

    @property
    def approvals(self) -> int:
        return sum(1 for v in self.decisions if v.verdict == "approve")

    @property
    def grant_expires_at(self) -> float | None:
        """When an approved grant stops being usable (a ``once`` grant also ends at its use)."""
        if self.state != "approved" or self.decided_at is None:
            return None
        return self.decided_at + self.grant_window_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "id": self.id,
            "binding": self.binding.to_dict(),
            "requester": self.requester.to_dict(),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "approvers": self.approvers.to_dict(),
            "state": self.state,
            "decisions": [v.to_dict() for v in self.decisions],
            "grant": self.grant,
            "grant_window_seconds": self.grant_window_seconds,
            "owner": self.owner,
            "decided_at": self.decided_at,
            "uses": self.uses,
            "last_used_at": self.last_used_at,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Approval:
        if d.get("v") != RECORD_VERSION:
            raise ValueError(f"unsupported approval record version {d.get('v')!r}")
        state = _str(d, "state")
        grant = _str(d, "grant")
        if state not in STATES or grant not in GRANT_MODES:
            raise ValueError("approval record has an unknown state or grant mode")
        owner, decided_at, last_used = d.get("owner"), d.get("decided_at"), d.get("last_used_at")
        return cls(
            id=_str(d, "id"),
            binding=Binding.from_dict(d["binding"]),
            requester=Principal.from_dict(d["requester"]),
            created_at=float(d["created_at"]),
            expires_at=float(d["expires_at"]),
            approvers=ApproverRule.from_dict(d["approvers"]),
            state=state,
            decisions=tuple(Vote.from_dict(v) for v in d.get("decisions") or ()),
            grant=grant,
            grant_window_seconds=int(d["grant_window_seconds"]),
            owner=str(owner) if owner is not None else None,
            decided_at=float(decided_at) if decided_at is not None else None,
            uses=int(d.get("uses", 0)),
            last_used_at=float(last_used) if last_used is not None else None,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Approval:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("approval record is not a JSON object")
        return cls.from_dict(doc)


def _str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise ValueError(f"approval record field {key!r} is not a string")
    return v


# ---------------------------------------------------------------------------
# transitions (pure)


def new_approval(
    binding: Binding,
    *,
    requester: Identity | Principal,
    settings: ApprovalSettings,
    now: float,
    approval_id: str,
    owner: str | None = None,
) -> Approval:
    """A pending approval for ``binding``; raises ``no_approvers`` when nobody could approve it.

    Failing here (rather than holding a request nobody can release) lets the data path
    answer at once.
    """
    rule = settings.rule_for(binding.rule_id)
    if rule is None:
        raise ApprovalError(
            "no_approvers",
            f"policy rule '{binding.rule_id}' requires approval but approvals.rules names no approvers for it",
        )
    return Approval(
        id=approval_id,
        binding=binding,
        requester=Principal.of(requester),
        created_at=now,
        expires_at=now + settings.ttl_seconds,
        approvers=rule,
        grant=settings.grant,
        grant_window_seconds=settings.grant_window_seconds,
        owner=owner,
    )


def expire_if_due(a: Approval, now: float) -> Approval:
    """``pending`` past ``expires_at`` becomes ``expired``; anything else is returned as is."""
    if a.state == PENDING and now >= a.expires_at:
        return replace(a, state="expired", decided_at=now, owner=None)
    return a


def abandon(a: Approval, now: float) -> Approval:
    """The process holding the request died: the client was failed closed, nobody waits."""
    if a.state != PENDING:
        raise ApprovalError("not_pending", f"approval {a.id} is {a.state}, not pending")
    return replace(a, state="abandoned", decided_at=now, owner=None)


def check_approver(a: Approval, approver: Identity | Principal, *, rule: ApproverRule | None = None) -> Principal:
    """The voter as a :class:`Principal` if they may vote on ``a``; else ``ApprovalError``.

    ``rule`` is the approver rule from the *current* configuration, when the caller has one;
    the voter must satisfy both it and the snapshot taken when the request was held.
    """
    who = Principal.of(approver)
    if who.same_person(a.requester):
        raise ApprovalError(
            "self_approval",
            f"{who.user} requested approval {a.id} and cannot decide it; another approver must",
        )
    if not a.approvers.admits(who) or (rule is not None and not rule.admits(who)):
        raise ApprovalError(
            "not_an_approver",
            f"{who.user} is not an approver for policy rule '{a.binding.rule_id}' "
            f"(approvers: {_describe(a.approvers)})",
        )
    return who


def decide(
    a: Approval,
    approver: Identity | Principal,
    verdict: str,
    reason: str = "",
    *,
    now: float,
    rule: ApproverRule | None = None,
) -> Approval:
    """Record one approver's vote. Any deny denies; ``quorum`` distinct approvals approve.

    Checks in order: the arguments, who is voting (never the requester, only approvers),
    the state (pending and not past its expiry), one vote per approver.
    """
    if verdict not in VERDICTS:
        raise ApprovalError("invalid", f"verdict must be one of {', '.join(VERDICTS)}")
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON:
        raise ApprovalError("invalid", f"the reason is longer than {MAX_REASON} characters")
    if verdict == "deny" and not reason:
        raise ApprovalError("invalid", "a denial needs a reason (the requester sees it)")
    who = check_approver(a, approver, rule=rule)
    current = expire_if_due(a, now)
    if current.state == "expired" and a.state == PENDING:
        raise ApprovalError("expired", f"approval {a.id} expired before it was decided")
    if current.state != PENDING:
        raise ApprovalError("not_pending", f"approval {a.id} is already {current.state}")
    if any(v.approver.same_person(who) for v in a.decisions):
        raise ApprovalError("already_voted", f"{who.user} has already voted on approval {a.id}")
    decisions = (*a.decisions, Vote(approver=who, verdict=verdict, reason=reason, at=now))
    out = replace(a, decisions=decisions)
    if verdict == "deny":
        return replace(out, state="denied", decided_at=now)
    if out.approvals >= a.quorum:
        return replace(out, state="approved", decided_at=now)
    return out


def grant_usable(a: Approval, binding: Binding, now: float) -> bool:
    """Whether ``a`` lets a request with ``binding`` through at ``now`` without asking again."""
    if a.state != "approved" or a.decided_at is None or a.binding != binding:
        return False
    if now >= a.decided_at + a.grant_window_seconds:
        return False  # a ``once`` grant too: an unused approval must not linger forever
    return a.grant == "window" or a.uses == 0


def consume(a: Approval, now: float) -> Approval:
    """Use the grant once. ``once`` grants allow one use; ``window`` grants count uses."""
    if not grant_usable(a, a.binding, now):
        raise ApprovalError("grant_unusable", f"approval {a.id} is {a.state} and grants nothing (more)")
    return replace(a, uses=a.uses + 1, last_used_at=now)


def _describe(rule: ApproverRule) -> str:
    parts = [f"group {g}" for g in rule.groups] + [f"user {u}" for u in rule.users]
    return ", ".join(parts) or "nobody"


# ---------------------------------------------------------------------------
# the ``approvals:`` configuration section


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """The ``approvals:`` section compiled: approver rules as the records store them."""

    hold_seconds: int = 120
    ttl_seconds: int = 900
    grant: str = "once"
    grant_window_seconds: int = 3600
    rules: Mapping[str, ApproverRule] = field(default_factory=lambda: MappingProxyType({}))
    webhooks: tuple[Webhook, ...] = ()

    def rule_for(self, rule_id: str) -> ApproverRule | None:
        """The approvers for a policy rule: its own entry, else ``"*"``, else None (nobody)."""
        return self.rules.get(rule_id) or self.rules.get("*")

    @classmethod
    def from_config(
        cls,
        raw: object,
        *,
        path: str = "approvals",
        file: str = "",
        lines: Mapping[str, int] | None = None,
    ) -> ApprovalSettings:
        """Validate and compile an ``approvals:`` mapping; None (no section) gives the defaults."""
        return cls.from_section(validate_section(ApprovalsSection, raw, path=path, file=file, lines=lines))

    @classmethod
    def from_section(cls, s: ApprovalsSection) -> ApprovalSettings:
        return cls(
            hold_seconds=s.hold_seconds,
            ttl_seconds=s.ttl_seconds,
            grant=s.grant,
            grant_window_seconds=s.grant_window_seconds,
            rules=MappingProxyType({rid: ApproverRule(groups=r.groups, users=r.users, quorum=r.quorum)
                                    for rid, r in s.rules.items()}),
            webhooks=s.webhooks,
        )
