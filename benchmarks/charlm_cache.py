"""The continuous cache of a charlm run measured on its validation text (docs/tasks.md, charlm,
"The cache"): the grid its settings were chosen from, and what reading text with it costs.

    python benchmarks/charlm_cache.py RUN_DIR [--chars 60000]

1. bits per character of the first --chars validation characters (16 streams, as evaluation reads
   them) for each cache size, theta and lambda of the grid below, the recurrent model alone first;
2. the seconds to read them with the run's own cache and without it, on this machine.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import replace

from rnnkit import Run
from rnnkit.tasks.charlm import cache_grid, log_probs, without_cache

SIZES = (500, 1000, 2000, 4000)
THETAS = (5.0, 10.0, 20.0, 40.0)
LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def with_size(model, size: int):
    """The same weights with a cache of `size` positions and its own settings (a shallow copy: the
    modules are shared, the two settings are not)."""
    other = copy.copy(model)
    other._buffers = {k: v.clone() for k, v in model._buffers.items()}
    other.config = replace(model.config, cache_size=size)
    return other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a charlm run directory whose model has a cache")
    parser.add_argument("--chars", type=int, default=60000, help="validation characters read")
    args = parser.parse_args()
    run = Run.load(args.run)
    model = run.model
    if not getattr(model.config, "cache_size", 0):
        parser.error(f"{args.run}: its model has no cache (--cache-size 0)")
    ids = run._task.vocab.encode(run._task.splits.val[: args.chars])
    alone = -log_probs(without_cache(model), ids).mean().item() / math.log(2)
    print(f"validation: {len(ids):,} characters; the recurrent model alone {alone:.4f} bpc\n")
    print("| size | theta | " + " | ".join(f"lambda {lam}" for lam in LAMBDAS) + " |")
    print("|---|---|" + "---|" * len(LAMBDAS))
    rows = []
    for size in SIZES:
        grid = {(t, lam): b for b, t, lam in cache_grid(with_size(model, size), ids, THETAS, LAMBDAS)}
        rows += [(b, size, t, lam) for (t, lam), b in grid.items()]
        for theta in THETAS:
            cells = " | ".join(f"{grid[theta, lam]:.4f}" for lam in LAMBDAS)
            print(f"| {size} | {theta:g} | {cells} |", flush=True)
    best = min(rows)
    print(f"\nbest: size {best[1]}, theta {best[2]:g}, lambda {best[3]}: {best[0]:.4f} bpc")
    for name, m in (("with the run's cache", model), ("the recurrent model alone", without_cache(model))):
        log_probs(m, ids[:5000])  # warm up
        started = time.perf_counter()
        log_probs(m, ids)
        print(f"reading them {name}: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
