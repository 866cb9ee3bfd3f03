"""Tool policy: which AI tool calls may run, for MCP servers and for model-emitted tool calls.

The ``tools:`` section of the configuration (``docs/tools.md``) is a list of rules matched on
the caller, the server (provider name), the tool name and conditions on the call's
arguments. :meth:`ToolPolicy.evaluate` decides one call, most restrictive wins
(block > require_approval > mask > allow), shadow-mode matches are recorded only.
:meth:`ToolPolicy.may_call` answers the argument-free question ``tools/list`` needs.

Where the calls come from is not this module's concern: the MCP adapter (``mcp``) and the
guard on a model's response (``guard``) build the :class:`ToolRequest`. Everything here is
pure and never raises on request content.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from extproc.config.types import validate_section
from extproc.masking.profile import MaskingProfile
from extproc.policy.engine import policy_version
from extproc.policy.matchers import GlobSet, compile_regex
from extproc.policy.model import SEVERITY, RuleMatch
from extproc.tools.config import (
    DEFAULT_BLOCK_MESSAGE,
    ConditionSpec,
    MaskSpec,
    ToolRuleSpec,
    ToolsSection,
    parse_argument_path,
)

__all__ = [
    "ArgumentCondition",
    "ToolDecision",
    "ToolPolicy",
    "ToolRequest",
    "ToolRule",
    "argument_digest",
    "mask_arguments",
]


_MISSING: object = object()
_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")


# ---------------------------------------------------------------------------
# values


@dataclass(frozen=True, slots=True)
class ToolRequest:
    user: str
    groups: tuple[str, ...]
    #: Provider name of the route: an ``api: mcp`` provider for MCP, the LLM provider for
    #: model-emitted calls.
    server: str
    tool: str
    #: The call's arguments; None when they could not be read (e.g. invalid JSON from a model).
    arguments: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class ToolDecision:
    #: The enforced outcome: allow | mask | require_approval | block.
    action: str
    #: ``shadow`` when a shadow-mode match would have been more restrictive than ``action``.
    mode: str
    #: The rule that decided ``action``; None for the default outcome.
    rule_id: str | None
    #: For the caller; written by the policy author, never the matched argument.
    message: str
    #: Every rule that matched, enforce and shadow, in file order.
    matches: tuple[RuleMatch, ...] = ()
    #: Mask PII in the arguments before forwarding / in the tool's results (mask rules).
    mask_arguments: bool = False
    mask_results: bool = False
    shadow_action: str | None = None
    shadow_rule_id: str | None = None
    tool: str = ""
    server: str = ""

    @property
    def refused(self) -> bool:
        return self.action == "block"


@dataclass(frozen=True, slots=True)
class ArgumentCondition:
    """One condition on one argument; every operator given must hold."""

    path: str
    segments: tuple[str | int, ...]
    equals: object = _MISSING
    one_of: tuple[object, ...] | None = None
    regex: Any = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    exists: bool | None = None

    def holds(self, arguments: Mapping[str, Any]) -> bool:
        value = _resolve(arguments, self.segments)
        if self.exists is not None and (value is not _MISSING) != self.exists:
            return False
        if value is _MISSING:
            # Only ``exists: false`` can be satisfied by an absent argument.
            return self.exists is False and self._only_exists()
        if self.equals is not _MISSING and not _json_equal(value, self.equals):
            return False
        if self.one_of is not None and not any(_json_equal(value, v) for v in self.one_of):
            return False
        if self.regex is not None and not _any_text_matches(value, self.regex):
            return False
        if any(b is not None for b in (self.gt, self.gte, self.lt, self.lte)):
            n = _number(value)
            if n is None:
                return False
            if (self.gt is not None and not n > self.gt) or (self.gte is not None and not n >= self.gte) \
                    or (self.lt is not None and not n < self.lt) or (self.lte is not None and not n <= self.lte):
                return False
        return True

    def _only_exists(self) -> bool:
        return (self.equals is _MISSING and self.one_of is None and self.regex is None
                and all(b is None for b in (self.gt, self.gte, self.lt, self.lte)))


@dataclass(frozen=True, slots=True)
class ToolRule:
    id: str
    action: str
    mode: str
    message: str = ""
    tools: GlobSet | None = None
    servers: GlobSet | None = None
    users: GlobSet | None = None
    groups: GlobSet | None = None
    arguments: tuple[ArgumentCondition, ...] = ()
    mask_arguments: bool = False
    mask_results: bool = False

    def selects(self, user: str, groups: Sequence[str], server: str, tool: str) -> bool:
        """Everything but the arguments."""
        if self.tools is not None and not self.tools.matches(tool):
            return False
        if self.servers is not None and not self.servers.matches(server):
            return False
        if self.users is not None and not self.users.matches(user):
            return False
        return self.groups is None or self.groups.matches_any(groups)

    def arguments_hold(self, arguments: Mapping[str, Any] | None) -> bool:
        if not self.arguments:
            return True
        if arguments is None:
            # Unreadable arguments: assume they satisfy rules that restrict and not rules
            # that allow, so a malformed call is never better off than a well-formed one.
            return self.action != "allow"
        return all(c.holds(arguments) for c in self.arguments)


# ---------------------------------------------------------------------------
# argument helpers


def _resolve(value: object, segments: Sequence[str | int]) -> object:
    for seg in segments:
        if isinstance(seg, int):
            if not isinstance(value, list) or seg >= len(value):
                return _MISSING
            value = value[seg]
        else:
            if not isinstance(value, Mapping) or seg not in value:
                return _MISSING
            value = value[seg]
    return value


def _json_equal(value: object, expected: object) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``; ``1`` equals ``1.0``.

    Recursion is bounded by the depth of ``expected``, which comes from the configuration.
    """
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(expected, bool) and isinstance(value, bool) and expected == value
    if isinstance(expected, (int, float)):
        return isinstance(value, (int, float)) and value == expected
    if isinstance(expected, str):
        return isinstance(value, str) and value == expected
    if expected is None:
        return value is None
    if isinstance(expected, list):
        return isinstance(value, list) and len(value) == len(expected) and all(
            _json_equal(v, e) for v, e in zip(value, expected, strict=True))
    if isinstance(expected, dict):
        return isinstance(value, Mapping) and set(value) == set(expected) and all(
            _json_equal(value[k], e) for k, e in expected.items())
    return False


