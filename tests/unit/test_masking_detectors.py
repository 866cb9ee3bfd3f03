"""Per-detector positives and look-alike negatives, styles, config and literals."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import ConfigError
from extproc.masking import BUILTIN_ENTITIES, MaskingProfile, Span, default_profile
from extproc.masking.detectors import _dotted_quad_valid, iban_valid, luhn_valid

POSITIVES = [
    ("EMAIL", "bob@example.com"),
    ("EMAIL", "lena_rossi@uni.example.ac.uk"),
    ("EMAIL", "a.b+tag@sub-domain.example.io"),
    ("PHONE", "(275) 474-9030"),
    ("PHONE", "+1-983-264-4179"),
    ("PHONE", "+1 371 751 3489"),
    ("PHONE", "371.751.3489"),
    ("PHONE", "236-266-5412"),
    ("PHONE", "+44 20 7946 0958"),
    ("PHONE", "+4915123456789"),
    ("CREDIT_CARD", "4242424242424242"),
    ("CREDIT_CARD", "4242 4242 4242 4242"),
    ("CREDIT_CARD", "5555-5555-5555-4444"),
    ("CREDIT_CARD", "3782 822463 10005"),
    ("CREDIT_CARD", "378282246310005"),
    ("CREDIT_CARD", "6011111111111117"),
    ("US_SSN", "257-28-8896"),
    ("US_SSN", "017-50-2398"),
    ("IBAN", "DE89370400440532013000"),
    ("IBAN", "DE89 3704 0044 0532 0130 00"),
    ("IBAN", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN", "NL91ABNA0417164300"),
    ("IP_ADDRESS", "192.168.1.20"),
    ("IP_ADDRESS", "8.8.8.8"),
    ("IP_ADDRESS", "2001:db8::8a2e:370:7334"),
    ("IP_ADDRESS", "fe80::1ff:fe23:4567:890a"),
    ("IP_ADDRESS", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("SECRET", "sk-proj-1X7Se50THnvEHJZprZJyk1k-YgnA44OQA5JYiyFll"),
    ("SECRET", "sk-ant-api03-JFIoxSLivuGvIL6P_8odNXR1yHnGA3cCcYseu52C"),
    ("SECRET", "sk-abcdefghij0123456789ABCD"),
    ("SECRET", "AKIAIOSFODNN7EXAMPLE"),
    ("SECRET", "ASIAZAXL8J48R0UR5V16"),
    ("SECRET", "ghp_2Ty04L4VTxzb7pyd52kynVgxawdjESePbR23"),
    ("SECRET", "gho_2Ty04L4VTxzb7pyd52kynVgxawdjESePbR23"),
    ("SECRET", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"),
    ("SECRET", "xoxb-01504804605-54903151124-9AMvob9PSSlWXWGVKPxtsyA7"),
    ("SECRET", "xoxp-1234567890-abcdef"),
    ("JWT", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    (
        "PRIVATE_KEY",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
        "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----",
    ),
    ("PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB\n-----END PRIVATE KEY-----"),
    (
        "PRIVATE_KEY",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----",
    ),
]

NEGATIVES = [
    "4242424242424241",  # fails Luhn
    "4242 4242 4242 4241",
    "4242 4242-4242 4242",  # mixed separators
    "1234567812345670",  # Luhn-valid but no issuer starts with 1
    "build 571331461",
    "123456789",
    "version 2.14.1",
    "v1.2.3",
    "v1.2.3.4",
    "1.2.3.4.5",
    "999.1.1.1",
    "2024-03-15",
    "03/15/2024",
    "17:25",
    "12:30:45",
    "ORD-457456",
    "port 8080",
    "ticket #1143",
    "000-12-3456",
    "666-12-3456",
    "912-12-3456",
    "123-00-4567",
    "123-45-0000",
    "x123-45-6789",
    "123-456-7890-12",
    "(123) 456-7890",  # NANP area codes never start with 0 or 1
    "555-055-1234",
    "DE89370400440532013001",  # bad IBAN check digits
    "std::vector<int>",
    "a::b",
    "::1",
    "sk-learn-is-a-library-for-python",
    "AKIA1234",
    "ghp_short",
    "eyJhbGciOiJIUzI1NiJ9",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "user@localhost",
    "call me at 5551234567",  # ten bare digits: too ambiguous
    "ISBN 978-3-16-148410-0",
]


@pytest.mark.parametrize(("entity", "value"), POSITIVES)
def test_detects_value_in_context(entity: str, value: str) -> None:
    text = f"Here: {value}. Next line"
    spans = default_profile().find(text)
    assert spans == [Span(6, 6 + len(value), entity)]
    masked, counts = default_profile().mask(text)
    assert masked == f"Here: [{entity}]. Next line"
    assert counts == {entity: 1}


@pytest.mark.parametrize("text", NEGATIVES)
def test_look_alikes_survive(text: str) -> None:
    assert default_profile().find(text) == []
    assert default_profile().mask(f"({text})")[0] == f"({text})"


def test_builtin_entities_are_all_enabled_by_default() -> None:
    assert default_profile().entities == frozenset(BUILTIN_ENTITIES)
    assert default_profile().max_match_length == 8192


def test_spans_sorted_non_overlapping() -> None:
    text = "a@b.co 4242424242424242 257-28-8896 10.0.0.1:443 and 10.0.0.2"
    spans = default_profile().find(text)
    assert [s.entity for s in spans] == ["EMAIL", "CREDIT_CARD", "US_SSN", "IP_ADDRESS", "IP_ADDRESS"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


def test_non_ascii_offsets_are_str_offsets() -> None:
    text = "Grüße 👋 an jürgen@example.de bitte"
    [span] = default_profile().find(text)
    # RE2's \b is ASCII: the match starts after the non-ASCII "ü".
    assert text[span.start : span.end] == "rgen@example.de"
    masked, _ = default_profile().mask(text)
    assert "example.de" not in masked and masked.startswith("Grüße 👋 an ")


def test_luhn_and_iban_helpers() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")


def test_spaced_iban_followed_by_group_is_trimmed() -> None:
    text = "pay ES91 2100 0418 4502 0005 1332 2024 now"
    spans = default_profile().find(text)
    assert [text[s.start : s.end] for s in spans] == ["ES91 2100 0418 4502 0005 1332"]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("+1-983-264-4179 371.751.3489", ["+1-983-264-4179", "371.751.3489"]),
        ("+44 20 7946 0958 and", ["+44 20 7946 0958"]),
        ("4242 4242 4242 4242 123 units", ["4242 4242 4242 4242"]),
        ("4242 4242 4242 4242 5 x", ["4242 4242 4242 4242"]),
        ("4242-4242-4242-4242-5 x", []),  # dash-joined: one longer token, not a card
    ],
)
def test_greedy_grouped_numbers_give_back_unrelated_groups(text: str, values: list[str]) -> None:
    assert [text[s.start : s.end] for s in default_profile().find(text)] == values


def test_overlong_secret_is_not_masked_partially() -> None:
    # Over the declared max length the token is not a key we know; nothing half-masked.
    text = "sk-" + "a1" * 400
    assert default_profile().mask(text)[0] == text


# -- styles -------------------------------------------------------------------------


def test_styles() -> None:
    profile = MaskingProfile.from_config(
        {"styles": {"CREDIT_CARD": "last4", "EMAIL": "hash", "US_SSN": "placeholder"}, "hash_key": "k1"}
    )
    masked, _ = profile.mask("card 4242 4242 4242 4242, mail bob@example.com, ssn 257-28-8896")
    assert masked.startswith("card ****4242, mail [EMAIL:")
    token = masked.split("mail ")[1].split(",")[0]
    assert len(token) == len("[EMAIL:12345678]")
    assert masked.endswith(", ssn [US_SSN]")
    # Same value, same token; different key, different token.
    assert profile.mask("bob@example.com")[0] == token
    other = MaskingProfile.from_config({"styles": {"EMAIL": "hash"}, "hash_key": "k2"})
    assert other.mask("bob@example.com")[0] != token
    assert profile.mask("alice@example.com")[0] != token


def test_last4_uses_fixed_stars_and_skips_separators() -> None:
    profile = MaskingProfile.from_config({"styles": {"IBAN": "last4", "CREDIT_CARD": "last4"}})
    assert profile.mask("DE89 3704 0044 0532 0130 00")[0] == "****3000"
    assert profile.mask("378282246310005")[0] == "****0005"


# -- config -------------------------------------------------------------------------


def test_entities_subset() -> None:
    profile = MaskingProfile.from_config({"entities": ["EMAIL"]})
    assert profile.entities == {"EMAIL"}
    assert profile.mask("bob@example.com 257-28-8896")[0] == "[EMAIL] 257-28-8896"
    assert profile.max_match_length == 480


@pytest.mark.parametrize(
    ("cfg", "path", "fragment"),
    [
        ({"entities": ["EMAIL", "PHONE", "NAME"]}, "masking.entities[2]", "unknown entity"),
        ({"entities": "EMAIL"}, "masking.entities", "list"),
        ({"styles": {"EMAIL": "hash"}}, "masking.hash_key", "required"),
        ({"styles": {"EMAIL": "rot13"}}, "masking.styles.EMAIL", "unknown style"),
        ({"styles": {"NOPE": "last4"}}, "masking.styles.NOPE", "unknown entity"),
        ({"custom": [{"name": "X", "pattern": "(?<=a)b"}]}, "masking.custom[0].pattern", "RE2"),
        ({"custom": [{"name": "X", "pattern": r"(a)\1"}]}, "masking.custom[0].pattern", "RE2"),
        ({"custom": [{"name": "X", "pattern": "a*"}]}, "masking.custom[0].pattern", "empty"),
        ({"custom": [{"name": "lower", "pattern": "a"}]}, "masking.custom[0].name", "upper-case"),
        ({"custom": [{"name": "X", "pattern": "a", "max_length": 0}]}, "masking.custom[0].max_length", ""),
        ({"deny_list": ["ok", ""]}, "masking.deny_list[1]", "non-empty"),
        ({"colour": "blue"}, "masking.colour", "unknown key"),
    ],
)
def test_config_errors(cfg: dict[str, object], path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        MaskingProfile.from_config(cfg)
    assert info.value.path == path
    assert fragment in info.value.message


def test_custom_pattern_deny_and_allow_lists() -> None:
    profile = MaskingProfile.from_config(
        {
            "custom": [{"name": "EMPLOYEE_ID", "pattern": r"\bEMP-\d{6}\b", "max_length": 10}],
            "deny_list": ["Project Falcon", "c++"],
            "allow_list": ["support@example.com"],
        }
    )
    text = "EMP-123456 on project falcon; mail support@example.com or bob@example.com; falconry; c++ ok"
    masked, counts = profile.mask(text)
    assert (
        masked
        == "[EMPLOYEE_ID] on [DENY_LIST]; mail support@example.com or [EMAIL]; falconry; [DENY_LIST] ok"
    )
    assert counts == {"EMPLOYEE_ID": 1, "DENY_LIST": 2, "EMAIL": 1}
    assert profile.entities >= {"EMPLOYEE_ID", "DENY_LIST", "EMAIL"}


def test_deny_list_respects_word_boundaries() -> None:
    profile = MaskingProfile.from_config({"entities": [], "deny_list": ["acme"]})
    assert profile.mask("ACME, Acme and acme-corp but not acmeology or subacme")[0] == (
        "[DENY_LIST], [DENY_LIST] and [DENY_LIST]-corp but not acmeology or subacme"
    )


def test_with_literals_masks_exact_strings_everywhere() -> None:
    key = "sk-live-abc123XYZ"
    base = default_profile()
    profile = base.with_literals([key, ""])
    assert "SECRET" in profile.entities
    assert profile.mask(f"key={key};x{key}y")[0] == "key=[SECRET];x[SECRET]y"
    assert base.mask(f"key={key}")[0] == f"key={key}"  # base unchanged
    assert profile.with_literals([]) is profile
    upstream = profile.with_literals(["tok-42"], entity="UPSTREAM_KEY")
    assert upstream.mask("tok-42 TOK-42")[0] == "[UPSTREAM_KEY] TOK-42"


@settings(deadline=None)
@given(parts=st.lists(st.integers(min_value=0, max_value=999), min_size=4, max_size=4),
       widths=st.lists(st.integers(min_value=1, max_value=3), min_size=4, max_size=4))
def test_dotted_quad_check_agrees_with_ipaddress(parts: list[int], widths: list[int]) -> None:
    # Zero-padded parts ("01", "007") included: ipaddress rejects leading zeros.
    quad = ".".join(str(p).zfill(w) for p, w in zip(parts, widths, strict=True))
    try:
        ipaddress.IPv4Address(quad)
        expected = True
    except ValueError:
        expected = False
    assert _dotted_quad_valid(quad.encode()) is expected
