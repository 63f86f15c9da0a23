"""Side-by-side benchmark of rnnkit's fused recurrent layers (`make bench`).

For each config and cell, in one process and interleaved (so machine load hits all alike):
  ours   rnnkit.LSTM / GRU / RNN / MGU, impl="fused", weights loaded from the torch module (with
         the LSTM's and GRU's compiled CPU loops, `rnnkit.cells.speed.native`, where they apply)
  torch  torch.nn.LSTM / GRU / RNN (none for MGU)
  naive  the loop a user would write: `for x_t in x.unbind(0)`, the step equations with the
         weights as stored, torch.stack of the outputs, autograd for the backward
Each is timed for inference (forward under torch.no_grad) and training (forward + backward of
y.sum() + h_n.sum()), float32, after a warm-up, as the median of several interleaved runs.
Ratios are other / ours, so > 1 means rnnkit is faster. "GEMM %" is the share of this machine's
float32 GEMM throughput, measured in the same run, that our training step achieves on the layer's
matrix products (2*T*B*G*H*(I+H) FLOPs forward, three times that for forward + backward).

    python benchmarks/bench_kernels.py [--quick] [--cells lstm,gru,rnn,mgu] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse

import torch

import rnnkit
from _harness import compiled_loops, stamped, time_interleaved, write_section

CONFIGS = [  # (T, B, H), with I=H; or (T, B, H, I)
    (100, 64, 256),
    (100, 64, 512),
    (200, 32, 128),
    (1000, 16, 64),
    (50, 1, 128),
    (100, 32, 256, 64),  # the main job's layer (embedding 64 in, 1x256)
    (100, 32, 512, 64),  # and at charlm's default width
]
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "mgu": 2}
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
OURS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN, "mgu": rnnkit.MGU}


def naive_step(cell: str, x_t, h, c, w_ih, w_hh, b_ih, b_hh):
    """The step equations as a user writes them from the textbook."""
    if cell == "rnn":
        return torch.tanh(x_t @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh), c
    if cell == "lstm":
        i, f, g, o = (x_t @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if cell == "gru":
        xr, xz, xn = (x_t @ w_ih.t() + b_ih).chunk(3, 1)
        hr, hz, hn = (h @ w_hh.t() + b_hh).chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, c
    H = h.shape[1]  # mgu: f, n
    xf, xn = (x_t @ w_ih.t() + b_ih).chunk(2, 1)
    f = torch.sigmoid(xf + h @ w_hh[:H].t() + b_hh[:H])
    n = torch.tanh(xn + (f * h) @ w_hh[H:].t() + b_hh[H:])
    return (1 - f) * h + f * n, c


def naive(cell, x, params):
    h = x.new_zeros(x.shape[1], params[1].shape[1])
    c = h
    ys = []
    for x_t in x.unbind(0):
        h, c = naive_step(cell, x_t, h, c, *params)
        ys.append(h)
    return torch.stack(ys), h


def runners(cell: str, T: int, B: int, H: int, I: int):
    torch.manual_seed(0)
    ours = OURS[cell](I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    ref = TORCH[cell](I, H) if cell in TORCH else None
    if ref is not None:
        ours.load_state_dict(ref.state_dict())
    params = [p.detach().requires_grad_() for p in ours.parameters()]

    def first_two(out):
        y, h = out
        return y, (h[0] if isinstance(h, tuple) else h)

    def train(f):
        def run():
            y, h = first_two(f())
            (y.sum() + h.sum()).backward()

        return run

    def infer(f):
        def run():
            with torch.no_grad():
                f()

        return run

    fns = {"ours": lambda: ours(x), "naive": lambda: naive(cell, x, params)}
    if ref is not None:
        fns["torch"] = lambda: ref(x)
    return {name: (infer(f), train(f)) for name, f in fns.items()}


def gemm_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    lin = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    fns = {"mm": lambda: a @ b}
    if lin is not None:
        fns["onednn"] = lambda: lin(a, b, None, "none", [], "")
    best = min(time_interleaved(fns, 5, 10.0).values())
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small configs, few repeats")
    parser.add_argument("--cells", default="lstm,gru,rnn,mgu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write a markdown table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [(50, 8, 64), (20, 4, 32)] if args.quick else CONFIGS
    repeats, budget = (3, 1.0) if args.quick else (9, 6.0)
    peak = gemm_gflops(512 if args.quick else 2048)
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; "
        f"machine GEMM peak {peak:.0f} GFLOP/s; {compiled_loops()}"
    )
    print(header)
    cols = "| cell | T | B | I | H | mode | ours ms | torch ms | naive ms | vs torch | vs naive | GEMM % |"
    lines = [cols, "|" + "---|" * 12]
    print(cols)
    for T, B, H, *rest in configs:
        I = rest[0] if rest else H
        for cell in args.cells.split(","):
            run = runners(cell, T, B, H, I)
            for mode, idx in (("infer", 0), ("train", 1)):
                t = time_interleaved({k: v[idx] for k, v in run.items()}, repeats, budget)
                flops = 2 * T * B * GATES[cell] * H * (I + H) * (3 if mode == "train" else 1)
                share = flops / t["ours"] / 1e9 / peak * 100
                tt = t.get("torch")
                torch_ms, vs_torch = (
                    ("n/a", "n/a") if tt is None else (f"{tt * 1e3:.1f}", f"{tt / t['ours']:.2f}x")
                )
                row = (
                    f"| {cell} | {T} | {B} | {I} | {H} | {mode} | {t['ours'] * 1e3:.1f} | {torch_ms} | "
                    f"{t['naive'] * 1e3:.1f} | {vs_torch} | {t['naive'] / t['ours']:.2f}x | {share:.0f}% |"
                )
                print(row, flush=True)
                lines.append(row)
    if args.out:
        write_section(args.out, BEGIN, END, None, stamped(header, lines))


BEGIN, END = "<!-- bench table: begin -->", "<!-- bench table: end -->"


if __name__ == "__main__":
    main()
