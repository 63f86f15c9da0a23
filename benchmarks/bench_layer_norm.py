"""Side-by-side benchmark of the layer-normalised LSTM and GRU (`layer_norm=True`).

For each config and cell, in one process and interleaved (so machine load hits all alike), a
training step (forward + backward of y.sum() + h_n.sum()), float32, median of several runs after a
warm-up:
  ours    rnnkit.LSTM / GRU(layer_norm=True), impl="fused" (the hand-derived BPTT), with its
          compiled CPU loops (`rnnkit.cells.speed.native`) where they could be built
  py      the same kernel with its Python loops (`_native.disabled()`): what the compiled loops gain
  naive   the loop a user writes: `for x_t in x.unbind(0)`, the step equations with
          torch.nn.functional.layer_norm, torch.stack of the outputs, autograd for the backward
  torch   torch.nn.LSTM / GRU of the same sizes, which has no layer normalisation: what LN costs
          against the unnormalised layer most users start from
  plain   rnnkit.LSTM / GRU without layer normalisation (fused), for the same comparison
Ratios are other / ours (> 1: the LN kernel is faster).

    python benchmarks/bench_layer_norm.py [--quick] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import rnnkit
from _harness import compiled_loops, stamped, time_interleaved, write_section
from rnnkit.cells.speed import native as _native

CONFIGS = [(1000, 16, 64), (100, 64, 256)]  # (T, B, I=H); the first is the target
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
OURS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU}


def ln(v, gain, shift):
    return F.layer_norm(v, (v.shape[-1],), gain, shift)


def naive_step(cell, x_t, h, c, p):
    """The equations of `rnnkit.cells.ln_lstm` / `ln_gru` as a user writes them."""
    if cell == "lstm":
        pre = ln(x_t @ p["weight_ih_l0"].t(), p["layer_norm_ih_weight_l0"], p["layer_norm_ih_bias_l0"])
        pre = pre + ln(h @ p["weight_hh_l0"].t(), p["layer_norm_hh_weight_l0"], p["layer_norm_hh_bias_l0"])
        i, f, g, o = (pre + p["bias_ih_l0"] + p["bias_hh_l0"]).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln(c, p["layer_norm_c_weight_l0"], p["layer_norm_c_bias_l0"]))
        return h, c
    xs = ln(x_t @ p["weight_ih_l0"].t(), p["layer_norm_ih_weight_l0"], p["layer_norm_ih_bias_l0"])
    hs = ln(h @ p["weight_hh_l0"].t(), p["layer_norm_hh_weight_l0"], p["layer_norm_hh_bias_l0"])
    xr, xz, xn = (xs + p["bias_ih_l0"]).chunk(3, 1)
    hr, hz, hn = (hs + p["bias_hh_l0"]).chunk(3, 1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, c


def naive(cell, x, p):
    h = c = x.new_zeros(x.shape[1], p["weight_hh_l0"].shape[1])
    ys = []
    for x_t in x.unbind(0):
        h, c = naive_step(cell, x_t, h, c, p)
        ys.append(h)
    return torch.stack(ys), h


def runners(cell: str, T: int, B: int, H: int) -> dict:
    torch.manual_seed(0)
    ours = OURS[cell](H, H, layer_norm=True)
    plain, ref = OURS[cell](H, H), TORCH[cell](H, H)
    plain.load_state_dict(ref.state_dict())
    params = {n: p.detach().requires_grad_() for n, p in ours.named_parameters()}
    x = torch.randn(T, B, H, requires_grad=True)

    def train(f):
        def run():
            y, h = f()
            h = h[0] if isinstance(h, tuple) else h
            (y.sum() + h.sum()).backward()

        return run

    def python_loops():
        with _native.disabled():  # the backward follows the forward's choice
            return ours(x)

    fns = {"ours": lambda: ours(x), "py": python_loops, "naive": lambda: naive(cell, x, params)}
    fns.update({"torch": lambda: ref(x), "plain": lambda: plain(x)})
    return {name: train(f) for name, f in fns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small config, few repeats")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the markdown table into this page")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [(50, 8, 32)] if args.quick else CONFIGS
    repeats, budget = (3, 1.0) if args.quick else (7, 20.0)
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, training step; "
        f"{compiled_loops()}"
    )
    print(header)
    cols = (
        "| cell | T | B | I=H | LN fused ms | Python loops ms | LN naive ms | torch (no LN) ms "
        "| rnnkit (no LN) ms | vs naive | vs torch |"
    )
    lines = [cols, "|" + "---|" * 11]
    print(cols)
    for T, B, H in configs:
        for cell in ("lstm", "gru"):
            t = time_interleaved(runners(cell, T, B, H), repeats, budget)
            ms = {k: f"{v * 1e3:.1f}" for k, v in t.items()}
            row = (
                f"| ln-{cell} | {T} | {B} | {H} | {ms['ours']} | {ms['py']} | {ms['naive']} | "
                f"{ms['torch']} | {ms['plain']} | {t['naive'] / t['ours']:.2f}x | "
                f"{t['torch'] / t['ours']:.2f}x |"
            )
            print(row, flush=True)
            lines.append(row)
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


BEGIN, END = "<!-- bench: layer_norm begin -->", "<!-- bench: layer_norm end -->"
HEADING = """## Layer-normalised LSTM and GRU

`benchmarks/bench_layer_norm.py`: `rnnkit.LSTM/GRU(layer_norm=True)` (fused, hand-derived BPTT)
against the loop a user writes with `torch.nn.functional.layer_norm` (autograd for the backward),
and against torch's and our layers without layer normalisation, a training step (forward +
backward), side by side in one process, interleaved, median of several runs. Ratios are other /
ours (> 1: the fused LN kernel is faster)."""


if __name__ == "__main__":
    main()
