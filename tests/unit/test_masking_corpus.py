"""Recall and precision on the shared labelled corpus (kept outside the repo)."""

from __future__ import annotations

import json

from extproc.masking import default_profile
from tests.corpus import dev_corpus_path

CORPUS = dev_corpus_path()


def test_corpus_recall_and_precision() -> None:
    profile = default_profile()
    expected = found_true = found = 0
    missed: list[str] = []
    damaged: list[str] = []
    false_pos: list[str] = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        text: str = row["text"]
        masked, _ = profile.mask(text)
        detected = {text[s.start : s.end] for s in profile.find(text)}
        for value in row["pii"]:
            expected += 1
            if value in masked:
                missed.append(value)
            else:
                found_true += 1
        found += len(detected)
        false_pos.extend(sorted(detected - set(row["pii"])))
        damaged.extend(k for k in row["keep"] if k not in masked)
    recall = found_true / expected
    precision = (found - len(false_pos)) / found if found else 1.0
    print(f"corpus: {expected} values, recall={recall:.4f} precision={precision:.4f}")
    assert expected > 0
    assert missed == [], f"missed: {missed[:10]}"
    assert damaged == [], f"look-alikes altered: {damaged[:10]}"
    assert false_pos == [], f"false positives: {false_pos[:10]}"
    assert recall == 1.0
