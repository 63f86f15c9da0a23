"""Text for character language models: the built-in corpus, user files, and the character
vocabulary with an unknown symbol.

Built-in: the Python documentation topics that ship with the standard library
(`pydoc_data.topics`, ~465,000 characters), joined in sorted key order. Validation and test are
whole topics chosen with a fixed seed, not the tail: the last topics overlap earlier text
heavily, which flatters every model. A user file is split by position: the last 10% is test, the
10% before it validation.
"""

from __future__ import annotations

import random
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnkit.errors import RnnkitFileError, RnnkitValueError

UNK = "\ufffd"  # stands for every character not seen in training


@dataclass(frozen=True)
class TextSplits:
    train: str
    val: str
    test: str
    source: str


def builtin_corpus(seed: int = 0, held_out: int = 6) -> TextSplits:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    rng = random.Random(seed)
    chosen = rng.sample(keys, 2 * held_out)
    val_keys, test_keys = set(chosen[:held_out]), set(chosen[held_out:])
    part = {k: topics[k] for k in keys}
    return TextSplits(
        train="".join(v for k, v in part.items() if k not in val_keys | test_keys),
        val="".join(part[k] for k in keys if k in val_keys),
        test="".join(part[k] for k in keys if k in test_keys),
        source="pydoc_data.topics",
    )


def read_text(path) -> str:
    """A UTF-8 text file's content; clear errors for a missing, unreadable, binary or empty file."""
    path = Path(path)
    try:  # a FIFO or a device would be read forever (/dev/zero) or block (a pipe): refused
        if path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
            raise RnnkitFileError(f"--data: {path} is not a regular file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise RnnkitFileError(f"--data: no such file: {path}") from None
    except IsADirectoryError:
        raise RnnkitFileError(f"--data: {path} is a directory, expected a text file") from None
    except OSError as e:
        raise RnnkitFileError(f"--data: cannot read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RnnkitValueError(
            f"--data: {path} is not UTF-8 text (byte {e.start} cannot be decoded)"
        ) from None
    if not text.strip():
        raise RnnkitValueError(f"--data: {path} is empty")
    return text


def file_corpus(path) -> TextSplits:
    text = read_text(path)
    if len(text) < 100:
        raise RnnkitValueError(f"--data: {path} holds {len(text)} characters; at least 100 are needed")
    n = len(text)
    a, b = int(n * 0.8), int(n * 0.9)
    return TextSplits(train=text[:a], val=text[a:b], test=text[b:], source=str(path))


class CharVocab:
    """Characters of the training text, sorted, plus UNK (id 0) for anything else."""

    def __init__(self, chars):
        self.chars = [UNK] + sorted(set(chars) - {UNK})
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def restore(cls, chars) -> CharVocab:
        """The vocabulary a run saved (`chars`), checked to be one this class made: UNK, then
        distinct single characters in sorted order (an edited one would map text silently wrong)."""
        ok = isinstance(chars, list) and chars[:1] == [UNK]
        ok = ok and all(isinstance(c, str) and len(c) == 1 for c in chars)
        vocab = cls(chars[1:] if ok else "")
        if not ok or vocab.chars != chars:
            raise RnnkitValueError(
                "the vocabulary saved in the run's config.json is not one rnnkit wrote (UNK, then "
                f"distinct single characters in sorted order): {str(chars)[:60]}"
            )
        return vocab

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Ids (N,) int64 of `text`'s characters, 0 (UNK) for those not in the vocabulary. By a
        table indexed by code point (numpy), not a Python loop: tens of megabytes take a second."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if codes.size == 0:
            return torch.zeros(0, dtype=torch.long)
        table = np.zeros(int(codes.max()) + 1, dtype=np.int64)  # at most 0x110000 entries
        for ch, i in self.index.items():
            if ord(ch) < table.size:
                table[ord(ch)] = i
        return torch.from_numpy(table[codes])

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)
