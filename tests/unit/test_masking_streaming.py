"""Streaming masker: any chunking gives exactly mask(whole); hold-back stays bounded."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.masking import HOLD_MARGIN, ByteStreamMasker, MaskingProfile, StreamingMasker, default_profile
from extproc.masking.normalised import NormalisedStreamingMasker

PROFILE = default_profile()
CUSTOM = MaskingProfile.from_config(
    {
        "custom": [{"name": "TICKET", "pattern": r"\bTCK-[0-9]{4,8}\b", "max_length": 12}],
        "deny_list": ["falcon", "Ünïcode term"],
        "styles": {"EMAIL": "hash", "CREDIT_CARD": "last4"},
        "hash_key": "test",
    }
).with_literals(["sk-live-SECRET99"])

PII_VALUES = [
    "bob@example.com",
    "fatima_cohen@acme-inc.io",
    "(275) 474-9030",
    "+1-983-264-4179",
    "+44 20 7946 0958",
    "371.751.3489",
    "4242 4242 4242 4242",
    "3404 090161 03394",
    "6011111111111117",
    "257-28-8896",
    "DE89 3704 0044 0532 0130 00",
    "NL91ABNA0417164300",
    "192.168.100.200",
    "2001:db8::8a2e:370:7334",
    "sk-ant-api03-JFIoxSLivuGvIL6P_8odNXR1yHnGA3cCcYseu52C",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_2Ty04L4VTxzb7pyd52kynVgxawdjESePbR23",
    "xoxb-01504804605-54903151124-9AMvob9PSSlWXWGVKPxtsyA7",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB2Zb6r\n-----END EC PRIVATE KEY-----",
    "+49(0)30 1234 5678",
    "+44 (0)20 7946 0018",
    "+39 061234567",
    "+34912 345 678",
    "(212)555-0147x22",
    "001-212-555-0147",
    "+1 212 555 0147 ext. 22",
    "04 91 23 45 67",
    "020 7946 0018",
    "(011) 4567-8901",
    "03-1234-5678",
    "o'brien@example.com",
    "2221 0000 0000 0009",
    "TCK-12345",
    "falcon",
    "Ünïcode term",
    "sk-live-SECRET99",
]
FILLERS = [
    " ",
    "\n",
    ". ",
    ", ",
    "the ",
    "Grüße 👋 ",
    "v2.14.1 ",
    "2024-03-15 ",
    "17:25 ",
    "ORD-457456 ",
    "build 571331461 ",
    "port 8080 ",
    "Version ",
    "order no. ",
    "10.2.0.1",
    "IT60 X054 2811 1010 0000 0123 457",
    "4111 1111 1111 1112",
    "000-12-3456",
    " ext. ",
    "(0)",
    "+44",
    "-----BEGIN CERTIFICATE-----\n",
    "-",
    "@",
    "1",
    "4242",
    "::",
    "sk-",
    "eyJ",
    "+1",
    "(",
    "DE",
    ".",
    "中文",
    "x",
]
pieces = st.lists(st.sampled_from(PII_VALUES) | st.sampled_from(FILLERS) | st.text(max_size=6), max_size=25)


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _stream(profile: MaskingProfile, chunks: list[str]) -> tuple[str, int]:
    masker = profile.streaming()
    out = []
    max_held = 0
    for chunk in chunks:
        out.append(masker.feed(chunk))
        max_held = max(max_held, masker.held)
    out.append(masker.flush())
    assert masker.held == 0
    return "".join(out), max_held


SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(parts=pieces, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_any_chunking_equals_whole_mask(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)
    for profile in (PROFILE, CUSTOM):
        expected, counts = profile.mask(text)
        masker = profile.streaming()
        got = "".join(masker.feed(c) for c in _chunks(text, cuts)) + masker.flush()
        assert got == expected
        assert masker.counts == counts


@SETTINGS
@given(parts=pieces)
def test_char_by_char_equals_whole_and_held_is_bounded(parts: list[str]) -> None:
    text = "".join(parts)
    for profile in (PROFILE, CUSTOM):
        got, max_held = _stream(profile, list(text))
        assert got == profile.mask(text)[0]
        assert max_held <= profile.max_match_length + HOLD_MARGIN


def _without_dominance(profile: MaskingProfile) -> MaskingProfile:
    """The profile with an engine that asks every detector for its hold-back."""
    engine = copy.copy(profile.engine)
    engine._extra = (None,) * len(engine._extra)
    engine._fast = None
    clone = copy.copy(profile)
    clone.engine = engine
    return clone


PLAIN = {id(PROFILE): _without_dominance(PROFILE), id(CUSTOM): _without_dominance(CUSTOM)}


def _unhurried(masker: Any) -> Any:
    """The same masker without its shortcuts: no pinned runs, no remembered hold-backs,
    no dominance, so every feed asks every detector from scratch."""
    masker._profile = PLAIN[id(masker._profile)]
    masker._pins = ()
    masker._bounds = None
    return masker


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from("aeAZsgx09 -.:@+(#_'\né"), max_size=60),
       lo=st.integers(min_value=0, max_value=60))
def test_dominance_never_changes_the_hold_back(text: str, lo: int) -> None:
    lo = min(lo, len(text))
    for profile in (PROFILE, CUSTOM):
        plain = PLAIN[id(profile)].engine
        assert profile.engine.undetermined_start(text, lo) == plain.undetermined_start(text, lo)


@SETTINGS
@given(parts=pieces, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
       by_char=st.booleans())
def test_shortcuts_never_change_what_is_emitted_when(parts: list[str], cuts: list[int], by_char: bool) -> None:
    # Pinned runs and remembered hold-backs only skip work: after every feed the output
    # is the same as the full step's, not merely the same in the end.
    text = "".join(parts)
    chunks = list(text) if by_char else _chunks(text, cuts)
    for profile in (PROFILE, CUSTOM):
        for make in (StreamingMasker, NormalisedStreamingMasker):
            fast, slow = make(profile), _unhurried(make(profile))
            for chunk in chunks:
                assert fast.feed(chunk) == slow.feed(chunk)
                assert fast.held == slow.held
            assert fast.flush() == slow.flush()


@SETTINGS
@given(parts=pieces, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_no_output_contains_a_detected_value(parts: list[str], cuts: list[int]) -> None:
    # Separated so that no undetected, glued copy of a value ("x257-28-8896") exists, and
    # so that no context word ("Version ", "order no. ") reaches a value in another part.
    text = "\n\n\n\n\n".join(parts)
    values = [text[s.start : s.end] for s in PROFILE.find(text)]
    got, _ = _stream(PROFILE, _chunks(text, cuts))
    for value in values:
        assert value not in got


@SETTINGS
@given(
    parts=pieces,
    junk=st.binary(max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_byte_chunking_including_inside_characters(parts: list[str], junk: bytes, cuts: list[int]) -> None:
    data = "".join(parts).encode() + junk  # junk may be invalid UTF-8
    expected = PROFILE.mask(data.decode("utf-8", "replace"))[0].encode()
    masker = ByteStreamMasker(StreamingMasker(PROFILE))
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    got = b"".join(masker.feed(data[a:b]) for a, b in itertools.pairwise(bounds)) + masker.flush()
    assert got == expected


def test_prose_is_emitted_promptly() -> None:
    masker = PROFILE.streaming()
    assert masker.feed("Hello there, how are you") == "Hello there, how are "
    assert masker.held == len("you")
    assert masker.feed(" today?\n") == "you today?\n"
    assert masker.held == 0


def test_split_email_is_held_then_masked() -> None:
    masker = PROFILE.streaming()
    assert masker.feed("Write to bob@exa") == "Write to "
    assert masker.held == len("bob@exa")
    assert masker.feed("mple.com today") == "[EMAIL] "
    assert masker.flush() == "today"
    assert masker.counts == {"EMAIL": 1}


def test_pem_block_is_held_until_its_end_and_no_longer() -> None:
    masker = PROFILE.streaming()
    assert masker.feed("key: -----BEGIN RSA PRIVATE KEY-----\nMIIB") == "key: "
    assert masker.feed("Ogx\n") == ""
    # "done" could still be the start of an e-mail address until HOLD_MARGIN more chars.
    assert masker.feed("-----END RSA PRIVATE KEY----- done ") == "[PRIVATE_KEY] "
    assert masker.feed("now") == "done "
    # A certificate header is not a key: released once the header is complete.
    assert masker.feed(" -----BEGIN CERTIFICATE-----\nMIIB") == "now -----BEGIN CERTIFICATE-----\n"
    assert masker.held == len("MIIB")


def test_held_never_exceeds_bound_for_long_runs() -> None:
    masker = PROFILE.streaming()
    for _ in range(2000):
        masker.feed("abcdefghij")  # an endless base64-like run
        assert masker.held <= PROFILE.max_match_length + HOLD_MARGIN
    assert masker.held > 0
    masker.flush()


def test_flush_resets_for_a_new_stream() -> None:
    masker = PROFILE.streaming()
    masker.feed("mail bob@example.com")
    assert masker.flush() == "[EMAIL]"
    assert masker.feed("x") == ""
    assert masker.flush() == "x"
