"""Evaluating a policy on one request: which rules match, what is enforced, what is rewritten.

Conflict resolution (docs/policy.md explains the reasons):

* Every rule is evaluated; all matches are reported, enforce and shadow alike.
* Among enforce-mode matches the most restrictive action wins,
  ``block > require_approval > mask > allow``; equal actions go to the earlier rule.
* ``default`` (allow unless set to block) is the outcome when no enforce-mode rule
  matched; with ``default: block`` only a matching ``allow`` rule lets a request through,
  and mask rules then add masking to it.
* Shadow-mode matches never change the outcome; when one would have been more
  restrictive the decision says so (``mode="shadow"``, ``shadow_action``).
* All enforce-mode mask rules that matched are applied together.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from extproc.config.types import validate_section
from extproc.llmapi import Extraction, JsonPath, TextRef, extract, rewrite
from extproc.policy.detectors import DetectorScanner
from extproc.policy.loader import PolicySection, PolicySpec, compile_policy, parse_policy
from extproc.policy.matchers import Hit
from extproc.policy.model import SEVERITY, BudgetCharge, Decision, PolicyRequest, RuleMatch
from extproc.policy.rules import BudgetRule, Rule, Selector
from extproc.text.normalise import View, view

if TYPE_CHECKING:
    from extproc.masking.config import ProfileSpec

__all__ = ["Policy"]

_log = logging.getLogger(__name__)

_BLOCK = SEVERITY["block"]


class Policy:
    """A loaded, compiled policy. Immutable and safe to share between threads."""

    __slots__ = ("_scanner", "_spec", "version")

    def __init__(self, spec: PolicySpec, *, version: str, masking: ProfileSpec | None = None) -> None:
        self._spec = spec
        self.version = version
        entities = frozenset(e for r in spec.rules if r.content is not None for e in r.content.detectors)
        styles = [r.styles for r in spec.rules if r.styles]
        self._scanner = DetectorScanner(entities, masking, styles) if entities else None

    @classmethod
    def from_config(
        cls,
        raw: object,
        *,
        path: str = "policy",
        file: str = "",
        lines: Mapping[str, int] | None = None,
        masking_config: ProfileSpec | Mapping[str, object] | None = None,
    ) -> Policy:
        """Validate and compile a ``policy:`` mapping (None means no section: no rules).

        ``masking_config`` is the top-level ``masking:`` section (typed, or a mapping);
        detectors then honour its custom entities and allow/deny lists.
        """
        masking: ProfileSpec | None
        if masking_config is None or not isinstance(masking_config, Mapping):
            masking = masking_config
        else:
            from extproc.masking.config import ProfileSpec

            masking = validate_section(ProfileSpec, masking_config, path="masking", file=file, lines=lines)
        if raw is None:
            return cls(compile_policy(PolicySection()), version=policy_version(None), masking=masking)
        return cls.from_section(parse_policy(raw, path=path, file=file, lines=lines, masking=masking), masking)

    @classmethod
    def from_section(cls, section: PolicySection, masking: ProfileSpec | None = None) -> Policy:
        """Compile a validated section (checked against ``masking`` already)."""
        return cls(compile_policy(section), version=policy_version(section.model_dump(mode="json")),
                   masking=masking)

    @classmethod
    def empty(cls) -> Policy:
        """Allow everything, no budgets: what runs when no policy is configured."""
        spec = PolicySpec(
            mode="enforce",
            on_unparsable_body="allow",
            default="allow",
            default_message="",
            rules=(),
            budgets=(),
        )
        return cls(spec, version=policy_version(None))

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._spec.rules

    @property
    def budgets(self) -> tuple[BudgetRule, ...]:
        return self._spec.budgets

    @property
    def spec(self) -> PolicySpec:
        return self._spec

    def evaluate(self, req: PolicyRequest) -> Decision:
        """The decision for ``req``. Never raises: an internal failure blocks (500)."""
        try:
            return self._evaluate(req)
        except Exception:  # an engine bug must not turn into a pass, nor crash the stream
            _log.exception("policy evaluation failed; blocking the request")
            return Decision(
                action="block",
                mode="enforce",
                rule_id=None,
                message="The AI usage policy could not be evaluated for this request.",
                status=500,
                error="policy evaluation failed",
                policy_version=self.version,
            )

    def _evaluate(self, req: PolicyRequest) -> Decision:
        ext = extract(req.api, req.method, req.path, req.body)
        spec = self._spec
        if ext.error is not None and spec.on_unparsable_body == "block":
            return Decision(
                action="block",
                mode="enforce",
                rule_id=None,
                message=ext.error,
                status=400,
                operation=ext.operation,
                model=ext.model,
                error=ext.error,
                policy_version=self.version,
            )

        unknown = [t for t in ext.texts if t.kind == "unknown"]
        if unknown and spec.unknown_fields == "refuse":
            where = ".".join(str(step) for step in unknown[0].path)[:120]
            message = f"request field {where!r} is not one the gateway knows how to inspect (policy.unknown_fields)"
            return Decision(
                action="block",
                mode="enforce",
                rule_id=None,
                message=message,
                status=400,
                operation=ext.operation,
                model=ext.model,
                error=message,
                policy_version=self.version,
            )
        if unknown and spec.unknown_fields == "pass":
            ext = replace(ext, texts=tuple(t for t in ext.texts if t.kind != "unknown"))
        held: list[Rule] = []
        refusal = self._attachments(ext, held)
        if refusal is not None:
            return refusal
        scans = _Scans(ext, self._scanner)
        matches: list[RuleMatch] = [RuleMatch(rule_id=r.id, action=r.action, mode=r.mode) for r in held]
        enforced: list[Rule] = list(held)
        shadowed: list[Rule] = []
        for rule in spec.rules:
            if not rule.applies(req, ext.operation, ext.model):
                continue
            if rule.content is not None and not scans.any_match(rule):
                continue
            matches.append(RuleMatch(rule_id=rule.id, action=rule.action, mode=rule.mode))
            (enforced if rule.mode == "enforce" else shadowed).append(rule)

        allowed_by_default = spec.default == "allow" or any(r.action == "allow" for r in enforced)
        base = SEVERITY["allow"] if allowed_by_default else _BLOCK
        top = _most_restrictive(enforced)
        action: str
        rule_id: str | None
        if top is not None and SEVERITY[top.action] >= base:
            action, rule_id = top.action, top.id
        else:
            action, rule_id = ("allow", None) if allowed_by_default else ("block", None)

        shadow = _most_restrictive(shadowed)
        shadow_wins = shadow is not None and SEVERITY[shadow.action] > SEVERITY[action]

        body: bytes | None = None
        counts: Mapping[str, int] = MappingProxyType({})
        if action in ("mask", "require_approval"):
            try:
                body, counts = _mask(ext, scans, [r for r in enforced if r.action == "mask"])
            except _Unrewritable as exc:
                message = (f"policy rule {exc.rule_id!r} would mask text inside a {exc.media_type} attachment, "
                           "which cannot be rewritten; remove it from the attachment or send it as text")
                return Decision(action="block", mode="enforce", rule_id=exc.rule_id, message=message, status=403,
                                matches=tuple(matches), operation=ext.operation, model=ext.model,
                                error="attachment cannot be masked", policy_version=self.version)

        charges: tuple[BudgetCharge, ...] = ()
        if action != "block":
            charges = self._charges(req, ext)

        return Decision(
            action=action,
            mode="shadow" if shadow_wins else "enforce",
            rule_id=rule_id,
            message=self._message(action, top if rule_id is not None else None),
            status=403 if action in ("block", "require_approval") else 200,
            matches=tuple(matches),
            body=body,
            operation=ext.operation,
            model=ext.model,
            stream=ext.stream,
            mask_counts=counts,
            prompt_tokens=ext.prompt_tokens,
            budgets=charges,
            shadow_action=shadow.action if shadow_wins and shadow is not None else None,
            shadow_rule_id=shadow.id if shadow_wins and shadow is not None else None,
            error=ext.error,
            max_output_tokens=ext.max_output_tokens,
            policy_version=self.version,
            opaque=ext.opaque,
        )

    def _attachments(self, ext: Extraction, held: list[Rule]) -> Decision | None:
        """Attachment rules: a refusal decision, or approval holds appended to ``held``."""
        spec = self._spec
        content_rules = any(r.content is not None for r in spec.rules)
        if not ext.attachments or not (content_rules or spec.attachments):
            return None
        for a in ext.attachments:
            if a.error is not None:
                return self._refuse(ext, None, a.error, 400)
            rule = next((r for r in spec.attachments if r.matches(a.media_type, a.size)), None)
            if rule is not None:
                action, rule_id, message = rule.action, rule.id, rule.message
            elif a.category in ("image", "audio") or a.text is not None or not content_rules:
                continue
            else:
                # A document the gateway cannot read would carry text past every content rule.
                action, rule_id = "refuse", "attachments-default"
                message = (f"a {a.media_type} attachment cannot be inspected by the gateway; "
                           "send text, markdown, CSV, JSON, XML, HTML or PDF")
            if action == "refuse":
                return self._refuse(ext, rule_id, message or f"{a.media_type} attachments are not allowed "
                                    f"(policy attachment rule {rule_id!r})", 403)
            if action == "require_approval" and all(h.id != rule_id for h in held):
                held.append(Rule(id=rule_id, index=-1, action="require_approval", mode="enforce",
                                 message=message, description="", selector=Selector(), unless=None, content=None))
        return None

    def _refuse(self, ext: Extraction, rule_id: str | None, message: str, status: int) -> Decision:
        return Decision(action="block", mode="enforce", rule_id=rule_id, message=message, status=status,
                        operation=ext.operation, model=ext.model, error=message if status == 400 else None,
                        policy_version=self.version)

    def _message(self, action: str, rule: Rule | None) -> str:
        if rule is None:
            return self._spec.default_message if action == "block" else ""
        if action == "block":
            return rule.message or f"This request was blocked by policy rule {rule.id!r}."
        if action == "require_approval":
            return rule.message or f"This request needs approval under policy rule {rule.id!r}."
        return ""

    def _charges(self, req: PolicyRequest, ext: Extraction) -> tuple[BudgetCharge, ...]:
        out: dict[str, BudgetCharge] = {}
        for budget in self._spec.budgets:
            for charge in budget.charges(req, ext.operation, ext.model):
                out.setdefault(charge.key, charge)
        return tuple(out.values())


def policy_version(raw: object) -> str:
    """A short digest of the canonical policy section: equal policies, equal versions."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _most_restrictive(rules: Sequence[Rule]) -> Rule | None:
    best: Rule | None = None
    for r in rules:  # file order, so on equal severity the earlier rule stays
        if best is None or SEVERITY[r.action] > SEVERITY[best.action]:
            best = r
    return best


