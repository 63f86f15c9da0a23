"""A charlm run read one built-in topic at a time, from a zero state (docs/tasks.md, charlm):

    python benchmarks/charlm_topics.py RUN_DIR

1. each test topic's bits per character (and, for a model with a cache, without it) beside xz -9's
   extra bits for it after the training text;
2. the openings (first 400 characters) of all built-in topics: the worst three and the median,
   the check that found runs sent off into ~19 bits a character by some openings.
"""

from __future__ import annotations

import argparse
import lzma
import random
from pydoc_data.topics import topics

import torch

from rnnkit import Run
from rnnkit.data.text import CharVocab, builtin_corpus
from rnnkit.tasks.charlm import bits_per_char, without_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a charlm run directory on the built-in text")
    run = Run.load(parser.parse_args().run)
    vocab = CharVocab.restore(run.config["vocab"])
    train = builtin_corpus().train.encode()
    base = len(lzma.compress(train, preset=9))
    keys = sorted(topics)
    test_keys = sorted(random.Random(0).sample(keys, 12)[6:])  # builtin_corpus's draw, seed 0
    cache = getattr(run.model.config, "cache_size", 0)
    extra = " without the cache |" if cache else ""
    print(f"| topic | characters | bpc |{extra} xz given the training text |")
    print("|---|---|---|" + ("---|" if cache else "") + "---|")
    with torch.no_grad():
        for key in test_keys:
            text = topics[key]
            ids = vocab.encode(text)
            bpc = bits_per_char(run.model, ids, streams=1)
            alone = f" {bits_per_char(without_cache(run.model), ids, streams=1):.3f} |" if cache else ""
            xz = 8 * (len(lzma.compress(train + text.encode(), preset=9)) - base) / len(text)
            print(f"| {key} | {len(text):,} | {bpc:.3f} |{alone} {xz:.3f} |")
        openings = sorted(
            (bits_per_char(run.model, vocab.encode(topics[k][:400]), streams=1), k) for k in keys
        )
    worst = ", ".join(f"{k} {b:.2f}" for b, k in openings[-3:])
    print(f"\nopenings of {len(keys)} topics: median {openings[len(keys) // 2][0]:.2f}, worst {worst}")


if __name__ == "__main__":
    main()
