"""Text as words or subwords: Hugging Face `tokenizers`, trained on the training split only.

- word: words and runs of punctuation (the `Whitespace` pre-tokenizer, `\\w+|[^\\w\\s]+`), the
  `vocab_size` most frequent kept; any other word is UNK.
- word, reversible (what a decoder writes: translate's targets): words as the text's spaces
  delimit them, punctuation attached, so that decoding gives the text back.
- bpe: byte-pair encoding (Sennrich et al. 2016) over the characters of words marked with their
  leading space (the `Metaspace` pre-tokenizer, so decoding gives the text back), merged up to
  `vocab_size` pieces; a character never seen in training is UNK.
Id 0 is UNK in all, so padding with 0 and `lengths=` work as they do for characters. A trained
tokenizer is saved as its JSON (`state()`), which a run keeps in its config.json and `rnnkit
export` writes beside the ONNX model; nothing is pickled.
"""

from __future__ import annotations

import json

import torch

from rnnkit.errors import RnnkitValueError

KINDS = ("char", "word", "bpe")
UNK_TOKEN = "[UNK]"


class Subwords:
    """A word or BPE tokenizer: encode(text) -> ids (N,) int64, len() the vocabulary size."""

    def __init__(self, tokenizer, kind: str):
        self.tokenizer, self.kind = tokenizer, kind

    @classmethod
    def train(
        cls, kind: str, texts: list[str], vocab_size: int, *, reversible: bool = False, specials=()
    ) -> Subwords:
        """Learn a tokenizer on `texts`; `specials` (e.g. start and end tokens) get ids 1, 2, ..."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        specials = [UNK_TOKEN, *specials]
        if kind == "word":
            tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
            if reversible:
                tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
                tokenizer.decoder = decoders.Metaspace()
            else:
                tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
            trainer = trainers.WordLevelTrainer(
                vocab_size=vocab_size, special_tokens=specials, show_progress=False
            )
        elif kind == "bpe":
            tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
            tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
            tokenizer.decoder = decoders.Metaspace()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
        else:
            raise RnnkitValueError(f"tokens must be one of word, bpe for a trained tokenizer, got {kind!r}")
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer, kind)

    @classmethod
    def restore(cls, state: dict) -> Subwords:
        """The tokenizer a run saved ({"kind", "json"}), checked to load and to have UNK as id 0."""
        from tokenizers import Tokenizer

        try:
            kind = state["kind"]
            tokenizer = Tokenizer.from_str(state["json"])
        except Exception as e:  # a damaged or edited record
            raise RnnkitValueError(
                f"the tokenizer saved in the run's config.json does not load: {e}"
            ) from None
        if kind not in ("word", "bpe") or tokenizer.token_to_id(UNK_TOKEN) != 0:
            raise RnnkitValueError("the tokenizer saved in the run's config.json is not one rnnkit wrote")
        return cls(tokenizer, kind)

    def state(self) -> dict:
        return {"kind": self.kind, "json": self.tokenizer.to_str()}

    def json_text(self) -> str:
        """The tokenizer as Hugging Face's tokenizer.json (what `Tokenizer.from_file` reads)."""
        return json.dumps(json.loads(self.tokenizer.to_str()), ensure_ascii=False, indent=1)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> torch.Tensor:
        """Ids of the text's tokens; a text with none (only spaces) is one UNK, so that every
        sequence has a step."""
        ids = self.tokenizer.encode(text).ids or [0]
        return torch.tensor(ids, dtype=torch.long)

    def ids(self, text: str) -> list[int]:
        """The text's ids as they come (none for an empty text)."""
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[torch.Tensor]:
        return [torch.tensor(e.ids or [0], dtype=torch.long) for e in self.tokenizer.encode_batch(texts)]

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(text).tokens

    def token(self, id_: int) -> str:
        return self.tokenizer.id_to_token(int(id_))

    def id(self, token: str) -> int:
        return self.tokenizer.token_to_id(token)

    def decode(self, ids) -> str:
        """The text of `ids` (special tokens dropped)."""
        return self.tokenizer.decode([int(i) for i in ids])
