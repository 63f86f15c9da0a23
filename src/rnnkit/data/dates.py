"""Human-written dates in every locale of babel's CLDR data, paired with ISO `YYYY-MM-DD`.

Formats: the locale's long and full date formats, its medium one when that spells the month, and
its own patterns for the skeletons yMMMd, yMMMMd and yMMMEd (abbreviated and full month names,
with a weekday); only patterns that spell the month (MMM, MMMM, LLL, LLLL) with a four-digit year.
Dates run from 1900-01-01 to 2099-12-31 and are split by day (fixed seed): a test date is never
seen in training, in any locale or format.
"""

from __future__ import annotations

import datetime
import random
import re
from functools import lru_cache

FIRST, DAYS = datetime.date(1900, 1, 1), 73_049  # to 2099-12-31
ANY_LOCALE = "<any>"  # the locale token of inputs whose locale is not given


def _spells_month_with_full_year(pattern: str) -> bool:
    plain = re.sub(r"'[^']*'", "", pattern)  # quoted literals are not fields
    years = re.findall(r"y+", plain)
    return bool(re.search(r"[ML]{3,}", plain)) and bool(years) and all(len(y) != 2 for y in years)


@lru_cache(maxsize=1)
def locale_patterns() -> dict[str, tuple[str, ...]]:
    """{locale identifier: its date patterns} for every locale with at least one usable pattern."""
    from babel import Locale, localedata
    from babel.dates import get_date_format, match_skeleton

    out = {}
    for name in sorted(localedata.locale_identifiers()):
        locale = Locale.parse(name)
        patterns = [get_date_format(f, locale=locale).pattern for f in ("long", "full", "medium")]
        for skeleton in ("yMMMd", "yMMMMd", "yMMMEd"):
            key = match_skeleton(skeleton, locale.datetime_skeletons)
            if key:
                patterns.append(locale.datetime_skeletons[key].pattern)
        usable = tuple(dict.fromkeys(p for p in patterns if _spells_month_with_full_year(p)))
        if usable:
            out[name] = usable
    return out


def render(day: datetime.date, locale: str, pattern: str) -> str:
    from babel.dates import format_date

    return format_date(day, pattern, locale=locale)


def split_days(seed: int = 0, held_out: float = 0.05) -> tuple[list[int], list[int], list[int]]:
    """Day numbers (from 1900-01-01) for train / validation / test."""
    days = list(range(DAYS))
    random.Random(seed).shuffle(days)
    n = round(DAYS * held_out)
    return sorted(days[2 * n :]), sorted(days[n : 2 * n]), sorted(days[:n])


def draw(rng: random.Random, days: list[int], n: int) -> list[tuple[str, str, str]]:
    """n examples (locale, written date, ISO date): the locale uniformly, then one of its patterns
    uniformly (so rare locales' month names are seen as often as common ones), then a day."""
    table = locale_patterns()
    locales = list(table)
    out = []
    for _ in range(n):
        locale = rng.choice(locales)
        day = FIRST + datetime.timedelta(days=rng.choice(days))
        out.append((locale, render(day, locale, rng.choice(table[locale])), day.isoformat()))
    return out


@lru_cache(maxsize=1)
def source_characters() -> str:
    """Every character any locale's patterns can write (all months and weekdays, every digit)."""
    chars = set("0123456789")
    for locale, patterns in locale_patterns().items():
        for pattern in patterns:
            for month in range(1, 13):
                for day in (1, 2, 3, 4, 5, 6, 7):  # seven weekdays
                    chars.update(render(datetime.date(2021, month, day + 0), locale, pattern))
    return "".join(sorted(chars))
