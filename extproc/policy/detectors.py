"""The bridge to :mod:`extproc.masking`: which entities exist, where they occur, how they render.

One profile holding every entity any rule names scans each text once; rules then pick
the spans of their own entities, so ten rules on ``EMAIL`` cost one scan, not ten.
The top-level ``masking:`` section contributes custom detectors, allow/deny lists, the
default styles and the hash key, so a value is detected and rendered the same way in a
prompt as in a streamed answer.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from extproc.masking.config import ProfileSpec

__all__ = ["DetectorScanner", "available_entities", "available_styles"]


def _masking() -> Any:
    # Imported lazily: policies without detectors must not depend on the masking package.
    return importlib.import_module("extproc.masking")


def available_entities() -> frozenset[str] | None:
    """Built-in entity names; None when the masking package is not available."""
    try:
        mod = _masking()
    except ImportError:
        return None
    return frozenset(str(e) for e in getattr(mod, "BUILTIN_ENTITIES", ()))


def available_styles() -> tuple[str, ...]:
    try:
        return tuple(_masking().STYLES)
    except (ImportError, AttributeError):
        return ("placeholder",)


class DetectorScanner:
    """Finds ``(start, end, entity)`` spans of the given entities and renders replacements."""

    __slots__ = ("_base", "_profiles", "_span", "_spec", "entities")

    def __init__(
        self,
        entities: Iterable[str],
        masking: ProfileSpec | None = None,
        style_sets: Iterable[Mapping[str, str]] = (),
    ) -> None:
        mod = _masking()
        self.entities = frozenset(entities)
        base = masking if masking is not None else importlib.import_module("extproc.masking.config").ProfileSpec()
        # Which entities to look for is the policy's choice; custom detectors and the
        # deny list are kept only when a rule asks for them, so they cost nothing otherwise.
        self._spec: ProfileSpec = base.model_copy(update={
            "entities": tuple(e for e in mod.BUILTIN_ENTITIES if e in self.entities),
            "custom": tuple(c for c in base.custom if c.name in self.entities),
            "deny_list": base.deny_list if mod.DENY_LIST_ENTITY in self.entities else (),
            "styles": {k: v for k, v in base.styles.items() if k in self.entities},
        })
        self._span = mod.Span
        self._base = mod.MaskingProfile.from_spec(self._spec)
        # Built now, so a bad style (hash without a hash key) fails at load, not per request.
        self._profiles: dict[frozenset[tuple[str, str]], Any] = {}
        for styles in style_sets:
            self._profile_for(styles)

    def _profile_for(self, styles: Mapping[str, str]) -> Any:
        key = frozenset(styles.items())
        got = self._profiles.get(key)
        if got is None:
            spec = self._spec.model_copy(update={"styles": {**self._spec.styles, **styles}})
            got = _masking().MaskingProfile.from_spec(spec)
            self._profiles[key] = got
        return got

    def find(self, text: str) -> list[tuple[int, int, str]]:
        return [(s.start, s.end, str(s.entity)) for s in self._base.find(text) if s.end > s.start]

    def render(self, text: str, start: int, end: int, entity: str, styles: Mapping[str, str]) -> str:
        """The replacement for ``text[start:end]``: the rule's style, else the masking section's."""
        profile = self._profile_for(styles) if styles else self._base
        rendered: str = profile.render(text, [self._span(start, end, entity)], start, end, Counter())
        return rendered
