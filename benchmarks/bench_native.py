"""The compiled CPU loops (`rnnkit.cells.speed.native`) against the Python loops they replace.

For each kernel with compiled loops and each config, in one process and interleaved, a training
step (forward + backward of y.sum() + h_n.sum()) and an inference forward of the same rnnkit
layer, float32, as is (compiled loops, where they apply) and with its forward inside
`rnnkit.cells.speed.native.disabled()` (the Python loops; the backward follows the forward's choice).
Ratio: Python / compiled (> 1: the compiled loops are faster). The compiled loops run at every
size since their step product is our own packed GEMM (speed/cpp/common.h, `Packed`); before it,
they left the step to MKL and stopped at 5M multiply-adds a step, where oneDNN from the Python
loops was as fast.

    python benchmarks/bench_native.py [--quick] [--cells lstm,gru] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import contextlib

import torch

import rnnkit
from _harness import compiled_loops, stamped, time_interleaved, write_section
from rnnkit.cells.speed import native as _native

CONFIGS = [(1000, 16, 64), (200, 32, 128), (100, 64, 256), (100, 64, 512)]  # (T, B, I=H)
LAYERS = {
    "lstm": lambda H: rnnkit.LSTM(H, H),
    "gru": lambda H: rnnkit.GRU(H, H),
    "ln-lstm": lambda H: rnnkit.LSTM(H, H, layer_norm=True),
    "ln-gru": lambda H: rnnkit.GRU(H, H, layer_norm=True),
    "rnn": lambda H: rnnkit.RNN(H, H),
    "mgu": lambda H: rnnkit.MGU(H, H),
    "gru-reset-before": lambda H: rnnkit.GRU(H, H, reset_after=False),
    "peephole-lstm": lambda H: rnnkit.Recurrent("peephole_lstm", H, H),
    "indrnn": lambda H: rnnkit.Recurrent("indrnn", H, H),
    # the Jordan network's two forms: stepwise (jordan.cpp) and folded (elman.cpp on W_yh W_hy)
    "jordan-tanh-out": lambda H: rnnkit.JordanRNN(H, H, H, output_activation="tanh"),
    "jordan-folded": lambda H: rnnkit.JordanRNN(H, H, H),
    # the minimal cells' sequential mode: the scan's loop (scan.cpp)
    "min-gru-sequential": lambda H: rnnkit.Recurrent("min_gru", H, H, mode="sequential"),
    "min-lstm-sequential": lambda H: rnnkit.Recurrent("min_lstm", H, H, mode="sequential"),
}
LARGE = ("lstm", "gru", "ln-lstm", "ln-gru")  # the layers also timed at H >= 256 (the others' Python
# loops take long there, and the compiled loops' margin is the GEMM's, measured on these)
BEGIN, END = "<!-- bench: native begin -->", "<!-- bench: native end -->"
HEADING = "## Compiled loops against the Python loops (`benchmarks/bench_native.py`)"


def runners(kind: str, T: int, B: int, H: int) -> dict:
    torch.manual_seed(0)
    layer = LAYERS[kind](H)
    x = torch.randn(T, B, H, requires_grad=True)

    def loops(python: bool):
        return _native.disabled() if python else contextlib.nullcontext()

    def train(python: bool):
        def run():
            with loops(python):
                y, h = layer(x)
            h = h[0] if isinstance(h, tuple) else h
            (y.sum() + h.sum()).backward()

        return run

    def infer(python: bool):
        def run():
            with torch.no_grad(), loops(python):
                layer(x)

        return run

    return {"train": train(False), "train_py": train(True), "infer": infer(False), "infer_py": infer(True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small config, few repeats")
    parser.add_argument("--out", default=None, help="also write the markdown table into this page")
    parser.add_argument("--cells", default=None, help=f"comma-separated subset of {', '.join(LAYERS)}")
    args = parser.parse_args()
    kinds = list(LAYERS) if args.cells is None else args.cells.split(",")
    unknown = sorted(set(kinds) - set(LAYERS))
    if unknown:
        parser.error(f"--cells: unknown {', '.join(unknown)} (choose from {', '.join(LAYERS)})")
    if args.out and args.cells:
        parser.error("--out writes the whole table: run it without --cells")
    configs = [(50, 8, 32)] if args.quick else CONFIGS
    repeats, budget = (3, 1.0) if args.quick else (7, 10.0)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; {compiled_loops()}"
    print(header)
    cols = "| cell | T | B | I=H | mode | compiled ms | Python loops ms | Python / compiled |"
    lines = [cols, "|" + "---|" * 8]
    print(cols)
    for T, B, H in configs:
        for kind in kinds:
            if H >= 256 and kind not in LARGE:
                continue
            t = time_interleaved(runners(kind, T, B, H), repeats, budget)
            for mode in ("infer", "train"):
                ours, py = t[mode], t[f"{mode}_py"]
                ms = f"{ours * 1e3:.1f} | {py * 1e3:.1f} | {py / ours:.2f}x"
                row = f"| {kind} | {T} | {B} | {H} | {mode} | {ms} |"
                print(row, flush=True)
                lines.append(row)
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


if __name__ == "__main__":
    main()
