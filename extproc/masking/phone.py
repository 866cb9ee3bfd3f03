"""Phone numbers: a cheap RE2 candidate scan, then libphonenumber decides per region.

The scan proposes any run that could be written as a phone number (digits with spaces,
dashes, dots, slashes, an international ``+``/``00``/``011`` prefix, a ``(0)`` trunk
marker, bracketed area codes, an extension). The validator then

* throws out shapes that are something else: dotted quads, dates and timestamps, digit
  runs after words such as "order" or "invoice", bare digit runs written without any
  phone punctuation;
* parses international forms (``+``, ``00``, ``011``) for every region libphonenumber
  knows, and national forms for a configured list of regions (the trunk prefix, where
  the region has one, must be written: ``020 7946 0018`` for GB, not ``20 7946 0018``);
* accepts the longest prefix of the candidate that libphonenumber calls a *valid*
  number (not merely a possible one), so "+44 20 7946 0018 2 times" masks the number only.

libphonenumber is consulted only after a cheap length and national-pattern filter, so a
digit run costs a handful of regex checks unless it really looks like a number.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

# phonenumbers is imported inside the functions that need it: the CLI and the server
# import this package at start, and libphonenumber is only needed once a candidate is judged.
__all__ = [
    "DEFAULT_PHONE_REGIONS",
    "PHONE_ALPHABET",
    "PHONE_MAX_LENGTH",
    "PHONE_PATTERN",
    "PhoneRules",
    "known_regions",
    "phone_rules",
]

#: National forms are recognised for these regions; international forms for every region.
#: US covers the whole NANP (CA and the Caribbean share the +1 plan).
DEFAULT_PHONE_REGIONS: tuple[str, ...] = (
    "US", "CA", "GB", "DE", "FR", "NL", "ES", "IT", "PT", "BR", "IN", "AU", "JP", "CH", "AT", "BE", "SE", "PL",
)

# Where people write national numbers without the trunk prefix as a matter of course:
# Brazilian area codes in brackets ("(11) 94567-8901") and Indian mobiles ("98765 43210").
_TRUNK_OPTIONAL = frozenset({"BR", "IN"})
_MEMO_SIZE = 8192

_EXT = r"(?:,? ?(?:[xX]|[eE][xX][tT](?:[nN]|[eE][nN][sS][iI][oO][nN])?\.?|#) ?\d{1,6})"
# A national number that starts with neither "+", "(" nor a trunk zero has at least nine
# digits (US/CA 10, ES/PT/PL 9, IT/IN mobiles 10): asking RE2 for that keeps dates and
# short numbers ("2024-03-15", "15.03.2024") from ever reaching the validator.
PHONE_PATTERN = (
    r"(?:(?:\+ ?|\(|\b0)\d?[\d ()./-]{5,30}\d|\b[1-9](?:[ ()./-]{0,2}\d){8,20})" + _EXT + "?"
)
#: Every character a candidate can contain (the streaming hold-back works on it).
PHONE_ALPHABET = "0123456789+()./- ,#xXeEtTnNsSiIoO"
#: "+44 (0)20 7946 0018 extension 123456" with room to spare.
PHONE_MAX_LENGTH = 56

_EXT_TAIL = re.compile(_EXT + r"\Z")
_DIGIT = frozenset(b"0123456789")
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_SEPARATORS = frozenset(" .-/")
# "2024-03-15" (also followed by an hour: "2024-03-15 14" before ":30").
_DATE_LEAD = re.compile(r"(?:19|20)\d\d[-./ ](?:0?[1-9]|1[0-2])[-./ ](?:0?[1-9]|[12]\d|3[01])(?!\d)")
_DATE_LEAD_B = re.compile(_DATE_LEAD.pattern.encode())
_NON_DIGITS = bytes(set(range(256)) - set(b"0123456789"))
# "15.03.2024", "03/15/24": only the whole candidate ("01-23-45-67-89" is a French number).
_DATE_DMY = re.compile(r"(?:0?[1-9]|[12]\d|3[01])([-./])(?:0?[1-9]|[12]\d|3[01])\1(?:19|20)?\d\d")
# NANP: area code and exchange never start with 0 or 1; written 3-3-4 or (3) 3-4.
_NANP_DIGITS = re.compile(r"[2-9]\d\d[2-9]\d{6}")
_NANP_NATIONAL = re.compile(r"(?:1[ .-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d([ .-]))[2-9]\d\d([ .-])\d{4}")
_NANP_SHAPE = re.compile(r"(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}([ .-]))\d{3}([ .-])\d{4}")
# A national-looking run right after a bare country code ("+55 61 9141-7776") belongs to
# that international number; when the whole fails, the tail must not pass as national.
_AFTER_COUNTRY_CODE = re.compile(rb"(?:\+|(?<!\d)00)(\d{1,3})[ .-]?\Z")


@lru_cache(maxsize=1)
def _calling_codes() -> frozenset[bytes]:
    import phonenumbers

    return frozenset(str(cc).encode() for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Words after which a digit run is an identifier, not a phone number (English and the
# languages of the default regions). Compared lower-case against the last two words.
_NOT_A_PHONE_BEFORE = frozenset(
    "order orders ord invoice inv ticket ref reference case tracking shipment parcel sku serial sn po "
    "isbn issn ean upc build version release batch lot id "
    "auftrag bestellung bestellnummer rechnung kundennummer commande facture pedido factura ordine fattura "
    "bestelling factuur encomenda fatura zamowienie faktura".split()
)
# "Phone number 020 ..." must stay a phone even though "number" is neutral.
_PHONE_WORDS = frozenset(
    "phone tel tele telephone telefon telefono telefone telefoon téléphone mobile mob cell cellphone fax call "
    "contact whatsapp handy portable móvil movil cellulare celular gsm".split()
)
_LEFT_WORDS = re.compile(
    rb"(?<![A-Za-z\xc0-\xff])([A-Za-z\xc0-\xff]+)[^A-Za-z\xc0-\xff\n]{0,4}"
    rb"(?:([A-Za-z\xc0-\xff]+)[^A-Za-z\xc0-\xff\n]{0,4})?\Z"
)


@dataclass(frozen=True, slots=True)
class _Region:
    code: str
    country_code: int
    trunk: str | None
    trunk_required: bool
    lengths: frozenset[int]
    general: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class PhoneRules:
    """The compiled region table; immutable, shared by every scan with these regions."""

    regions: tuple[_Region, ...]
    #: US or CA among the national regions: well-formed NANP numbers count even when
    #: libphonenumber does not know the area code yet.
    nanp: bool = False
    #: Memo of ``_accepted`` by candidate bytes (bounded): the same numbers recur in a stream.
    _memo: dict[bytes, tuple[tuple[int, bool, str], ...]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    @property
    def region_codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.regions)

    def validate(self, data: bytes, s: int, e: int) -> int | None:
        """The accepted end of a phone candidate ``data[s:e]``, or None."""
        verdict = self.decide(data, s, e)
        return verdict[0] if verdict is not None else None

    def decide(self, data: bytes, s: int, e: int) -> tuple[int, str] | None:
        """``(end, reason)`` for an accepted candidate, None when it is not a phone number."""
        before = data[s - 1] if s > 0 else -1
        if before in _WORD or before == 0x2B or (before in (0x2E, 0x2D, 0x2F, 0x3A) and s >= 2
                                                 and data[s - 2] in _DIGIT):
            return None  # the tail of a longer token: "x123...", "1.234...", "12:34 ..."
        chunk = data[s:e]
        stops = self._memo.get(chunk)
        if stops is None:
            # Cheap exits first: most digit runs in prose are dates, times, short numbers.
            if len(chunk.translate(None, _NON_DIGITS)) < 7 or _DATE_LEAD_B.match(chunk.lstrip(b"(+")):
                stops = ()
            else:
                stops = self._accepted(chunk.decode("ascii"))
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()  # a bound, not an LRU: refilling is cheap
            self._memo[chunk] = stops
        if not stops or _after_country_code(data, s):
            return None
        for length, national, reason in stops:
            stop = s + length
            nxt = data[stop] if stop < len(data) else -1
            if nxt in _WORD or nxt == 0x40:  # "...0147abc", "...0147@host"
                continue
            if nxt in (0x3A, 0x2E, 0x2D, 0x2F) and stop + 1 < len(data) and data[stop + 1] in _DIGIT:
                continue  # "2024 12:30", "1.2.3.4.5": part of a longer token
            if national and (_context_says_identifier(data, s) or _amount_follows(data, stop)):
                return None
            return stop, reason
        return None

    def _accepted(self, raw: str) -> tuple[tuple[int, bool, str], ...]:
        """Every prefix of the candidate that is a valid number, longest first, as
        ``(length, national form?, reason)``; depends on the candidate text only."""
        ext = ""
        m = _EXT_TAIL.search(raw)
        if m is not None:
            ext = m.group(0)
            raw = raw[: m.start()]
        out = []
        for end in _ends(raw):
            core = raw[:end]
            national, reason = self._classify(core)
            if reason is not None:
                out.append((len(core) + (len(ext) if end == len(raw) else 0), national, reason))
        return tuple(out)

    def why_not(self, data: bytes, s: int, e: int) -> str:
        """Why ``decide`` turned the candidate down, for ``--explain`` (slow is fine)."""
        before = data[s - 1] if s > 0 else -1
        if before in _WORD or before == 0x2B or before in (0x2E, 0x2D, 0x2F, 0x3A):
            return "part of a longer token"
        if _after_country_code(data, s):
            return "the tail of an international number that is not valid as a whole"
        raw = data[s:e].decode("ascii")
        m = _EXT_TAIL.search(raw)
        core = raw[: m.start()] if m is not None else raw
        digits = "".join(ch for ch in core if ch.isdigit())
        word = _identifier_word(data, s)
        if word is not None and _international(core, digits) is None:
            return f"after {word!r}: an identifier, not a phone number"
        if _DATE_LEAD.match(core.lstrip("(+")) or _DATE_DMY.fullmatch(core):
            return "a date or timestamp"
        if _is_ip(core):
            return "an IPv4 address"
        if not 7 <= len(digits) <= 17:
            return "too few or too many digits"
        if _international(core, digits) is not None:
            return "international form, but libphonenumber says no such number exists"
        if self.nanp and _NANP_SHAPE.fullmatch(core) and not _NANP_NATIONAL.fullmatch(core):
            return "written like a NANP number, but area code or exchange starts with 0 or 1"
        return ("not a valid number in any configured region (" + ", ".join(self.region_codes)
                + "), or written without phone punctuation")

    def _classify(self, core: str) -> tuple[bool, str | None]:
        """``(national form?, reason it is valid or None)``; depends on ``core`` only."""
        if not _shape_ok(core):
            return False, None
        digits = "".join(ch for ch in core if ch.isdigit())
        international = _international(core, digits)
        if international is not None:
            if international.startswith("+1") and _NANP_DIGITS.fullmatch(international[2:]):
                # Area codes are assigned all the time and libphonenumber's table lags;
                # a well-formed +1 number is a phone number even where the table says no.
                return False, _valid_international(international) or "NANP number (well-formed), international format"
            return False, _valid_international(international)
        if core[0] == "+" or "(0)" in core or len(digits) > 14:
            return True, None
        if len(set(core) & _SEPARATORS) == 0 and "(" not in core and not (digits[0] == "0" and len(digits) >= 9):
            return True, None  # bare digit runs are identifiers unless they carry a trunk zero
        if self.nanp and _NANP_SHAPE.fullmatch(core):
            # Written the NANP way (3-3-4, "(3) 3-4"): a NANP number or nothing, so
            # "(123) 456-7890" is not rescued as a Brazilian or Italian one.
            if _NANP_NATIONAL.fullmatch(core):
                return True, "NANP number (area code and exchange well-formed), national format"
            if digits[0] != "0":
                # Another region only where its own national format groups the digits
                # the same way: "347 123 4567" is an Italian mobile, "555-055-1234" is not.
                groups = tuple(len(g) for g in _DIGIT_GROUPS.findall(core))
                for region in self.regions:
                    if region.code not in ("US", "CA") and _national_valid(region, core, digits) \
                            and _national_groups(core, region.code) == groups:
                        return True, f"valid {region.code} number, national format"
                return True, None
        for region in self.regions:
            if _national_valid(region, core, digits):
                return True, f"valid {region.code} number, national format"
        return True, None


_CC_PREFIX = re.compile(r"\A\+\d{1,3} ")
_ZIP4 = re.compile(r"\d{5}-\d{4}")  # a US ZIP+4 code, never how a phone number is grouped


def _amount_follows(data: bytes, stop: int) -> bool:
    """``",73 EUR"``, ``".50"``: two decimals after the digits make them an amount. A
    following digit group (``",12 345"``, the next CSV cell) does not count."""
    if stop + 2 >= len(data) or data[stop] not in (0x2C, 0x2E):
        return False
    if data[stop + 1] not in _DIGIT or data[stop + 2] not in _DIGIT:
        return False
    # ",73 EUR", ",73 €", "(1.234,56)", or the end; not ",14:29" or ",26.4" (a CSV's next cell).
    if stop + 3 >= len(data):
        return True
    after = data[stop + 3]
    if after == 0x20:
        return stop + 4 >= len(data) or data[stop + 4] not in _DIGIT
    return after in (0x29, 0x5D, 0xE2, 0x24, 0xC2)  # ) ] € $ £


def _is_ip(core: str) -> bool:
    # "012.37.71.67" is a Belgian number: addresses never have a leading zero in a part.
    return _DOTTED_QUAD.fullmatch(core) is not None and not any(
        len(part) > 1 and part[0] == "0" for part in core.split("."))


def _after_country_code(data: bytes, s: int) -> bool:
    m = _AFTER_COUNTRY_CODE.search(data, max(0, s - 6), s)
    # After "+<digits> " it is an international number whatever the digits; "0018 " is
    # only an international prefix when 18 were a calling code.
    return m is not None and (m.group(0)[:1] == b"+" or m.group(1) in _calling_codes())


def _ends(raw: str) -> list[int]:
    """The whole candidate first, then every shorter prefix ending in a digit before a
    separator: a greedy scan may have swallowed a following, unrelated group."""
    ends = [len(raw)]
    for i in range(len(raw) - 1, 6, -1):
        if raw[i] in " .-/(" and raw[i - 1].isdigit():
            ends.append(i)
    return ends


def _shape_ok(core: str) -> bool:
    digits = sum(ch.isdigit() for ch in core)
    if not 7 <= digits <= 17:
        return False
    if _is_ip(core) or _ZIP4.fullmatch(core) or _DATE_LEAD.match(core.lstrip("(+")) or _DATE_DMY.fullmatch(core):
        return False
    # Brackets: balanced, never nested, around digits only, at most two pairs.
    depth = pairs = 0
    for ch in core:
        if ch == "(":
            if depth:
                return False
            depth, pairs = 1, pairs + 1
        elif ch == ")":
            if not depth:
                return False
            depth = 0
    if depth or pairs > 2:
        return False
    # "+687 75.12.34": the space after a country code does not count as mixing.
    body = _CC_PREFIX.sub("", core, count=1)
    seps = {ch for ch in body if ch in _SEPARATORS}
    if "." in seps and len(seps) > 1:
        return False  # "1.234-56" is not how anyone writes a phone number
    # Separators never come doubled ("12--34", "12 . 34"), except around brackets.
    squeezed = core.replace(") ", ")").replace(" (", "(").replace(")-", ")")
    return not any(a in _SEPARATORS and b in _SEPARATORS for a, b in itertools.pairwise(squeezed))


def _international(core: str, digits: str) -> str | None:
    """``+<digits>`` for international forms, None for national ones."""
    if core[0] == "+":
        body = digits
    elif digits.startswith("00") and not digits.startswith("000"):
        body = digits[2:]
    elif digits.startswith("011") and core[:3] == "011" and len(digits) >= 11:
        body = digits[3:]  # dialled from the NANP
    else:
        return None
    if "(0)" in core:
        # "+49 (0)30 ...": the bracketed trunk zero is not dialled from abroad.
        i = core.index("(0)")
        body = "".join(ch for ch in core[:i] + core[i + 3 :] if ch.isdigit())
        if core[0] != "+":
            body = body[2:] if body.startswith("00") else body[3:]
    return "+" + body


@lru_cache(maxsize=4096)
def _valid_international(number: str) -> str | None:
    import phonenumbers

    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return f"valid {phonenumbers.region_code_for_number(parsed)} number, international format"


def _national_valid(region: _Region, core: str, digits: str) -> bool:
    nsn = digits
    if region.trunk is not None and region.trunk != "" and digits.startswith(region.trunk):
        nsn = digits[len(region.trunk) :]
    elif region.trunk_required:
        return False
    if (region.lengths and len(nsn) not in region.lengths) or region.general.fullmatch(nsn) is None:
        return False
    return _parse_valid(core, region.code)


_DIGIT_GROUPS = re.compile(r"\d+")


@lru_cache(maxsize=1024)
def _national_groups(core: str, region: str) -> tuple[int, ...]:
    """Digit-group lengths of libphonenumber's national format of the number."""
    import phonenumbers

    parsed = phonenumbers.parse(core, region)
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    return tuple(len(g) for g in _DIGIT_GROUPS.findall(formatted))


