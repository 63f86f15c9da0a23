"""The compiled loops' own pieces against what torch calls for the same work, side by side in one
process, interleaved, medians, float32:

  packed GEMM   a step's product c += a w (few rows against one weight; `Packed` in
                speed/cpp/common.h, through the op `rnnkit::packed_addmm`: w packed once, then
                20 products, as a loop over time does) against 20 calls of torch.addmm (MKL;
                each also pays a Python call, ~2-4 us, which the compiled loops do not)
  LSTM step     one step of a few rows without gradients (`rnnkit::lstm_cell`, speed/cpp/step.cpp)
                against torch.lstm_cell

    python benchmarks/bench_gemm.py [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import functools

import torch

from _harness import stamped, time_interleaved, write_section
from rnnkit.cells.speed import native as _native

BEGIN, END = "<!-- bench: gemm begin -->", "<!-- bench: gemm end -->"
HEADING = "## The compiled loops' GEMM and decoding step (`benchmarks/bench_gemm.py`)"
PRODUCTS = [(1, 128, 512), (16, 64, 256), (32, 128, 512), (32, 256, 1024), (64, 256, 1024), (64, 512, 2048)]
STEPS = [(1, 64, 256), (1, 64, 512), (4, 64, 512)]  # (rows, input, hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="also write the markdown table into this page")
    args = parser.parse_args()
    lib = _native.ops(torch.zeros(1))
    if lib is None:
        raise SystemExit("the compiled loops are not available here")
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32"
    lines = ["| work | shape | ours us | torch us | torch / ours |", "|---|---|---|---|---|"]
    print(header)
    print("\n".join(lines))
    torch.manual_seed(0)

    def row(work: str, shape: str, ours, theirs, reps: int = 20, ours_repeats: bool = False) -> None:
        """One line: the medians of `reps` calls of each side, in microseconds a call (`ours`
        repeats itself when `ours_repeats`)."""

        def repeat(f):
            def run():
                for _ in range(reps):
                    f()

            return run

        t = time_interleaved(
            {"ours": ours if ours_repeats else repeat(ours), "torch": repeat(theirs)}, 9, 5.0
        )
        us = {k: v / reps * 1e6 for k, v in t.items()}
        lines.append(
            f"| {work} | {shape} | {us['ours']:.1f} | {us['torch']:.1f} | {t['torch'] / t['ours']:.2f}x |"
        )
        print(lines[-1], flush=True)

    for n, K, N in PRODUCTS:
        a, w, c = torch.randn(n, K), torch.randn(K, N), torch.randn(n, N)
        ours = functools.partial(lib.packed_addmm, c, a, w, 20)
        theirs = functools.partial(torch.addmm, c, a, w, out=c)
        row("c += a w (packed GEMM vs torch.addmm)", f"{n}x{K}x{N}", ours, theirs, ours_repeats=True)
    for B, I, H in STEPS:
        x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
        w = (torch.randn(4 * H, I), torch.randn(4 * H, H), torch.randn(4 * H), torch.randn(4 * H))
        ours = functools.partial(lib.lstm_cell, x, h, c, *w)
        theirs = functools.partial(torch.lstm_cell, x, (h, c), *w)
        row("LSTM step (lstm_cell vs torch.lstm_cell)", f"B={B} I={I} H={H}", ours, theirs)
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


if __name__ == "__main__":
    main()
