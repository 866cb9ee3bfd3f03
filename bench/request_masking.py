"""Request-masking throughput: the policy engine masking chat request bodies, on one core.

The 20-rule policy of examples/policy-bench.yaml (detectors, keywords, regexes) evaluated on
chat bodies of prose with sparse and dense PII, in English (ASCII) and in mixed scripts.
Run it against two checkouts to compare (issue 17 keeps it within 10%):

    PYTHONPATH=/path/to/checkout python bench/request_masking.py
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from extproc.policy import Policy, PolicyRequest

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the quarterly plan covers hiring, budget review and the migration of our billing service to the new "
         "region; please keep the summary short and mention open risks, owners and dates like 2024-03-15.").split()
WORDS_INTL = ("Grüße aus München, die Straße ist gesperrt; Привет, встреча в пятницу; 東京駅の近くで会議; "
              "naïve café résumé déjà vu — “quoted” text…").split()
PII = ("bob.smith@example.com", "+1-983-264-4179", "4242 4242 4242 4242", "257-28-8896", "NL91ABNA0417164300")


def prose(size: int, every: int, words: tuple[str, ...] | list[str], seed: int = 1) -> str:
    rnd = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < size:
        chunk = " ".join(rnd.choice(words) for _ in range(max(1, every // 7)))
        out += [chunk, " " + rnd.choice(PII) + " "]
        n += len(chunk) + 30
    return "".join(out)[:size]


def body(text: str, parts: int = 8) -> bytes:
    step = len(text) // parts + 1
    content = [{"type": "text", "text": text[i:i + step]} for i in range(0, len(text), step)]
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "system", "content": "be brief"},
                                                       {"role": "user", "content": content}]}).encode()


def run(seconds: float = 2.0) -> dict[str, Any]:
    cfg = yaml.safe_load((REPO / "examples" / "policy-bench.yaml").read_text())
    policy = Policy.from_config(cfg["policy"], masking_config=cfg.get("masking"))
    out: dict[str, Any] = {}
    for name, every, words in (("ascii sparse", 2048, WORDS), ("ascii dense", 100, WORDS),
                               ("intl sparse", 2048, WORDS_INTL)):
        payload = body(prose(64 << 10, every, words))
        req = PolicyRequest(user="alice", groups=("engineering",), issuer="i", workload=None, provider="openai",
                            api="openai", method="POST", path="/v1/chat/completions",
                            content_type="application/json", body=payload)
        policy.evaluate(req)  # warm caches
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            d = policy.evaluate(req)
            n += 1
        elapsed = time.perf_counter() - t0
        out[name] = {"MB/s": round(n * len(payload) / elapsed / 1e6, 2), "action": d.action}
    return out


if __name__ == "__main__":
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)))