def _any_text_matches(value: object, regex: Any) -> bool:
    """A string matches itself; a number its JSON text; a list or object when any key or
    value inside it matches (so wrapping a value in a list does not evade a rule).

    Iterative: arguments nested thousands deep must not exhaust the stack.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if regex.search(v) is not None:
                return True
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if regex.search(json.dumps(v)) is not None:
                return True
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, Mapping):
            stack.extend(v.keys())
            stack.extend(v.values())
    return False


def _number(value: object) -> float | int | None:
    """A number, or a string holding a JSON number (servers often coerce "5000" to 5000)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and math.isnan(value) else value
    if isinstance(value, str) and len(value) <= 400:
        text = value.strip()
        if _NUMBER_RE.fullmatch(text):
            try:
                return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
            except ValueError:  # more digits than int() accepts
                return None
    return None


def argument_digest(tool: str, arguments: Mapping[str, Any] | None) -> str:
    """``sha256:<hex>`` of canonical JSON of ``{tool, arguments}``: what an approval binds to."""
    doc = {"tool": tool, "arguments": arguments}
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    prefix = b"extproc-tool-call-v1\x00"
    return "sha256:" + hashlib.sha256(prefix + canon.encode("utf-8", "surrogatepass")).hexdigest()


def mask_arguments(arguments: Any, profile: MaskingProfile) -> tuple[Any, Counter[str]]:
    """A copy of ``arguments`` with every string value masked; keys are kept as they are.

    Iterative, so any depth the JSON parser accepted is fine.
    """
    counts: Counter[str] = Counter()

    def text(s: str) -> str:
        masked, c = profile.mask(s)
        counts.update(c)
        return masked

    if isinstance(arguments, str):
        return text(arguments), counts
    if not isinstance(arguments, (list, Mapping)):
        return arguments, counts
    root: Any = [] if isinstance(arguments, list) else {}
    # (source container, destination container)
    stack: list[tuple[Any, Any]] = [(arguments, root)]
    while stack:
        src, dst = stack.pop()
        items = enumerate(src) if isinstance(src, list) else src.items()
        for k, v in items:
            if isinstance(v, str):
                new: Any = text(v)
            elif isinstance(v, list):
                new = []
                stack.append((v, new))
            elif isinstance(v, Mapping):
                new = {}
                stack.append((v, new))
            else:
                new = v
            if isinstance(dst, list):
                dst.append(new)
            else:
                dst[k] = new
    return root, counts


# ---------------------------------------------------------------------------
# the policy