class _Unit:
    """One text as the model reads it: the parts of one message's content, joined.

    A phrase split over two content parts (``"project blue"``, ``"bird"``) is one phrase to
    the model, so it is matched joined, and a value split over parts is masked in every
    part it touches.
    """

    __slots__ = ("_chars", "_views", "bounds", "detected", "metadata", "refs", "text")

    def __init__(self, refs: list[TextRef]) -> None:
        self.refs = refs
        #: Provider-stored metadata, not prompt text (block rules look only when asked).
        self.metadata = refs[0].kind == "metadata"
        self.text = "".join(r.text for r in refs)
        bounds = [0]
        for r in refs:
            bounds.append(bounds[-1] + len(r.text))
        #: Where each part starts in ``text`` (and, last, where the unit ends).
        self.bounds = bounds
        self._views: dict[tuple[bool, bool], View] = {}
        self._chars: set[str] | None = None
        #: Detector findings, keyed by "normalised": computed at most once each.
        self.detected: dict[bool, list[tuple[int, int, str]]] = {}

    def view(self, normalised: bool, fold: bool) -> View:
        key = (normalised, fold)
        got = self._views.get(key)
        if got is None:
            if not normalised:
                got = View(self.text, self.text)
            elif self.text.isascii():
                got = view(self.text, fold=fold)
            else:
                if self._chars is None:
                    self._chars = set(self.text)  # shared by both views
                got = view(self.text, fold=fold, chars=self._chars)
            self._views[key] = got
        return got


