"""Reading the ``policy:`` section: strict keys, precise errors, compiled matchers.

Every problem is a :class:`~extproc.config.model.ConfigError` naming the key path (and the line,
when the caller passes the line map of the file), so a policy that loads is one that
runs: patterns compile, detectors exist, ids are unique, every action is known.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from extproc.config.reader import SectionReader, kind
from extproc.llmapi import OPERATIONS
from extproc.policy.detectors import available_entities, available_styles
from extproc.policy.matchers import GlobSet, KeywordMatcher, RegexMatcher, RegexRejected, keyword_pattern
from extproc.policy.model import ACTIONS, BUDGET_SCOPES, FAIL_MODES, MODES
from extproc.policy.rules import AttachmentRule, BudgetRule, ContentMatcher, Rule, Selector
from extproc.text.normalise import normalise as normalise_text

__all__ = [
    "BUDGET_KEYS",
    "CONTENT_KEYS",
    "MASKING_KEYS",
    "MATCH_KEYS",
    "POLICY_KEYS",
    "RULE_KEYS",
    "SELECTOR_KEYS",
    "PolicySpec",
    "parse_policy",
]

POLICY_KEYS = frozenset({
    "mode", "on_unparsable_body", "default", "default_message", "rules", "budgets", "unknown_fields", "attachments",
})
RULE_KEYS = frozenset({"id", "description", "match", "unless", "action", "message", "mode", "masking", "normalise"})
SELECTOR_KEYS = frozenset({"users", "groups", "issuers", "workloads", "providers", "models", "operations"})
MATCH_KEYS = SELECTOR_KEYS | {"content"}
CONTENT_KEYS = frozenset({"keywords", "regex", "detectors", "metadata"})
MASKING_KEYS = frozenset({"replacement", "style", "styles"})
BUDGET_KEYS = frozenset({"id", "description", "match", "unless", "per", "requests", "tokens", "window_seconds", "fail"})

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_WINDOW_SECONDS = 31 * 24 * 3600
#: Values of ``policy.unknown_fields``.
UNKNOWN_FIELDS: tuple[str, ...] = ("inspect", "refuse", "pass")
DEFAULT_BLOCK_MESSAGE = "This request is not allowed by the AI usage policy."


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


class _Reader(SectionReader):
    """The shared strict reader, plus what rules need: choices, text, ids, selector lists."""

    def choice(self, m: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...], default: str) -> str:
        v = m.get(key)
        if v is None:
            return default
        if v not in choices:
            raise self.error(f"{path}.{key}", f"must be one of {', '.join(choices)}, got {kind(v)}")
        return str(v)

    def text(self, m: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
        v = m.get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.error(f"{path}.{key}", f"must be a string, got {kind(v)}")
        return v

    def ident(self, m: Mapping[str, Any], path: str) -> str:
        v = m.get("id")
        if v is None:
            raise self.error(path, "missing required key 'id'")
        if not isinstance(v, str) or not _ID_RE.match(v):
            raise self.error(f"{path}.id", f"must be letters, digits, '.', '_' or '-' (at most 64), got {kind(v)}")
        return v

    def strings(self, m: Mapping[str, Any], key: str, path: str) -> tuple[str, ...] | None:
        p = f"{path}.{key}"
        v = m.get(key)
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise self.error(p, f"must be a list of strings, got {kind(v)}")
        if not v:
            raise self.error(p, "must not be empty; leave the key out to match everything")
        for i, item in enumerate(v):
            if not isinstance(item, str) or not item:
                raise self.error(f"{p}[{i}]", f"must be a non-empty string, got {kind(item)}")
        return tuple(v)

    def count(self, m: Mapping[str, Any], key: str, path: str, lo: int, hi: int) -> int | None:
        v = m.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(f"{path}.{key}", f"must be an integer, got {kind(v)}")
        if not lo <= v <= hi:
            raise self.error(f"{path}.{key}", f"must be between {lo} and {hi}, got {v}")
        return v




def parse_policy(
    raw: Any,
    *,
    path: str = "policy",
    file: str = "",
    lines: Mapping[str, int] | None = None,
    masking_config: Mapping[str, Any] | None = None,
) -> PolicySpec:
    r = _Reader(file, lines)
    top = r.mapping(raw, path, POLICY_KEYS)
    mode = r.choice(top, "mode", path, MODES, "enforce")
    on_unparsable = r.choice(top, "on_unparsable_body", path, ("block", "allow"), "block")
    unknown_fields = r.choice(top, "unknown_fields", path, UNKNOWN_FIELDS, "inspect")
    default = r.choice(top, "default", path, ("allow", "block"), "allow")
    default_message = r.text(top, "default_message", path, DEFAULT_BLOCK_MESSAGE) or DEFAULT_BLOCK_MESSAGE

    entities = _Entities(masking_config)
    rules = _list(r, top, "rules", path)
    parsed_rules: list[Rule] = []
    seen: dict[str, str] = {}
    for i, value in enumerate(rules):
        rp = f"{path}.rules[{i}]"
        rule = _rule(r, value, rp, i, mode, entities)
        if rule.id in seen:
            raise r.error(f"{rp}.id", f"rule id {rule.id!r} is already used by {seen[rule.id]}")
        seen[rule.id] = rp
        parsed_rules.append(rule)

    attachment_rules = tuple(
        _attachment_rule(r, value, f"{path}.attachments[{i}]", i) for i, value in
        enumerate(_list(r, top, "attachments", path))
    )

    budgets = _list(r, top, "budgets", path)
    parsed_budgets: list[BudgetRule] = []
    seen = {}
    for i, value in enumerate(budgets):
        bp = f"{path}.budgets[{i}]"
        budget = _budget(r, value, bp)
        if budget.id in seen:
            raise r.error(f"{bp}.id", f"budget id {budget.id!r} is already used by {seen[budget.id]}")
        seen[budget.id] = bp
        parsed_budgets.append(budget)

    return PolicySpec(
        mode=mode,
        on_unparsable_body=on_unparsable,
        default=default,
        default_message=default_message,
        rules=tuple(parsed_rules),
        budgets=tuple(parsed_budgets),
        unknown_fields=unknown_fields,
        attachments=attachment_rules,
    )


ATTACHMENT_KEYS = frozenset({"id", "media_types", "max_bytes", "action", "message"})
ATTACHMENT_ACTIONS: tuple[str, ...] = ("allow", "refuse", "require_approval")


def _attachment_rule(r: _Reader, value: Any, path: str, index: int) -> AttachmentRule:
    m = r.mapping(value, path, ATTACHMENT_KEYS)
    if m.get("action") is None:
        raise r.error(path, "missing required key 'action'")
    action = r.choice(m, "action", path, ATTACHMENT_ACTIONS, "allow")
    rule_id = r.ident(m, path) if m.get("id") is not None else f"attachments-{index}"
    types = r.strings(m, "media_types", path)
    return AttachmentRule(
        id=rule_id,
        media_types=GlobSet(t.lower() for t in types) if types is not None else None,
        max_bytes=r.count(m, "max_bytes", path, 0, 1 << 40),
        action=action,
        message=r.text(m, "message", path),
    )


def _list(r: _Reader, top: Mapping[str, Any], key: str, path: str) -> list[Any]:
    v = top.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise r.error(f"{path}.{key}", f"must be a list, got {kind(v)}")
    return v


class _Entities:
    """Detector names, looked up once and only if some rule uses detectors."""

    def __init__(self, masking_config: Mapping[str, Any] | None) -> None:
        self.masking_config = masking_config
        self._known: frozenset[str] | None = None
        self._loaded = False

    def known(self) -> frozenset[str] | None:
        if not self._loaded:
            self._known = available_entities(self.masking_config)
            self._loaded = True
        return self._known


def _selector(r: _Reader, m: Mapping[str, Any], path: str) -> Selector:
    def globs(key: str, *, ignore_case: bool = False) -> GlobSet | None:
        values = r.strings(m, key, path)
        return None if values is None else GlobSet(values, ignore_case=ignore_case)

    operations = r.strings(m, "operations", path)
    if operations is not None:
        for i, op in enumerate(operations):
            if op not in OPERATIONS:
                raise r.error(f"{path}.operations[{i}]", f"must be one of {', '.join(OPERATIONS)}, got {op!r}")
    return Selector(
        users=globs("users"),
        groups=globs("groups"),
        issuers=globs("issuers"),
        workloads=globs("workloads"),
        providers=globs("providers"),
        # Model names are spelled inconsistently by clients (GPT-4o, gpt-4o).
        models=globs("models", ignore_case=True),
        operations=frozenset(operations) if operations is not None else None,
    )


def _content(r: _Reader, value: Any, path: str, entities: _Entities, *, normalise: bool) -> ContentMatcher:
    m = r.mapping(value, path, CONTENT_KEYS)
    keywords = r.strings(m, "keywords", path)
    patterns = r.strings(m, "regex", path)
    detectors = r.strings(m, "detectors", path)
    metadata = r.boolean(m, "metadata", path, False)
    if keywords is None and patterns is None and detectors is None:
        raise r.error(path, "set at least one of 'keywords', 'regex' or 'detectors'")
    if keywords is not None and normalise:
        # A keyword is compared with the folded view of the text, so it is folded too.
        keywords = tuple(normalise_text(k, fold=True) for k in keywords)
    for i, k in enumerate(keywords or ()):
        try:
            keyword_pattern(k)
        except ValueError as exc:
            raise r.error(f"{path}.keywords[{i}]", str(exc)) from None
    regexes: list[RegexMatcher] = []
    for i, pattern in enumerate(patterns or ()):
        try:
            regexes.append(RegexMatcher(pattern))
        except RegexRejected as exc:
            raise r.error(f"{path}.regex[{i}]", str(exc)) from None
    if detectors is not None:
        known = entities.known()
        if known is None:
            raise r.error(f"{path}.detectors", "detectors need the extproc.masking package, which is not available")
        for i, name in enumerate(detectors):
            if name not in known:
                got = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
                hint = f" (did you mean {got[0]!r}?)" if got else ""
                raise r.error(
                    f"{path}.detectors[{i}]",
                    f"unknown detector {name!r}{hint}; known: {', '.join(sorted(known))}",
                )
    return ContentMatcher(
        keywords=KeywordMatcher(keywords) if keywords else None,
        regexes=tuple(regexes),
        detectors=frozenset(detectors or ()),
        normalise=normalise,
        metadata=metadata,
    )


def _template(r: _Reader, m: Mapping[str, Any], key: str, path: str, default: str, fields: set[str]) -> str:
    value = r.text(m, key, path, default)
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise r.error(f"{path}.{key}", f"is not a valid template: {exc}") from None
    bad = used - fields
    if bad:
        allowed = " and ".join("{" + f + "}" for f in sorted(fields))
        raise r.error(f"{path}.{key}", f"may only use {allowed}, not {{{sorted(bad)[0]}}}")
    return value


def _styles(
    r: _Reader, km: Mapping[str, Any], path: str, detectors: frozenset[str], entities: _Entities
) -> dict[str, str]:
    """Per-entity styles of a mask rule: ``style`` for all its detectors, ``styles`` per entity."""
    known = available_styles()
    out: dict[str, str] = {}
    default = km.get("style")
    if default is not None:
        if default not in known:
            raise r.error(f"{path}.style", f"must be one of {', '.join(known)}, got {kind(default)}")
        if not detectors:
            raise r.error(f"{path}.style", "styles apply to detector matches, and this rule has no detectors")
        out = dict.fromkeys(sorted(detectors), str(default))
    per = km.get("styles")
    if per is not None:
        if not isinstance(per, dict):
            raise r.error(f"{path}.styles", f"must be a mapping of ENTITY: style, got {kind(per)}")
        for entity, style in per.items():
            if entity not in detectors:
                raise r.error(f"{path}.styles.{entity}", "is not one of this rule's detectors")
            if style not in known:
                raise r.error(f"{path}.styles.{entity}", f"must be one of {', '.join(known)}, got {kind(style)}")
            out[str(entity)] = str(style)
    if "hash" in out.values() and not (entities.masking_config or {}).get("hash_key"):
        key = "styles" if per is not None and "hash" in per.values() else "style"
        raise r.error(f"{path}.{key}", "the hash style needs a key: set masking.hash_key")
    return out


def _rule(r: _Reader, value: Any, path: str, index: int, default_mode: str, entities: _Entities) -> Rule:
    m = r.mapping(value, path, RULE_KEYS)
    if value is None:
        raise r.error(path, "must be a mapping with at least 'id' and 'action'")
    rule_id = r.ident(m, path)
    if m.get("action") is None:
        raise r.error(path, "missing required key 'action'")
    action = r.choice(m, "action", path, ACTIONS, "allow")
    mode = r.choice(m, "mode", path, MODES, default_mode)
    mp = f"{path}.match"
    match = r.mapping(m.get("match"), mp, MATCH_KEYS)
    selector = _selector(r, match, mp)
    normalise = r.boolean(m, "normalise", path, True)
    if "normalise" in m and match.get("content") is None:
        raise r.error(f"{path}.normalise", "only applies to rules with match.content")
    content = (
        _content(r, match["content"], f"{mp}.content", entities, normalise=normalise)
        if match.get("content") is not None
        else None
    )
    unless = None
    if m.get("unless") is not None:
        up = f"{path}.unless"
        um = m["unless"]
        if isinstance(um, dict) and "content" in um:
            raise r.error(f"{up}.content", "'unless' takes identity and route selectors only, not content")
        unless = _selector(r, r.mapping(um, up, SELECTOR_KEYS), up)
        if unless.empty:
            raise r.error(up, "must not be empty: it would exempt every request")
    if action == "mask" and content is None:
        raise r.error(mp, "a mask rule needs 'content' matchers: they say what to mask")
    message = r.text(m, "message", path)
    if message and action in ("allow", "mask"):
        raise r.error(f"{path}.message", f"is only shown for block and require_approval, not {action}")
    replacement = "[REDACTED:{rule}]"
    styles: dict[str, str] = {}
    if m.get("masking") is not None:
        kp = f"{path}.masking"
        if action != "mask":
            raise r.error(kp, f"only applies to mask rules, this one is {action}")
        km = r.mapping(m["masking"], kp, MASKING_KEYS)
        replacement = _template(r, km, "replacement", kp, replacement, {"rule"})
        styles = _styles(r, km, kp, content.detectors if content is not None else frozenset(), entities)
    return Rule(
        id=rule_id,
        index=index,
        action=action,
        mode=mode,
        message=message,
        description=r.text(m, "description", path),
        selector=selector,
        unless=unless,
        content=content,
        replacement=replacement,
        styles=MappingProxyType(styles),
    )


def _budget(r: _Reader, value: Any, path: str) -> BudgetRule:
    m = r.mapping(value, path, BUDGET_KEYS)
    if value is None:
        raise r.error(path, "must be a mapping with at least 'id' and a limit")
    budget_id = r.ident(m, path)
    mp = f"{path}.match"
    match = m.get("match")
    if isinstance(match, dict) and "content" in match:
        raise r.error(f"{mp}.content", "budgets select by identity and route only, not content")
    selector = _selector(r, r.mapping(match, mp, SELECTOR_KEYS), mp)
    unless = None
    if m.get("unless") is not None:
        up = f"{path}.unless"
        unless = _selector(r, r.mapping(m["unless"], up, SELECTOR_KEYS), up)
    requests = r.count(m, "requests", path, 1, 10**12)
    tokens = r.count(m, "tokens", path, 1, 10**15)
    if requests is None and tokens is None:
        raise r.error(path, "set 'requests', 'tokens' or both: a budget needs a limit")
    window = r.count(m, "window_seconds", path, 1, MAX_WINDOW_SECONDS)
    return BudgetRule(
        id=budget_id,
        description=r.text(m, "description", path),
        selector=selector,
        unless=unless,
        per=r.choice(m, "per", path, BUDGET_SCOPES, "user"),
        requests=requests,
        tokens=tokens,
        window_seconds=window if window is not None else 60,
        fail=r.choice(m, "fail", path, FAIL_MODES, "closed"),
    )
