"""colors (1-vs-N): a colour's name generated from its RGB value, character by character.

Data: matplotlib's XKCD colour-survey names (949, CC0), split 80 / 10 / 10 by name (fixed seed).
Model: `VectorToSequence` with the colour as the conditioning vector, either as the initial state
(`--feed init`) or as part of every step's input (`--feed every_step`).
Metric: cross-entropy per character (the end of the name counted as one) on the held-out names,
against the unigram baseline: the training characters' frequencies (add-one smoothed).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rnnkit._config import MAX_BATCH, MAX_LAYERS, MAX_UNITS, integer, one_of, option, rate
from rnnkit.data.datasets import xkcd_colors
from rnnkit.data.text import CharVocab
from rnnkit.decoding import greedy, sample
from rnnkit.errors import RnnkitValueError
from rnnkit.models import VectorToSequence, VectorToSequenceConfig
from rnnkit.models._recurrent import regularizers
from rnnkit.models.generator import FEEDS
from rnnkit.tasks._common import (
    OnnxGraph,
    RegularizerOptions,
    Task,
    cell_option,
    decoding_graphs,
    device_of,
    epoch_batch,
    pad_ids,
    pyplot,
    uniform,
)

BOS, EOS = "\x02", "\x03"  # start and end of a name, as characters of the vocabulary
MAX_NAME = 40


@dataclass(frozen=True)
class ColorsConfig(RegularizerOptions):
    feed: str = option(
        "init", "how the colour enters: init (initial state) or every_step (each input)", one_of(*FEEDS)
    )
    cell: str = cell_option("lstm")
    hidden_size: int = option(128, "units per recurrent layer", integer(1, MAX_UNITS))
    num_layers: int = option(1, "stacked recurrent layers", integer(1, MAX_LAYERS))
    embedding_dim: int = option(32, "character embedding size", integer(1, MAX_UNITS))
    dropout: float = option(0.1, "dropout on inputs, between layers and before the head", rate())
    batch_size: int = option(64, "names per step", integer(1, MAX_BATCH))
    samples: int = option(3, "names `predict` samples per colour (after the greedy one)", integer(0, 100))


class ColorsTask(Task):
    name = "colors"
    metric = "loss"
    loss_unit = "cross-entropy (nats per character)"
    train_defaults = {"steps": 2000, "lr": 3e-3, "eval_every": 100}

    def __init__(self, config: ColorsConfig, *, data=None, saved: dict | None = None):
        if data is not None:
            raise RnnkitValueError("--data: the colors task uses its built-in data (XKCD colour names)")
        self.config = config
        names, rgb = xkcd_colors()
        order = list(range(len(names)))
        random.Random(0).shuffle(order)
        n_test = n_val = len(names) // 10
        parts = order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]
        self.train, self.val, self.test = ([(names[i], rgb[i]) for i in sorted(p)] for p in parts)
        state = (saved or {}).get("task_state")
        self.vocab = (
            CharVocab.restore(state["vocab"])
            if state
            else CharVocab("".join(n for n, _ in self.train) + BOS + EOS)
        )
        counts = Counter(ch for n, _ in self.train for ch in n + EOS)
        total = sum(counts.values()) + len(self.vocab)
        self.unigram = {ch: (counts[ch] + 1) / total for ch in self.vocab.chars}

    def describe(self) -> dict:
        return {
            "task": self.name,
            "task_config": asdict(self.config),
            "task_state": {"vocab": self.vocab.chars},
        }

    def build_model(self) -> VectorToSequence:
        c = self.config
        return VectorToSequence(
            VectorToSequenceConfig(
                len(self.vocab),
                3,
                feed=c.feed,
                embedding_dim=c.embedding_dim,
                hidden_size=c.hidden_size,
                num_layers=c.num_layers,
                cell=c.cell,
                dropout=c.dropout,
                **regularizers(c),
            )
        )

    def encode(self, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(colours (B, 3), inputs BOS + name (B, T), targets name + EOS (B, T) padded with -100)."""
        ids = [self.vocab.encode(BOS + n + EOS) for n, _ in pairs]
        x, lengths = pad_ids([i[:-1] for i in ids])
        y, _ = pad_ids([i[1:] for i in ids], pad=-100)
        return torch.tensor(np.array([c for _, c in pairs]), dtype=torch.float32), x, y

    def batches(self, step: int):
        idx = epoch_batch(len(self.train), self.config.batch_size, step).tolist()
        return self.encode([self.train[i] for i in idx])

    @staticmethod
    def step_fn(model, batch, state):
        cond, x, y = batch
        logits, _ = model(cond, x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        return loss, None, (y != -100).sum()  # a mean over the name characters

    @torch.no_grad()
    def loss(self, model, pairs) -> float:
        model.eval()
        cond, x, y = (t.to(device_of(model)) for t in self.encode(pairs))
        logits, _ = model(cond, x)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=-100
        ).item()

    def trivial(self) -> tuple[float, str]:
        return uniform(len(self.vocab))

    def evaluate(self, model) -> dict:
        return {"loss": self.loss(model, self.val)}

    def baseline_loss(self, pairs) -> float:
        nll = [
            -math.log(self.unigram.get(ch, self.unigram[self.vocab.chars[0]]))
            for n, _ in pairs
            for ch in n + EOS
        ]
        return sum(nll) / len(nll)

    def test_metrics(self, model, data=None, **options) -> dict:
        if data is not None:
            raise RnnkitValueError("--data: the colors task evaluates on its built-in test names")
        pairs = self.test[::4][:24]  # spread over the alphabet
        names = self.generate(model, torch.tensor(np.array([c for _, c in pairs]), dtype=torch.float32))
        return {
            "loss": self.loss(model, self.test),
            "baseline_loss": self.baseline_loss(self.test),
            "test_names": len(self.test),
            "examples": {n: g for (n, _), g in zip(pairs, names)},
        }

    @torch.no_grad()
    def generate(
        self, model, rgb: torch.Tensor, *, seed: int | None = None, temperature: float = 0.8
    ) -> list[str]:
        """A name per colour: greedy (seed None) or sampled."""
        model.eval()
        rgb = rgb.to(device_of(model))
        prefix = torch.full((len(rgb), 1), int(self.vocab.index[BOS]), device=rgb.device)
        eos = int(self.vocab.index[EOS])
        state = model.initial_state(rgb)
        if seed is None:
            out = greedy(model.step, prefix, MAX_NAME, state=state, eos=eos)
        else:
            gen = torch.Generator(device=rgb.device).manual_seed(seed)
            out = sample(
                model.step, prefix, MAX_NAME, state=state, eos=eos, temperature=temperature, generator=gen
            )
        return [self.vocab.decode(row).split(EOS)[0] for row in out.tolist()]

    def predict_values(self, model, inputs: list[str], **options) -> list[str]:
        """Each INPUT `r,g,b` in [0, 1]: its greedy name."""
        return self.generate(model, self._rgb(inputs))

    def predict(self, model, inputs: list[str], **options) -> list[str]:
        """The lines of `rnnkit predict`: the greedy name (`predict_values`), the input, then
        `samples` sampled names."""
        greedy, rgb = self.predict_values(model, inputs), self._rgb(inputs)
        sampled = [self.generate(model, rgb, seed=s) for s in range(self.config.samples)]
        return [
            f"{g}\t{text}\t" + " | ".join(n[i] for n in sampled)
            for i, (g, text) in enumerate(zip(greedy, inputs))
        ]

    def onnx_graphs(self, model) -> list[OnnxGraph]:
        """Two graphs: "encoder" (colours -> the decoding state) and "decoder" (the previous
        character's id and the state -> logits and the next state); the loop is the caller's."""
        rgb = torch.full((2, 3), 0.5, device=next(model.parameters()).device)
        return decoding_graphs(
            model,
            (rgb,),
            ("rgb",),
            {"rgb": {0: "batch"}},
            lambda j, shape: {1: "batch"},
            "rgb: float32 (batch, 3), each in [0, 1]",
        )

    def onnx_metadata(self, model) -> dict:
        return {
            "vocabulary": self.vocab.chars,
            "start_id": int(self.vocab.index[BOS]),
            "end_id": int(self.vocab.index[EOS]),
            "max_output": MAX_NAME,
        }

    def _rgb(self, inputs: list[str]) -> torch.Tensor:
        rgb = []
        for text in inputs:
            try:
                values = [float(v) for v in text.split(",")]
            except ValueError:
                values = []
            if len(values) != 3 or not all(0 <= v <= 1 for v in values):
                raise RnnkitValueError(f"INPUT must be r,g,b with each in [0, 1], got {text!r}")
            rgb.append(values)
        return torch.tensor(rgb)

    def plot(self, model, run_dir: Path) -> list[Path]:
        """RUN_DIR/colors.png: held-out colours as swatches, with the true and the greedy name."""
        pairs = self.test[::4][:24]  # spread over the alphabet
        names = self.generate(model, torch.tensor(np.array([c for _, c in pairs]), dtype=torch.float32))
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(9, 0.42 * len(pairs) + 1))
        for row, ((true, rgb), made) in enumerate(zip(pairs, names)):
            ax.add_patch(plt.Rectangle((0, row), 1, 0.9, color=rgb))
            ax.text(1.1, row + 0.45, f"{made}   (true: {true})", va="center", fontsize=9)
        ax.set_xlim(0, 6)
        ax.set_ylim(len(pairs), -0.2)
        ax.axis("off")
        ax.set_title(f"held-out colours: generated name (feed={self.config.feed}) and the survey's name")
        out = Path(run_dir) / "colors.png"
        fig.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return [out]
