"""Built-in detectors: an RE2 pattern proposes candidates, a pure-Python validator decides.

Every validator sees the whole scanned text as UTF-8 bytes plus the candidate's byte span,
so it can check checksums (Luhn, IBAN mod-97), issuance rules (SSN) and a few bytes of
context on either side. Validators may look at most ``LEFT_CONTEXT`` bytes before and
``RIGHT_CONTEXT`` bytes after a candidate: the streaming masker relies on that bound to
know when a decision can no longer change.

Each detector also declares the characters a match can consist of (``alphabet``). The
streaming masker uses it to hold back only the trailing run of text that could still grow
into a match, instead of always holding ``max_length`` characters.

A validator can also *claim* a candidate it rejects (``Keep``): an IBAN-shaped string with
a bad checksum, a grouped card number that fails Luhn, an SSN-shaped string with an
impossible area, a dotted quad after "Version". A claim takes part in the engine's
left-to-right resolution like a match but is left as it is, so no other detector fires
inside a token that one detector has already judged (``IT60 X054 ...`` is kept whole,
not masked as a card from the inside).
"""

from __future__ import annotations

import ipaddress
import re
import string
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from extproc.masking.phone import PHONE_ALPHABET, PHONE_MAX_LENGTH, PHONE_PATTERN, phone_rules

__all__ = [
    "BUILTIN_ENTITIES",
    "LEFT_CONTEXT",
    "RIGHT_CONTEXT",
    "Detector",
    "Keep",
    "Validator",
    "builtin_detectors",
    "iban_valid",
    "luhn_valid",
]

#: Bytes of already-seen text a validator (or RE2's ``\b``) may inspect before a match:
#: enough for the context words ("Version", "order no.") that decide ambiguous kinds.
LEFT_CONTEXT = 32
#: Bytes after a match any validator may inspect ("." followed by a digit; ",73 " after a
#: digit group makes it an amount, not a phone number). Each detector declares its own
#: ``right_context`` (at most this), so the others hold back no more than they need.
RIGHT_CONTEXT = 5


@dataclass(frozen=True, slots=True)
class Keep:
    """A rejected candidate that is still claimed: ``data[start:end]`` stays as it is and no
    other detector may match inside it."""

    end: int
    reason: str


#: A validator returns the accepted end offset (it may shorten the candidate), a ``Keep``
#: claim, or None (not this detector's business).
Validator = Callable[[bytes, int, int], "int | Keep | None"]
#: Why a span was (or was not) taken, for ``extproc mask --explain``; called only there.
Explainer = Callable[[bytes, int, int], str]

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
    #: Cheap byte substrings, one of which occurs inside every match: text without any
    #: (from the scan start on) cannot match.
    triggers: tuple[bytes, ...] = ()
    case_insensitive: bool = False
    #: Every character a match can end with (None: any of ``alphabet``).
    ends: str | None = None
    #: Bytes after a match its validator may read (at most ``RIGHT_CONTEXT``).
    right_context: int = 2
    #: Every character a match can start with (None: any of ``alphabet``); lets streaming
    #: release the head of a held run that no match can begin in.
    starts: str | None = None
    #: Characters at least one of which every match contains (None: no such promise);
    #: text without any of them past the scan start skips the detector's regex.
    needs: str | None = None
    #: Short name of the rule, shown by ``--explain`` ("luhn+bin", "libphonenumber").
    rule: str = "pattern"
    explain: Explainer | None = None


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
    """ISO 13616: known country, its length and BBAN format (schwifty's registry), mod-97."""
    return _iban_verdict(compact)[0]


@lru_cache(maxsize=4096)
def _iban_verdict(compact: str) -> tuple[bool, str]:
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False, "not IBAN-shaped"
    # mod-97 first: cheap, and it rejects 96 of 97 random strings before schwifty runs.
    rearranged = compact[4:] + compact[:4]
    if int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 != 1:
        return False, "IBAN check digits (mod 97) fail"
    # Imported on first use (schwifty brings pycountry): most processes never judge an IBAN.
    from schwifty import IBAN
    from schwifty.exceptions import SchwiftyException

    try:
        iban = IBAN(compact)
    except SchwiftyException as exc:
        return False, f"not a valid {compact[:2]} IBAN: {exc.__class__.__name__}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            iban.bban.validate_national_checksum()
            national = "national check digits pass"
        except SchwiftyException:
            # Still masked: ISO check digits, the country's length and BBAN format all
            # hold, and a mistyped account number is still someone's account data.
            national = "national check digits fail (masked anyway)"
    return True, f"{compact[:2]} length, BBAN format and mod-97 pass; {national}"


