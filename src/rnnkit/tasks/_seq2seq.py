"""What dates and translate share: character-level sequence-to-sequence learning with `Seq2Seq`,
greedy and beam decoding, exact match and character error rate, attention heat maps.

A subclass provides the examples: `train_examples(step)`, `val`, `test` as lists of
(source token ids, target text), and `source_ids(text, **options)` for `predict`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rnnkit._config import (
    MAX_BATCH,
    MAX_LAYERS,
    MAX_LENGTH,
    MAX_UNITS,
    flag,
    integer,
    one_of,
    option,
    probability,
    rate,
    real,
    shown,
)
from rnnkit.data.text import CharVocab
from rnnkit.decoding import beam_search, greedy
from rnnkit.errors import RnnkitValueError
from rnnkit.models import Seq2Seq, Seq2SeqConfig
from rnnkit.models._recurrent import regularizers
from rnnkit.models.seq2seq import ATTENTIONS, CONTEXTS, teacher_forcing_probability
from rnnkit.tasks._common import (
    OnnxGraph,
    RegularizerOptions,
    Task,
    cell_option,
    decoding_graphs,
    device_of,
    edit_distance,
    pad_ids,
    pyplot,
    uniform,
)
from rnnkit.training.checkpoint import write_bytes

BOS, EOS = "\x02", "\x03"  # start and end of a target, as characters of its vocabulary


@dataclass(frozen=True)
class Seq2SeqTaskConfig(RegularizerOptions):
    cell: str = cell_option("lstm")
    hidden_size: int = option(128, "units per recurrent layer", integer(1, MAX_UNITS))
    num_layers: int = option(1, "stacked recurrent layers (encoder and decoder)", integer(1, MAX_LAYERS))
    embedding_dim: int = option(64, "token embedding size", integer(1, MAX_UNITS))
    bidirectional: bool = option(True, "a bidirectional encoder", flag())
    attention: str = option("general", "how the decoder reads the encoder", one_of(*ATTENTIONS))
    context: str = option(
        "init",
        "without attention: the encoder summary as initial state (init) or every_step",
        one_of(*CONTEXTS),
    )
    dropout: float = option(0.0, "dropout on embeddings, between layers and before the head", rate())
    teacher_forcing: float = option(
        1.0,
        "probability of feeding the true previous token in training (the constant schedule)",
        probability(),
    )
    teacher_forcing_schedule: str = option(
        "constant",
        "how that probability falls over training steps i (scheduled sampling, Bengio et al. 2015): "
        "constant (--teacher-forcing), linear max(min, k - c i), exponential max(min, k^i), "
        "inverse-sigmoid max(min, k / (k + exp(i / k)))",
        one_of("constant", "linear", "exponential", "inverse-sigmoid"),
    )
    teacher_forcing_k: float = option(
        1.0, "the schedule's k (linear: the start; exponential: the base, < 1; inverse-sigmoid: >= 1)",
        real(0.0, 1e6, low_open=True),
    )  # fmt: skip
    teacher_forcing_c: float = option(1e-4, "linear: the fall per step", real(0.0, 1.0))
    teacher_forcing_min: float = option(0.0, "the schedule's floor", probability())
    batch_size: int = option(64, "pairs per step", integer(1, MAX_BATCH))
    beam_size: int = option(4, "beam width of exact_match_beam", integer(1, 256))
    max_output: int = option(60, "longest output decoded (characters)", integer(1, MAX_LENGTH))

    def __post_init__(self):
        super().__post_init__()
        k, schedule = self.teacher_forcing_k, self.teacher_forcing_schedule
        if (schedule == "exponential" and k >= 1) or (schedule == "inverse-sigmoid" and k < 1):
            need = "< 1" if schedule == "exponential" else ">= 1"
            raise RnnkitValueError(
                f"{shown('teacher_forcing_k')} must be {need} for the {schedule} schedule, got {k}"
            )

    def teacher_forcing_at(self, step: int) -> float:
        """The probability of feeding the truth at the step after `step` steps (the trainer's count)."""
        if self.teacher_forcing_schedule == "constant":
            return self.teacher_forcing
        return teacher_forcing_probability(
            self.teacher_forcing_schedule.replace("-", "_"),
            step,
            k=self.teacher_forcing_k,
            c=self.teacher_forcing_c,
            minimum=self.teacher_forcing_min,
        )


class Seq2SeqTask(Task):
    metric = "loss"
    loss_unit = "cross-entropy (nats per output character)"
    train_defaults = {"steps": 3000, "lr": 2e-3, "eval_every": 250}
    src_vocab_size: int

    def target_vocab(self, texts) -> CharVocab:
        return CharVocab("".join(texts) + BOS + EOS)

    # the target side, characters here (translate --tokens word|bpe: a tokenizer's)
    def target_ids(self, text: str) -> torch.Tensor:
        """Start, the text's ids, end."""
        return self.tgt_vocab.encode(BOS + text + EOS)

    def start_end(self) -> tuple[int, int]:
        return int(self.tgt_vocab.index[BOS]), int(self.tgt_vocab.index[EOS])

    def target_text(self, ids: list[int]) -> str:
        """The text of decoded ids (the start id first), up to the end id."""
        return self.tgt_vocab.decode(ids).split(EOS)[0]

    def target_labels(self, text: str) -> list[str]:
        """The output steps of `text` (what the attention figure's rows name), the end last."""
        return [repr(ch)[1:-1] for ch in text] + ["<end>"]

    def target_metadata(self) -> dict:
        return {"target_vocabulary": self.tgt_vocab.chars}

    def model_config(self) -> Seq2SeqConfig:
        c = self.config
        return Seq2SeqConfig(
            self.src_vocab_size,
            len(self.tgt_vocab),
            embedding_dim=c.embedding_dim,
            hidden_size=c.hidden_size,
            num_layers=c.num_layers,
            cell=c.cell,
            bidirectional_encoder=c.bidirectional,
            attention=c.attention,
            context=c.context,
            dropout=c.dropout,
            **regularizers(c),
        )

    def build_model(self) -> Seq2Seq:
        return Seq2Seq(self.model_config())

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, pairs) -> tuple[torch.Tensor, ...]:
        """(src (B, S), src lengths (B,), decoder inputs BOS + y (B, T), targets y + EOS (B, T)
        padded with -100)."""
        src, lengths = pad_ids([torch.as_tensor(s, dtype=torch.long) for s, _ in pairs])
        ids = [self.target_ids(t) for _, t in pairs]
        tgt_in, _ = pad_ids([i[:-1] for i in ids])
        tgt_out, _ = pad_ids([i[1:] for i in ids], pad=-100)
        return src, lengths, tgt_in, tgt_out

    def batches(self, step: int):
        return (*self.encode(self.train_examples(step)), self.config.teacher_forcing_at(step))

    def step_fn(self, model, batch, state):
        src, lengths, tgt_in, tgt_out, teacher_forcing = batch
        logits = model(src, tgt_in, src_lengths=lengths, teacher_forcing=teacher_forcing)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=-100)
        return loss, None, (tgt_out != -100).sum()  # a mean over the target characters

    # --- decoding and metrics -------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, model, sources: list, *, beam: int = 1, chunk: int = 500) -> list[str]:
        model.eval()
        bos, eos = self.start_end()
        out = []
        for start in range(0, len(sources), chunk):
            part = sources[start : start + chunk]
            src, lengths = pad_ids([torch.as_tensor(s, dtype=torch.long) for s in part])
            src = src.to(device_of(model))
            state = model.initial_state(src, lengths)
            prefix = torch.full((len(part), 1), bos, device=src.device)
            if beam == 1:
                tokens = greedy(model.step, prefix, self.config.max_output, state=state, eos=eos)
            else:
                tokens, _ = beam_search(
                    model.step, prefix, self.config.max_output, beam_size=beam, state=state, eos=eos
                )
            out += [self.target_text(row) for row in tokens.tolist()]
        return out

    @torch.no_grad()
    def exposure(self, model, pairs, chunk: int = 500) -> dict:
        """Token accuracy fed the true previous tokens (teacher forced) and fed the model's own
        (free running), and their difference, the exposure gap scheduled sampling narrows."""
        model.eval()
        right = {"teacher_forced": 0, "free_running": 0}
        count = 0
        for start in range(0, len(pairs), chunk):
            src, lengths, tgt_in, tgt_out = (
                t.to(device_of(model)) for t in self.encode(pairs[start : start + chunk])
            )
            valid = tgt_out != -100
            count += int(valid.sum())
            own = torch.Generator(device=src.device).manual_seed(0)  # (p = 0 draws nothing that matters)
            for name, p in (("teacher_forced", 1.0), ("free_running", 0.0)):
                logits = model(src, tgt_in, src_lengths=lengths.cpu(), teacher_forcing=p, generator=own)
                pred = logits.argmax(-1)
                right[name] += int((pred[valid] == tgt_out[valid]).sum())
        tf, free = right["teacher_forced"] / count, right["free_running"] / count
        return {"teacher_forced_accuracy": tf, "free_running_accuracy": free, "exposure_gap": tf - free}

    @torch.no_grad()
    def loss(self, model, pairs, chunk: int = 500) -> float:
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(pairs), chunk):
            src, lengths, tgt_in, tgt_out = (
                t.to(device_of(model)) for t in self.encode(pairs[start : start + chunk])
            )
            logits = model(src, tgt_in, src_lengths=lengths.cpu())
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                tgt_out.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            ).item()
            count += int((tgt_out != -100).sum())
        return total / count

    def trivial(self) -> tuple[float, str]:
        return uniform(len(self.tgt_vocab))

    def evaluate(self, model) -> dict:
        guesses = self.decode(model, [s for s, _ in self.val])
        return {
            "loss": self.loss(model, self.val),
            "exact_match": sum(g == t for g, (_, t) in zip(guesses, self.val)) / len(self.val),
        }

    def scores(self, model, pairs) -> dict:
        sources, truth = [s for s, _ in pairs], [t for _, t in pairs]
        greedy_out = self.decode(model, sources)
        beam_out = self.decode(model, sources, beam=self.config.beam_size)
        errors = [(g, t) for g, t in zip(greedy_out, truth) if g != t]
        return {
            "exact_match": 1 - len(errors) / len(truth),
            "cer": sum(edit_distance(g, t) for g, t in zip(greedy_out, truth)) / sum(len(t) for t in truth),
            "exact_match_beam": sum(b == t for b, t in zip(beam_out, truth)) / len(truth),
            "loss": self.loss(model, pairs),
            **self.exposure(model, pairs),
            "test_pairs": len(truth),
            "errors": [{"output": g, "truth": t} for g, t in errors[:20]],
        }

    predict_options = ("beam_size",)

    def predict_values(self, model, inputs: list[str], beam_size: int | None = None, **options) -> list[str]:
        """Each input's output: greedy, or the best of a beam search with `beam_size`."""
        sources = [self.source_ids(text, **options) for text in inputs]
        return self.decode(model, sources, beam=beam_size or 1)

    def source_labels(self, source) -> list[str]:
        raise NotImplementedError

    def onnx_graphs(self, model) -> list[OnnxGraph]:
        """Two graphs: "encoder" (source ids and lengths -> the decoding state) and "decoder"
        (the previous output id and the state -> logits and the next state); the greedy loop,
        start_id first until end_id or max_output ids, is the caller's."""
        device = next(model.parameters()).device
        src, lengths = torch.zeros(2, 5, dtype=torch.long, device=device), torch.tensor([5, 3], device=device)
        source_steps = {1: "batch"}

        def axes(j, shape):  # keys, mask and the attention's projected keys: (source_time, batch, ...)
            over_source = len(shape) >= 2 and shape[0] == src.shape[1] and j >= model.num_states + 1
            return {0: "source_time", **source_steps} if over_source else source_steps

        return decoding_graphs(
            model,
            (src, lengths),
            ("source", "source_lengths"),
            {"source": {0: "batch", 1: "source_time"}, "source_lengths": {0: "batch"}},
            axes,
            "source: int64 (batch, source_time), ids as `source_vocabulary` gives them; "
            "source_lengths: int64 (batch,)",
        )

    def onnx_metadata(self, model) -> dict:
        return {
            **self.target_metadata(),
            "start_id": self.start_end()[0],
            "end_id": self.start_end()[1],
            "max_output": self.config.max_output,
            **self.source_metadata(),
        }

    def source_metadata(self) -> dict:
        """How an input string becomes source ids, for a program without this package."""
        raise NotImplementedError

    @torch.no_grad()
    def plot(self, model, run_dir: Path) -> list[Path]:
        """RUN_DIR/attention.png: the attention weights of the first test examples (rows: output
        characters, columns: input tokens); the same weights as arrays in RUN_DIR/attention.npz
        (`weights_{i}` (outputs, inputs) float32, `inputs_{i}` and `outputs_{i}` their labels;
        numpy.load reads it without pickle)."""
        if self.config.attention == "none":
            return []
        pairs = self.test[:4]
        outputs = self.decode(model, [s for s, _ in pairs])
        plt = pyplot()
        # squeeze=False: an array of axes even for one test pair (a small --data file)
        fig, axes = plt.subplots(len(pairs), 1, figsize=(9, 3.2 * len(pairs)), squeeze=False)
        arrays = {}
        for i, (ax, (src, _), out) in enumerate(zip(axes[:, 0], pairs, outputs)):
            src_t, _, tgt_in, _ = (t.to(device_of(model)) for t in self.encode([(src, out)]))
            _, alpha = model(src_t, tgt_in, return_attention=True)  # (1, T, S)
            alpha = alpha[0].float().cpu().numpy()
            image = ax.imshow(alpha, cmap="viridis", aspect="auto", vmin=0, vmax=1)
            inputs, outs = self.source_labels(src), self.target_labels(out)
            ax.set_xticks(range(len(src)), inputs, fontsize=7)
            ax.set_yticks(range(alpha.shape[0]), outs, fontsize=7)
            ax.set_xlabel("input token")
            ax.set_ylabel("output character")
            fig.colorbar(image, ax=ax, label="attention weight")
            arrays |= {f"weights_{i}": alpha, f"inputs_{i}": np.array(inputs), f"outputs_{i}": np.array(outs)}
        fig.suptitle(
            f"{self.name}: attention of the decoder over the input, first test examples (rows sum to 1)"
        )
        fig.tight_layout()
        path = Path(run_dir) / "attention.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes(Path(run_dir) / "attention.npz", buffer.getvalue())
        return [path, Path(run_dir) / "attention.npz"]
