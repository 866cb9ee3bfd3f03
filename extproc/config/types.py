"""The vocabulary every configuration section is declared in (pydantic v2).

A section is a frozen :class:`Section`: unknown keys are refused with a "did you mean" hint,
and a key's type, range or pattern is declared on the field, so adding a key is one line::

    hold_seconds: Annotated[int, Between(1, 3600)] = 120

Every validation failure becomes one :class:`ConfigError` naming the file, the line and the
key path (``providers[1].base_url``); :func:`validate_section` does the translation. A check
that needs several keys raises :class:`Invalid` from a validator, optionally naming a key
below the object it validates.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, WithJsonSchema
from pydantic_core import CoreSchema, core_schema

from extproc.errors import ConfigError, located_error

__all__ = [
    "Between",
    "Checked",
    "ConfigError",
    "EnvText",
    "Flag",
    "Invalid",
    "Names",
    "NonEmpty",
    "NumberBetween",
    "OneOf",
    "OptionalNames",
    "Pattern",
    "Section",
    "Text",
    "expand_env",
    "kind",
    "located_error",
    "validate_section",
]


class Invalid(ValueError):
    """Raised by a validator: ``message`` about the key ``at`` below the object validated
    (``("rules", 2, "id")``), or about the object itself when ``at`` is empty."""

    def __init__(self, message: str, *at: str | int) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


def kind(v: object) -> str:
    """How a wrong value is named in an error message."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list | tuple):
        return "a list"
    if isinstance(v, str):
        return repr(v)
    return f"{type(v).__name__} {v!r}"


