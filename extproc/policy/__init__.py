"""Declarative AI-usage policy: who may send what to which model, evaluated on every request.

The package is pure (no gRPC, no Redis): :meth:`Policy.evaluate` turns a
:class:`PolicyRequest` into a :class:`Decision` the data path enforces. Budgets are
reserved in Redis by :mod:`extproc.policy.budgets`. The configuration format is documented in
``docs/policy.md`` and published as JSON Schema in ``schema.json`` next to this file.
"""

from __future__ import annotations

from extproc.policy.engine import Policy
from extproc.policy.model import ACTIONS, BudgetCharge, Decision, PolicyRequest, RuleMatch

__all__ = ["ACTIONS", "BudgetCharge", "Decision", "Policy", "PolicyRequest", "RuleMatch", "schema_path"]


def schema_path() -> str:
    """Where the JSON Schema of the ``policy:`` section is installed."""
    from pathlib import Path

    return str(Path(__file__).with_name("schema.json"))
