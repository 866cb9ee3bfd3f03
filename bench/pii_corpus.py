"""The second development corpus for the masking evaluation, generated with a fixed seed.

A different source from ``../shared/pii-dev-corpus.jsonl``: phone numbers come from
libphonenumber's metadata (a region's example number with its subscriber digits redrawn
until libphonenumber calls it valid again), written in the ways people write them
(international with and without a bracketed trunk zero, country code run into the area
code, ``00``/``001-`` prefixes, national with spaces, dashes, dots, brackets, extensions);
IBANs come from schwifty's registry (valid national check digits); names, e-mail
addresses, dates, IPv4/IPv6 from Faker's locale providers; card numbers from the issuer
ranges of each scheme. Look-alikes are what the same texts are full of: four-part version
numbers after "Version", "section", "release", "build"; IBANs with a bad checksum; cards
failing Luhn; SSN-shaped strings with impossible areas; dates, timestamps, order and
invoice numbers, ports, ISBNs, amounts.

Every row is put in one of six containers: prose, JSON, a markdown table, CSV, a log line
and a fenced code block. ``generate(seed)`` is deterministic for a given Faker,
phonenumbers and schwifty version.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

import phonenumbers
from faker import Faker
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from schwifty import IBAN

__all__ = ["LOCALES", "Row", "generate"]

#: Faker locale -> (phone region, IBAN country or None).
LOCALES: dict[str, tuple[str, str | None]] = {
    "en_US": ("US", None),
    "en_GB": ("GB", "GB"),
    "de_DE": ("DE", "DE"),
    "fr_FR": ("FR", "FR"),
    "nl_NL": ("NL", "NL"),
    "es_ES": ("ES", "ES"),
    "it_IT": ("IT", "IT"),
    "pt_BR": ("BR", "BR"),
    "en_IN": ("IN", None),
    "en_AU": ("AU", None),
    "ja_JP": ("JP", None),
    "de_CH": ("CH", "CH"),
    "de_AT": ("AT", "AT"),
    "nl_BE": ("BE", "BE"),
    "sv_SE": ("SE", "SE"),
    "pl_PL": ("PL", "PL"),
    "pt_PT": ("PT", "PT"),
    "en_CA": ("CA", None),
}
CONTAINERS = ("prose", "json", "table", "csv", "log", "code")

# (prefix, length) per scheme: the evaluation wants every scheme, not only Visa.
_CARD_SCHEMES: tuple[tuple[str, int], ...] = (
    ("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("2500", 16),
    ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("3530", 16), ("3589", 19), ("36", 14),
    ("62", 19), ("2200", 16),
)
_SECRET_MAKERS: tuple[Callable[[random.Random], str], ...] = (
    lambda r: "sk-proj-" + "".join(r.choices(string.ascii_letters + string.digits, k=40)),
    lambda r: "AKIA" + "".join(r.choices(string.ascii_uppercase + string.digits, k=16)),
    lambda r: "ghp_" + "".join(r.choices(string.ascii_letters + string.digits, k=36)),
)


@dataclass
class Row:
    text: str
    locale: str
    container: str
    pii: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"text": self.text, "pii": self.pii, "kinds": self.kinds, "keep": self.keep,
                           "locale": self.locale, "container": self.container}, ensure_ascii=False)


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


def _card(r: random.Random) -> str:
    prefix, length = r.choice(_CARD_SCHEMES)
    digits = _luhn_complete(prefix + "".join(r.choices(string.digits, k=length - len(prefix) - 1)))
    return _group_card(r, digits)


def _group_card(r: random.Random, digits: str) -> str:
    style = r.random()
    if len(digits) == 15 and style < 0.6:
        return f"{digits[:4]} {digits[4:10]} {digits[10:]}"
    if len(digits) in (16, 19) and style < 0.7:
        sep = r.choice(" -")
        return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    return digits


def _bad_card(r: random.Random) -> str:
    good = _card(r).replace(" ", "").replace("-", "")
    last = str((int(good[-1]) + r.randint(1, 9)) % 10)
    digits = good[:-1] + last
    sep = r.choice(" -")
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4)) if len(digits) == 16 else digits


def _phone(r: random.Random, region: str) -> str:
    kind = r.choice((PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE))
    example = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(region)
    assert example is not None
    nsn = str(example.national_number)
    number = example
    for _ in range(200):
        keep = max(2, len(nsn) - 5)
        candidate = nsn[:keep] + "".join(r.choices(string.digits, k=len(nsn) - keep))
        parsed = phonenumbers.parse("+" + str(example.country_code) + ("0" if example.italian_leading_zero else "")
                                    + candidate, None)
        if phonenumbers.is_valid_number(parsed):
            number = parsed
            break
    return _write_phone(r, number, region)


def _write_phone(r: random.Random, n: phonenumbers.PhoneNumber, region: str) -> str:
    intl = phonenumbers.format_number(n, PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(n, PhoneNumberFormat.NATIONAL)
    e164 = phonenumbers.format_number(n, PhoneNumberFormat.E164)
    cc = f"+{n.country_code}"
    trunk_zero = national.lstrip("(").startswith("0") and region not in ("IT",)
    styles: list[Callable[[], str]] = [
        lambda: intl,
        lambda: e164,
        lambda: national,
        lambda: national.replace(" ", "-"),
        lambda: "00" + intl[1:],
        lambda: cc + intl[len(cc) + 1 :],  # country code run into the area code
        lambda: intl.replace(" ", "-", 1) if region in ("US", "CA") else intl,
    ]
    nsn = phonenumbers.national_significant_number(n)
    styles.append(lambda: f"{cc} {nsn}")  # one long group: "+39 061234567"
    if region == "DE":
        styles.append(lambda: national.replace(" ", "/", 1))  # "030/12345678"
    if region == "BR":
        styles.append(lambda: "(0" + national[1:])  # trunk zero in the brackets: "(011) 4567-8901"
    if trunk_zero:
        styles.append(lambda: f"{cc} (0)" + intl[len(cc) + 1 :])
        styles.append(lambda: f"{cc}(0)" + intl[len(cc) + 1 :])
    if region in ("US", "CA"):
        digits = e164[2:]
        styles += [
            lambda: f"({digits[:3]}){digits[3:6]}-{digits[6:]}",
            lambda: f"{digits[:3]}.{digits[3:6]}.{digits[6:]}",
            lambda: f"001-{digits[:3]}-{digits[3:6]}-{digits[6:]}",
            lambda: f"({digits[:3]}) {digits[3:6]}-{digits[6:]}x{r.randint(1, 9999)}",
            lambda: f"+1-{digits[:3]}-{digits[3:6]}-{digits[6:]} ext. {r.randint(1, 999)}",
        ]
    if region in ("FR", "BE", "CH"):
        styles.append(lambda: national.replace(" ", "."))
    if region == "GB":
        styles.append(lambda: f"({national.split(' ')[0]}) " + " ".join(national.split(" ")[1:]))
    return r.choice(styles)()


def _iban(r: random.Random, country: str) -> str:
    iban = IBAN.random(country_code=country, random=r)
    return str(iban.formatted) if r.random() < 0.5 else str(iban)


def _bad_iban(r: random.Random, country: str) -> str:
    good = str(IBAN.random(country_code=country, random=r))
    check = int(good[2:4])
    bad = good[:2] + f"{(check + r.randint(1, 50)) % 97 + 2:02d}"[-2:] + good[4:]
    if bad == good:
        bad = good[:-1] + str((int(good[-1]) + 1) % 10) if good[-1].isdigit() else good[:-1] + "0"
    return " ".join(bad[i : i + 4] for i in range(0, len(bad), 4)) if r.random() < 0.6 else bad


def _version(r: random.Random) -> str:
    word = r.choice(("Version", "version", "section", "Section", "release", "build", "v", "Version:", "Release"))
    quad = ".".join(str(r.randint(0, 99 if i else 20)) for i in range(4))
    return f"{word} {quad}"


def _bad_ssn(r: random.Random) -> str:
    area = r.choice(("000", "666", f"9{r.randint(0, 99):02d}"))
    return f"{area}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"


def _lookalike(r: random.Random, fake: Faker, country: str | None) -> str:
    makers: list[Callable[[], str]] = [
        lambda: _version(r),
        lambda: _bad_card(r),
        lambda: _bad_ssn(r),
        lambda: fake.date_time().strftime(r.choice(("%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y",
                                                    "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%d.%m.%Y %H:%M"))),
        lambda: f"order {r.randint(10, 99)} {r.randint(100, 999)} {r.randint(100, 999)}",
        lambda: f"Order no. {r.randint(1000, 9999)} {r.randint(100000, 999999)}",
        lambda: f"invoice {r.randint(2019, 2026)}-{r.randint(100, 999)}-{r.randint(1000, 9999)}",
        lambda: f"ORD-{r.randint(100000, 999999)}",
        lambda: f"port {r.randint(1024, 65535)}",
        lambda: f"build {r.randint(100000000, 999999999)}",
        lambda: f"ISBN 978-{r.randint(0, 9)}-{r.randint(10, 99)}-{r.randint(100000, 999999)}-{r.randint(0, 9)}",
        lambda: f"{r.randint(10, 23)}:{r.randint(10, 59)}",
        lambda: f"ticket #{r.randint(1000, 99999)}",
        lambda: f"{r.randint(1, 999)} {r.randint(100, 999)} {r.randint(100, 999)},{r.randint(10, 99)} EUR",
        lambda: f"{r.randint(10000, 99999)}-{r.randint(1000, 9999)}",  # ZIP+4
        lambda: f"{r.randint(7, 11):02d}:00-{r.randint(12, 19)}:30",
        lambda: f"{r.uniform(-80, 80):.4f}, {r.uniform(-170, 170):.4f}",
        lambda: f"Ref. {r.randint(2019, 2026)}/{r.randint(100, 999)}/{r.randint(1000, 9999)}",
        lambda: f"SN {r.randint(1000, 9999)} {r.randint(1000, 9999)} {r.randint(100, 999)}",
        lambda: f"{r.randint(1000000000, 9999999999)}",  # a bare ten-digit id
        lambda: f"{r.randint(10, 99)}.{r.randint(100, 999)}.{r.randint(100, 999)}",  # 1.234.567-style count
    ]
    if country is not None:
        makers.append(lambda: _bad_iban(r, country))
    return r.choice(makers)()


def _values(r: random.Random, fake: Faker, locale: str) -> list[tuple[str, str]]:
    region, country = LOCALES[locale]
    makers: list[tuple[str, Callable[[], str]]] = [
        ("PHONE", lambda: _phone(r, region)),
        ("PHONE", lambda: _phone(r, region)),
        ("PHONE", lambda: _phone(r, r.choice(list(LOCALES.values()))[0])),
        ("EMAIL", lambda: fake.email()),
        ("EMAIL", lambda: f"{r.choice(('o', 'd', 'l'))}'{fake.last_name().lower()}@{fake.free_email_domain()}"
         .replace(" ", "")),
        ("CREDIT_CARD", lambda: _card(r)),
        ("IP_ADDRESS", lambda: fake.ipv4_public() if r.random() < 0.7 else fake.ipv6()),
        ("SECRET", lambda: r.choice(_SECRET_MAKERS)(r)),
    ]
    if country is not None:
        makers.append(("IBAN", lambda: _iban(r, country)))
    if locale == "en_US":
        makers.append(("US_SSN", lambda: fake.ssn()))
    out = []
    for _ in range(r.randint(1, 3)):
        kind, make = r.choice(makers)
        value = make()
        if kind == "EMAIL" and not value.isascii():
            continue
        out.append((kind, value))
    return out


def _prose(fake: Faker, items: list[str], r: random.Random) -> str:
    lead = r.choice(("Please contact", "Reach", "Forward this to", "Per our records,", "Note from", "Update for"))
    parts = [f"{lead} {fake.name()}"]
    for item in items:
        parts.append(r.choice(("at", "via", "using", "with", "and also", "- see", "or")) + " " + item)
    return " ".join(parts) + "."


def _contain(container: str, fake: Faker, r: random.Random, items: list[str]) -> str:
    if container == "prose":
        return _prose(fake, items, r)
    if container == "json":
        obj = {"name": fake.name()}
        for i, item in enumerate(items):
            obj[r.choice(("contact", "value", "ref", "note", "field")) + str(i)] = item
        return json.dumps(obj, ensure_ascii=False)
    if container == "table":
        return "| name | " + " | ".join(f"c{i}" for i in range(len(items))) + " |\n|---|" + "---|" * len(items) \
            + f"\n| {fake.name()} | " + " | ".join(items) + " |"
    if container == "csv":
        return f"id,name,{','.join(f'c{i}' for i in range(len(items)))}\n{r.randint(1, 999)},{fake.name()}," \
            + ",".join(f'"{item}"' if "," in item else item for item in items)
    if container == "log":
        ts = fake.date_time().strftime("%Y-%m-%dT%H:%M:%S")
        return f"{ts} INFO svc.worker user={fake.user_name()} " + " ".join(f"f{i}={item}" for i, item in
                                                                           enumerate(items))
    return "```python\n" + "\n".join(f"value_{i} = {json.dumps(item, ensure_ascii=False)}"
                                     for i, item in enumerate(items)) + "\n```"


def generate(seed: int = 16, rows_per_locale: int = 60) -> list[Row]:
    """The corpus: for every locale, ``rows_per_locale`` rows across the six containers."""
    out: list[Row] = []
    for li, locale in enumerate(LOCALES):
        fake = Faker(locale)
        fake.seed_instance(seed * 1000 + li)
        r = random.Random(seed * 1000 + li)
        _, country = LOCALES[locale]
        for i in range(rows_per_locale):
            container = CONTAINERS[i % len(CONTAINERS)]
            values = _values(r, fake, locale)
            keeps = [_lookalike(r, fake, country) for _ in range(r.randint(1, 2))]
            items = [v for _, v in values] + keeps
            r.shuffle(items)
            text = _contain(container, fake, r, items)
            row = Row(text, locale, container)
            for kind, value in values:
                if value in text:
                    row.pii.append(value)
                    row.kinds.append(kind)
            row.keep = [k for k in keeps if k in text]
            out.append(row)
    return out


if __name__ == "__main__":
    for row in generate():
        print(row.to_json())