# ---------------------------------------------------------------------------
# ${VAR} expansion

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` and ``${VAR:-default}``; an unset variable without a default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise Invalid(f"environment variable {name} is not set and has no default")

    return _ENV_RE.sub(sub, value)


def _env(info: ValidationInfo) -> Mapping[str, str] | None:
    ctx = info.context
    return ctx.get("env") if isinstance(ctx, Mapping) else None


# ---------------------------------------------------------------------------
# scalar types with the project's messages and their JSON Schema


@dataclass(frozen=True, slots=True)
class Between:
    """An integer in ``[lo, hi]``. ``env=True``: a ``${VAR}`` string is expanded first."""

    lo: int
    hi: int
    env: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        plain: JsonSchemaValue = {"type": "integer", "minimum": self.lo, "maximum": self.hi}
        if self.env:
            return {"anyOf": [plain, {"type": "string", "pattern": r"\$\{"}]}
        return plain

    def check(self, v: object, info: ValidationInfo) -> int:
        if self.env and isinstance(v, str):
            env = _env(info)
            try:
                v = int(expand_env(v, env if env is not None else {}))
            except (ValueError, Invalid):
                raise Invalid(f"must be an integer, got {kind(v)}") from None
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid(f"must be an integer, got {kind(v)}")
        if not self.lo <= v <= self.hi:
            raise Invalid(f"must be between {self.lo} and {self.hi}, got {v}")
        return v


@dataclass(frozen=True, slots=True)
class NumberBetween:
    """A finite number (integer or not) in ``[lo, hi]``, read as a float."""

    lo: float
    hi: float

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "number", "minimum": self.lo, "maximum": self.hi}

    def check(self, v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise Invalid(f"must be a number, got {kind(v)}")
        if not self.lo <= v <= self.hi:
            raise Invalid(f"must be between {self.lo:g} and {self.hi:g}, got {v}")
        return float(v)


@dataclass(frozen=True, slots=True)
class Pattern:
    """A string matching ``regex`` in full; ``message`` says what is expected."""

    regex: str
    message: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        compiled = re.compile(self.regex)

        def check(v: object) -> str:
            if not isinstance(v, str) or not compiled.fullmatch(v):
                raise Invalid(f"{self.message}, got {kind(v)}")
            return v

        return core_schema.no_info_plain_validator_function(check)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "pattern": f"^(?:{self.regex})$"}


@dataclass(frozen=True, slots=True)
class OneOf:
    """One of a fixed set of strings (kept in the code that gives them meaning)."""

    choices: tuple[str, ...]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        allowed = frozenset(self.choices)

        def check(v: object) -> str:
            if not isinstance(v, str) or v not in allowed:
                raise Invalid(f"must be one of {', '.join(self.choices)}, got {kind(v)}")
            return v

        return core_schema.no_info_plain_validator_function(check)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "enum": list(self.choices)}


def _text(v: object) -> str:
    if not isinstance(v, str):
        raise Invalid(f"must be a string, got {kind(v)}")
    return v


def _non_empty(v: object) -> str:
    if not isinstance(v, str) or not v:
        raise Invalid(f"must be a non-empty string, got {kind(v)}")
    return v


def _env_text(v: object, info: ValidationInfo) -> str:
    # Numbers are taken as text here (a port-like value in a string field is harmless).
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise Invalid(f"must be a string, got {kind(v)}")
    env = _env(info)
    return expand_env(str(v), env if env is not None else {})


class Checked:
    """A string type validated by ``fn`` (messages of the project's own)."""

    def __init__(self, fn: Any, schema: JsonSchemaValue, *, info: bool = False) -> None:
        self.fn = fn
        self.schema = schema
        self.info = info

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        if self.info:
            return core_schema.with_info_plain_validator_function(self.fn)
        return core_schema.no_info_plain_validator_function(self.fn)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.schema)


#: Any string (empty allowed), no coercion from numbers.
Text = Annotated[str, Checked(_text, {"type": "string"})]
#: A string of at least one character.
NonEmpty = Annotated[str, Checked(_non_empty, {"type": "string", "minLength": 1})]
#: A string in which ``${VAR}`` / ``${VAR:-default}`` are expanded from the environment.
EnvText = Annotated[str, Checked(_env_text, {"type": "string"}, info=True)]


def _one_or_many(v: object) -> object:
    # ``users: alice`` is shorthand for ``users: [alice]``.
    if isinstance(v, str):
        return [v]
    if v is not None and not isinstance(v, list | tuple):
        raise Invalid(f"must be a list of strings, got {kind(v)}")
    return v


def _not_empty_list(v: object) -> object:
    if isinstance(v, list | tuple) and not v:
        raise Invalid("must not be empty; leave the key out to match everything")
    return v


_NAMES_SCHEMA = WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1},
                                           {"type": "array", "items": {"type": "string", "minLength": 1}}]})
_SOME_NAMES_SCHEMA = WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1},
                                                {"type": "array", "items": {"type": "string", "minLength": 1},
                                                 "minItems": 1}]})
#: A list of non-empty strings; a single string stands for a list of one.
Names = Annotated[tuple[NonEmpty, ...], BeforeValidator(_one_or_many), _NAMES_SCHEMA]
#: Like ``Names`` but an empty list is refused (leaving the key out means "everything").
OptionalNames = Annotated[tuple[NonEmpty, ...], BeforeValidator(_not_empty_list), BeforeValidator(_one_or_many),
                          _SOME_NAMES_SCHEMA]
#: true or false, nothing else ("yes", 1).
Flag = Annotated[bool, Strict()]


# ---------------------------------------------------------------------------
# the base of every section


def _keys(cls: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in cls.model_fields.items()}


class Section(BaseModel):
    """A frozen mapping of known keys. ``null`` reads as an empty mapping, and a key whose
    value is ``null`` as a key left out (unless ``keep_nulls``: null is then a value)."""

    keep_nulls: ClassVar[bool] = False

    # defer_build: a section's validator is built when it is first used, so commands that
    # never read a configuration (approvals, sessions, token) do not pay for building them.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False, validate_default=False,
                              arbitrary_types_allowed=False, hide_input_in_errors=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: object) -> object:
        if data is None:
            return {}
        if isinstance(data, BaseModel):
            return data
        if not isinstance(data, dict):
            raise Invalid(f"must be a mapping, got {kind(data)}")
        allowed = _keys(cls)
        for key in data:
            if not isinstance(key, str):
                raise Invalid(f"keys must be strings, got {key!r}")
            if key not in allowed:
                got = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
                hint = f" (did you mean {got[0]!r}?)" if got else ""
                raise Invalid(f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}", key)
        if cls.keep_nulls:
            return data
        # ``key:`` with no value means "not set": the default applies (a required key is missing).
        return {k: v for k, v in data.items() if v is not None}


# ---------------------------------------------------------------------------
# validation with located errors

S = TypeVar("S", bound=BaseModel)

_SIMPLE = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "frozen_set_type": "must be a list",
    "set_type": "must be a list",
}


def key_path(prefix: str, loc: Sequence[str | int]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def _message(err: Mapping[str, Any]) -> tuple[tuple[str | int, ...], str]:
    """(extra key path below the error's location, message)."""
    typ = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if typ in ("value_error", "assertion_error"):
        exc = ctx.get("error")
        if isinstance(exc, Invalid):
            return exc.at, exc.message
        return (), str(exc) if exc is not None else err["msg"]
    if typ == "missing":
        return (), "missing required key"
    if typ == "extra_forbidden":
        return (), "unknown key"
    if typ in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return (), f"must be one of {', '.join(choices)}, got {kind(value)}"
    if typ in _SIMPLE:
        return (), f"{_SIMPLE[typ]}, got {kind(value)}"
    return (), str(err["msg"])


def translate(exc: ValidationError, *, prefix: str, file: str, lines: Mapping[str, int] | None) -> ConfigError:
    """The first error of ``exc`` as a located ``ConfigError``."""
    err = exc.errors(include_url=False, include_context=True, include_input=True)[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and (p == "[key]" or p.startswith("function-")))]
    at, message = _message(err)
    if err["type"] == "missing":
        message = f"missing required key {loc[-1]!r}"
        loc = loc[:-1]
    return located_error(message, path=key_path(prefix, [*loc, *at]), file=file, lines=lines)


def validate_section(
    cls: type[S],
    data: object,
    *,
    path: str,
    file: str = "",
    lines: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    context: Mapping[str, object] | None = None,
) -> S:
    """``data`` (a YAML value) as ``cls``, or a ``ConfigError`` located in ``file``."""
    ctx: dict[str, object] = {"env": env if env is not None else {}, **(context or {})}
    try:
        return cls.model_validate(data, context=ctx)
    except ValidationError as exc:
        raise translate(exc, prefix=path, file=file, lines=lines) from None