class ToolPolicy:
    """The validated ``tools:`` section."""

    __slots__ = ("default", "default_message", "mode", "on_pin_mismatch", "pins", "rules", "version")

    def __init__(
        self,
        rules: Sequence[ToolRule] = (),
        *,
        mode: str = "enforce",
        default: str = "allow",
        default_message: str = DEFAULT_BLOCK_MESSAGE,
        pins: Mapping[str, Mapping[str, str]] | None = None,
        on_pin_mismatch: Literal["flag", "block"] = "flag",
        version: str = "",
    ) -> None:
        self.rules = tuple(rules)
        self.mode = mode
        self.default = default
        self.default_message = default_message
        self.pins: Mapping[str, Mapping[str, str]] = MappingProxyType(
            {s: MappingProxyType(dict(t)) for s, t in (pins or {}).items()})
        self.on_pin_mismatch: Literal["flag", "block"] = on_pin_mismatch
        self.version = version

    @classmethod
    def empty(cls) -> ToolPolicy:
        return cls(version=policy_version(None))

    @classmethod
    def from_config(cls, raw: object, *, file: str = "", lines: Mapping[str, int] | None = None) -> ToolPolicy:
        """Validate and compile a ``tools:`` mapping; errors are located in ``file``."""
        return cls.from_section(validate_section(ToolsSection, raw, path="tools", file=file, lines=lines))

    @classmethod
    def from_section(cls, section: ToolsSection) -> ToolPolicy:
        return cls(
            [_rule(r, section.mode) for r in section.rules], mode=section.mode, default=section.default,
            default_message=section.default_message or DEFAULT_BLOCK_MESSAGE, pins=_pins(section.pins),
            on_pin_mismatch="block" if section.on_pin_mismatch == "block" else "flag",
            version=policy_version(section.model_dump(mode="json")),
        )

    @property
    def is_empty(self) -> bool:
        """True when no call could ever be refused or changed (the data path can skip work)."""
        return not self.rules and self.default == "allow" and not self.pins

    def pins_for(self, server: str) -> Mapping[str, str]:
        return self.pins.get(server, MappingProxyType({}))

    def may_call(self, user: str, groups: Sequence[str], server: str, tool: str) -> bool:
        """False when no call of ``tool`` by this caller could ever be allowed: an enforce-mode
        block rule without argument conditions selects it, or ``default: block`` and no
        enforce-mode allow rule selects it. Rules with argument conditions never hide a tool."""
        enforced = [r for r in self.rules if r.mode == "enforce" and r.selects(user, groups, server, tool)]
        if any(r.action == "block" and not r.arguments for r in enforced):
            return False
        return self.default == "allow" or any(r.action == "allow" for r in enforced)

    def evaluate(self, req: ToolRequest) -> ToolDecision:
        matches: list[RuleMatch] = []
        enforced: list[ToolRule] = []
        shadowed: list[ToolRule] = []
        for rule in self.rules:
            if not rule.selects(req.user, req.groups, req.server, req.tool):
                continue
            if not rule.arguments_hold(req.arguments):
                continue
            matches.append(RuleMatch(rule_id=rule.id, action=rule.action, mode=rule.mode))
            (enforced if rule.mode == "enforce" else shadowed).append(rule)

        # As in the prompt policy: with ``default: block`` only a matching allow rule opens
        # the door, and a more restrictive match still wins over it.
        allowed_by_default = self.default == "allow" or any(r.action == "allow" for r in enforced)
        base = SEVERITY["allow"] if allowed_by_default else SEVERITY["block"]
        top = _most_restrictive(enforced)
        decided: ToolRule | None = None
        if top is not None and SEVERITY[top.action] >= base:
            action, decided = top.action, top
        else:
            action = "allow" if allowed_by_default else "block"
        shadow = _most_restrictive(shadowed)
        shadow_wins = shadow is not None and SEVERITY[shadow.action] > SEVERITY[action]

        maskers = [r for r in enforced if r.action == "mask"] if action in ("mask", "require_approval") else []
        return ToolDecision(
            action=action,
            mode="shadow" if shadow_wins else "enforce",
            rule_id=decided.id if decided is not None else None,
            message=self._message(action, decided),
            matches=tuple(matches),
            mask_arguments=any(r.mask_arguments for r in maskers),
            mask_results=any(r.mask_results for r in maskers),
            shadow_action=shadow.action if shadow_wins and shadow is not None else None,
            shadow_rule_id=shadow.id if shadow_wins and shadow is not None else None,
            tool=req.tool,
            server=req.server,
        )

    def _message(self, action: str, rule: ToolRule | None) -> str:
        if rule is None:
            return self.default_message if action == "block" else ""
        if action == "block":
            return rule.message or f"This tool call was blocked by tool rule {rule.id!r}."
        if action == "require_approval":
            return rule.message or f"This tool call needs approval under tool rule {rule.id!r}."
        return ""


def _most_restrictive(rules: Sequence[ToolRule]) -> ToolRule | None:
    best: ToolRule | None = None
    for r in rules:  # file order, so on equal severity the earlier rule stays
        if best is None or SEVERITY[r.action] > SEVERITY[best.action]:
            best = r
    return best


# ---------------------------------------------------------------------------
# compiled from the typed section


def _globs(values: tuple[str, ...] | None) -> GlobSet | None:
    return None if values is None else GlobSet(values)


def _condition(c: ConditionSpec) -> ArgumentCondition:
    return ArgumentCondition(
        path=c.path, segments=parse_argument_path(c.path), equals=c.equals if c.has_equals else _MISSING,
        one_of=c.one_of, regex=compile_regex(c.regex) if c.regex is not None else None,
        gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte, exists=c.exists,
    )


def _rule(r: ToolRuleSpec, default_mode: str) -> ToolRule:
    mask = r.mask if r.mask is not None else MaskSpec(arguments=r.action == "mask", results=r.action == "mask")
    m = r.match
    return ToolRule(
        id=r.id, action=r.action, mode=r.mode or default_mode, message=r.message,
        tools=_globs(m.tool), servers=_globs(m.servers), users=_globs(m.users), groups=_globs(m.groups),
        arguments=tuple(_condition(c) for c in m.arguments or ()),
        mask_arguments=mask.arguments, mask_results=mask.results,
    )


def _pins(pins: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    return {server: {tool: "sha256:" + fp.lower().removeprefix("sha256:") for tool, fp in tools.items()}
            for server, tools in pins.items()}
