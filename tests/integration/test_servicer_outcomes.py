"""The ext_proc servicer in process (real protobufs, no Envoy): how each stream is counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.admin.metrics import Metrics
from extproc.config.model import AuthConfig, ProviderConfig
from extproc.datapath.machine import Gateway, Router
from extproc.datapath.servicer import ExternalProcessor

OPEN = ProviderConfig(name="open", api="generic", base_url="http://x", prefix="/open", credential=None,
                      auth=AuthConfig(header="authorization", scheme="Bearer "), authenticate=False)


def _headers(pairs: dict[str, str], eos: bool) -> ep.HttpHeaders:
    return ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]), end_of_stream=eos)


class _Context:
    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


async def _envoy(reset_at_end: bool) -> AsyncIterator[ep.ProcessingRequest]:
    yield ep.ProcessingRequest(request_headers=_headers({":method": "GET", ":path": "/open/x"}, True))
    yield ep.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "text/plain"}, False))
    yield ep.ProcessingRequest(response_body=ep.HttpBody(body=b"hello", end_of_stream=True))
    if reset_at_end:
        # Envoy has every answer it needs and resets the stream instead of half-closing it.
        raise asyncio.CancelledError


def _count(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("extproc_requests_total", {"provider": "open", "outcome": outcome})
    return value or 0.0


def _run(reset_at_end: bool) -> Metrics:
    metrics = Metrics()
    gw = Gateway(router=Router([OPEN]), credential=lambda _n: None, all_credentials=lambda: [],
                 clock=lambda: 1000.0, new_id=lambda: "req-1", timer=lambda: 0.0)
    servicer = ExternalProcessor(lambda: gw, lambda: None, metrics, store=None)  # type: ignore[arg-type]

    async def drive() -> None:
        try:
            async for _ in servicer.Process(_envoy(reset_at_end), _Context()):
                pass
        except asyncio.CancelledError:
            pass

    asyncio.run(drive())
    return metrics


def test_a_completed_exchange_is_ok_even_when_envoy_resets_the_stream_after_it() -> None:
    for reset in (False, True):
        m = _run(reset)
        assert (_count(m, "ok"), _count(m, "incomplete")) == (1.0, 0.0), reset


async def _cut_short() -> AsyncIterator[ep.ProcessingRequest]:
    yield ep.ProcessingRequest(request_headers=_headers({":method": "GET", ":path": "/open/x"}, True))
    yield ep.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "text/plain"}, False))
    raise asyncio.CancelledError  # the caller went away mid-answer


def test_an_answer_cut_short_is_incomplete() -> None:
    metrics = Metrics()
    # A credential to scrub, so the answer's body is read (with nothing to read it for, Envoy is
    # told not to send it and the exchange ends, for ext_proc, with the response headers).
    gw = Gateway(router=Router([OPEN]), credential=lambda _n: None, all_credentials=lambda: ["sk-test-scrub-me"],
                 clock=lambda: 1000.0, new_id=lambda: "req-1", timer=lambda: 0.0)
    servicer = ExternalProcessor(lambda: gw, lambda: None, metrics, store=None)  # type: ignore[arg-type]

    async def drive() -> None:
        try:
            async for _ in servicer.Process(_cut_short(), _Context()):
                pass
        except asyncio.CancelledError:
            pass

    asyncio.run(drive())
    assert (_count(metrics, "ok"), _count(metrics, "incomplete")) == (0.0, 1.0)
