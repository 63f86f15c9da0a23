"""Postal addresses with a field label on every character, built with Faker (tag's built-in data).

Faker writes an address by filling a locale's format ("{{street_address}}\\n{{city}},
{{state_abbr}} {{postcode}}") with the values of its fields; this module fills the same formats
itself, one field at a time, so each character's label is the field that produced it, not a
guess from parsing the finished text. `address` and `street_address` are formats of formats and
are expanded; every other placeholder is a field (LEAVES). Line breaks become ", " (an address
as one line, as a person types it), a quarter of the addresses end with the locale's country,
and the characters between two fields are labelled OUTSIDE, unless both sides are the same field
(the space in "ul. Długa" belongs to the street). As people type addresses, half of them lose
their commas (the fields' boundaries must then be read from the words) and a quarter are typed
in lower or upper case; the labels are unchanged by either.
"""

from __future__ import annotations

import random
import re

OUTSIDE = "O"
LEAVES = {
    "building_number": "house",
    "street_name": "street",
    "street_prefix": "street",
    "street_suffix": "street",
    "secondary_address": "unit",
    "postcode": "postcode",
    "postalcode": "postcode",
    "zipcode": "postcode",
    "city": "city",
    "state": "region",
    "state_abbr": "region",
    "province": "region",
    "province_abbr": "region",
    "estado_sigla": "region",
    "bairro": "district",
}
COMPOSITE = ("address", "street_address")  # expanded through the provider's `<name>_formats`
FIELDS = (OUTSIDE, "house", "street", "unit", "district", "postcode", "city", "region", "country")
LOCALES = ("en_US", "en_GB", "en_AU", "de_DE", "fr_FR", "es_ES", "nl_NL", "pt_BR")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class _Unknown(Exception):
    """A format uses a placeholder this module does not label (e.g. en_US military addresses)."""


def _expand(fake, provider, pattern: str) -> list[tuple[str, str | None]]:
    """(text, field) pieces of `pattern`; literal text has field None."""
    pieces = []
    at = 0
    for match in _PLACEHOLDER.finditer(pattern):
        if match.start() > at:
            pieces.append((pattern[at : match.start()], None))
        name = match.group(1)
        if name in COMPOSITE:
            pieces += _expand(fake, provider, fake.random_element(getattr(provider, f"{name}_formats")))
        elif name in LEAVES:
            pieces.append((str(getattr(fake, name)()), LEAVES[name]))
        else:
            raise _Unknown(name)
        at = match.end()
    if at < len(pattern):
        pieces.append((pattern[at:], None))
    return pieces


def _labelled(pieces: list[tuple[str, str | None]], commas: bool = True) -> tuple[str, list[str]]:
    fields = [f for _, f in pieces]
    text, labels = "", []
    for i, (part, field) in enumerate(pieces):
        part = part.replace("\n", ", ")
        if not commas and field is None:
            part = part.replace(",", "")
        if field is None:  # between two pieces of one field, it is part of that field
            before = next((f for f in reversed(fields[:i]) if f is not None), None)
            after = next((f for f in fields[i + 1 :] if f is not None), None)
            field = before if before is not None and before == after and "\n" not in pieces[i][0] else OUTSIDE
        text += part
        labels += [field] * len(part)
    # one line: runs of spaces and a separator at either end are not part of an address
    keep = [i for i, ch in enumerate(text) if not (ch == " " and i > 0 and text[i - 1] == " ")]
    text, labels = "".join(text[i] for i in keep), [labels[i] for i in keep]
    start, end = 0, len(text)
    while start < end and text[start] in " ,":
        start += 1
    while end > start and text[end - 1] in " ,":
        end -= 1
    return text[start:end], labels[start:end]


def addresses(count: int, seed: int = 0, locales=LOCALES, country_share: float = 0.25):
    """`count` (text, labels) pairs, one label per character (a name of FIELDS), locales drawn
    uniformly; the same (count, seed, locales) give the same addresses."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = {}
    for i, locale in enumerate(locales):
        fake = Faker(locale)
        fake.seed_instance(seed * 1_000 + i)
        provider = next(p for p in fake.providers if "address" in type(p).__module__)
        fakers[locale] = (fake, provider)
    out = []
    while len(out) < count:
        fake, provider = fakers[rng.choice(locales)]
        try:
            pieces = _expand(fake, provider, "{{address}}")
        except _Unknown:
            continue
        if rng.random() < country_share:
            pieces += [(", ", None), (fake.current_country(), "country")]
        text, labels = _labelled(pieces, commas=rng.random() < 0.5)
        case = rng.random()
        if case < 0.15:
            text = text.lower()
        elif case < 0.25:
            text = text.upper()
        if text and len(text) == len(labels):  # (a case change that alters the length: skipped)
            out.append((text, labels))
    return out
