"""The ``policy:`` section: its typed form and the rules compiled from it.

:class:`PolicySection` declares every key (types, choices, ranges, patterns) and checks
what one rule or budget can check on its own; :func:`check_against_masking` checks rules
against the ``masking:`` section (custom detectors, the hash key); :func:`compile_policy`
turns a validated section into the matchers the engine runs. A policy that loads is one
that runs: patterns compile, detectors exist, ids are unique, every action is known.
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from extproc.config.types import (
    Between,
    Flag,
    Invalid,
    OneOf,
    OptionalNames,
    Pattern,
    Section,
    Text,
    validate_section,
)
from extproc.llmapi import OPERATIONS
from extproc.policy.detectors import available_entities, available_styles
from extproc.policy.matchers import GlobSet, KeywordMatcher, RegexMatcher, RegexRejected, keyword_pattern
from extproc.policy.model import ACTIONS, BUDGET_SCOPES, FAIL_MODES, MODES
from extproc.policy.rules import AttachmentRule, BudgetRule, ContentMatcher, Rule, Selector
from extproc.text.normalise import normalise as normalise_text

if TYPE_CHECKING:
    from extproc.masking.config import ProfileSpec

__all__ = [
    "ATTACHMENT_ACTIONS",
    "UNKNOWN_FIELDS",
    "AttachmentSpec",
    "BudgetSpec",
    "ContentSpec",
    "PolicySection",
    "PolicySpec",
    "RuleSpec",
    "SelectorSpec",
    "check_against_masking",
    "compile_policy",
    "parse_policy",
]

MAX_WINDOW_SECONDS = 31 * 24 * 3600
#: Values of ``policy.unknown_fields``.
UNKNOWN_FIELDS: tuple[str, ...] = ("inspect", "refuse", "pass")
DEFAULT_BLOCK_MESSAGE = "This request is not allowed by the AI usage policy."
DEFAULT_REPLACEMENT = "[REDACTED:{rule}]"

Ident = Annotated[str, Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                               "must be letters, digits, '.', '_' or '-' (at most 64)")]
Mode = Annotated[str, OneOf(MODES)]


def _one_or_many(v: object) -> object:
    return [v] if isinstance(v, str) else v


def _not_empty(v: object) -> object:
    if isinstance(v, list | tuple) and not v:
        raise Invalid("must not be empty; leave the key out to match everything")
    return v


Operations = Annotated[tuple[Annotated[str, OneOf(OPERATIONS)], ...], BeforeValidator(_not_empty),
                       BeforeValidator(_one_or_many)]


# ---------------------------------------------------------------------------
# the typed section


class SelectorSpec(Section):
    """Who and what a rule is about; a key left out matches everything."""

    users: OptionalNames | None = None
    groups: OptionalNames | None = None
    issuers: OptionalNames | None = None
    workloads: OptionalNames | None = None
    providers: OptionalNames | None = None
    #: Matched case-insensitively (clients spell model names inconsistently).
    models: OptionalNames | None = None
    operations: Operations | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, k) is None for k in type(self).model_fields)


def _no_content(message: str) -> object:
    def check(v: object) -> object:
        if isinstance(v, dict) and "content" in v:
            raise Invalid(message, "content")
        return v

    return BeforeValidator(check)


#: ``unless`` exempts by identity and route; content exemptions would be a loophole.
Unless = Annotated[SelectorSpec, _no_content("'unless' takes identity and route selectors only, not content")]
BudgetSelector = Annotated[SelectorSpec, _no_content("budgets select by identity and route only, not content")]


class ContentSpec(Section):
    """Keywords, RE2 patterns and detector entities; any one finding something is a match."""

    keywords: OptionalNames | None = None
    regex: OptionalNames | None = None
    detectors: OptionalNames | None = None
    #: Also match the request's metadata fields (names, ids, tool arguments' keys...).
    metadata: Flag = False

    @model_validator(mode="after")
    def _compiles(self) -> ContentSpec:
        if self.keywords is None and self.regex is None and self.detectors is None:
            raise Invalid("set at least one of 'keywords', 'regex' or 'detectors'")
        for i, k in enumerate(self.keywords or ()):
            try:
                keyword_pattern(k)
            except ValueError as exc:
                raise Invalid(str(exc), "keywords", i) from None
        for i, pattern in enumerate(self.regex or ()):
            try:
                RegexMatcher(pattern)
            except RegexRejected as exc:
                raise Invalid(str(exc), "regex", i) from None
        return self


class MatchSpec(SelectorSpec):
    content: ContentSpec | None = None


def _template(value: str, fields: set[str]) -> None:
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise Invalid(f"is not a valid template: {exc}") from None
    bad = used - fields
    if bad:
        allowed = " and ".join("{" + f + "}" for f in sorted(fields))
        raise Invalid(f"may only use {allowed}, not {{{sorted(bad)[0]}}}")


def _replacement(v: object) -> object:
    if isinstance(v, str):
        _template(v, {"rule"})
    return v


class RuleMaskingSpec(Section):
    """How a mask rule renders what it found."""

    replacement: Annotated[Text, BeforeValidator(_replacement)] = DEFAULT_REPLACEMENT
    #: One style for all of the rule's detectors...
    style: Annotated[str, OneOf(available_styles())] | None = None
    #: ... or one per entity.
    styles: Mapping[str, Annotated[str, OneOf(available_styles())]] | None = None


class RuleSpec(Section):
    id: Ident
    description: Text = ""
    match: MatchSpec = Field(default_factory=MatchSpec)
    unless: Unless | None = None
    action: Annotated[str, OneOf(ACTIONS)]
    message: Text = ""
    #: The policy's ``mode`` when left out.
    mode: Mode | None = None
    masking: RuleMaskingSpec | None = None
    #: Match on the normalised view of the text (case, width, confusables, invisible
    #: characters); only for rules with ``match.content``.
    normalise: Flag = True

    @model_validator(mode="after")
    def _consistent(self) -> RuleSpec:
        if self.unless is not None and self.unless.empty:
            raise Invalid("must not be empty: it would exempt every request", "unless")
        content = self.match.content
        if "normalise" in self.model_fields_set and content is None:
            raise Invalid("only applies to rules with match.content", "normalise")
        if content is not None and self.normalise:
            # A keyword is compared with the folded view of the text, so it is folded too.
            for i, k in enumerate(content.keywords or ()):
                try:
                    keyword_pattern(normalise_text(k, fold=True))
                except ValueError as exc:
                    raise Invalid(str(exc), "match", "content", "keywords", i) from None
        if self.action == "mask" and content is None:
            raise Invalid("a mask rule needs 'content' matchers: they say what to mask", "match")
        if self.message and self.action in ("allow", "mask"):
            raise Invalid(f"is only shown for block and require_approval, not {self.action}", "message")
        if self.masking is not None:
            if self.action != "mask":
                raise Invalid(f"only applies to mask rules, this one is {self.action}", "masking")
            detectors = set(content.detectors or ()) if content is not None else set()
            if self.masking.style is not None and not detectors:
                raise Invalid("styles apply to detector matches, and this rule has no detectors",
                              "masking", "style")
            for entity in self.masking.styles or {}:
                if entity not in detectors:
                    raise Invalid("is not one of this rule's detectors", "masking", "styles", entity)
        return self

    @property
    def styles(self) -> dict[str, str]:
        """Per-entity styles: ``style`` for every detector, then ``styles`` per entity."""
        if self.masking is None:
            return {}
        content = self.match.content
        detectors = sorted(content.detectors or ()) if content is not None else []
        out = dict.fromkeys(detectors, self.masking.style) if self.masking.style is not None else {}
        return {**out, **(self.masking.styles or {})}


class BudgetSpec(Section):
    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["requests"]}, {"required": ["tokens"]}]})

    id: Ident
    description: Text = ""
    match: BudgetSelector = Field(default_factory=SelectorSpec)
    unless: SelectorSpec | None = None
    per: Annotated[str, OneOf(BUDGET_SCOPES)] = "user"
    requests: Annotated[int, Between(1, 10**12)] | None = None
    tokens: Annotated[int, Between(1, 10**15)] | None = None
    window_seconds: Annotated[int, Between(1, MAX_WINDOW_SECONDS)] = 60
    fail: Annotated[str, OneOf(FAIL_MODES)] = "closed"

    @model_validator(mode="after")
    def _limited(self) -> BudgetSpec:
        if self.requests is None and self.tokens is None:
            raise Invalid("set 'requests', 'tokens' or both: a budget needs a limit")
        return self


#: What an attachment rule does with a matching attachment.
ATTACHMENT_ACTIONS: tuple[str, ...] = ("allow", "refuse", "require_approval")


class AttachmentSpec(Section):
    """``policy.attachments[]``: allow, refuse or hold attachments by media type and size."""

    #: ``attachments-<index>`` when left out.
    id: Ident | None = None
    #: Media types or globs (``image/*``), case-insensitive; every type when left out.
    media_types: OptionalNames | None = None
    #: The rule matches only attachments larger than this (decoded bytes); any size when left out.
    max_bytes: Annotated[int, Between(0, 1 << 40)] | None = None
    action: Annotated[str, OneOf(ATTACHMENT_ACTIONS)]
    message: Text = ""


def _unique(ids: list[str], key: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, ident in enumerate(ids):
        if ident in seen:
            raise Invalid(f"{what} id {ident!r} is already used by policy.{key}[{seen[ident]}]", key, i, "id")
        seen[ident] = i


class PolicySection(Section):
    """The ``policy:`` section."""

    mode: Mode = "enforce"
    on_unparsable_body: Annotated[str, OneOf(("block", "allow"))] = "block"
    default: Annotated[str, OneOf(("allow", "block"))] = "allow"
    default_message: Text = DEFAULT_BLOCK_MESSAGE
    rules: tuple[RuleSpec, ...] = ()
    budgets: tuple[BudgetSpec, ...] = Field(default=())
    #: Fields the coverage map does not know: inspect (read as text) | refuse (400) | pass.
    unknown_fields: Annotated[str, OneOf(UNKNOWN_FIELDS)] = "inspect"
    #: In file order; the first matching rule decides.
    attachments: tuple[AttachmentSpec, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicySection:
        _unique([r.id for r in self.rules], "rules", "rule")
        _unique([b.id for b in self.budgets], "budgets", "budget")
        return self


def check_against_masking(policy: PolicySection, masking: ProfileSpec | None) -> None:
    """Detectors must exist (built in, or custom in ``masking:``); the hash style needs
    ``masking.hash_key``. Raises ``Invalid`` located below the policy section."""
    known: frozenset[str] | None = None
    for i, rule in enumerate(policy.rules):
        content = rule.match.content
        if content is None or content.detectors is None:
            continue
        if known is None:
            known = masking.known_entities if masking is not None else available_entities()
            if known is None:
                raise Invalid("detectors need the extproc.masking package, which is not available",
                              "rules", i, "match", "content", "detectors")
        for j, name in enumerate(content.detectors):
            if name not in known:
                got = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
                hint = f" (did you mean {got[0]!r}?)" if got else ""
                raise Invalid(f"unknown detector {name!r}{hint}; known: {', '.join(sorted(known))}",
                              "rules", i, "match", "content", "detectors", j)
        if rule.masking is not None and "hash" in rule.styles.values() and not (masking and masking.hash_key):
            per = rule.masking.styles is not None and "hash" in rule.masking.styles.values()
            raise Invalid("the hash style needs a key: set masking.hash_key", "rules", i, "masking",
                          "styles" if per else "style")


# ---------------------------------------------------------------------------
# compiled


@dataclass(frozen=True, slots=True)
class PolicySpec:
    mode: str
    on_unparsable_body: str
    default: str
    default_message: str
    rules: tuple[Rule, ...]
    budgets: tuple[BudgetRule, ...]
    #: Fields the coverage map does not know: inspect (read as text) | refuse (400) | pass.
    unknown_fields: str = "inspect"
    #: ``policy.attachments``, in file order; the first matching rule decides.
    attachments: tuple[AttachmentRule, ...] = ()


def parse_policy(
    raw: object,
    *,
    path: str = "policy",
    file: str = "",
    lines: Mapping[str, int] | None = None,
    masking: ProfileSpec | None = None,
) -> PolicySection:
    """``raw`` (the YAML value of ``policy:``) validated, errors located in ``file``."""
    section = validate_section(PolicySection, raw, path=path, file=file, lines=lines)
    try:
        check_against_masking(section, masking)
    except Invalid as exc:
        from extproc.config.types import key_path, located_error

        raise located_error(exc.message, path=key_path(path, exc.at), file=file, lines=lines) from None
    return section


def _globs(values: tuple[str, ...] | None, *, ignore_case: bool = False) -> GlobSet | None:
    return None if values is None else GlobSet(values, ignore_case=ignore_case)


def _selector(s: SelectorSpec) -> Selector:
    return Selector(
        users=_globs(s.users),
        groups=_globs(s.groups),
        issuers=_globs(s.issuers),
        workloads=_globs(s.workloads),
        providers=_globs(s.providers),
        models=_globs(s.models, ignore_case=True),
        operations=frozenset(s.operations) if s.operations is not None else None,
    )


def _content(c: ContentSpec, *, normalise: bool) -> ContentMatcher:
    keywords = c.keywords
    if keywords is not None and normalise:
        # A keyword is compared with the folded view of the text, so it is folded too.
        keywords = tuple(normalise_text(k, fold=True) for k in keywords)
    return ContentMatcher(
        keywords=KeywordMatcher(keywords) if keywords else None,
        regexes=tuple(RegexMatcher(p) for p in c.regex or ()),
        detectors=frozenset(c.detectors or ()),
        normalise=normalise,
        metadata=c.metadata,
    )


def _rules(section: PolicySection) -> Iterator[Rule]:
    for i, r in enumerate(section.rules):
        yield Rule(
            id=r.id,
            index=i,
            action=r.action,
            mode=r.mode or section.mode,
            message=r.message,
            description=r.description,
            selector=_selector(r.match),
            unless=_selector(r.unless) if r.unless is not None else None,
            content=_content(r.match.content, normalise=r.normalise) if r.match.content is not None else None,
            replacement=r.masking.replacement if r.masking is not None else DEFAULT_REPLACEMENT,
            styles=MappingProxyType(r.styles),
        )


def _budgets(section: PolicySection) -> Iterator[BudgetRule]:
    for b in section.budgets:
        yield BudgetRule(
            id=b.id,
            description=b.description,
            selector=_selector(b.match),
            unless=_selector(b.unless) if b.unless is not None else None,
            per=b.per,
            requests=b.requests,
            tokens=b.tokens,
            window_seconds=b.window_seconds,
            fail=b.fail,
        )


def compile_policy(section: PolicySection) -> PolicySpec:
    """The matchers the engine runs, from a validated section."""
    return PolicySpec(
        mode=section.mode,
        on_unparsable_body=section.on_unparsable_body,
        default=section.default,
        default_message=section.default_message or DEFAULT_BLOCK_MESSAGE,
        rules=tuple(_rules(section)),
        budgets=tuple(_budgets(section)),
        unknown_fields=section.unknown_fields,
        attachments=tuple(
            AttachmentRule(
                id=a.id if a.id is not None else f"attachments-{i}",
                media_types=GlobSet(t.lower() for t in a.media_types) if a.media_types is not None else None,
                max_bytes=a.max_bytes,
                action=a.action,
                message=a.message,
            )
            for i, a in enumerate(section.attachments)
        ),
    )
