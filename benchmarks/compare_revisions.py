"""The layers of this checkout against those of another git revision, side by side on one machine.

A change that restructures the layers (not the kernels) must not cost speed. This times each
built-in layer (forward + backward, and forward under no_grad) in worker processes that alternate
between the two revisions (old, new, old, new, ...), so that machine load hits both alike; each
worker imports one revision's `src` (the other revision is checked out with `git worktree` in a
temporary folder). Reported: the median over the workers of each one's median time, and the
ratio old / new (> 1: this checkout is faster). The shapes include a one-step call (T=1, B=1),
where the layer's own Python overhead dominates (what sampling one character at a time pays).

    python benchmarks/compare_revisions.py REV [--rounds 3] [--cells lstm,gru] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import stamped, write_section

ROOT = Path(__file__).resolve().parents[1]
CELLS = ["lstm", "gru", "rnn", "mgu", "ln_lstm", "min_gru"]
CONFIGS = [(100, 64, 256), (200, 32, 128), (50, 1, 128), (1, 1, 128)]  # (T, B, I=H)

WORKER = r"""
import gc, json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import rnnkit
torch.set_num_threads(2)
cells, configs = json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
for cell in cells:
    for T, B, H in configs:
        torch.manual_seed(0)
        layer = rnnkit.Recurrent(cell, H, H)
        x = torch.randn(T, B, H)
        def train():
            y, s = layer(x)
            (y.sum() + sum(t.sum() for t in s)).backward()
        def infer():
            with torch.no_grad():
                layer(x)
        for name, fn in (("train", train), ("infer", infer)):
            fn()
            t0 = time.perf_counter()
            fn()
            n = max(1, int(0.05 / max(1e-6, time.perf_counter() - t0)))  # calls per timing, ~50 ms
            times = []
            gc.disable()
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                times.append((time.perf_counter() - t0) / n)
            gc.enable()
            out[f"{cell} {T} {B} {H} {name}"] = statistics.median(times)
print(json.dumps(out))
"""


def run(src: Path, cells: list[str]) -> dict:
    args = [sys.executable, "-c", WORKER, str(src), json.dumps(cells), json.dumps(CONFIGS)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare with (e.g. HEAD~1)")
    parser.add_argument("--rounds", type=int, default=3, help="workers per revision")
    parser.add_argument("--out", help="a markdown page to write the table into")
    parser.add_argument("--cells", default=",".join(CELLS), help="the layers to time (default: all)")
    a = parser.parse_args()
    sha = subprocess.run(["git", "rev-parse", "--short", a.rev], cwd=ROOT, capture_output=True, text=True)
    here = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), a.rev], cwd=ROOT, check=True)
        try:
            results = {"old": [], "new": []}
            for r in range(a.rounds):
                for side, src in (("old", old / "src"), ("new", ROOT / "src")):
                    print(f"round {r + 1}/{a.rounds}: {side}", file=sys.stderr)
                    results[side].append(run(src, a.cells.split(",")))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    lines = [
        f"| cell | T | B | H | mode | {sha.stdout.strip()} ms | {here.stdout.strip()} ms | old / new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in results["old"][0]:
        o = statistics.median(w[key] for w in results["old"]) * 1e3
        n = statistics.median(w[key] for w in results["new"]) * 1e3
        lines.append("| " + " | ".join(key.split()) + f" | {o:.3f} | {n:.3f} | {o / n:.2f} |")
    text = stamped(f"{a.rounds} alternating workers per revision, float32, 2 threads", lines)
    print(text)
    if a.out:
        write_section(
            a.out,
            "<!-- compare_revisions:begin -->",
            "<!-- compare_revisions:end -->",
            "## Layers against an earlier revision",
            text,
        )


if __name__ == "__main__":
    main()
