"""charlm's defaults against the same budget's alternatives (docs/tasks.md, "charlm"): the same
built-in data, the same number of steps, the same seed, on this machine.

    python benchmarks/charlm_defaults.py                   # all three (about 35 minutes on 2 cores)
    python benchmarks/charlm_defaults.py --default-run RUN # reuse a run of `rnnkit train` (no flags)

1. default: `rnnkit train` with no flags (the task's defaults), and its weights read without the
   continuous cache (the run's `bpc_without_cache`: what the recurrent model alone scores);
2. plain: the same command with the defaults charlm had before they were chosen by measurement
   (1x256 LSTM, embedding 64, dropout 0.1, Adam 1e-3 constant, no other regulariser, no cache);
3. torch.nn: a model a PyTorch user writes (nn.Embedding, nn.LSTM, nn.Linear) with the default's
   sizes, dropout and optimiser, trained by the same trainer on the same batches (weight and
   embedding dropout, which torch.nn lacks, left out), its weights selected on validation the same way.

Prints a markdown table: test bpc, the step selected and the wall time of each.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ["--hidden-size", "256", "--num-layers", "1", "--embedding-dim", "64", "--dropout", "0.1"]
PLAIN += ["--embedding-dropout", "0", "--weight-dropout", "0", "--lr", "1e-3", "--schedule", "constant"]
PLAIN += ["--warmup-steps", "0", "--seq-len", "100", "--batch-size", "32", "--cache-size", "0"]


def command_run(out: Path, flags: list[str]) -> dict:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "rnnkit", "train", *flags, "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return {**read_run(out), "wall_s": time.perf_counter() - started}


def read_run(run: Path) -> dict:
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    config = json.loads((run / "config.json").read_text())
    return {
        "bpc": test["bpc"],
        **({"bpc_without_cache": test["bpc_without_cache"]} if "bpc_without_cache" in test else {}),
        "xz_cond_bpc": test["xz_cond_bpc"],
        "selected": test["selected_step"],
        "steps": config["train"]["steps"],
    }


class TorchLM(nn.Module):
    """What a PyTorch user writes: forward(tokens (B, T), state) -> (logits (B, T, V), state)."""

    def __init__(self, vocab: int, embedding_dim: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding_dim)
        self.lstm = nn.LSTM(
            embedding_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab)

    def forward(self, tokens, state=None):
        h, state = self.lstm(self.drop(self.embedding(tokens)), state)
        return self.head(self.drop(h)), state


def torch_nn_run(steps: int) -> dict:
    from safetensors.torch import load_file

    from rnnkit.tasks.charlm import CharLMConfig, CharLMTask, bits_per_char
    from rnnkit.training import TrainConfig, Trainer

    torch.manual_seed(0)
    c = CharLMConfig()
    task = CharLMTask(c)
    defaults = {**TrainConfig().__dict__, **CharLMTask.train_defaults, "steps": steps}
    config = TrainConfig(**defaults)
    model = TorchLM(len(task.vocab), c.embedding_dim, c.hidden_size, c.num_layers, c.dropout)
    with tempfile.TemporaryDirectory() as run:
        started = time.perf_counter()
        trainer = Trainer(
            model,
            config,
            batches=task.batches,
            step_fn=task.step_fn,
            evaluate=task.evaluate,
            metric="bpc",
            run_dir=run,
        )
        trainer.fit()
        wall = time.perf_counter() - started
        model.load_state_dict(load_file(str(Path(run) / "model.safetensors")))
    return {
        "bpc": bits_per_char(model, task.vocab.encode(task.splits.test)),
        "selected": trainer.best_step,
        "steps": steps,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--default-run", type=Path, help="a finished run of `rnnkit train` (no flags) to reuse"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "charlm-defaults")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    if args.default_run:
        rows["default"] = read_run(args.default_run)
    else:
        rows["default"] = command_run(args.out / "default", [])
    if "bpc_without_cache" in rows["default"]:
        rows["the defaults' weights without the cache"] = {
            **rows["default"],
            "bpc": rows["default"]["bpc_without_cache"],
            "wall_s": None,
        }
    steps = rows["default"]["steps"]
    rows["plain 1x256 (before)"] = command_run(args.out / "plain", [*PLAIN, "--steps", str(steps)])
    rows["torch.nn.LSTM, default sizes"] = torch_nn_run(steps)
    print(f"| model ({steps} steps, seed 0) | test bpc | selected step | wall time |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        wall = (
            "(reused run)"
            if "wall_s" not in r
            else "(the same run)"
            if r["wall_s"] is None
            else f"{r['wall_s'] / 60:.1f} min"
        )
        print(f"| {name} | {r['bpc']:.3f} | {r['selected']} | {wall} |")
    print(f"\nxz given the training text: {rows['default']['xz_cond_bpc']:.3f} bpc")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1, allow_nan=False))
    assert all(math.isfinite(r["bpc"]) for r in rows.values())


if __name__ == "__main__":
    main()
