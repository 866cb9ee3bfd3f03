"""The JSON Schema of the configuration file, generated from its types.

``extproc config schema -o extproc/config/extproc.schema.json`` writes the committed copy
(a test fails when it is stale); the example files point editors at it with a
``# yaml-language-server: $schema=...`` first line, so keys are completed and checked as
they are typed. The schema checks shapes, choices, ranges and patterns; checks that span
keys (overlapping prefixes, a hold longer than Envoy's timeout) are ``extproc config
check``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from extproc.config.model import ConfigFile

__all__ = ["SCHEMA_PATH", "config_schema", "render_schema"]

#: The committed, packaged copy.
SCHEMA_PATH = Path(__file__).with_name("extproc.schema.json")


def config_schema() -> dict[str, Any]:
    body = ConfigFile.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "extproc configuration",
        "description": "The extproc configuration file (docs/configuration in the README).",
        **{k: v for k, v in body.items() if k not in ("title", "description")},
    }


def render_schema() -> str:
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"
