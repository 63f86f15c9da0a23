"""A user's cell without `forward_sequence` (its one step, under `rnnkit.Recurrent`'s loop and
autograd): eager against `torch.compile` of the layer (inductor, the whole loop over time traced
into one graph), a training step (forward + backward of y.sum()) and an inference forward, side
by side in one process, interleaved, after the compiled one's warm-up; the built-in LSTM's fused
kernel alongside for scale. Compile time is reported separately.

    python benchmarks/bench_custom_cell.py [--out docs/benchmarks.md]

The cell: a GRU written as a user writes it from the equations (two nn.Linear, torch.sigmoid /
tanh); the figures are what `docs/extending.md`'s advice on speed rests on.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import rnnkit
from _harness import stamped, time_interleaved, write_section

BEGIN, END = "<!-- bench: custom begin -->", "<!-- bench: custom end -->"
HEADING = "## A user's cell: eager against torch.compile (`benchmarks/bench_custom_cell.py`)"
CONFIGS = [(200, 32, 128), (100, 64, 256)]  # (T, B, I=H)


class UserGRU(rnnkit.cells.Cell):
    """h' = (1 - z) n + z h, the GRU's step from the equations; no forward_sequence."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size,)
        self.x2h = nn.Linear(input_size, 3 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x_t, state):
        (h,) = state
        xr, xz, xn = self.x2h(x_t).chunk(3, 1)
        hr, hz, hn = self.h2h(h).chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="also write the markdown table into this page")
    args = parser.parse_args()
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32"
    lines = [
        "| T | B | I=H | mode | eager ms | torch.compile ms | eager / compiled | rnnkit.LSTM (fused) ms "
        "| compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print(header)
    print("\n".join(lines))
    for T, B, H in CONFIGS:
        torch.manual_seed(0)
        layer = rnnkit.Recurrent(UserGRU, H, H)
        compiled = torch.compile(layer)
        lstm = rnnkit.LSTM(H, H)
        x = torch.randn(T, B, H, requires_grad=True)

        def train(f, x=x):
            def run():
                f(x)[0].sum().backward()

            return run

        def infer(f, x=x):
            def run():
                with torch.no_grad():
                    f(x)

            return run

        start = time.perf_counter()
        train(compiled)()
        infer(compiled)()
        compile_s = time.perf_counter() - start
        for mode, wrap in (("train", train), ("infer", infer)):
            t = time_interleaved(
                {"eager": wrap(layer), "compiled": wrap(compiled), "lstm": wrap(lstm)}, 7, 10.0
            )
            lines.append(
                f"| {T} | {B} | {H} | {mode} | {t['eager'] * 1e3:.1f} | {t['compiled'] * 1e3:.1f} | "
                f"{t['eager'] / t['compiled']:.2f}x | {t['lstm'] * 1e3:.1f} | {compile_s:.0f} |"
            )
            print(lines[-1], flush=True)
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


if __name__ == "__main__":
    main()