@lru_cache(maxsize=4096)
def _parse_valid(core: str, region: str) -> bool:
    import phonenumbers

    try:
        parsed = phonenumbers.parse(core, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number_for_region(parsed, region))


def _context_says_identifier(data: bytes, s: int) -> bool:
    return _identifier_word(data, s) is not None


def _identifier_word(data: bytes, s: int) -> str | None:
    """The word before ``s`` that makes a digit run an identifier ("order", "invoice no.")."""
    m = _LEFT_WORDS.search(data, max(0, s - 24), s)
    if m is None:
        return None
    near = m.group(2) or m.group(1)
    far = m.group(1) if m.group(2) else b""
    near_s = near.decode("utf-8", "ignore").lower()
    far_s = far.decode("utf-8", "ignore").lower()
    if near_s in _PHONE_WORDS:
        return None
    if near_s in _NOT_A_PHONE_BEFORE:
        return near_s
    # "order number 12 345 678", "invoice no. 2024 118": the neutral word sits between.
    if near_s in ("number", "no", "nr", "nummer", "numero", "número", "num") and far_s in _NOT_A_PHONE_BEFORE:
        return f"{far_s} {near_s}"
    return None


@lru_cache(maxsize=64)
def phone_rules(regions: Sequence[str] | None = None) -> PhoneRules:
    """The rules for these national regions (ISO 3166 codes libphonenumber knows)."""
    import phonenumbers

    codes = tuple(regions) if regions is not None else DEFAULT_PHONE_REGIONS
    out: list[_Region] = []
    for code in _dedupe(codes):
        meta = phonenumbers.PhoneMetadata.metadata_for_region(code, None)
        if meta is None:
            raise ValueError(f"unknown phone region {code!r}")
        general = meta.general_desc
        trunk = meta.national_prefix or None
        lengths = frozenset((general.possible_length if general is not None else None) or ())
        pattern = (general.national_number_pattern if general is not None else None) or r"\d+"
        out.append(_Region(code, int(meta.country_code or 0), trunk,
                           trunk == "0" and code not in _TRUNK_OPTIONAL,
                           lengths, re.compile(pattern)))
    return PhoneRules(tuple(out), nanp=any(r.code in ("US", "CA") for r in out))


def known_regions() -> frozenset[str]:
    import phonenumbers

    return frozenset(phonenumbers.SUPPORTED_REGIONS)



def _dedupe(codes: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for c in codes:
        if c not in seen:
            seen.append(c)
    return seen
