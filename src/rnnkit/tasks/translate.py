"""translate (N-vs-M with attention): any file of `source<TAB>target` lines, character level.

The pairs are split 80 / 10 / 10 (fixed seed); characters never seen in training map to the
unknown symbol. Same model, decoding and metrics as `dates` (`tasks/_seq2seq.py`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from rnnkit.data.files import read_pairs
from rnnkit.data.text import CharVocab
from rnnkit.errors import RnnkitValueError
from rnnkit.tasks._common import epoch_batch
from rnnkit.tasks._seq2seq import Seq2SeqTask, Seq2SeqTaskConfig


@dataclass(frozen=True)
class TranslateConfig(Seq2SeqTaskConfig):
    pass


class TranslateTask(Seq2SeqTask):
    name = "translate"

    def __init__(self, config: TranslateConfig, *, data=None, saved: dict | None = None):
        if data is None:
            raise RnnkitValueError("--data: translate needs a file of source<TAB>target lines")
        self.config = config
        pairs = read_pairs(data)
        if len(pairs) < 10:
            raise RnnkitValueError(f"--data: {data} holds {len(pairs)} pairs; at least 10 are needed")
        order = list(range(len(pairs)))
        random.Random(0).shuffle(order)
        n = max(1, len(pairs) // 10)
        train, val, test = (
            [pairs[i] for i in part] for part in (order[2 * n :], order[n : 2 * n], order[:n])
        )
        state = (saved or {}).get("task_state")
        self.src_vocab = (
            CharVocab.restore(state["src_vocab"]) if state else CharVocab("".join(s for s, _ in train))
        )
        self.tgt_vocab = (
            CharVocab.restore(state["tgt_vocab"]) if state else self.target_vocab(t for _, t in train)
        )
        self.src_vocab_size = len(self.src_vocab)
        self.train, self.val, self.test = (self.pairs(p) for p in (train, val, test))

    def describe(self) -> dict:
        state = {"src_vocab": self.src_vocab.chars, "tgt_vocab": self.tgt_vocab.chars}
        return {"task": self.name, "task_config": asdict(self.config), "task_state": state}

    def source_ids(self, text: str) -> list[int]:
        if not text:
            raise RnnkitValueError("INPUT is empty: translate needs at least one character to read")
        return self.src_vocab.encode(text).tolist()

    def pairs(self, raw) -> list:
        return [(self.source_ids(s), t) for s, t in raw]

    def train_examples(self, step: int) -> list:
        return [self.train[i] for i in epoch_batch(len(self.train), self.config.batch_size, step).tolist()]

    def test_metrics(self, model, data=None, **options) -> dict:
        return self.scores(model, self.test if data is None else self.pairs(read_pairs(data)))

    def source_metadata(self) -> dict:
        return {"source_vocabulary": self.src_vocab.chars, "unknown_id": 0}

    def source_labels(self, source) -> list[str]:
        return [self.src_vocab.chars[i] for i in source]
