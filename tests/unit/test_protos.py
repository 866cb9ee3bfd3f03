from __future__ import annotations

from pathlib import Path

from extproc.dev.protos import ROOT, generate


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    written = [p for p in generate(tmp_path) if p.name != "__init__.py"]
    assert written
    for fresh in written:
        committed = ROOT / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} missing: run `make protos`"
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed} is stale: run `make protos`"


def test_upb_backend() -> None:
    from extproc.server import assert_upb_backend

    assert_upb_backend()
