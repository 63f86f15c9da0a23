"""translate (N-vs-M with attention): any file of `source<TAB>target` lines.

The pairs are split 80 / 10 / 10 (fixed seed). Steps are characters, or with `--tokens word|bpe`
words or BPE subwords of a tokenizer learnt on each side's training text (rnnkit.data.tokens;
the target's splits words only at spaces, so that decoding gives the text back); what training
never saw maps to the unknown symbol. Same model, decoding and metrics as `dates`
(`tasks/_seq2seq.py`); `cer` compares the decoded texts character by character either way.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from rnnkit._config import integer, one_of, option
from rnnkit.data.files import read_pairs
from rnnkit.data.text import CharVocab
from rnnkit.data.tokens import KINDS as TOKEN_KINDS
from rnnkit.data.tokens import Subwords
from rnnkit.errors import RnnkitValueError
from rnnkit.tasks._common import epoch_batch
from rnnkit.tasks._seq2seq import Seq2SeqTask, Seq2SeqTaskConfig


@dataclass(frozen=True)
class TranslateConfig(Seq2SeqTaskConfig):
    tokens: str = option(
        "char", "what a step is: a character, a word, or a BPE subword", one_of(*TOKEN_KINDS)
    )
    vocab_size: int = option(
        8000, "--tokens word/bpe: the most words or subwords kept, each side", integer(4, 10**6)
    )


START, END = "[START]", "[END]"  # a tokenized target's first and last tokens


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
        self.tokenized = config.tokens != "char"
        if self.tokenized and state:
            self.src_vocab = Subwords.restore(state["src_tokenizer"])
            self.tgt_vocab = Subwords.restore(state["tgt_tokenizer"])
        elif self.tokenized:
            kind, size = config.tokens, config.vocab_size
            self.src_vocab = Subwords.train(kind, [s for s, _ in train], size, reversible=True)
            self.tgt_vocab = Subwords.train(
                kind, [t for _, t in train], size, reversible=True, specials=(START, END)
            )
        else:
            self.src_vocab = (
                CharVocab.restore(state["src_vocab"]) if state else CharVocab("".join(s for s, _ in train))
            )
            self.tgt_vocab = (
                CharVocab.restore(state["tgt_vocab"]) if state else self.target_vocab(t for _, t in train)
            )
        self.src_vocab_size = len(self.src_vocab)
        self.train, self.val, self.test = (self.pairs(p) for p in (train, val, test))

    def describe(self) -> dict:
        if self.tokenized:
            state = {"src_tokenizer": self.src_vocab.state(), "tgt_tokenizer": self.tgt_vocab.state()}
        else:
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
        if self.tokenized:
            return {"tokens": self.config.tokens, "unknown_id": 0}
        return {"tokens": "char", "source_vocabulary": self.src_vocab.chars, "unknown_id": 0}

    def source_labels(self, source) -> list[str]:
        if self.tokenized:
            return [self.src_vocab.token(i) for i in source]
        return [self.src_vocab.chars[i] for i in source]

    # --- the target side of a tokenized run -----------------------------------------------------

    def target_ids(self, text: str):
        if not self.tokenized:
            return super().target_ids(text)
        start, end = self.start_end()
        return torch.tensor([start, *self.tgt_vocab.ids(text), end])

    def start_end(self) -> tuple[int, int]:
        if not self.tokenized:
            return super().start_end()
        return self.tgt_vocab.id(START), self.tgt_vocab.id(END)

    def target_text(self, ids: list[int]) -> str:
        if not self.tokenized:
            return super().target_text(ids)
        start, end = self.start_end()
        ids = ids[: ids.index(end)] if end in ids else ids
        return self.tgt_vocab.decode([i for i in ids if i != start])

    def target_labels(self, text: str) -> list[str]:
        if not self.tokenized:
            return super().target_labels(text)
        return [*self.tgt_vocab.tokens(text), "<end>"]

    def target_metadata(self) -> dict:
        return {} if self.tokenized else super().target_metadata()

    def onnx_files(self) -> dict[str, str]:
        """A word or BPE run's tokenizers (Hugging Face JSON): the source's, the target's."""
        if not self.tokenized:
            return {}
        return {
            "source_tokenizer": self.src_vocab.json_text(),
            "target_tokenizer": self.tgt_vocab.json_text(),
        }
