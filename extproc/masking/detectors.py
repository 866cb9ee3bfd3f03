"""Built-in detectors: an RE2 pattern proposes candidates, a pure-Python validator decides.

Every validator sees the whole scanned text as UTF-8 bytes plus the candidate's byte span,
so it can check checksums (Luhn, IBAN mod-97), issuance rules (SSN) and a few bytes of
context on either side. Validators may look at most ``LEFT_CONTEXT`` bytes before and
``RIGHT_CONTEXT`` bytes after a candidate: the streaming masker relies on that bound to
know when a decision can no longer change.

Each detector also declares the characters a match can consist of (``alphabet``). The
streaming masker uses it to hold back only the trailing run of text that could still grow
into a match, instead of always holding ``max_length`` characters.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BUILTIN_ENTITIES",
    "LEFT_CONTEXT",
    "RIGHT_CONTEXT",
    "Detector",
    "Validator",
    "builtin_detectors",
    "iban_valid",
    "luhn_valid",
]

#: Bytes of already-seen text a validator (or RE2's ``\b``) may inspect before a match.
LEFT_CONTEXT = 8
#: Bytes after a match a validator may inspect (e.g. "." followed by a digit).
RIGHT_CONTEXT = 2

#: A validator returns the accepted end offset (it may shorten the candidate) or None.
Validator = Callable[[bytes, int, int], "int | None"]

BUILTIN_ENTITIES: tuple[str, ...] = (
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN",
    "IP_ADDRESS",
    "SECRET",
    "JWT",
    "PRIVATE_KEY",
)


@dataclass(frozen=True, slots=True)
class Detector:
    """One pattern for one entity. Several detectors may share an entity (IPv4 and IPv6)."""

    entity: str
    #: RE2 syntax. Matches longer than ``max_length`` bytes are rejected, so unbounded
    #: quantifiers are allowed and the streaming window stays bounded.
    pattern: str
    max_length: int
    #: Every character any match can contain; None means "anything" (see ``prefix``).
    alphabet: str | None
    validate: Validator | None = None
    #: For detectors whose alphabet is everything: the literal every match starts with.
    prefix: str | None = None
    #: Cheap byte substrings; if none occurs in the text the detector cannot match.
    triggers: tuple[bytes, ...] = ()
    case_insensitive: bool = False


_DIGITS = frozenset(b"0123456789")
_COLON_DOT = frozenset(b":.")
_NUM_JOINERS = frozenset(b".-/")
_DOT = frozenset(b".")
_WORD = frozenset((string.ascii_letters + string.digits + "_").encode())


def _at(data: bytes, i: int) -> int:
    return data[i] if 0 <= i < len(data) else -1


def _glued(data: bytes, s: int, e: int, joiners: frozenset[int]) -> bool:
    """True when the candidate is really a piece of a longer token (``1.2.3.4.5``, ``x123-45-6789``)."""
    before, after = _at(data, s - 1), _at(data, e)
    if before in _WORD or after in _WORD:
        return True
    if before in joiners and _at(data, s - 2) in _DIGITS:
        return True
    return after in joiners and _at(data, e + 1) in _DIGITS


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def _shorter(data: bytes, s: int, e: int, separators: bytes) -> list[int]:
    """``e`` and every earlier end just before a separator: a greedy grouped number may
    have swallowed a following, unrelated group ("4242 4242 4242 4242 123")."""
    ends = [e]
    for i in range(e - 1, s, -1):
        if data[i] in separators and data[i - 1] in _DIGITS:
            ends.append(i)
    return ends


def _card(data: bytes, s: int, e: int) -> int | None:
    for end in _shorter(data, s, e, b" -"):
        if _card_exact(data, s, end):
            return end
    return None


def _card_exact(data: bytes, s: int, e: int) -> bool:
    if _glued(data, s, e, _NUM_JOINERS):
        return False
    raw = data[s:e].decode("ascii")
    digits = "".join(ch for ch in raw if ch.isdigit())
    separators = {ch for ch in raw if not ch.isdigit()}
    # Issuer prefixes 2-6 cover Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay;
    # mixing separators ("4111 1111-1111 1111") is not how cards are written.
    if len(separators) > 1 or not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    return luhn_valid(digits)


def _ssn(data: bytes, s: int, e: int) -> int | None:
    if _glued(data, s, e, _NUM_JOINERS):
        return None
    area, group, serial = data[s:e].decode("ascii").split("-")
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return e


def _phone(data: bytes, s: int, e: int) -> int | None:
    for end in _shorter(data, s, e, b" -."):
        if _phone_exact(data, s, end):
            return end
    return None


def _phone_exact(data: bytes, s: int, e: int) -> bool:
    if _glued(data, s, e, _NUM_JOINERS):
        return False
    raw = data[s:e].decode("ascii")
    digits = "".join(ch for ch in raw if ch.isdigit())
    if raw.startswith("+") and not raw.startswith("+1"):
        return 8 <= len(digits) <= 15
    national = digits[1:] if raw.startswith("+1") else digits
    # NANP: area code and exchange never start with 0 or 1.
    return len(national) == 10 and national[0] not in "01" and national[3] not in "01"


def _iban(data: bytes, s: int, e: int) -> int | None:
    # A spaced IBAN may be followed by an unrelated 4-character group; drop trailing
    # groups until the checksum holds.
    while e - s >= 15:
        if iban_valid(data[s:e].decode("ascii").replace(" ", "")):
            return e
        cut = data.rfind(b" ", s, e)
        if cut == -1:
            return None
        e = cut
    return None


def _ipv4(data: bytes, s: int, e: int) -> int | None:
    if _glued(data, s, e, _DOT):
        return None
    try:
        ipaddress.IPv4Address(data[s:e].decode("ascii"))
    except ValueError:
        return None
    return e


def _ipv6(data: bytes, s: int, e: int) -> int | None:
    if _at(data, s - 1) in _WORD or _at(data, s - 1) in _COLON_DOT or _at(data, e) in _WORD:
        return None
    if _at(data, e) == 58 or (_at(data, e) == ord(".") and _at(data, e + 1) in _DIGITS):
        return None
    text = data[s:e].decode("ascii")
    # "::1", "a::b" and friends are too ambiguous in prose and code (std::vector).
    groups = [group for group in text.split(":") if group]
    if len(groups) < 2 or sum(map(len, groups)) < 5:
        return None
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return e


def _secret(data: bytes, s: int, e: int) -> int | None:
    if _at(data, e) in _WORD or _at(data, e) == ord("-"):
        return None  # ran into the length cap: not the whole token
    raw = data[s:e]
    if raw.startswith(b"sk-") and not any(ch in _DIGITS for ch in raw[3:]):
        return None  # "sk-learn-style-words" is prose, real keys contain digits
    return e


def _jwt(data: bytes, s: int, e: int) -> int | None:
    after = _at(data, e)
    if after in _WORD or after == ord("-"):
        return None
    return e


_ALNUM = string.ascii_letters + string.digits
_B64URL = _ALNUM + "-_"

EMAIL_PATTERN = (
    r"\b[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,6}"
    r"[A-Za-z]{2,24}\b"
)
PHONE_PATTERN = (
    r"\+1[ .-]?\(\d{3}\) ?\d{3}[ .-]\d{4}"
    r"|\+[1-9]\d{0,2}(?:[ -]\d{1,4}){2,5}"
    r"|\+[1-9]\d{7,14}"
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"
    r"|\b\d{3}-\d{3}-\d{4}|\b\d{3}\.\d{3}\.\d{4}|\b\d{3} \d{3} \d{4}"
)
CARD_PATTERN = (
    r"\b(?:\d{4}[ -]){3}\d{4}(?:[ -]\d{1,3})?\b"
    r"|\b\d{4}[ -]\d{6}[ -]\d{4,5}\b"
    r"|\b\d{13,19}\b"
)
SSN_PATTERN = r"\b\d{3}-\d{2}-\d{4}\b"
IBAN_PATTERN = (
    r"\b[A-Z]{2}\d{2}(?:(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?|[A-Z0-9]{11,30})\b"
)
IPV4_PATTERN = r"\b(?:\d{1,3}\.){3}\d{1,3}\b"
IPV6_PATTERN = r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})"
API_KEY_REGEX = (
    r"\bsk-[A-Za-z0-9_-]{20,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{22,}"
    r"|\bxox[baprs]-[A-Za-z0-9-]{10,}"
)
JWT_PATTERN = r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
PEM_PREFIX = "-----BEGIN "
PEM_PATTERN = (
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?s:.)*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
)


def builtin_detectors() -> dict[str, tuple[Detector, ...]]:
    """Detectors by entity, in priority order (earlier wins a tie on start and length)."""
    return {
        "PRIVATE_KEY": (
            Detector(
                "PRIVATE_KEY", PEM_PATTERN, 8192, None, prefix=PEM_PREFIX, triggers=(b"-----BEGIN",)
            ),
        ),
        "JWT": (Detector("JWT", JWT_PATTERN, 8192, _B64URL + ".", _jwt, triggers=(b"eyJ",)),),
        "SECRET": (
            Detector(
                "SECRET",
                API_KEY_REGEX,
                512,
                _B64URL,
                _secret,
                triggers=(b"sk-", b"AKIA", b"ASIA", b"gh", b"github_pat_", b"xox"),
            ),
        ),
        "EMAIL": (Detector("EMAIL", EMAIL_PATTERN, 480, _ALNUM + "._%+-@", triggers=(b"@",)),),
        "IBAN": (Detector("IBAN", IBAN_PATTERN, 42, string.ascii_uppercase + string.digits + " ", _iban),),
        "CREDIT_CARD": (Detector("CREDIT_CARD", CARD_PATTERN, 23, string.digits + " -", _card),),
        "US_SSN": (Detector("US_SSN", SSN_PATTERN, 11, string.digits + "-", _ssn, triggers=(b"-",)),),
        "PHONE": (Detector("PHONE", PHONE_PATTERN, 24, string.digits + "+()-. ", _phone),),
        "IP_ADDRESS": (
            Detector("IP_ADDRESS", IPV4_PATTERN, 15, string.digits + ".", _ipv4, triggers=(b".",)),
            Detector("IP_ADDRESS", IPV6_PATTERN, 45, string.hexdigits + ":.", _ipv6, triggers=(b":",)),
        ),
    }
