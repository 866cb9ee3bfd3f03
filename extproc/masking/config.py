"""The ``masking:`` section, typed: which detectors run, how matches are rendered, and how
answers are masked (``responses``). The same profile keys configure ``recording.masking``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import re2
from pydantic import Field, model_validator

from extproc.config.types import Between, Checked, Flag, Invalid, NonEmpty, OneOf, Pattern, Section
from extproc.masking.detectors import BUILTIN_ENTITIES
from extproc.masking.engine import compile_pattern
from extproc.masking.phone import known_regions
from extproc.masking.replacement import STYLES

__all__ = ["DENY_LIST_ENTITY", "CustomDetectorSpec", "MaskingSection", "ProfileSpec", "ResponsesSpec"]

#: Entity reported for deny-list hits.
DENY_LIST_ENTITY = "DENY_LIST"
_MAX_CUSTOM_MAX = 65536


class CustomDetectorSpec(Section):
    """A detector of the operator's own: an RE2 pattern reported as entity ``name``."""

    name: Annotated[str, Pattern(r"[A-Z][A-Z0-9_]*", "name must be an upper-case identifier like EMPLOYEE_ID")]
    pattern: NonEmpty
    #: No alphabet is known for an arbitrary pattern, so streaming holds back this many
    #: characters for it; keep it tight.
    max_length: Annotated[int, Between(1, _MAX_CUSTOM_MAX)] = 128

    @model_validator(mode="after")
    def _compiles(self) -> CustomDetectorSpec:
        try:
            regex = compile_pattern(self.pattern)
        except re2.error as exc:
            raise Invalid(f"RE2 cannot compile this pattern: {exc}", "pattern") from None
        if regex.match("") is not None:
            raise Invalid("pattern matches the empty string", "pattern")
        return self


def _builtin(name: object) -> str:
    if not isinstance(name, str) or name not in BUILTIN_ENTITIES:
        raise Invalid(f"unknown entity {name!r}; built-ins are {', '.join(BUILTIN_ENTITIES)}")
    return name


def _region(v: object) -> str:
    if not isinstance(v, str) or v not in known_regions():
        raise Invalid(f"unknown region {v!r}; use ISO 3166 alpha-2 codes libphonenumber knows (GB, DE, ...)")
    return v


def _style(v: object) -> str:
    if not isinstance(v, str) or v not in STYLES:
        raise Invalid(f"unknown style {v!r} (expected one of {', '.join(STYLES)})")
    return v


class ProfileSpec(Section):
    """Detectors and rendering: the profile keys of ``masking`` and ``recording.masking``."""

    #: Built-in detectors to run; all of them when left out.
    entities: tuple[Annotated[str, Checked(_builtin, {"enum": list(BUILTIN_ENTITIES)})], ...] | None = None
    styles: Mapping[str, Annotated[str, Checked(_style, {"enum": list(STYLES)})]] = Field(default_factory=dict)
    hash_key: NonEmpty | None = None
    custom: tuple[CustomDetectorSpec, ...] = ()
    deny_list: tuple[NonEmpty, ...] = ()
    allow_list: tuple[NonEmpty, ...] = ()
    #: Regions whose national phone formats are recognised (the detector's default when left out).
    phone_regions: tuple[Annotated[str, Checked(_region, {"type": "string", "pattern": "^[A-Z]{2,3}$"})], ...] | None \
        = None

    @property
    def known_entities(self) -> frozenset[str]:
        """Every entity name a style or a policy rule may refer to."""
        return frozenset({*BUILTIN_ENTITIES, *(c.name for c in self.custom), DENY_LIST_ENTITY})

    @model_validator(mode="after")
    def _consistent(self) -> ProfileSpec:
        known = self.known_entities
        for entity in self.styles:
            if entity not in known:
                raise Invalid(f"unknown entity {entity!r}", "styles", entity)
        if "hash" in self.styles.values() and not self.hash_key:
            raise Invalid("required when any style is 'hash'", "hash_key")
        return self


class ResponsesSpec(Section):
    """Masking of model answers (streamed and whole)."""

    enabled: Flag = True
    #: Only these providers' answers are masked; all when left out.
    providers: tuple[NonEmpty, ...] | None = None
    exempt_groups: tuple[NonEmpty, ...] = ()
    max_buffer_bytes: Annotated[int, Between(1024, 64 << 20)] = 1 << 20
    on_unmaskable: Annotated[str, OneOf(("block", "allow"))] = "block"
    #: A signed Anthropic thinking block that needed masking: ``mask`` (signature dropped)
    #: or ``refuse`` (the answer is ended with an error).
    signed_thinking: Annotated[str, OneOf(("mask", "refuse"))] = "mask"


class MaskingSection(ProfileSpec):
    responses: ResponsesSpec = Field(default_factory=ResponsesSpec)