def _shorter(data: bytes, s: int, e: int, separators: bytes) -> list[int]:
    """``e`` and every earlier end just before a separator: a greedy grouped number may
    have swallowed a following, unrelated group ("4242 4242 4242 4242 123")."""
    ends = [e]
    for i in range(e - 1, s, -1):
        if data[i] in separators and data[i - 1] in _DIGITS:
            ends.append(i)
    return ends


# Issuer identification ranges in use (ISO/IEC 7812 as the schemes publish them):
# (first prefix, last prefix, allowed lengths). Prefixes in a row have equal length.
_CARD_RANGES: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({13, 16, 19})),                 # Visa (incl. Electron)
    ("51", "55", frozenset({16})),                       # Mastercard
    ("2221", "2720", frozenset({16})),                   # Mastercard 2-series
    ("34", "34", frozenset({15})), ("37", "37", frozenset({15})),  # American Express
    ("6011", "6011", frozenset(range(16, 20))),          # Discover
    ("644", "649", frozenset(range(16, 20))),
    ("65", "65", frozenset(range(16, 20))),              # Discover / RuPay
    ("622126", "622925", frozenset(range(16, 20))),      # Discover co-branded UnionPay
    ("62", "62", frozenset(range(16, 20))),              # UnionPay
    ("81", "82", frozenset(range(16, 20))),              # UnionPay 81, RuPay 81/82
    ("3528", "3589", frozenset(range(16, 20))),          # JCB
    ("300", "305", frozenset(range(14, 20))),            # Diners Club
    ("3095", "3095", frozenset(range(14, 20))),
    ("36", "36", frozenset(range(14, 20))),
    ("38", "39", frozenset(range(16, 20))),
    ("2200", "2204", frozenset(range(16, 20))),          # Mir
    ("50", "50", frozenset(range(13, 20))),              # Maestro, Verve, RuPay 508
    ("56", "58", frozenset(range(13, 20))),              # Maestro
    ("60", "60", frozenset(range(16, 20))),              # RuPay
    ("63", "63", frozenset(range(13, 20))),              # Maestro, InstaPayment
    ("67", "67", frozenset(range(13, 20))),              # Maestro
    ("9792", "9792", frozenset({16})),                   # Troy
)


def card_issuer_known(digits: str) -> bool:
    """True when the number's prefix and length fall in an issued card range."""
    n = len(digits)
    for lo, hi, lengths in _CARD_RANGES:
        if n in lengths and lo <= digits[: len(lo)] <= hi:
            return True
    return False


_GROUPED_CARD = re.compile(r"[1-9]\d{3}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|[1-9]\d{3}([ -])\d{6}\2\d{4,5}")


def _card(data: bytes, s: int, e: int) -> int | Keep | None:
    for end in _shorter(data, s, e, b" -"):
        if _card_exact(data, s, end):
            return end
    if not _glued(data, s, e, _NUM_JOINERS) and _GROUPED_CARD.fullmatch(data[s:e].decode("ascii")):
        # Written like a card, checks fail: keep it whole so no phone or SSN is found inside.
        return Keep(e, "grouped like a card number, but Luhn or issuer range fails")
    return None


def _card_exact(data: bytes, s: int, e: int) -> bool:
    if _glued(data, s, e, _NUM_JOINERS):
        return False
    raw = data[s:e].decode("ascii")
    digits = "".join(ch for ch in raw if ch.isdigit())
    separators = {ch for ch in raw if not ch.isdigit()}
    # Mixing separators ("4111 1111-1111 1111") is not how cards are written.
    if len(separators) > 1 or not 13 <= len(digits) <= 19 or not card_issuer_known(digits):
        return False
    return luhn_valid(digits)


