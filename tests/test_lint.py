"""The code stays ruff- and mypy(strict)-clean: part of `make test`, so CI enforces it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff() -> None:
    res = subprocess.run([str(BIN / "ruff"), "check", "extproc", "tests", "bench"], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict() -> None:
    res = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
