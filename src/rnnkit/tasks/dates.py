"""dates (N-vs-M with attention): a date written in any of babel's 1,000+ locales -> ISO
`YYYY-MM-DD`, character by character (`rnnkit.data.dates`).

The source starts with a locale token, because one string can mean different months in
different locales ("lip 03 1933" is June in Croatian, July in Polish); a tenth of the training
sources carry the token <any> instead, so that `predict` works without `--locale`. Off with
`--no-locale-token` (every source then starts with <any>).
Training pairs are drawn afresh at every step from the training days (seeded by the step, so a
resumed run sees the same ones); validation and test are fixed draws from days never trained on.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from rnnkit._config import flag, integer, option
from rnnkit.data.dates import ANY_LOCALE, draw, locale_patterns, source_characters, split_days
from rnnkit.data.text import CharVocab
from rnnkit.errors import RnnkitValueError
from rnnkit.tasks._seq2seq import Seq2SeqTask, Seq2SeqTaskConfig

VAL_SEED, TEST_SEED = 7_000_003, 9_000_011


@dataclass(frozen=True)
class DatesConfig(Seq2SeqTaskConfig):
    locale_token: bool = option(True, "start each source with its locale's token", flag())
    val_pairs: int = option(1000, "validation pairs (fixed draw from validation days)", integer(1, 10**6))
    test_pairs: int = option(2000, "test pairs (fixed draw from test days)", integer(1, 10**6))


class DatesTask(Seq2SeqTask):
    name = "dates"
    # measured (docs/tasks.md): validation exact match 0.958 at step 3,000, 0.995 at 5,000
    train_defaults = {
        "steps": 12000,
        "lr": 2e-3,
        "schedule": "cosine",
        "eval_every": 1000,
        "warmup_steps": 200,
    }
    predict_options = ("locale", "beam_size")

    def __init__(self, config: DatesConfig, *, data=None, saved: dict | None = None):
        if data is not None:
            raise RnnkitValueError(
                "--data: dates generates its data from babel; for your own pairs use translate"
            )
        self.config = config
        state = (saved or {}).get("task_state")
        self.locales = state["locales"] if state else [ANY_LOCALE, *locale_patterns()]
        self.chars = CharVocab.restore(state["chars"]) if state else CharVocab(source_characters())
        self.locale_index = {name: len(self.chars) + i for i, name in enumerate(self.locales)}
        self.src_vocab_size = len(self.chars) + len(self.locales)
        self.tgt_vocab = self.target_vocab("0123456789-")
        self.train_days, val_days, test_days = split_days()
        self.val = self.pairs(draw(random.Random(VAL_SEED), val_days, config.val_pairs), random.Random(1))
        self.test = self.pairs(draw(random.Random(TEST_SEED), test_days, config.test_pairs), random.Random(2))

    def describe(self) -> dict:
        state = {"locales": self.locales, "chars": self.chars.chars}
        return {"task": self.name, "task_config": asdict(self.config), "task_state": state}

    def source_ids(self, text: str, locale: str | None = None) -> list[int]:
        if locale is not None and locale not in self.locale_index:
            close = [name for name in self.locales if name.split("_")[0] == locale.split("_")[0]][:8]
            raise RnnkitValueError(
                f"--locale {locale!r} is not a known locale (similar: {', '.join(close) or 'none'})"
            )
        token = self.locale_index[locale if locale and self.config.locale_token else ANY_LOCALE]
        return [token, *self.chars.encode(text).tolist()]

    def pairs(self, examples, rng: random.Random, anonymous: float = 0.0) -> list:
        """(source ids, ISO date) with the locale token; a share `anonymous` get <any>."""
        return [
            (self.source_ids(text, None if rng.random() < anonymous else loc), iso)
            for loc, text, iso in examples
        ]

    def train_examples(self, step: int) -> list:
        rng = random.Random(step)
        return self.pairs(draw(rng, self.train_days, self.config.batch_size), rng, anonymous=0.1)

    def test_metrics(self, model, data=None, **options) -> dict:
        return self.scores(model, self.test)

    def source_metadata(self) -> dict:
        """Source ids: a locale's id (any_locale without --locale, or when the run was trained
        without locale tokens), then each character's id in source_vocabulary (unknown: 0)."""
        return {
            "source_vocabulary": self.chars.chars,
            "unknown_id": 0,
            "locale_ids": self.locale_index,
            "any_locale": ANY_LOCALE,
            "locale_token": self.config.locale_token,
        }

    def source_labels(self, source) -> list[str]:
        return [self.locales[source[0] - len(self.chars)]] + [self.chars.chars[i] for i in source[1:]]

    def predict_values(
        self, model, inputs: list[str], locale: str | None = None, beam_size=None
    ) -> list[str]:
        return super().predict_values(model, inputs, beam_size=beam_size, locale=locale)
