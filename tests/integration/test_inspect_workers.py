"""The worker processes that inspect large bodies: same answers as inline, a bound on time,
and a pool that survives a killed or stuck worker."""

from __future__ import annotations

import asyncio
import json

from extproc.datapath.inspect import Compiled, Inspection, InspectionFailed, InspectionJob, InspectionSpec, run_job
from extproc.datapath.workers import InspectorPool
from extproc.policy import PolicyRequest

POLICY = {"rules": [{"id": "mask-contact", "match": {"content": {"detectors": ["EMAIL", "PHONE"]}},
                     "action": "mask"}]}
SPEC = InspectionSpec.of(POLICY, None, None, False)


def job(text: str) -> InspectionJob:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    req = PolicyRequest(user="u", groups=(), issuer="i", workload=None, provider="p", api="openai", method="POST",
                        path="/chat/completions", content_type="application/json", body=body)
    return InspectionJob(spec=SPEC, body=body, api="openai", request=req, record=None)


def test_worker_answers_like_inline_and_a_stuck_job_is_cut_and_replaced() -> None:
    async def main() -> None:
        pool = InspectorPool(1)
        await pool.start(SPEC)
        try:
            j = job("write to bob@example.com")
            got = await pool.run(j, 30)
            want = run_job(j, Compiled())
            assert isinstance(got, Inspection) and want.decision is not None and got.decision is not None
            assert got.forward == want.forward and b"bob@example.com" not in (got.forward or b"")
            assert got.decision.action == want.decision.action == "mask"
            # Dense PII that takes far longer than the bound: cut, and the pool keeps working.
            heavy = job("bob@example.com +1 415 555 0132 " * 200_000)
            cut = await pool.run(heavy, 0.3)
            assert cut == InspectionFailed("timeout")
            assert pool.timeouts == 1
            again = await pool.run(j, 30)
            assert isinstance(again, Inspection) and again.forward == want.forward
        finally:
            pool.close()

    asyncio.run(main())


def test_a_job_waiting_for_a_busy_worker_counts_against_its_bound() -> None:
    async def main() -> None:
        pool = InspectorPool(1)
        await pool.start(SPEC)
        try:
            heavy = asyncio.create_task(pool.run(job("bob@example.com " * 300_000), 60))
            await asyncio.sleep(0.2)
            waiting = await pool.run(job("small"), 0.2)
            assert waiting == InspectionFailed("timeout", "no worker was free")
            assert not heavy.done()  # the heavy one is still being scanned, unaffected
            heavy.cancel()
            await asyncio.gather(heavy, return_exceptions=True)
            ok = await pool.run(job("small"), 30)  # the cancelled job's worker was replaced
            assert isinstance(ok, Inspection)
        finally:
            pool.close()

    asyncio.run(main())


def test_workers_start_with_the_first_job_not_with_the_pool() -> None:
    # Most deployments never see a body over offload_bytes: the processes (~118 MB resident
    # with the forkserver and resource tracker) are started by the first job that needs one.
    async def main() -> None:
        pool = InspectorPool(2)
        await pool.start(SPEC)
        try:
            await asyncio.sleep(0.2)
            assert pool.started == 0
            got = await pool.run(job("write to bob@example.com"), 60)
            assert isinstance(got, Inspection) and b"bob@example.com" not in (got.forward or b"")
            assert pool.started >= 1
        finally:
            pool.close()
        assert pool.started == 0

    asyncio.run(main())


def test_an_eager_pool_starts_its_workers_with_start() -> None:
    async def main() -> None:
        pool = InspectorPool(1, lazy=False)
        await pool.start(SPEC)
        try:
            assert pool.started == 1
        finally:
            pool.close()

    asyncio.run(main())
