"""The ``tools:`` section, typed: rules on tool calls, conditions on their arguments, pins.

:class:`ToolsSection` declares every key and checks what one rule or condition can check on
its own; :class:`~extproc.tools.model.ToolPolicy` is compiled from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from extproc.config.types import Flag, Invalid, NonEmpty, OneOf, OptionalNames, Pattern, Section, Text, kind
from extproc.policy.matchers import RegexRejected, compile_regex
from extproc.policy.model import MODES

__all__ = [
    "ARGUMENT_OPERATORS",
    "DEFAULT_BLOCK_MESSAGE",
    "TOOL_ACTIONS",
    "ConditionSpec",
    "ToolMatchSpec",
    "ToolRuleSpec",
    "ToolsSection",
    "parse_argument_path",
]

TOOL_ACTIONS: tuple[str, ...] = ("allow", "mask", "require_approval", "block")
ARGUMENT_OPERATORS: tuple[str, ...] = ("equals", "in", "regex", "gt", "gte", "lt", "lte", "exists")
DEFAULT_BLOCK_MESSAGE = "This tool call is not allowed by the AI tool policy."

_PATH_RE = re.compile(r"[^.\[\]]+(?:\[\d+\])*(?:\.[^.\[\]]+(?:\[\d+\])*)*")
_SEGMENT_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_FINGERPRINT = r"(?:sha256:)?[0-9a-fA-F]{64}"


def parse_argument_path(path: str) -> tuple[str | int, ...]:
    """``"where.env"`` -> ``("where", "env")``; ``"ids[0]"`` -> ``("ids", 0)``. ValueError if bad."""
    if not isinstance(path, str) or not _PATH_RE.fullmatch(path):
        raise ValueError("must be a dotted path like 'where.env' or 'ids[0]' (keys cannot contain '.', '[' or ']')")
    return tuple(int(m.group(2)) if m.group(2) is not None else m.group(1) for m in _SEGMENT_RE.finditer(path))


def _is_json(v: object) -> bool:
    # YAML may produce dates and the like; equality with JSON arguments would never hold.
    if v is None or isinstance(v, str | bool | int):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list):
        return all(_is_json(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_json(x) for k, x in v.items())
    return False


def _json_value(v: object) -> object:
    if not _is_json(v):
        raise Invalid(f"must be plain JSON values, got {type(v).__name__}")
    return v


def _values(v: object) -> object:
    if not isinstance(v, list) or not v:
        raise Invalid(f"must be a non-empty list of values, got {kind(v)}")
    return v


def _bound(v: object) -> object:
    if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not math.isfinite(v)):
        raise Invalid(f"must be a number, got {kind(v)}")
    return v


def _regex(v: object) -> object:
    if not isinstance(v, str) or not v:
        raise Invalid(f"must be a non-empty string, got {kind(v)}")
    try:
        compile_regex(v)
    except RegexRejected as exc:
        raise Invalid(str(exc)) from None
    return v


def _argument_path(v: object) -> object:
    try:
        parse_argument_path(v if isinstance(v, str) else "")
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return v


JsonValue = Annotated[Any, BeforeValidator(_json_value)]
Bound = Annotated[float, BeforeValidator(_bound)]


class ConditionSpec(Section):
    """One condition on one argument; every operator given must hold."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": [op]} for op in ARGUMENT_OPERATORS]})
    #: ``equals: null`` compares with JSON null.
    keep_nulls = True

    path: Annotated[str, BeforeValidator(_argument_path)]
    equals: JsonValue = None
    one_of: Annotated[tuple[JsonValue, ...], BeforeValidator(_values)] | None = Field(default=None, alias="in")
    #: An RE2 pattern searched in the argument (and in every string inside it).
    regex: Annotated[str, BeforeValidator(_regex)] | None = None
    gt: Bound | None = None
    gte: Bound | None = None
    lt: Bound | None = None
    lte: Bound | None = None
    exists: Flag | None = None

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: object) -> object:
        if not isinstance(data, dict):
            raise Invalid(f"must be a mapping like {{path: env, equals: production}}, got {kind(data)}")
        return data

    @model_validator(mode="after")
    def _operators(self) -> ConditionSpec:
        given = self.operators
        if not given:
            raise Invalid(f"needs an operator: one of {', '.join(ARGUMENT_OPERATORS)}")
        if self.exists is False and len(given) > 1:
            raise Invalid("exists: false cannot be combined with other operators", "exists")
        return self

    @property
    def operators(self) -> set[str]:
        """The operators this condition sets (``equals: null`` is one)."""
        fields = type(self).model_fields
        return {fields[f].alias or f for f in self.model_fields_set} & set(ARGUMENT_OPERATORS)

    @property
    def has_equals(self) -> bool:
        return "equals" in self.model_fields_set


