"""Where the labelled development corpus lives: outside the repository, so that no worktree
carries a copy. Read by ``tests/unit/test_masking_corpus.py`` and ``bench/eval_masking.py``."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "pii-dev-corpus.jsonl"


def dev_corpus_path() -> Path:
    """``$EXTPROC_SHARED/pii-dev-corpus.jsonl``, else ``shared/`` beside the repository.

    A git worktree sits deeper than a clone (``wt/<name>/``), so every ancestor of the
    repository is tried; the first ``shared/pii-dev-corpus.jsonl`` found wins. When none is
    found the path beside the repository is returned all the same: reading it fails with that
    path in the error, which is what the test wants (a missing corpus is a failure, never a skip).
    """
    env = os.environ.get("EXTPROC_SHARED")
    if env:
        return Path(env) / NAME
    for parent in REPO.parents:
        candidate = parent / "shared" / NAME
        if candidate.is_file():
            return candidate
    return REPO.parent / "shared" / NAME
