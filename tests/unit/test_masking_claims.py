"""Structured kinds checked as their owners define them, claims (no detector fires inside a
token another one judged), context words, apostrophe e-mails, and ``extproc mask --explain``."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schwifty import IBAN

from extproc.masking import default_profile
from extproc.masking.cli import run as mask_cli
from extproc.masking.detectors import card_issuer_known, iban_valid, luhn_valid

PROFILE = default_profile()
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
IBAN_COUNTRIES = ["DE", "FR", "GB", "IT", "ES", "NL", "BE", "AT", "CH", "PT", "PL", "SE", "BR", "NO", "IE"]


def _luhn_complete(body: str) -> str:
    for last in string.digits:
        if luhn_valid(body + last):
            return body + last
    raise AssertionError("unreachable")


# -- IBAN -------------------------------------------------------------------------------


@SETTINGS
@given(country=st.sampled_from(IBAN_COUNTRIES), seed=st.integers(0, 2**32), spaced=st.booleans())
def test_valid_ibans_are_masked_whole(country: str, seed: int, spaced: bool) -> None:
    iban = IBAN.random(country_code=country, random=random.Random(seed))
    written = str(iban.formatted) if spaced else str(iban)
    assert PROFILE.mask(f"pay to {written} today")[0] == "pay to [IBAN] today"


@SETTINGS
@given(country=st.sampled_from(IBAN_COUNTRIES), seed=st.integers(0, 2**32), spaced=st.booleans(),
       delta=st.integers(1, 96))
def test_iban_with_bad_check_digits_is_kept_whole_and_nothing_fires_inside(
    country: str, seed: int, spaced: bool, delta: int
) -> None:
    good = str(IBAN.random(country_code=country, random=random.Random(seed)))
    check = (int(good[2:4]) + delta) % 100
    bad = f"{good[:2]}{check:02d}{good[4:]}"
    if iban_valid(bad):
        return  # another valid check digit pair: not a look-alike
    written = " ".join(bad[i : i + 4] for i in range(0, len(bad), 4)) if spaced else bad
    text = f"pay to {written} today"
    assert PROFILE.mask(text)[0] == text


def test_bad_checksum_italian_iban_is_not_masked_from_the_inside_as_a_card() -> None:
    text = "IT60 X054 2811 1010 0000 0123 457"
    assert PROFILE.mask(text)[0] == text
    assert [d.outcome for d in PROFILE.explain(text)] == ["kept"]


def test_iban_country_length_and_bban_format_are_checked() -> None:
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE8937040044053201300")  # one digit short for DE
    assert not iban_valid("XX89370400440532013000")  # no such country


# -- cards ------------------------------------------------------------------------------


@SETTINGS
@given(
    scheme=st.sampled_from([("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16),
                            ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("3530", 16), ("36", 14),
                            ("62", 19), ("2200", 16)]),
    body=st.text(string.digits, min_size=18, max_size=18),
    grouped=st.booleans(),
)
def test_cards_of_every_scheme_and_length_are_masked(scheme: tuple[str, int], body: str, grouped: bool) -> None:
    prefix, length = scheme
    digits = _luhn_complete(prefix + body[: length - len(prefix) - 1])
    written = " ".join(digits[i : i + 4] for i in range(0, length, 4)) if grouped and length in (16, 19) else digits
    assert PROFILE.mask(f"card {written}.")[0] == "card [CREDIT_CARD]."


@pytest.mark.parametrize("digits", ["1234567812345670", "9111111111111110", "7000000000000005", "2721000000000004"])
def test_luhn_valid_numbers_outside_issued_ranges_are_kept(digits: str) -> None:
    assert luhn_valid(digits) and not card_issuer_known(digits)
    assert PROFILE.mask(f"id {digits}.")[0] == f"id {digits}."


@SETTINGS
@given(body=st.text(string.digits, min_size=15, max_size=15), sep=st.sampled_from([" ", "-"]))
def test_grouped_card_failing_luhn_is_kept_whole(body: str, sep: str) -> None:
    digits = "4" + body
    if luhn_valid(digits):
        return
    written = sep.join(digits[i : i + 4] for i in range(0, 16, 4))
    assert PROFILE.mask(f"n {written}.")[0] == f"n {written}."


# -- IP address or version ----------------------------------------------------------------


@SETTINGS
@given(
    word=st.sampled_from(["Version", "version", "v", "release", "Release", "build", "section", "Section", "§",
                          "version:", '"version": "', "firmware", "rev."]),
    parts=st.lists(st.integers(0, 255), min_size=4, max_size=4),
)
def test_dotted_quads_after_version_words_are_kept_and_bare_ones_masked(word: str, parts: list[int]) -> None:
    quad = ".".join(map(str, parts))
    kept = f"{word} {quad} is out" if not word.endswith('"') else f'{word}{quad}"'
    assert PROFILE.mask(kept)[0] == kept
    assert PROFILE.mask(f"server {quad} is up")[0] == "server [IP_ADDRESS] is up"


# -- e-mail -----------------------------------------------------------------------------


@SETTINGS
@given(
    first=st.text(string.ascii_lowercase, min_size=1, max_size=6),
    last=st.text(string.ascii_lowercase, min_size=1, max_size=8),
    domain=st.sampled_from(["example.com", "example.co.uk", "mail.example.ie"]),
    before=st.sampled_from(["", "mail ", "<", "'", "to: "]),
)
def test_apostrophe_in_the_local_part_masks_the_whole_address(first: str, last: str, domain: str, before: str) -> None:
    address = f"{first}'{last}@{domain}"
    assert PROFILE.mask(f"{before}{address} ok")[0] == f"{before}[EMAIL] ok"


# -- extproc mask --explain -------------------------------------------------------------------


def test_mask_cli_masks_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "in.txt"
    f.write_text("call +44 20 7946 0018 or o'brien@example.com\n", encoding="utf-8")
    assert mask_cli(["mask", str(f)]) == 0
    assert capsys.readouterr().out == "call [PHONE] or [EMAIL]\n"


def test_mask_explain_names_detector_rule_and_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "in.txt"
    f.write_text(
        "Version 10.2.0.1 at 10.2.0.1; IT60 X054 2811 1010 0000 0123 457; +44 (0)20 7946 0018 ext. 12; "
        "order 020 7946 0018; 4111 1111 1111 1112",
        encoding="utf-8",
    )
    assert mask_cli(["mask", "--explain", "--json", str(f)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = [(r["text"], r["outcome"], r["detector"], r["rule"]) for r in rows]
    assert got == [
        ("10.2.0.1", "kept", "IP_ADDRESS", "ipv4+context"),
        ("10.2.0.1", "masked", "IP_ADDRESS", "ipv4+context"),
        ("IT60 X054 2811 1010 0000 0123 457", "kept", "IBAN", "iso13616+schwifty"),
        ("+44 (0)20 7946 0018 ext. 12", "masked", "PHONE", "libphonenumber"),
        ("020 7946 0018", "kept", "PHONE", "libphonenumber"),
        ("4111 1111 1111 1112", "kept", "CREDIT_CARD", "luhn+issuer-range"),
    ]
    reasons = [r["reason"] for r in rows]
    assert "Version" in reasons[0]
    assert "GB" in reasons[3]
    assert "order" in reasons[4]
    assert "Luhn" in reasons[5]


def test_mask_cli_reports_unreadable_file_without_traceback(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert mask_cli(["mask", str(tmp_path / "missing.txt")]) == 1
    assert "cannot read" in capsys.readouterr().err
