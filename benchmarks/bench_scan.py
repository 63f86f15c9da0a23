"""Side-by-side training-step benchmark of minGRU and minLSTM (`rnnkit.MinGRU`, `rnnkit.MinLSTM`)
against torch.nn.GRU, and of the scan's two modes.

For each T, in one process and interleaved (so the load of other jobs hits all alike), the median
of several runs of forward + backward of y.sum() + h_n.sum(), float32 CPU, one layer, I = H:
  torch.nn.GRU                        the baseline
  MinGRU / MinLSTM, mode="parallel"    the blocked scan (`rnnkit.cells.scan`)
  MinGRU / MinLSTM, mode="sequential"  the step-by-step loop
each plain and with log_space=True. "vs GRU" is torch.nn.GRU's time / this one's (> 1: faster);
"vs plain" is the plain model's time (same layer and mode) / this one's.

    python benchmarks/bench_scan.py [--quick] [--threads N] [--out docs/benchmarks.md]

With --out the table goes into that file between `<!-- bench: scan begin -->` and
`<!-- bench: scan end -->` (appended under a heading if the markers are absent); the rest of the
file is kept.
"""

from __future__ import annotations

import argparse

import torch

from _harness import stamped, time_interleaved, write_section
from rnnkit.layers.minimal import MinGRU, MinLSTM

CONFIGS = [(1000, 16, 256), (10000, 16, 256)]  # (T, B, I=H), the sizes
QUICK = [(200, 4, 32), (1000, 4, 32)]
VARIANTS = [  # (name, layer class, log_space, mode)
    (f"{cls.__name__}{' log' if log else ''}", cls, log, mode)
    for cls in (MinGRU, MinLSTM)
    for log in (False, True)
    for mode in ("parallel", "sequential")
]


def train_step(module: torch.nn.Module, x: torch.Tensor):
    def run():
        y, h = module(x)
        (y.sum() + h.sum()).backward()

    return run


def measure(T: int, B: int, H: int, repeats: int, budget: float) -> dict:
    torch.manual_seed(0)
    x = torch.randn(T, B, H, requires_grad=True)
    fns = {("torch.nn.GRU", "-"): train_step(torch.nn.GRU(H, H), x)}
    for name, cls, log, mode in VARIANTS:
        fns[(name, mode)] = train_step(cls(H, H, log_space=log, mode=mode), x)
    return time_interleaved(fns, repeats, budget)


def table(results: dict) -> list[str]:
    lines = ["| T | B | I=H | layer | scan | train ms | vs GRU | vs plain |", "|" + "---|" * 8]
    for (T, B, H), times in results.items():
        base = times[("torch.nn.GRU", "-")]
        for (name, mode), t in times.items():
            plain = times.get((name.removesuffix(" log"), mode))
            vs_plain = f"{plain / t:.2f}x" if name.endswith(" log") else "-"
            lines.append(
                f"| {T} | {B} | {H} | {name} | {mode} | {t * 1e3:.1f} | {base / t:.1f}x | {vs_plain} |"
            )
    return lines


BEGIN, END = "<!-- bench: scan begin -->", "<!-- bench: scan end -->"
HEADING = "## minGRU and minLSTM: parallel scan vs sequential vs torch.nn.GRU (`benchmarks/bench_scan.py`)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write the table into this markdown file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs, repeats, budget = (QUICK, 3, 1.0) if args.quick else (CONFIGS, 7, 60.0)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, training step"
    print(header, flush=True)
    results = {}
    for T, B, H in configs:
        results[(T, B, H)] = measure(T, B, H, repeats, budget)
        print("\n".join(table({(T, B, H): results[(T, B, H)]})), flush=True)
    lines = table(results)
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


if __name__ == "__main__":
    main()
