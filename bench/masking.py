"""Throughput of the pure streaming masker, on one core, on prose with sparse and dense PII."""

from __future__ import annotations

import random
import time
from typing import Any

from extproc.masking import default_profile

WORDS = ("the quarterly plan covers hiring, budget review and the migration of our billing service to the new "
         "region; please keep the summary short and mention open risks, owners and dates like 2024-03-15.").split()
PII = ("bob.smith@example.com", "+1-983-264-4179", "4242 4242 4242 4242", "257-28-8896",
       "NL91ABNA0417164300", "10.12.0.7", "sk-proj-Abc123def456GHI789jkl012MNO345pqr678")


def corpus(size: int, every: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < size:
        chunk = " ".join(rnd.choice(WORDS) for _ in range(max(1, every // 7)))
        out.append(chunk)
        out.append(" " + rnd.choice(PII) + " ")
        n += len(chunk) + 30
    return "".join(out)[:size]


def _stream(masker: Any, text: str, chunk: int) -> float:
    """MB/s of feeding ``text`` in ``chunk``-character pieces, then flushing."""
    t0 = time.perf_counter()
    feed = masker.feed
    for i in range(0, len(text), chunk):
        feed(text[i:i + chunk])
    masker.flush()
    return len(text) / (time.perf_counter() - t0) / 1e6


def bench_masker(size: int = 4 << 20, char_size: int = 256 << 10) -> dict[str, Any]:
    """MB/s of the plain masker (whole text, 4096 B and 256 B chunks, one character at a
    time on a ``char_size`` text) and of the normalised masker the response path uses."""
    from extproc.masking.normalised import NormalisedStreamingMasker

    profile = default_profile()
    rows: dict[str, Any] = {}
    for name, every in (("sparse (1 value / 2 KB)", 2048), ("dense (1 value / 100 B)", 100)):
        text = corpus(size, every)
        t0 = time.perf_counter()
        profile.mask(text)
        whole = size / (time.perf_counter() - t0) / 1e6
        row = {"whole_mb_s": round(whole, 1)}
        for chunk in (4096, 256):
            row[f"stream_{chunk}B_mb_s"] = round(_stream(profile.streaming(), text, chunk), 1)
        small = text[:char_size]
        row["stream_1char_mb_s"] = round(_stream(profile.streaming(), small, 1), 2)
        row["normalised_256B_mb_s"] = round(_stream(NormalisedStreamingMasker(profile), text, 256), 1)
        row["normalised_1char_mb_s"] = round(_stream(NormalisedStreamingMasker(profile), small, 1), 2)
        rows[name] = row
    return rows


def bench_ttft(n: int = 30) -> dict[str, Any]:
    """Time to the first streamed content byte, through the gateway, masked vs unmasked route.

    A real stack with the Python fake upstream streaming 10 events 20 ms apart; the first event
    carries text, so the difference is what masking adds to time-to-first-token.
    """
    import http.client
    import json
    import statistics
    import sys
    import tempfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    from tests.e2e.harness import Stack

    s = Stack(Path(tempfile.mkdtemp(prefix="extproc-bench-ttft-")), extra_config={"recording": None}).start()
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]})
    texts = json.dumps(["Hello there, here is your answer"] + [f" part {i}" for i in range(9)])
    out: dict[str, Any] = {}
    try:
        token = s.token()
        for route in ("fake", "masked"):
            xs = []
            for _ in range(n):
                c = http.client.HTTPConnection("127.0.0.1", s.ports["http"], timeout=10)
                t0 = time.perf_counter()
                c.request("POST", f"/{route}/chat/completions", body=body, headers={
                    "authorization": f"Bearer {token}", "content-type": "application/json",
                    "x-fake-mode": "sse", "x-fake-texts": texts, "x-fake-delay-ms": "20"})
                r = c.getresponse()
                seen = b""
                while b"Hello" not in seen:
                    piece = r.read1(65536)
                    if not piece:
                        break
                    seen += piece
                xs.append((time.perf_counter() - t0) * 1000)
                r.read()
                c.close()
            out[f"{route}_ttft_p50_ms"] = round(statistics.median(xs), 2)
    finally:
        s.stop()
    out["masking_added_ttft_ms"] = round(out["masked_ttft_p50_ms"] - out["fake_ttft_p50_ms"], 2)
    return out


if __name__ == "__main__":
    import json as _json
    import sys as _sys

    _size = int(_sys.argv[1]) if len(_sys.argv) > 1 else 4 << 20
    print(_json.dumps(bench_masker(_size), indent=1))
