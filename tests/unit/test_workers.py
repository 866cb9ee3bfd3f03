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


def test_unix_socket_workers_each_get_a_socket_and_zero_means_one() -> None:
    from extproc.workers import worker_socket_path, worker_socket_paths

    assert worker_socket_paths(None, 4) == []  # TCP: one shared port, no list
    assert worker_socket_paths("/run/x/ext.sock", 0) == ["/run/x/ext.sock"]
    assert worker_socket_paths("/run/x/ext.sock", 3) == ["/run/x/ext.sock", "/run/x/ext.sock.w1",
                                                         "/run/x/ext.sock.w2"]
    assert worker_socket_path("/s", None) == worker_socket_path("/s", 0) == "/s"
    assert resolve_workers(0, unix=True) == 1 and resolve_workers(3, unix=True) == 3


def test_rendered_envoy_lists_one_endpoint_per_unix_worker_and_caps_streams_only_on_tcp(tmp_path: Path) -> None:
    from extproc.config.envoy import render_envoy
    from extproc.config.model import parse_config

    def cluster(listeners: dict[str, object], workers: int) -> dict[str, object]:
        cfg = parse_config({"version": 1, "workers": workers, "listeners": listeners,
                            "identity": {"issuers": [{"issuer": "https://i.example", "audiences": ["a"],
                                                      "jwks_file": str(tmp_path / "jwks.json")}]},
                            "providers": [{"name": "p", "api": "openai", "base_url": "http://127.0.0.1:9/v1",
                                           "prefix": "/p"}]}, env={})
        boot = render_envoy(cfg)
        return next(c for c in boot["staticResources"]["clusters"] if c["name"] == "extproc")

    unix = cluster({"ext_proc": {"address": f"unix:{tmp_path / 'e.sock'}"}}, 2)
    pipes = [e["endpoint"]["address"]["pipe"]["path"] for e in unix["loadAssignment"]["endpoints"][0]["lbEndpoints"]]
    assert pipes == [str(tmp_path / "e.sock"), str(tmp_path / "e.sock.w1")]
    assert "maxConcurrentStreams" not in str(unix)
    tcp = cluster({}, 2)
    assert len(tcp["loadAssignment"]["endpoints"][0]["lbEndpoints"]) == 1
    assert "'maxConcurrentStreams': 1" in str(tcp)
