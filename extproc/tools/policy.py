"""The tool-policy names the data path imports from here (``extproc/datapath/``).

The policy itself (rules, conditions, decisions) is in ``model``, the guard on model-emitted
tool calls in ``guard``; other code imports from those. Once the data path does too, this
module can go.
"""

from __future__ import annotations

# ``X as X``: an explicit re-export (mypy strict exports no other imported name).
from extproc.tools.guard import ToolCallGuard as ToolCallGuard
from extproc.tools.model import ToolDecision as ToolDecision
from extproc.tools.model import ToolPolicy as ToolPolicy
from extproc.tools.model import ToolRequest as ToolRequest
from extproc.tools.model import argument_digest as argument_digest
from extproc.tools.model import mask_arguments as mask_arguments