def _units(texts: Sequence[TextRef]) -> list[_Unit]:
    groups: list[list[TextRef]] = []
    last: JsonPath | None = None
    for ref in texts:
        group = _group(ref.path) if ref.kind != "metadata" else None
        if group is not None and group == last:
            groups[-1].append(ref)
        else:
            groups.append([ref])
        last = group
    return [_Unit(refs) for refs in groups]


def _group(path: JsonPath) -> JsonPath | None:
    """The content a text is a part of: ``(..., "content", j, "text")`` and ``(..., "content", j)``."""
    if len(path) >= 3 and path[-1] == "text" and isinstance(path[-2], int):
        return path[:-2]
    if len(path) >= 2 and isinstance(path[-1], int) and path[-2] in ("content", "system"):
        return path[:-1]
    return None


class _Scans:
    """Views and detector findings per unit, computed at most once per request and only if needed."""

    __slots__ = ("_scanner", "units")

    def __init__(self, ext: Extraction, scanner: DetectorScanner | None) -> None:
        self.units = _units(ext.texts)
        self._scanner = scanner

    def detected(self, unit: _Unit, normalised: bool) -> list[tuple[int, int, str]]:
        got = unit.detected.get(normalised)
        if got is None:
            text = unit.view(normalised, False).text
            got = self._scanner.find(text) if self._scanner is not None else []
            unit.detected[normalised] = got
        return got

    def render(self, text: str, start: int, end: int, entity: str, styles: Mapping[str, str]) -> str:
        if self._scanner is None:
            return f"[{entity}]"
        return self._scanner.render(text, start, end, entity, styles)

    def any_match(self, rule: Rule) -> bool:
        content = rule.content
        assert content is not None
        n = content.normalise
        for unit in self.units:
            if unit.metadata and not content.metadata and rule.action != "mask":
                continue
            folded = unit.view(n, True).text if content.keywords is not None else ""
            detected = self.detected(unit, n) if content.detectors else ()
            if content.matches(folded, unit.view(n, False).text, detected):
                return True
        return False