def _card_explain(data: bytes, s: int, e: int) -> str:
    digits = "".join(ch for ch in data[s:e].decode("ascii") if ch.isdigit())
    return (f"{len(digits)} digits; issuer range {'known' if card_issuer_known(digits) else 'unknown'}; "
            f"Luhn {'passes' if luhn_valid(digits) else 'fails'}")


def _ssn(data: bytes, s: int, e: int) -> int | Keep | None:
    if _glued(data, s, e, _NUM_JOINERS):
        return None
    area, group, serial = data[s:e].decode("ascii").split("-")
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return Keep(e, "SSN-shaped, but the SSA never issues this area, group or serial")
    return e


def _phone_validator(regions: Sequence[str] | None) -> tuple[Validator, Explainer]:
    codes = tuple(regions) if regions is not None else None

    # The region table (libphonenumber's metadata) is built on the first candidate.
    def validate(data: bytes, s: int, e: int) -> int | None:
        return phone_rules(codes).validate(data, s, e)

    def explain(data: bytes, s: int, e: int) -> str:
        rules = phone_rules(codes)
        verdict = rules.decide(data, s, e)
        if verdict is None:
            return rules.why_not(data, s, e)
        return verdict[1]

    return validate, explain


def _iban(data: bytes, s: int, e: int) -> int | Keep | None:
    # A spaced IBAN may be followed by an unrelated 4-character group; drop trailing
    # groups until the checks hold.
    full = e
    while e - s >= 15:
        if iban_valid(data[s:e].decode("ascii").replace(" ", "")):
            return e
        cut = data.rfind(b" ", s, e)
        if cut == -1:
            break
        e = cut
    if data[s:s + 2].decode("ascii") in _IBAN_COUNTRIES and not _glued(data, s, full, frozenset()):
        return Keep(full, "IBAN-shaped, but the IBAN checks fail")
    return None


def _iban_explain(data: bytes, s: int, e: int) -> str:
    return _iban_verdict(data[s:e].decode("ascii").replace(" ", ""))[1]


_VERSION_GAP = frozenset(b" \t:=.'\"#([")
_LETTERS = frozenset(string.ascii_letters.encode())
# Words after which a dotted quad is a version or section number, not an address.
_VERSION_BEFORE = re.compile(
    rb"(?i)(?<![a-z])(?:version|versions|ver|vers|v|release|rel|build|bld|section|sec|sect|chapter|ch|"
    rb"firmware|fw|revision|rev|patch|update|kb|article|art|clause|paragraph|para|figure|fig|table|step|"
    rb"item|rule|rfc|iso|standard|std|schema|api|sdk|driver|bios|os|app|package|pkg|tag|"
    rb"versi\xc3\xb3n|versione|vers\xc3\xa3o|versie|abschnitt|kapitel|artikel|ausgabe|paragraphe|"
    rb"secci\xc3\xb3n|sezione|se\xc3\xa7\xc3\xa3o|hoofdstuk)[\s:=.'\"#(\[]{0,4}\Z"
    rb"|\xc2\xa7\s?\Z"
)


def _ipv4(data: bytes, s: int, e: int) -> int | Keep | None:
    if _glued(data, s, e, _DOT) or not _dotted_quad_valid(data[s:e]):
        return None
    # Only a letter (or "§") shortly before can make it a version: skip the regex otherwise.
    j = s - 1
    while j >= 0 and s - j <= 4 and data[j] in _VERSION_GAP:
        j -= 1
    if j >= 0 and (data[j] in _LETTERS or data[j] >= 0x80) \
            and _VERSION_BEFORE.search(data, max(0, s - 24), s) is not None:
        return Keep(e, "a dotted number after a word such as Version, release, build or section")
    return e


def _dotted_quad_valid(raw: bytes) -> bool:
    """What ``ipaddress.IPv4Address`` accepts, for the pattern's shape (four dot-separated
    runs of 1-3 digits): each part at most 255, no leading zero. ipaddress costs ~10 us a
    call (exceptions, objects), a tenth of the time of a dense scan; this is ~1 us."""
    for part in raw.split(b"."):
        if (len(part) > 1 and part[0] == 0x30) or int(part) > 255:
            return False
    return True


