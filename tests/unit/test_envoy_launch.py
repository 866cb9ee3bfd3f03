"""``extproc envoy run``: Envoy's --concurrency from the config, else the CPU limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.config import envoy_launch
from extproc.config.envoy_launch import envoy_argv, workers_from_cfs, workers_from_cpu_max


def test_cpu_max_rounds_up() -> None:
    assert workers_from_cpu_max("100000 100000\n") == 1
    assert workers_from_cpu_max("150000 100000") == 2
    assert workers_from_cpu_max("50000 100000") == 1
    assert workers_from_cpu_max("max 100000") is None
    assert workers_from_cpu_max("garbage") is None
    assert workers_from_cfs("-1", "100000") is None
    assert workers_from_cfs("400000", "100000") == 4


@given(st.integers(1, 10**7), st.integers(1, 10**6))
def test_workers_cover_the_quota(quota: int, period: int) -> None:
    w = workers_from_cpu_max(f"{quota} {period}")
    assert w is not None and w >= 1 and w * period >= quota and (w - 1) * period < max(quota, period)


def test_configured_concurrency_wins_then_cpu_limit() -> None:
    assert envoy_argv("envoy", "b.yaml", concurrency=3, cpu_limit_workers=1) == [
        "envoy", "-c", "b.yaml", "--log-level", "info", "--concurrency", "3"]
    assert envoy_argv("envoy", "b.yaml", concurrency=None, cpu_limit_workers=2)[-2:] == ["--concurrency", "2"]
    assert "--concurrency" not in envoy_argv("envoy", "b.yaml", concurrency=None, cpu_limit_workers=None)
    assert envoy_argv("envoy", "b.yaml", concurrency=None, cpu_limit_workers=None, extra=["--base-id", "7"])[-2:] == [
        "--base-id", "7"]


def test_reads_cgroup_v2_then_v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    monkeypatch.setattr(envoy_launch, "CPU_MAX", tmp_path / "cpu.max")
    assert envoy_launch.read_cpu_limit_workers() == 2
    monkeypatch.setattr(envoy_launch, "CPU_MAX", tmp_path / "absent")
    (tmp_path / "q").write_text("300000\n")
    (tmp_path / "p").write_text("100000\n")
    monkeypatch.setattr(envoy_launch, "CFS_QUOTA", tmp_path / "q")
    monkeypatch.setattr(envoy_launch, "CFS_PERIOD", tmp_path / "p")
    assert envoy_launch.read_cpu_limit_workers() == 3
    monkeypatch.setattr(envoy_launch, "CFS_QUOTA", tmp_path / "absent")
    assert envoy_launch.read_cpu_limit_workers() is None
