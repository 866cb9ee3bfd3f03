"""Run Presidio's recognizers for ``bench/eval_masking.py`` (inside ``.venv-presidio`` only).

Reads ``{"regions": [...], "texts": [...]}`` on stdin, prints one list of
``[start, end, ENTITY]`` per text, entity names mapped to extproc's. Only the pattern and
libphonenumber recognizers run (no spaCy model): the kinds both projects cover.
"""

from __future__ import annotations

import json
import logging
import sys

from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)

NAMES = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CREDIT_CARD", "IBAN_CODE": "IBAN",
         "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "US_SSN"}


def main() -> None:
    # The e-mail recognizer's tldextract tries to download the suffix list, then falls back
    # to its bundled copy: the attempt's traceback is noise here.
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    job = json.load(sys.stdin)
    # Presidio's phone recognizer takes the same national regions extproc uses (GB, not UK).
    recognizers = [EmailRecognizer(), PhoneRecognizer(supported_regions=job["regions"]), CreditCardRecognizer(),
                   IbanRecognizer(), IpRecognizer(), UsSsnRecognizer()]
    out = []
    for text in job["texts"]:
        spans = []
        for rec in recognizers:
            for res in rec.analyze(text, rec.supported_entities, None) or []:
                if res.score > 0 and res.entity_type in NAMES:
                    spans.append([res.start, res.end, NAMES[res.entity_type]])
        out.append(spans)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