def _ipv4_explain(data: bytes, s: int, e: int) -> str:
    verdict = _ipv4(data, s, e)
    if verdict is None:
        return "not a valid IPv4 address, or part of a longer dotted number"
    return "valid IPv4 address with no version or section word before it"


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
# ISO 13616 countries (the IBAN registry schwifty ships): only these claim a failing shape.
_IBAN_COUNTRIES = frozenset(
    "AD AE AL AT AZ BA BE BG BH BI BR BY CH CR CY CZ DE DJ DK DO EE EG ES FI FK FO FR GB GE GI GL GR GT "
    "HN HR HU IE IL IQ IS IT JO KW KZ LB LC LI LT LU LV LY MC MD ME MK MN MR MT MU NI NL NO OM PK PL PS "
    "PT QA RO RS RU SA SC SD SE SI SK SM SO ST SV TL TN TR UA VA VG XK YE".split()
)

# The local part may hold an apostrophe (o'brien@...): the whole address is one token.
EMAIL_PATTERN = (
    r"\b[A-Za-z0-9][A-Za-z0-9._%+'-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,6}"
    r"[A-Za-z]{2,24}\b"
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


def builtin_detectors(phone_regions: Sequence[str] | None = None) -> dict[str, tuple[Detector, ...]]:
    """Detectors by entity, in priority order (earlier wins a tie on start and length).

    ``phone_regions``: regions whose national phone formats are recognised (default
    ``DEFAULT_PHONE_REGIONS``); international forms are recognised for every region.
    """
    phone_validate, phone_explain = _phone_validator(phone_regions)
    return {
        "PRIVATE_KEY": (
            Detector(
                "PRIVATE_KEY", PEM_PATTERN, 8192, None, prefix=PEM_PREFIX, triggers=(b"-----BEGIN",),
                rule="pem-block",
            ),
        ),
        "JWT": (Detector("JWT", JWT_PATTERN, 8192, _B64URL + ".", _jwt, triggers=(b"eyJ",), starts="e",
                         rule="jwt-shape"),),
        "SECRET": (
            Detector(
                "SECRET",
                API_KEY_REGEX,
                512,
                _B64URL,
                _secret,
                triggers=(b"sk-", b"AKIA", b"ASIA", b"gh", b"github_pat_", b"xox"),
                starts="sAgx",
                rule="vendor-key-prefix",
            ),
        ),
        "EMAIL": (Detector("EMAIL", EMAIL_PATTERN, 480, _ALNUM + "._%+-@'", triggers=(b"@",), starts=_ALNUM,
                           rule="addr-spec"),),
        "IBAN": (Detector("IBAN", IBAN_PATTERN, 42, string.ascii_uppercase + string.digits + " ", _iban,
                          starts=string.ascii_uppercase, needs=string.digits,
                          rule="iso13616+schwifty", explain=_iban_explain),),
        "CREDIT_CARD": (Detector("CREDIT_CARD", CARD_PATTERN, 23, string.digits + " -", _card,
                                 starts=string.digits, needs=string.digits,
                                 rule="luhn+issuer-range", explain=_card_explain),),
        "US_SSN": (Detector("US_SSN", SSN_PATTERN, 11, string.digits + "-", _ssn, triggers=(b"-",),
                            starts=string.digits, needs=string.digits, rule="ssa-issuance"),),
        "PHONE": (Detector("PHONE", PHONE_PATTERN, PHONE_MAX_LENGTH, PHONE_ALPHABET, phone_validate,
                           starts="+(" + string.digits, ends=string.digits, right_context=5,
                           needs=string.digits, rule="libphonenumber",
                           explain=phone_explain),),
        "IP_ADDRESS": (
            Detector("IP_ADDRESS", IPV4_PATTERN, 15, string.digits + ".", _ipv4, triggers=(b".",),
                     starts=string.digits, needs=string.digits, rule="ipv4+context", explain=_ipv4_explain),
            Detector("IP_ADDRESS", IPV6_PATTERN, 45, string.hexdigits + ":.", _ipv6, triggers=(b":",),
                     starts=string.hexdigits + ":", rule="ipv6"),
        ),
    }
