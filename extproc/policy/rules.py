"""Validated rules and budgets, and how each decides whether it applies to a request."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import quote

from extproc.masking import MaskingProfile, default_profile
from extproc.policy.matchers import GlobSet, Hit, KeywordMatcher, RegexMatcher
from extproc.policy.model import BudgetCharge, PolicyRequest
from extproc.text.normalise import View

__all__ = ["AttachmentRule", "BudgetRule", "ContentMatcher", "Renderer", "Rule", "Selector", "budget_key_part"]

#: Renders a detector span: (text, start, end, entity, per-entity styles) -> replacement.
Renderer = Callable[[str, int, int, str, Mapping[str, str]], str]


@dataclass(frozen=True, slots=True)
class Selector:
    """Who and what a rule is about. Fields are ANDed; the values of one field are ORed.

    A field left out matches everything; a request without the attribute (no workload,
    no model) does not match a field that asks for one.
    """

    users: GlobSet | None = None
    groups: GlobSet | None = None
    issuers: GlobSet | None = None
    workloads: GlobSet | None = None
    providers: GlobSet | None = None
    models: GlobSet | None = None
    operations: frozenset[str] | None = None

    def matches(self, req: PolicyRequest, operation: str, model: str | None) -> bool:
        if self.operations is not None and operation not in self.operations:
            return False
        if self.providers is not None and not self.providers.matches(req.provider):
            return False
        if self.users is not None and not self.users.matches(req.user):
            return False
        if self.groups is not None and not self.groups.matches_any(req.groups):
            return False
        if self.issuers is not None and not self.issuers.matches(req.issuer):
            return False
        if self.workloads is not None and (req.workload is None or not self.workloads.matches(req.workload)):
            return False
        return self.models is None or (model is not None and self.models.matches(model))

    @property
    def empty(self) -> bool:
        return all(
            getattr(self, f) is None
            for f in ("users", "groups", "issuers", "workloads", "providers", "models", "operations")
        )


@dataclass(frozen=True, slots=True)
class ContentMatcher:
    """Keywords, RE2 patterns and detector entities; any one finding something is a match.

    With ``normalise`` (the default) they run on the normalised view of the text
    (:mod:`extproc.text.normalise`): keywords on the case-folded view (the keywords
    themselves are normalised the same way when compiled), patterns and detectors on the
    view without case folding. Hits are reported in original offsets.
    """

    keywords: KeywordMatcher | None = None
    regexes: tuple[RegexMatcher, ...] = ()
    detectors: frozenset[str] = frozenset()
    normalise: bool = True
    #: Also match provider-stored identifiers and metadata (``user``, ``metadata``...).
    #: Mask rules always mask them; block and approval rules look there only when asked.
    metadata: bool = False

    def matches(self, folded: str, text: str, detected: Sequence[tuple[int, int, str]]) -> bool:
        """``folded`` is the text keywords see, ``text`` the one patterns see; ``detected`` is in it."""
        if self.keywords is not None and self.keywords.search(folded):
            return True
        if any(r.search(text) for r in self.regexes):
            return True
        return any(entity in self.detectors for _, _, entity in detected)

    def hits(
        self,
        folded: View,
        text: View,
        detected: Sequence[tuple[int, int, str]],
        rule: Rule,
        render: Renderer | None,
    ) -> list[Hit]:
        """Every span to replace, in offsets of the original text (``folded.original``)."""
        label = f"rule:{rule.id}"
        literal = rule.replacement.format(rule=rule.id)
        out: list[Hit] = []
        if self.keywords is not None:
            out.extend(Hit(*folded.to_original(s, e), label, literal) for s, e in self.keywords.spans(folded.text))
        for r in self.regexes:
            out.extend(Hit(*text.to_original(s, e), label, literal) for s, e in r.spans(text.text))
        for s, e, entity in detected:
            if entity in self.detectors:
                # Rendered from the view: the same value hashes alike however it was disguised.
                value = render(text.text, s, e, entity, rule.styles) if render is not None else f"[{entity}]"
                out.append(Hit(*text.to_original(s, e), entity, value))
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    index: int
    action: str
    mode: str
    message: str
    description: str
    selector: Selector
    unless: Selector | None
    content: ContentMatcher | None
    #: Replacement for keyword/regex spans of a mask rule; ``{rule}`` is the rule id.
    replacement: str = "[REDACTED:{rule}]"
    #: Style per detector entity (placeholder, last4, hash); entities not listed use the
    #: masking section's style, by default the placeholder ``[EMAIL]``.
    styles: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def applies(self, req: PolicyRequest, operation: str, model: str | None) -> bool:
        """Selector part only; content is checked by the engine, which shares the scans."""
        if not self.selector.matches(req, operation, model):
            return False
        return self.unless is None or not self.unless.matches(req, operation, model)


@dataclass(frozen=True, slots=True)
class AttachmentRule:
    """``policy.attachments[]``: allow, refuse or hold attachments by media type and size."""

    id: str
    #: Media types or globs (``image/*``); None matches every type.
    media_types: GlobSet | None
    #: The rule matches only attachments larger than this (decoded bytes); None: any size.
    max_bytes: int | None
    action: str
    message: str

    def matches(self, media_type: str, size: int | None) -> bool:
        if self.media_types is not None and not self.media_types.matches(media_type.lower()):
            return False
        # A size limit applies to what can be measured; a referenced file (no size) is
        # matched only by rules without one.
        return self.max_bytes is None or (size is not None and size > self.max_bytes)


def budget_key_part(value: str) -> str:
    # Escaped so that user "a:b" and group "a" of user "b" can never share a key.
    return quote(value, safe="@._-+=~")


_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}$")
_MODEL_PROFILE: list[MaskingProfile] = []


def model_key_part(model: str) -> str:
    """The body's ``model`` in a Redis key name: caller-supplied, so kept readable only when it
    is a plain identifier holding nothing a detector would mask; otherwise a SHA-256 digest."""
    if not _MODEL_PROFILE:
        _MODEL_PROFILE.append(default_profile())
    profile = _MODEL_PROFILE[0]
    if _MODEL_RE.match(model) and not profile.find(model) and not profile.find(model.replace("_", " ")):
        return budget_key_part(model)
    return "h-" + hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class BudgetRule:
    id: str
    description: str
    selector: Selector
    unless: Selector | None
    per: str
    requests: int | None
    tokens: int | None
    window_seconds: int
    fail: str

    def charges(self, req: PolicyRequest, operation: str, model: str | None) -> list[BudgetCharge]:
        if not self.selector.matches(req, operation, model):
            return []
        if self.unless is not None and self.unless.matches(req, operation, model):
            return []
        base = f"budget:{self.id}"
        if self.per == "user":
            keys = [f"{base}:user:{budget_key_part(req.user)}"]
        elif self.per == "group":
            groups = [g for g in req.groups if self.selector.groups is None or self.selector.groups.matches(g)]
            # Callers without a group share one bucket rather than escaping the budget.
            keys = [f"{base}:group:{budget_key_part(g)}" for g in dict.fromkeys(groups)] or [f"{base}:group:-"]
        elif self.per == "route":
            keys = [f"{base}:route:{budget_key_part(req.provider)}"]
        elif self.per == "model":
            keys = [f"{base}:model:{budget_key_part(req.provider)}:{model_key_part(model or '-')}"]
        else:
            keys = [f"{base}:global"]
        return [
            BudgetCharge(
                budget_id=self.id,
                key=k,
                window_seconds=self.window_seconds,
                requests_limit=self.requests,
                tokens_limit=self.tokens,
                fail=self.fail,
            )
            for k in keys
        ]
