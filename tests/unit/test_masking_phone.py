"""Phone numbers on libphonenumber: every region's international forms, the configured
regions' national forms, extensions inside the span, and the look-alikes that must stay."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from extproc.errors import ConfigError
from extproc.masking import MaskingProfile, Span, default_profile
from extproc.masking.phone import DEFAULT_PHONE_REGIONS

PROFILE = default_profile()
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _phones(text: str) -> list[str]:
    return [text[s.start : s.end] for s in PROFILE.find(text) if s.entity == "PHONE"]


def _example(region: str, kind: int) -> phonenumbers.PhoneNumber | None:
    return phonenumbers.example_number_for_type(region, kind)


def _redrawn(region: str, kind: int, digits: str) -> phonenumbers.PhoneNumber | None:
    """The region's example number with its last digits replaced, if still valid."""
    example = _example(region, kind)
    if example is None:
        return None
    nsn = phonenumbers.national_significant_number(example)
    tail = digits[: min(4, len(nsn) - 2)]
    candidate = nsn[: len(nsn) - len(tail)] + tail
    number = phonenumbers.parse(f"+{example.country_code}{candidate}", None)
    return number if phonenumbers.is_valid_number(number) else None


# -- international forms, every region -------------------------------------------------

INTERNATIONAL = [
    (region, number)
    for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
    if (number := _example(region, kind)) is not None
]


@pytest.mark.parametrize(("region", "number"), INTERNATIONAL, ids=lambda v: v if isinstance(v, str) else "")
def test_international_forms_of_every_region_are_masked(region: str, number: phonenumbers.PhoneNumber) -> None:
    intl = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    for written in (intl, e164, "00" + e164[1:]):
        assert _phones(f"Call {written} today.") == [written], (region, written)


# -- national forms, the configured regions -----------------------------------------------

NATIONAL = [
    (region, number)
    for region in DEFAULT_PHONE_REGIONS
    for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
    if (number := _example(region, kind)) is not None
]


@pytest.mark.parametrize(("region", "number"), NATIONAL, ids=lambda v: v if isinstance(v, str) else "")
def test_national_forms_of_the_default_regions_are_masked(region: str, number: phonenumbers.PhoneNumber) -> None:
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    for written in {national, national.replace(" ", "-")}:
        assert _phones(f"Call {written} today.") == [written], (region, written)


@SETTINGS
@given(
    region=st.sampled_from(DEFAULT_PHONE_REGIONS),
    kind=st.sampled_from([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE]),
    digits=st.text("0123456789", min_size=4, max_size=4),
    style=st.sampled_from(["intl", "e164", "national", "dashed", "run-in", "trunk-bracket", "00"]),
    container=st.sampled_from(["Call {} now.", '{{"phone": "{}"}}', "| a | {} |", "x,{},y", "tel={} ok", "`{}`"]),
)
def test_any_valid_number_in_any_form_and_container_is_one_whole_span(
    region: str, kind: int, digits: str, style: str, container: str
) -> None:
    number = _redrawn(region, kind, digits)
    if number is None:
        return  # this redraw is not a valid number: nothing to claim
    intl = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    cc = f"+{number.country_code}"
    written = {
        "intl": intl,
        "e164": phonenumbers.format_number(number, PhoneNumberFormat.E164),
        "national": national,
        "dashed": national.replace(" ", "-"),
        "run-in": cc + intl[len(cc) + 1 :],
        "trunk-bracket": f"{cc} (0){intl[len(cc) + 1 :]}" if national.lstrip("(").startswith("0")
        and region != "IT" else intl,
        "00": "00" + intl[1:],
    }[style]
    text = container.format(written)
    assert _phones(text) == [written]
    assert written not in PROFILE.mask(text)[0]


