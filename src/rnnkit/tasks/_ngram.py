"""An n-gram language model over token ids: interpolated Kneser-Ney (Chen and Goodman 1999), the
classical baseline of a recurrent language model, with one absolute discount per order and
table, D = n1 / (n1 + 2 n2) from the counts of counts.

    p_k(w | h) = max(c_k(h, w) - D, 0) / c_k(h) + D N1+(h .) / c_k(h) * p_{k-1}(w | h')
    p_0(w) = 1 / V

where h holds the last k - 1 tokens, h' the last k - 2, and c_k counts the n-grams themselves at
the top order and their distinct left extensions below it (continuation counts); an unseen h
gives p_{k-1}. Every order up to `max_order` is fitted at once, and `log_likelihoods` scores
each, so the order can be chosen on validation data.

Contexts are kept as 64-bit hashes of their tokens in sorted numpy arrays (a dict of tuples
would take gigabytes at order 16 on a few hundred thousand tokens); a collision needs two of
the few million contexts to share a random 64-bit value.
"""

from __future__ import annotations

import numpy as np

_P = np.uint64(0x9E3779B97F4A7C15)  # odd multipliers of the rolling hashes
_Q = np.uint64(0xC2B2AE3D27D4EB4F)


class _Table:
    """Counts of (context, token) pairs, by hash: what one order needs to score."""

    def __init__(self, contexts: np.ndarray, words: np.ndarray):
        pairs = contexts * _Q + words.astype(np.uint64)
        keys, first, counts = np.unique(pairs, return_index=True, return_counts=True)
        self.keys, self.counts = keys, counts.astype(np.int32)  # int32: tables of every order add up
        self.contexts, inverse = np.unique(contexts[first], return_inverse=True)
        self.totals = np.bincount(inverse, weights=counts).astype(np.int32)
        self.types = np.bincount(inverse).astype(np.int32)
        n1, n2 = (counts == 1).sum(), (counts == 2).sum()
        self.discount = float(n1 / (n1 + 2 * n2)) if n1 and n2 else 0.5

    @staticmethod
    def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.minimum(np.searchsorted(sorted_keys, keys), max(0, len(sorted_keys) - 1))
        return at, (sorted_keys[at] == keys) if len(sorted_keys) else np.zeros(len(keys), bool)

    def interpolate(self, contexts: np.ndarray, words: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """p_k(word | context) for each pair, given p_{k-1} of the same pairs (`lower`)."""
        at, seen = self._find(self.contexts, contexts)
        total = np.where(seen, self.totals[at], 1).astype(np.float64)
        types = np.where(seen, self.types[at], 0).astype(np.float64)
        pat, found = self._find(self.keys, contexts * _Q + words.astype(np.uint64))
        count = np.where(found, self.counts[pat], 0).astype(np.float64)
        D = self.discount
        p = np.maximum(count - D, 0.0) / total + D * types / total * lower
        return np.where(seen, p, lower)


class KneserNey:
    """fit on `sequences` (lists of ids in [0, vocab_size)), each read after `max_order - 1`
    copies of `start` (so no context reaches into another sequence)."""

    def __init__(self, sequences, vocab_size: int, max_order: int, start: int):
        self.V, self.N, self.start = vocab_size, max_order, start
        self.raw, self.cont = [None], [None]
        # continuation counts of order k: the distinct (k+1)-grams, seen from their last k tokens
        contexts = self._contexts(sequences)
        words, below = next(contexts), None
        for context in contexts:  # order k = 1, 2, ..., N: the hashes of the k - 1 tokens before
            if below is not None:
                up = np.unique(context * _Q + words.astype(np.uint64), return_index=True)[1]
                self.cont.append(_Table(below[up], words[up]))
            self.raw.append(_Table(context, words))
            below = context

    def _contexts(self, sequences):
        """The targets, then per context length m (0..N-1) the hash of the m tokens before each
        target, one array at a time (all at once would hold N of them)."""
        pad = [self.start] * (self.N - 1)
        padded, targets, offset = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
        for s in sequences:
            padded.append(np.asarray(pad + list(s), dtype=np.int64))
            targets.append(np.arange(offset + len(pad), offset + len(pad) + len(s)))
            offset += len(pad) + len(s)
        padded, targets = np.concatenate(padded), np.concatenate(targets)
        yield padded[targets]
        context = np.zeros(len(targets), np.uint64)
        power = np.uint64(1)
        yield context
        with np.errstate(over="ignore"):
            for m in range(1, self.N):
                power = power * _P
                context = context + (padded[targets - m].astype(np.uint64) + np.uint64(1)) * power
                yield context

    def log_likelihoods(self, sequences) -> dict[int, float]:
        """Total natural-log likelihood of `sequences` under each order 1..max_order."""
        contexts = self._contexts(sequences)
        words = next(contexts)
        lower = np.full(len(words), 1.0 / self.V)
        out = {}
        for k, context in enumerate(contexts, start=1):
            out[k] = float(np.log(self.raw[k].interpolate(context, words, lower)).sum())
            if k < self.N:
                lower = self.cont[k].interpolate(context, words, lower)
        return out

    def distribution(self, history, order: int) -> np.ndarray:
        """p(. | the last order - 1 ids of `history`), a vector over the vocabulary."""
        h = [self.start] * (self.N - 1) + list(history)
        words = np.arange(self.V)
        p = np.full(self.V, 1.0 / self.V)
        context = np.uint64(0)
        power = np.uint64(1)
        with np.errstate(over="ignore"):
            for k in range(1, order + 1):
                if k > 1:
                    power = power * _P
                    context = context + np.uint64(h[len(h) - (k - 1)] + 1) * power
                table = self.raw[k] if k == order else self.cont[k]
                if not table._find(table.contexts, np.array([context], dtype=np.uint64))[1][0]:
                    break  # an unseen context: no longer one ending with it was seen either
                p = table.interpolate(np.full(self.V, context, dtype=np.uint64), words, p)
        return p / p.sum()

    def sample(
        self, order: int, max_tokens: int, end: int, rng: np.random.Generator, never=None
    ) -> list[int]:
        """A sequence drawn token by token until `end` (not included) or `max_tokens`, never
        drawing the id `never` (e.g. an unknown token)."""
        out = []
        while len(out) < max_tokens:
            p = self.distribution(out, order)
            if never is not None:
                p[never] = 0.0
                p /= p.sum()
            token = int(rng.choice(self.V, p=p))
            if token == end:
                break
            out.append(token)
        return out