def _conditions(v: object) -> object:
    if v is not None and (not isinstance(v, list) or not v):
        raise Invalid("must be a non-empty list of conditions; leave the key out to match any arguments")
    return v


class ToolMatchSpec(Section):
    tool: OptionalNames | None = None
    #: Provider names of MCP servers (or of model APIs, for model-emitted calls).
    servers: OptionalNames | None = None
    users: OptionalNames | None = None
    groups: OptionalNames | None = None
    arguments: Annotated[tuple[ConditionSpec, ...], BeforeValidator(_conditions)] | None = None


class MaskSpec(Section):
    arguments: Flag = True
    results: Flag = True


class ToolRuleSpec(Section):
    id: Annotated[str, Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                               "must be letters, digits, '.', '_' or '-' (at most 64)")]
    description: Text = ""
    match: ToolMatchSpec = Field(default_factory=ToolMatchSpec)
    action: Annotated[str, OneOf(TOOL_ACTIONS)]
    message: Text = ""
    #: The section's ``mode`` when left out.
    mode: Annotated[str, OneOf(MODES)] | None = None
    mask: MaskSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: object) -> object:
        if data is None:
            raise Invalid("must be a mapping with at least 'id' and 'action'")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ToolRuleSpec:
        if self.message and self.action not in ("block", "require_approval"):
            raise Invalid("is shown only for block and require_approval rules", "message")
        if self.mask is not None:
            if self.action != "mask":
                raise Invalid("only mask rules take a 'mask' setting", "mask")
            if not (self.mask.arguments or self.mask.results):
                raise Invalid("masks nothing: set arguments or results to true", "mask")
        return self


def _pins(v: object) -> object:
    if v is not None and not isinstance(v, dict):
        raise Invalid(f"must be a mapping of server: {{tool: fingerprint}}, got {kind(v)}")
    for server, tools in (v or {}).items():
        if not isinstance(server, str) or not isinstance(tools, dict) or not tools:
            raise Invalid("must be a non-empty mapping of tool: fingerprint", server)
    return v


Fingerprint = Annotated[str, Pattern(_FINGERPRINT,
                                     "must be a sha256 fingerprint (64 hex digits, optionally 'sha256:')")]


class ToolsSection(Section):
    """The ``tools:`` section."""

    mode: Annotated[str, OneOf(MODES)] = "enforce"
    default: Annotated[str, OneOf(("allow", "block"))] = "allow"
    default_message: Text = DEFAULT_BLOCK_MESSAGE
    rules: tuple[ToolRuleSpec, ...] = ()
    #: server -> tool -> the sha256 fingerprint its description must keep.
    pins: Annotated[Mapping[NonEmpty, Mapping[NonEmpty, Fingerprint]], BeforeValidator(_pins)] = Field(
        default_factory=dict)
    on_pin_mismatch: Annotated[str, OneOf(("flag", "block"))] = "flag"
    #: What happens to a forbidden tool call in a model's answer: dropped, or the answer ends.
    model_calls: Annotated[str, OneOf(("remove", "error"))] = "remove"

    @model_validator(mode="after")
    def _unique_ids(self) -> ToolsSection:
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.id in seen:
                raise Invalid(f"rule id {rule.id!r} is already used by tools.rules[{seen[rule.id]}]", "rules", i, "id")
            seen[rule.id] = i
        return self
