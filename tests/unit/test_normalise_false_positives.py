"""The normalised view adds no false positives on ordinary text (issue 17).

The shared PII corpus is ASCII, where the view is the text itself; these sentences cover
the scripts and typography the view does change (accents, Cyrillic, Greek, CJK, Hangul,
emoji with joiners, typographic spaces and quotes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extproc.masking import default_profile
from extproc.policy import Policy, PolicyRequest
from extproc.text import view

ORDINARY = [
    "Grüße aus München! Die Straße ist gesperrt, bitte über die Brücke fahren.",
    "L'été dernier, Zoë a acheté un café crème à 3,50 € près de l'église.",
    "Привет! Встреча в пятницу в 15:00, комната 204, возьмите ноутбук.",
    "Καλημέρα σας, η παράδοση θα γίνει την Τρίτη στις 10:30.",
    "東京駅の近くで会議があります。資料は明日送ります。",
    "안녕하세요, 회의는 내일 오후 3시에 있습니다.",
    "Team 👩\u200d💻👨\u200d👩\u200d👧 shipped v2.3.1 on 2024\u201103\u201101 \u2014 \u201cgreat work\u201d!",
    "Price:\u00a0100\u202fkm, temperature \u221212\u00b0C, ratio 1\u20442, \u00bd cup.",
    "Naïve coöperation in the façade of the résumé — déjà vu.",
    "Ünïcödé ﬁle ﬂow: ﬁnal ﬁgures for Q3 are in the shared drive.",
    "Numbers: ١٢٣ ४५६ ໑໒໓ and Roman Ⅻ, circled ①②③.",
    "Versions 10.0.1-beta, build ２０２４, order №１２３４５.",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_no_detector_finds_anything_in_ordinary_text(text: str) -> None:
    profile = default_profile()
    v = view(text)
    assert profile.find(v.text) == [], v.text


def test_bench_policy_keywords_do_not_match_ordinary_text() -> None:
    root = Path(__file__).resolve().parents[2]
    import yaml

    cfg = yaml.safe_load((root / "examples" / "policy-bench.yaml").read_text())
    policy = Policy.from_config(cfg["policy"], masking_config=cfg.get("masking"))
    for text in ORDINARY:
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).encode()
        r = PolicyRequest(user="alice", groups=("engineering",), issuer="i", workload=None, provider="openai",
                          api="openai", method="POST", path="/v1/chat/completions",
                          content_type="application/json", body=body)
        d = policy.evaluate(r)
        assert [m.rule_id for m in d.matches if m.action in ("block", "mask")] == [], text
