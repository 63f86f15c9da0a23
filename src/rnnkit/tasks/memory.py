"""memory: the long-lag problems (`rnnkit.data.memory`), which separate cells that can carry
information across T steps from those whose gradients vanish on the way.

  --problem adding       many-to-one regression: `SequenceClassifier` (regression head) on
                         (value, marker) steps; metric `mse` (the mean predictor scores ~0.167)
  --problem copy-memory  many-to-many: `SequenceTagger` over symbol ids; metric `accuracy` on the
                         10 recalled symbols (chance 1/8)
  --problem copy | repeat-copy | associative-recall
                         the Neural Turing Machine's problems (`tasks/_bit_problems.py`), with
                         `--model ntm` or a recurrent baseline; metric `bit_errors` per sequence

Training batches are drawn fresh at every step from a generator seeded by the step number (so a
resumed run sees the same data); validation and test are fixed sets from other seeds.
`evaluate --lengths 100,200,400` also reports each metric at other lags (bit problems: at other
sequence lengths, associative-recall: numbers of items).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit._config import (
    MAX_BATCH,
    MAX_LAYERS,
    MAX_LENGTH,
    MAX_UNITS,
    Options,
    integer,
    one_of,
    option,
    shown,
)
from rnnkit.cells.registry import available, registered
from rnnkit.data.memory import COPY_DATA, COPY_SYMBOLS, adding_batch, copy_memory_baseline, copy_memory_batch
from rnnkit.errors import RnnkitValueError
from rnnkit.models import SequenceClassifier, SequenceClassifierConfig, SequenceTagger, SequenceTaggerConfig
from rnnkit.tasks._bit_problems import SIZES, BitProblem
from rnnkit.tasks._common import Task, device_of, pyplot

PROBLEMS = ("adding", "copy-memory", *SIZES)


def models() -> tuple[str, ...]:
    """--model: every cell name, or the NTM."""
    return (*available(), "ntm")


VAL_SEED, TEST_SEED = 10_000_019, 20_000_003


@dataclass(frozen=True)
class MemoryConfig(Options):
    problem: str = option("adding", "the problem", one_of(*PROBLEMS))
    lag: int = option(
        200, "adding, copy-memory: T, the steps information must be carried across", integer(2, MAX_LENGTH)
    )
    model: str = option("lstm", "the recurrent cell, or ntm (bit problems)", one_of(models))
    hidden_size: int = option(
        128, "units per recurrent layer (ntm: of its LSTM controller)", integer(1, MAX_UNITS)
    )
    num_layers: int = option(1, "stacked recurrent layers", integer(1, MAX_LAYERS))
    batch_size: int = option(64, "sequences per step", integer(1, MAX_BATCH))
    eval_size: int = option(1000, "validation sequences (test: twice as many)", integer(1, 100_000))
    min_length: int = option(
        0,
        "bit problems: shortest training length (items)",
        integer(1, 10_000, special={0: "the paper's, 1 / 1 / 2 items"}),
    )
    max_length: int = option(
        0,
        "bit problems: longest training length (items)",
        integer(1, 10_000, special={0: "the paper's, 20 / 10 / 6 items"}),
    )
    max_repeats: int = option(10, "repeat-copy: most repeats in training", integer(1, 1000))
    # three rows at least: the head's shifts -1, 0, +1 must be distinct rotations
    memory_slots: int = option(128, "ntm: memory rows N", integer(3, 65536))
    memory_width: int = option(20, "ntm: memory row width M", integer(1, 4096))
    read_heads: int = option(1, "ntm: read heads", integer(1, 64))

    def __post_init__(self):
        super().__post_init__()
        if self.model == "ntm" and self.problem not in SIZES:
            raise RnnkitValueError(
                f"{shown('model')} ntm is for {', '.join(SIZES)}, got {shown('problem')} {self.problem}"
            )
        if self.problem in SIZES:
            paper = SIZES[self.problem][2]
            low, high = self.min_length or paper[0], self.max_length or paper[1]
            whose = "" if self.max_length else f": the paper's for {self.problem}"
            if low > high:
                raise RnnkitValueError(
                    f"{shown('min_length')} ({low}) must be at most {shown('max_length')} ({high}{whose})"
                )


class LagProblem:
    """adding and copy-memory at lag T."""

    def __init__(self, config: MemoryConfig):
        self.config = config
        self.key = "mse" if config.problem == "adding" else "accuracy"

    def build_model(self):
        c = self.config
        common = dict(hidden_size=c.hidden_size, num_layers=c.num_layers, cell=c.model)
        if c.problem == "adding":
            model = SequenceClassifier(SequenceClassifierConfig(None, input_size=2, **common))
        else:
            model = SequenceTagger(
                SequenceTaggerConfig(COPY_DATA + 1, vocab_size=COPY_SYMBOLS, embedding_dim=16, **common)
            )
        forget = getattr(registered(c.model), "forget_gate", None)
        if forget is not None:  # forget gates start open (Gers et al. 2000; Jozefowicz et al. 2015)
            rows = slice(forget * c.hidden_size, (forget + 1) * c.hidden_size)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.startswith("rnn.bias_"):
                        p[rows] = 1.0 if "bias_ih" in name else 0.0
        return model

    def draw(self, n: int, seed: int, lag: int | None = None):
        gen = torch.Generator().manual_seed(seed)
        make = adding_batch if self.config.problem == "adding" else copy_memory_batch
        return make(n, lag or self.config.lag, gen)

    def predict_batch(self, model, x: torch.Tensor) -> torch.Tensor:
        """adding: (B,) sums; copy-memory: (B, T + 20, 9) logits (the tagger also returns its state)."""
        out = model(x)
        return out if self.config.problem == "adding" else out[0]

    @property
    def loss_unit(self) -> str:
        regression = self.config.problem == "adding"
        return "mean squared error" if regression else "cross-entropy (nats per recalled symbol)"

    def loss_of(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.config.problem == "adding":
            return F.mse_loss(out, y)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return self.loss_of(self.predict_batch(model, x), y)

    @torch.no_grad()
    def scores(self, model, n: int, seed: int, lag: int | None = None) -> dict:
        model.eval()
        x, y = self.draw(n, seed, lag)
        out = torch.cat(
            [
                self.predict_batch(model, x[i : i + 500].to(device_of(model))).float().cpu()
                for i in range(0, n, 500)
            ]
        )
        loss = self.loss_of(out, y).item()
        if self.config.problem == "adding":
            return {"loss": loss, "mse": loss, "baseline_mse": F.mse_loss(torch.ones_like(y), y).item()}
        recalled = out[:, -10:].argmax(-1) == y[:, -10:]
        return {
            "loss": loss,
            "accuracy": recalled.double().mean().item(),
            "baseline_loss": copy_memory_baseline(lag or self.config.lag),
        }

    @torch.no_grad()
    def plot(self, model, run_dir: Path, seed: int) -> list[Path]:
        """RUN_DIR/memory.png: adding, predictions against targets on test sequences; copy-memory,
        the recall accuracy at each of the 10 positions."""
        model.eval()
        x, y = self.draw(500, seed)
        out = self.predict_batch(model, x.to(device_of(model))).float().cpu()
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4.5))
        if self.config.problem == "adding":
            ax.scatter(y.numpy(), out.numpy(), s=6, alpha=0.6, label=f"{self.config.model}")
            ax.plot([0, 2], [0, 2], "k--", lw=0.8, label="perfect")
            ax.set_xlabel("target (sum of the two marked values)")
            ax.set_ylabel("prediction")
        else:
            acc = (out[:, -10:].argmax(-1) == y[:, -10:]).double().mean(0)
            ax.bar(range(1, 11), acc.numpy(), label=self.config.model)
            ax.axhline(1 / COPY_DATA, color="k", ls="--", lw=0.8, label="chance")
            ax.set_xlabel("position of the recalled symbol")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1.05)
        ax.set_title(f"{self.config.problem}, lag T={self.config.lag}")
        ax.legend()
        ax.grid(alpha=0.3)
        out_path = Path(run_dir) / "memory.png"
        fig.savefig(out_path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return [out_path]


class MemoryTask(Task):
    name = "memory"
    metric = "loss"

    @property
    def loss_unit(self) -> str:
        return self.problem.loss_unit

    # measured at lag 200 (docs/tasks.md): the GRU leaves the mean predictor's plateau after ~1,300 steps,
    # the LSTM (forget-gate bias 1) after ~4,500
    train_defaults = {"steps": 6000, "lr": 1e-3, "eval_every": 100}
    evaluate_options = ("lengths",)

    def __init__(self, config: MemoryConfig, *, data=None, saved: dict | None = None):
        if data is not None:
            raise RnnkitValueError("--data: the memory task generates its data (see --problem and --lag)")
        self.config = config
        self.problem = BitProblem(config) if config.problem in SIZES else LagProblem(config)

    def describe(self) -> dict:
        return {"task": self.name, "task_config": asdict(self.config)}

    def build_model(self):
        return self.problem.build_model()

    def batches(self, step: int):
        return self.problem.draw(self.config.batch_size, step)

    def step_fn(self, model, batch, state):
        loss = self.problem.loss(model, batch)
        if len(batch) == 3:  # the bit problems: a mean over the masked output bits
            return loss, None, batch[2].sum()
        return loss, None

    def trivial(self) -> tuple[float, str]:
        if self.config.problem == "adding":  # the sum of two U(0, 1) draws: variance 1/6
            return 1 / 6, "the mean predictor"
        if self.config.problem == "copy-memory":
            return copy_memory_baseline(self.config.lag), "the best memoryless guess"
        return math.log(2), "a coin flip per bit"

    def evaluate(self, model) -> dict:
        return self.problem.scores(model, self.config.eval_size, VAL_SEED)

    def test_metrics(self, model, data=None, lengths=None, **options) -> dict:
        if data is not None:
            raise RnnkitValueError("--data: the memory task generates its test data")
        metrics = self.problem.scores(model, 2 * self.config.eval_size, TEST_SEED)
        if lengths:
            key = self.problem.key
            metrics[f"{key}_by_length"] = {
                str(L): self.problem.scores(model, self.config.eval_size, TEST_SEED + L, L)[key]
                for L in lengths
            }
        return metrics

    def plot(self, model, run_dir: Path) -> list[Path]:
        return self.problem.plot(model, run_dir, TEST_SEED)
