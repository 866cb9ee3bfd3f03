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
from types import MappingProxyType
from typing import TYPE_CHECKING

from extproc.config.types import validate_section
from extproc.llmapi import Extraction, JsonPath, extract, rewrite
from extproc.policy.detectors import DetectorScanner
from extproc.policy.loader import PolicySection, PolicySpec, compile_policy, parse_policy
from extproc.policy.matchers import Hit
from extproc.policy.model import SEVERITY, BudgetCharge, Decision, PolicyRequest, RuleMatch
from extproc.policy.rules import BudgetRule, Rule

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

        scans = _Scans(ext, self._scanner)
        matches: list[RuleMatch] = []
        enforced: list[Rule] = []
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
            body, counts = _mask(ext, scans, [r for r in enforced if r.action == "mask"])

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
        )

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


class _Scans:
    """Detector findings per text, computed at most once per request and only if needed."""

    __slots__ = ("_detected", "_scanner", "texts")

    def __init__(self, ext: Extraction, scanner: DetectorScanner | None) -> None:
        self.texts = ext.texts
        self._scanner = scanner
        self._detected: list[list[tuple[int, int, str]] | None] = [None] * len(ext.texts)

    def detected(self, i: int) -> list[tuple[int, int, str]]:
        got = self._detected[i]
        if got is None:
            got = self._scanner.find(self.texts[i].text) if self._scanner is not None else []
            self._detected[i] = got
        return got

    def render(self, text: str, start: int, end: int, entity: str, styles: Mapping[str, str]) -> str:
        if self._scanner is None:
            return f"[{entity}]"
        return self._scanner.render(text, start, end, entity, styles)

    def any_match(self, rule: Rule) -> bool:
        content = rule.content
        assert content is not None
        for i, t in enumerate(self.texts):
            if content.matches(t.text, self.detected(i) if content.detectors else ()):
                return True
        return False


def _mask(ext: Extraction, scans: _Scans, rules: Sequence[Rule]) -> tuple[bytes | None, Mapping[str, int]]:
    counts: Counter[str] = Counter()
    replacements: dict[JsonPath, str] = {}
    for i, t in enumerate(scans.texts):
        hits: list[Hit] = []
        for rule in rules:
            assert rule.content is not None
            detected = scans.detected(i) if rule.content.detectors else ()
            hits.extend(rule.content.hits(t.text, detected, rule, scans.render))
        if hits:
            new_text, kept = apply_hits(t.text, hits)
            counts.update(h.label for h in kept)
            replacements[t.path] = new_text
    if not replacements:
        return None, MappingProxyType({})
    return rewrite(ext.document, replacements), MappingProxyType(dict(sorted(counts.items())))


def apply_hits(text: str, hits: Sequence[Hit]) -> tuple[str, list[Hit]]:
    """Replace every hit; overlapping hits merge into the one that starts first (longest on a tie)."""
    merged: list[tuple[int, int, Hit]] = []
    for h in sorted(hits, key=lambda h: (h.start, -h.end)):
        if merged and h.start < merged[-1][1]:
            start, end, first = merged[-1]
            merged[-1] = (start, max(end, h.end), first)
        else:
            merged.append((h.start, h.end, h))
    parts: list[str] = []
    pos = 0
    for start, end, h in merged:
        parts.append(text[pos:start])
        parts.append(h.replacement)
        pos = end
    parts.append(text[pos:])
    return "".join(parts), [h for _, _, h in merged]