@pytest.mark.parametrize(
    "written",
    [
        "+49(0)30 1234 5678",
        "+44 (0)20 7946 0018",
        "+39 061234567",
        "+34912 345 678",
        "001-212-555-0147",
        "04 91 23 45 67",
        "020 7946 0018",
        "(011) 4567-8901",
        "(11) 94567-8901",
        "98765 43210",
        "012.37.71.67",
        "030/12345678",
        "+1 371 751 3489",  # an area code libphonenumber does not list yet: well-formed NANP
        "347 123 4567",  # an Italian mobile grouped like a NANP number that is not one
    ],
)
def test_the_forms_that_leaked_are_masked(written: str) -> None:
    assert _phones(f"Reach me at {written}, thanks") == [written]


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("(212)555-0147x22 ok", "(212)555-0147x22"),
        ("+1 212 555 0147 ext. 22 ok", "+1 212 555 0147 ext. 22"),
        ("+44 20 7946 0018 extension 123 ok", "+44 20 7946 0018 extension 123"),
        ("call 020 7946 0018 x 7", "020 7946 0018 x 7"),
        ("+1-780-563-6083x7783", "+1-780-563-6083x7783"),
    ],
)
def test_extension_is_inside_the_masked_span(text: str, span: str) -> None:
    assert _phones(text) == [span]
    assert PROFILE.mask(text)[0] == text.replace(span, "[PHONE]")


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-15 14:22:01",
        "2024-03-15T14:22:01",
        "15.03.2024 14:22",
        "03/15/2024",
        "order 020 7946 0018",
        "Order no. 612 345 678",
        "invoice number 98765 43210",
        "Bestellung 030 12345678",
        "1 234 567,89 EUR",
        "612 345 678,50 EUR",
        "94105-1234",
        "ISBN 978-3-16-148410-0",
        "build 571331461",
        "(123) 456-7890",
        "555-055-1234",
        "+99 123 4567 890",
        "call me at 5551234567",
    ],
)
def test_look_alikes_are_kept(text: str) -> None:
    assert PROFILE.mask(text)[0] == text


@SETTINGS
@given(
    word=st.sampled_from(["order", "Order no.", "invoice", "Invoice #", "ticket", "ref", "tracking", "commande",
                          "Bestellnummer", "pedido", "fattura", "ISBN"]),
    region=st.sampled_from(DEFAULT_PHONE_REGIONS),
    digits=st.text("0123456789", min_size=4, max_size=4),
)
def test_identifier_words_make_a_national_digit_run_an_identifier(word: str, region: str, digits: str) -> None:
    number = _redrawn(region, PhoneNumberType.FIXED_LINE, digits)
    if number is None:
        return
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    assert _phones(f"{word} {national}") == []
    assert _phones(f"phone {national}") == [national]


@SETTINGS
@given(
    y=st.integers(1990, 2030), m=st.integers(1, 12), d=st.integers(1, 28), hh=st.integers(0, 23),
    mm=st.integers(0, 59), fmt=st.sampled_from(["{y}-{m:02d}-{d:02d} {hh:02d}:{mm:02d}", "{d:02d}.{m:02d}.{y}",
                                                "{m:02d}/{d:02d}/{y}", "{d:02d}/{m:02d}/{y} {hh:02d}:{mm:02d}",
                                                "{y}/{m:02d}/{d:02d}", "{y}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:00"]),
)
def test_dates_and_timestamps_are_never_phone_numbers(y: int, m: int, d: int, hh: int, mm: int, fmt: str) -> None:
    text = "on " + fmt.format(y=y, m=m, d=d, hh=hh, mm=mm) + " ok"
    assert PROFILE.mask(text)[0] == text


def test_national_regions_are_configurable_international_forms_are_not() -> None:
    gb = MaskingProfile.from_config({"phone_regions": ["GB"]})
    assert [s.entity for s in gb.find("020 7946 0018")] == ["PHONE"]
    assert gb.find("04 91 23 45 67") == []  # French national: not a configured region
    assert [s.entity for s in gb.find("+33 4 91 23 45 67")] == ["PHONE"]


def test_unknown_phone_region_is_a_config_error_with_its_path() -> None:
    with pytest.raises(ConfigError) as exc:
        MaskingProfile.from_config({"phone_regions": ["GB", "XX"]})
    assert exc.value.path == "masking.phone_regions[1]"


def test_phone_after_a_failed_international_prefix_is_not_rescued_as_national() -> None:
    assert _phones("+55 61 9141-7776") == []  # the whole is not a valid Brazilian number


def test_two_numbers_side_by_side_are_two_spans() -> None:
    text = "+1-983-264-4179 371.751.3489 020 7946 0018 (275) 474-9030"
    assert _phones(text) == ["+1-983-264-4179", "371.751.3489", "020 7946 0018", "(275) 474-9030"]
    assert PROFILE.find("x")[:0] == list[Span]()
