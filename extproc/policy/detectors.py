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
from typing import Any

__all__ = ["DetectorScanner", "available_entities", "available_styles"]


def _masking() -> Any:
    # Imported lazily: policies without detectors must not depend on the masking package.
    return importlib.import_module("extproc.masking")


def available_entities(masking_config: Mapping[str, Any] | None = None) -> frozenset[str] | None:
    """Built-in entity names plus custom/deny-list ones of the top-level ``masking`` section;
    None when the masking package is not available."""
    try:
        mod = _masking()
    except ImportError:
        return None
    names = {str(e) for e in getattr(mod, "BUILTIN_ENTITIES", ())}
    cfg = masking_config or {}
    custom = cfg.get("custom")
    if isinstance(custom, list):
        names.update(str(c["name"]) for c in custom if isinstance(c, Mapping) and "name" in c)
    if cfg.get("deny_list"):
        names.add(str(getattr(mod, "DENY_LIST_ENTITY", "DENY_LIST")))
    return frozenset(names)


def available_styles() -> tuple[str, ...]:
    try:
        return tuple(_masking().STYLES)
    except (ImportError, AttributeError):
        return ("placeholder",)


class DetectorScanner:
    """Finds ``(start, end, entity)`` spans of the given entities and renders replacements."""

    __slots__ = ("_base", "_cfg", "_profiles", "_span", "entities")

    def __init__(
        self,
        entities: Iterable[str],
        masking_config: Mapping[str, Any] | None = None,
        style_sets: Iterable[Mapping[str, str]] = (),
    ) -> None:
        mod = _masking()
        self.entities = frozenset(entities)
        cfg = dict(masking_config or {})
        # Which entities to look for is the policy's choice; custom detectors and the
        # deny list are kept only when a rule asks for them, so they cost nothing otherwise.
        cfg["entities"] = sorted(e for e in self.entities if e in set(mod.BUILTIN_ENTITIES))
        if isinstance(cfg.get("custom"), list):
            cfg["custom"] = [c for c in cfg["custom"] if isinstance(c, Mapping) and c.get("name") in self.entities]
        if getattr(mod, "DENY_LIST_ENTITY", "DENY_LIST") not in self.entities:
            cfg.pop("deny_list", None)
        if isinstance(cfg.get("styles"), Mapping):
            cfg["styles"] = {k: v for k, v in cfg["styles"].items() if k in self.entities}
        self._cfg = cfg
        self._span = mod.Span
        self._base = mod.MaskingProfile.from_config(cfg, path="masking")
        # Built now, so a bad style (hash without a hash key) fails at load, not per request.
        self._profiles: dict[frozenset[tuple[str, str]], Any] = {}
        for styles in style_sets:
            self._profile_for(styles)

    def _profile_for(self, styles: Mapping[str, str]) -> Any:
        key = frozenset(styles.items())
        got = self._profiles.get(key)
        if got is None:
            cfg = dict(self._cfg)
            cfg["styles"] = {**(self._cfg.get("styles") or {}), **styles}
            got = _masking().MaskingProfile.from_config(cfg, path="masking")
            self._profiles[key] = got
        return got

    def find(self, text: str) -> list[tuple[int, int, str]]:
        return [(s.start, s.end, str(s.entity)) for s in self._base.find(text) if s.end > s.start]

    def render(self, text: str, start: int, end: int, entity: str, styles: Mapping[str, str]) -> str:
        """The replacement for ``text[start:end]``: the rule's style, else the masking section's."""
        profile = self._profile_for(styles) if styles else self._base
        rendered: str = profile.render(text, [self._span(start, end, entity)], start, end, Counter())
        return rendered
