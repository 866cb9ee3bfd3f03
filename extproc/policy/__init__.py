"""Declarative AI-usage policy: who may send what to which model, evaluated on every request.

The package is pure (no gRPC, no Redis): :meth:`Policy.evaluate` turns a
:class:`PolicyRequest` into a :class:`Decision` the data path enforces. Budgets are
reserved in Redis by :mod:`extproc.policy.budgets`. The configuration format is documented in
``docs/policy.md``; its keys are typed in :mod:`extproc.policy.loader` and published with the
whole file's JSON Schema (``extproc/config/extproc.schema.json``).
"""

from __future__ import annotations

from extproc.policy.engine import Policy
from extproc.policy.model import ACTIONS, BudgetCharge, Decision, PolicyRequest, RuleMatch

__all__ = ["ACTIONS", "BudgetCharge", "Decision", "Policy", "PolicyRequest", "RuleMatch"]