class _Unrewritable(Exception):
    def __init__(self, rule_id: str, media_type: str) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id
        self.media_type = media_type


def _mask(ext: Extraction, scans: _Scans, rules: Sequence[Rule]) -> tuple[bytes | None, Mapping[str, int]]:
    counts: Counter[str] = Counter()
    replacements: dict[JsonPath, str] = {}
    for unit in scans.units:
        hits: list[Hit] = []
        for rule in rules:
            content = rule.content
            assert content is not None
            n = content.normalise
            detected = scans.detected(unit, n) if content.detectors else ()
            hits.extend(content.hits(unit.view(n, True), unit.view(n, False), detected, rule, scans.render))
        if not hits:
            continue
        kept = merge_hits(hits)
        counts.update(h.label for _, _, h in kept)
        for k, ref in enumerate(unit.refs):
            lo, hi = unit.bounds[k], unit.bounds[k + 1]
            # Each part gets the replacement for the piece of a match it holds.
            local = [Hit(max(s, lo) - lo, min(e, hi) - lo, h.label, h.replacement) for s, e, h in kept
                     if s < hi and e > lo]
            if local:
                if not ref.rewritable:
                    label = local[0].label
                    rule_id = label[5:] if label.startswith("rule:") else next(
                        (r.id for r in rules if r.content is not None and label in r.content.detectors), label)
                    media = next((a.media_type for a in ext.attachments if a.path == ref.path), "binary")
                    raise _Unrewritable(rule_id, media)
                new_text = apply_hits(ref.text, local)[0]
                replacements[ref.path] = ref.encode(new_text) if ref.encode is not None else new_text
    if not replacements:
        return None, MappingProxyType({})
    return rewrite(ext.document, replacements), MappingProxyType(dict(sorted(counts.items())))


def merge_hits(hits: Sequence[Hit]) -> list[tuple[int, int, Hit]]:
    """Overlapping hits merged into the one that starts first (longest on a tie)."""
    merged: list[tuple[int, int, Hit]] = []
    for h in sorted(hits, key=lambda h: (h.start, -h.end)):
        if merged and h.start < merged[-1][1]:
            start, end, first = merged[-1]
            merged[-1] = (start, max(end, h.end), first)
        else:
            merged.append((h.start, h.end, h))
    return merged


def apply_hits(text: str, hits: Sequence[Hit]) -> tuple[str, list[Hit]]:
    """Replace every hit; overlapping hits merge into the one that starts first (longest on a tie)."""
    merged = merge_hits(hits)
    parts: list[str] = []
    pos = 0
    for start, end, h in merged:
        parts.append(text[pos:start])
        parts.append(h.replacement)
        pos = end
    parts.append(text[pos:])
    return "".join(parts), [h for _, _, h in merged]
