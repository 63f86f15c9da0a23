"""Inference latency of an exported LSTM classifier: onnxruntime against eager PyTorch and
torch.compile, side by side in one process; and how long compiling a layer takes at T=100 and
T=1000 (the fused kernel is one op under tracing, so the loop over time is never unrolled).

The classifier is classify's default model on text (embedding 32, 1x64 LSTM, last-state pooling,
softmax over 10 classes), random weights, token ids of length T=40, batch 1 and 64. Each latency
is the median of interleaved runs (`_harness.time_interleaved`) of a forward pass without
gradients: eager (`model(tokens, lengths=...)`), `torch.compile(model, fullgraph=True)` (inductor)
and the `rnnkit export` graph on onnxruntime (CPU provider, its default threads).

    python benchmarks/bench_export.py [--quick] [--threads N] [--out docs/benchmarks.md]

With --out the tables go into that file between `<!-- bench: export begin -->` and
`<!-- bench: export end -->`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime
import torch

from _harness import stamped, time_interleaved, write_section
from rnnkit.models import SequenceClassifier, SequenceClassifierConfig
from rnnkit.tasks._common import OnnxGraph

T, V = 40, 60
BEGIN, END = "<!-- bench: export begin -->", "<!-- bench: export end -->"
HEADING = "## Exported models and compile times (`benchmarks/bench_export.py`)"


def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    config = SequenceClassifierConfig(10, vocab_size=V, embedding_dim=32, hidden_size=64)
    return SequenceClassifier(config).eval()


class Probabilities(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, lengths):
        return self.model(tokens, lengths=lengths).softmax(-1)


def onnx_session(module) -> onnxruntime.InferenceSession:
    from rnnkit.exporting import _onnx_bytes

    tokens, lengths = torch.zeros(2, 5, dtype=torch.long), torch.tensor([5, 3])
    graph = OnnxGraph(
        module,
        (tokens, lengths),
        ("tokens", "lengths"),
        ("probabilities",),
        {"tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"}},
    )
    return onnxruntime.InferenceSession(_onnx_bytes(graph), providers=["CPUExecutionProvider"])


def latency(repeats: int, budget: float) -> list[str]:
    module = Probabilities(classifier()).eval()
    compiled = torch.compile(module, fullgraph=True)
    session = onnx_session(module)
    lines = [
        "| batch | eager ms | torch.compile ms | onnxruntime ms | compile vs eager | onnxruntime vs eager |",
        "|" + "---|" * 6,
    ]
    g = torch.Generator().manual_seed(0)
    for B in (1, 64):
        tokens = torch.randint(0, V, (B, T), generator=g)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        lengths[0] = T
        feeds = {"tokens": tokens.numpy(), "lengths": lengths.numpy()}
        with torch.no_grad():
            want = module(tokens, lengths).numpy()
            compiled(tokens, lengths)  # compiled before timing
            assert np.abs(session.run(None, feeds)[0] - want).max() <= 1e-4

            args = (tokens, lengths)
            fns = {
                "eager": lambda args=args: module(*args),
                "compile": lambda args=args: compiled(*args),
                "ort": lambda feeds=feeds: session.run(None, feeds),
            }
            times = time_interleaved(fns, repeats, budget)
        e, c, o = times["eager"], times["compile"], times["ort"]
        lines.append(f"| {B} | {e * 1e3:.2f} | {c * 1e3:.2f} | {o * 1e3:.2f} | {e / c:.2f}x | {e / o:.2f}x |")
        print(lines[-1], flush=True)
    return lines


def compile_times() -> list[str]:
    lines = ["| layer | T | backend | first call s (compile + run) | graph nodes |", "|" + "---|" * 5]
    for backend in ("aot_eager", "inductor"):
        for steps in (100, 1000):
            torch._dynamo.reset()
            torch.manual_seed(0)
            layer = __import__("rnnkit").LSTM(64, 64, batch_first=True)
            x = torch.randn(16, steps, 64, requires_grad=True)
            start = time.perf_counter()
            y, _ = torch.compile(layer, fullgraph=True, backend=backend)(x)
            y.sum().backward()
            took = time.perf_counter() - start
            nodes = len(torch.export.export(layer, (x.detach(),)).graph.nodes)
            lines.append(f"| LSTM(64, 64), B=16 | {steps} | {backend} | {took:.1f} | {nodes} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write the tables into this markdown file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, budget = (3, 2.0) if args.quick else (15, 30.0)
    header = (
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} "
        "threads, float32, inference without gradients; compile: forward + backward, first call"
    )
    print(header, flush=True)
    lines = latency(repeats, budget) + [""] + compile_times()
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


if __name__ == "__main__":
    main()
