"""Built-in data sets, read from packages installed with rnnkit (nothing is downloaded).

- digits: scikit-learn's 8x8 handwritten digits (1,797 images), read row by row: 8 steps of 8
  features, scaled to [0, 1].
- surnames: Faker's per-locale surname lists grouped by language (the locale's language code:
  en_US and en_GB are both "en"); a name listed under several languages is dropped, as its label
  would be a coin toss; languages with at least `min_names` names are kept, at most `max_names`
  each (a fixed-seed sample) so that no language dominates.
- sunspots: statsmodels' yearly sunspot numbers, 1700-2008.
- macrodata: statsmodels' US quarterly macroeconomic series, 1959-2009.
- xkcd colours: matplotlib's XKCD colour-survey names and RGB values (CC0).
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections import Counter, defaultdict

import numpy as np


def digits() -> tuple[np.ndarray, list[str]]:
    """(1797, 8, 8) float32 in [0, 1] (image rows as time steps) and the labels "0".."9"."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), [str(t) for t in data.target]


def surnames(min_names: int = 300, max_names: int = 1000, seed: int = 0) -> tuple[list[str], list[str]]:
    """(names, languages), sorted by language then name."""
    import faker.providers.person as person

    by_language = defaultdict(set)
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        names = getattr(provider, "last_names", None)
        if names:
            by_language[module.name.split("_")[0]].update(n.strip() for n in names if n.strip())
    count = Counter(name for names in by_language.values() for name in names)
    rng = random.Random(seed)
    out_names, out_langs = [], []
    for language in sorted(by_language):
        unique = sorted(n for n in by_language[language] if count[n] == 1)
        if len(unique) < min_names:
            continue
        if len(unique) > max_names:
            unique = sorted(rng.sample(unique, max_names))
        out_names += unique
        out_langs += [language] * len(unique)
    return out_names, out_langs


def sunspots() -> tuple[np.ndarray, np.ndarray]:
    """(years (309,), yearly sunspot numbers (309, 1))."""
    import statsmodels.api as sm

    frame = sm.datasets.sunspots.load_pandas().data
    return frame["YEAR"].to_numpy(int), frame[["SUNACTIVITY"]].to_numpy(np.float64)


MACRO_COLUMNS = ("realgdp", "realcons", "realinv", "unemp", "infl", "tbilrate")


def macrodata() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(quarters as year + (q - 1) / 4, values (202, 6), column names): quarterly growth in % of
    real GDP, consumption and investment (levels are not stationary), with unemployment,
    inflation and the T-bill rate as they are."""
    import statsmodels.api as sm

    frame = sm.datasets.macrodata.load_pandas().data
    growth = ["realgdp", "realcons", "realinv"]
    values = np.concatenate(
        [
            100 * np.diff(np.log(frame[growth].to_numpy(np.float64)), axis=0),
            frame[["unemp", "infl", "tbilrate"]].to_numpy(np.float64)[1:],
        ],
        axis=1,
    )
    when = (frame["year"] + (frame["quarter"] - 1) / 4).to_numpy(np.float64)[1:]
    return when, values, list(MACRO_COLUMNS)


def xkcd_colors() -> tuple[list[str], np.ndarray]:
    """(names, RGB (949, 3) in [0, 1]), sorted by name."""
    from matplotlib.colors import XKCD_COLORS, to_rgb

    names = sorted(XKCD_COLORS)
    return [n.removeprefix("xkcd:") for n in names], np.array([to_rgb(XKCD_COLORS[n]) for n in names])
