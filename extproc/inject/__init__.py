"""Kubernetes sidecar injection: a mutating admission webhook (pure logic in ``patch``)."""

from extproc.inject.patch import apply_json_patch, handle_admission, mutate
from extproc.inject.settings import InjectSettings, load_settings, parse_settings

__all__ = [
    "InjectSettings",
    "apply_json_patch",
    "handle_admission",
    "load_settings",
    "mutate",
    "parse_settings",
]
