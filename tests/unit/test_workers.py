"""How many workers ``workers: 0`` means, and where each worker spools."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.workers import cpu_limit, resolve_workers, spool_path_for


def _affinity() -> int:
    import os

    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("cpu_max", "expect"), [("max 100000", None), ("100000 100000", 1), ("150000 100000", 2),
                                                  ("50000 100000", 1)])
def test_cgroup_v2_quota_rounds_up_and_is_bounded_by_the_cpus(tmp_path: Path, cpu_max: str,
                                                              expect: int | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    want = _affinity() if expect is None else min(expect, _affinity())
    assert cpu_limit(str(tmp_path)) == want


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_limit(str(tmp_path)) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_limit(str(tmp_path)) == _affinity()


def test_no_cgroup_files_means_every_cpu(tmp_path: Path) -> None:
    assert cpu_limit(str(tmp_path / "missing")) == _affinity()


def test_explicit_workers_win_and_zero_means_the_limit() -> None:
    assert resolve_workers(3) == 3
    assert resolve_workers(0) == cpu_limit()


def test_each_worker_has_its_own_spool_file() -> None:
    assert spool_path_for("/var/spool/x.jsonl", None) == "/var/spool/x.jsonl"
    assert spool_path_for("/var/spool/x.jsonl", 0) == "/var/spool/x.jsonl.w0"
    assert spool_path_for("/var/spool/x.jsonl", 1) != spool_path_for("/var/spool/x.jsonl", 0)
