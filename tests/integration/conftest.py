"""Shared by the tests against the suite's real Redis (``REDIS_URL``, set by tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    p = f"extproc-test:{uuid.uuid4().hex}:"
    yield p

    async def cleanup() -> None:
        client = Redis.from_url(os.environ["REDIS_URL"])
        try:
            keys = [k async for k in client.scan_iter(match=f"{p}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    asyncio.run(cleanup())
