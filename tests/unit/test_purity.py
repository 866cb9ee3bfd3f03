"""The pure core stays pure: no I/O, clock or process state, directly or through what it imports.

The machine, policy, masking, tool policy, MCP, approvals model and recording model are tested
with plain values; they are handed the clock, ids and randomness. This walks each one's imports
(transitively, within ``extproc``) with ``ast`` and fails on any module that reaches for the
network, the event loop, the process or the clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "extproc"

PURE = [
    "extproc.datapath.machine",
    "extproc.datapath.scrub",
    "extproc.policy.engine",
    "extproc.policy.loader",
    "extproc.policy.model",
    "extproc.masking",
    "extproc.masking.responses",
    "extproc.tools.model",
    "extproc.tools.guard",
    "extproc.tools.mcp",
    "extproc.approvals.model",
    "extproc.recording.model",
    "extproc.llmapi",
    "extproc.identity.model",
    "extproc.errors",
    "extproc.strictjson",
]
FORBIDDEN = {"grpc", "redis", "asyncio", "socket", "os", "time", "uuid", "secrets", "random", "subprocess",
             "threading", "urllib.request", "http", "ssl", "logging.handlers"}


def _file(module: str) -> Path:
    p = ROOT.joinpath(*module.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def _imports(module: str) -> set[str]:
    tree = ast.parse(_file(module).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            # ``from extproc.x import y`` where y is itself a module
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub.startswith("extproc.") and (_file(sub).exists()):
                    out.add(sub)
    return out


def _closure(module: str) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or not _file(m).exists():
            continue
        seen[m] = imports = _imports(m)
        todo.extend(i for i in imports if i.startswith("extproc."))
        # a package's __init__ runs first
        parent = m.rsplit(".", 1)[0]
        if parent != m and parent.startswith("extproc"):
            todo.append(parent)
    return seen


@pytest.mark.parametrize("module", PURE)
def test_pure_module_reaches_no_io(module: str) -> None:
    bad = {
        f"{m} imports {i}"
        for m, imports in _closure(module).items()
        for i in imports
        if i.split(".")[0] in FORBIDDEN or i in FORBIDDEN
    }
    assert not bad, f"{module} is meant to be pure but " + "; ".join(sorted(bad))


def test_the_walker_sees_a_violation() -> None:
    # The check itself must be able to fail: the servicer is I/O and must be flagged.
    closure = _closure("extproc.datapath.servicer")
    assert any(i.split(".")[0] in FORBIDDEN for imports in closure.values() for i in imports)
