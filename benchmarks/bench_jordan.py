"""Side-by-side benchmark of the Jordan network (rnnkit.JordanRNN).

For each config, in one process and interleaved (so machine load hits all alike):
  ours    rnnkit.JordanRNN(I, H, O), free-running, impl="fused" (hand-derived BPTT)
  naive   the loop a user would write: `for x_t in x.unbind(0)`, the step equations with the same
          weights, torch.stack of the outputs, autograd for the backward
  lstm    torch.nn.LSTM(I, H) at equal hidden size (a reference point, not the same model)
  forced  rnnkit.JordanRNN teacher-forced (targets given): no sequential loop at all
Each is timed for inference (forward under torch.no_grad) and training (forward + backward of
y.sum() + y_n.sum(), h_n for the LSTM), float32, after a warm-up, as the median of several
interleaved runs. Ratios are other / ours, so > 1 means the fused kernel is faster.

    python benchmarks/bench_jordan.py [--quick] [--output-size O] [--activation tanh]
                                      [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse

import torch

from _harness import stamped, time_interleaved, write_section
from rnnkit.layers.jordan import JordanRNN

CONFIGS = [(1000, 16, 64), (200, 32, 128), (100, 64, 256)]  # (T, B, I=H)
F_OUT = {"none": lambda o: o, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}


def naive(x, y0, params, f_out):
    """The step equations as a user writes them from the textbook."""
    w_ih, w_yh, b_h, w_hy, b_y = params
    y, ys = y0, []
    for x_t in x.unbind(0):
        h = torch.tanh(x_t @ w_ih.t() + b_h + y @ w_yh.t())
        y = f_out(h @ w_hy.t() + b_y)
        ys.append(y)
    return torch.stack(ys), y


def runners(T: int, B: int, H: int, O: int, act: str) -> dict:
    torch.manual_seed(0)
    ours = JordanRNN(H, H, O, output_activation=None if act == "none" else act)
    lstm = torch.nn.LSTM(H, H)
    x = torch.randn(T, B, H, requires_grad=True)
    y0 = torch.zeros(B, O)
    targets = torch.randn(T, B, O)
    params = [p.detach().requires_grad_() for p in ours.weights()]

    def train(f):
        def run():
            y, last = f()
            (y.sum() + (last[0] if isinstance(last, tuple) else last).sum()).backward()

        return run

    def infer(f):
        def run():
            with torch.no_grad():
                f()

        return run

    fns = {
        "ours": lambda: ours(x, y0),
        "naive": lambda: naive(x, y0, params, F_OUT[act]),
        "lstm": lambda: lstm(x),
        "forced": lambda: ours(x, y0, targets=targets),
    }
    return {name: (infer(f), train(f)) for name, f in fns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small config, few repeats")
    parser.add_argument("--output-size", type=int, default=None, help="O (default: = H)")
    parser.add_argument("--activation", default="none", choices=sorted(F_OUT), help="output_activation")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the table into this markdown page")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [(50, 8, 32)] if args.quick else CONFIGS
    repeats, budget = (3, 1.0) if args.quick else (9, 8.0)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32"
    print(header)
    cols = (
        "| T | B | I=H | O | f_out | mode | ours ms | naive ms | LSTM ms | forced ms | vs naive | vs LSTM |"
    )
    lines = [cols, "|" + "---|" * 12]
    print(cols)
    for T, B, H in configs:
        O = args.output_size or H
        run = runners(T, B, H, O, args.activation)
        for mode, idx in (("infer", 0), ("train", 1)):
            t = {
                k: v * 1e3
                for k, v in time_interleaved({k: v[idx] for k, v in run.items()}, repeats, budget).items()
            }
            row = (
                f"| {T} | {B} | {H} | {O} | {args.activation} | {mode} | {t['ours']:.1f} | "
                f"{t['naive']:.1f} | {t['lstm']:.1f} | {t['forced']:.1f} | {t['naive'] / t['ours']:.2f}x | "
                f"{t['lstm'] / t['ours']:.2f}x |"
            )
            print(row, flush=True)
            lines.append(row)
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


BEGIN, END = "<!-- bench: jordan begin -->", "<!-- bench: jordan end -->"
HEADING = "## Jordan network (`benchmarks/bench_jordan.py`)"


if __name__ == "__main__":
    main()
