"""music (N-vs-N, generation 1-vs-N): a language model over notes that writes new pieces.

Data: the Bach chorales of music21's corpus (rnnkit.data.music), split by chorale 80/10/10; the
melody (soprano) by default, `--voices 4` for soprano, alto, tenor and bass. Or `--data` a folder
of MIDI / MusicXML / Humdrum / ABC files (or one such file); the run keeps the notes it read as
JSON (data/pieces.json), so it evaluates, samples and resumes without the folder.
Encoding: a token per voice per sixteenth note, bars and the key as tokens (rnnkit.data.music).
Model: `LanguageModel` (embedding, recurrent layer, softmax over the tokens), trained on whole
pieces, batched by length.
Metrics: `nll_per_note`, the test pieces' total negative log-likelihood (nats, every token of
the encoding: notes, holds, rests, bars, the key, the end) over their notes, against
`baseline_nll_per_note` of an interpolated Kneser-Ney n-gram on the same tokens (order chosen on
validation), fitted in the same run. Samples of both are compared with the test pieces by the
total variation distance of their pitch-class and melodic-interval distributions.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rnnkit._config import MAX_BATCH, MAX_LAYERS, MAX_UNITS, integer, option, rate
from rnnkit.data import music
from rnnkit.decoding import sample
from rnnkit.errors import RnnkitValueError
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.models._recurrent import regularizers
from rnnkit.tasks._common import (
    OnnxGraph,
    RegularizerOptions,
    Task,
    bucket_batch,
    by_length,
    cached_baseline,
    cell_option,
    data_key,
    device_of,
    initial_states,
    language_model_graphs,
    pad_ids,
    pyplot,
)
from rnnkit.tasks._ngram import KneserNey
from rnnkit.training.checkpoint import write_bytes

KEPT_FORMAT = "rnnkit-music"
SAMPLES = 16  # pieces drawn for the sample statistics (seeded)
CACHE_VERSION = 2


@dataclass(frozen=True)
class MusicConfig(RegularizerOptions):
    voices: int = option(
        1, "voices of each piece: 1 the melody (top part), 4 soprano, alto, tenor and bass", integer(1, 4)
    )
    pieces: int | None = option(
        None,
        "read only the first N pieces (the chorales in music21's order, or --data's files by name)",
        integer(3, 10**6, special={None: "all"}),
    )
    transpose: int = option(
        0,
        "also train on each training piece transposed by up to this many semitones either way",
        integer(0, 11),
    )
    cell: str = cell_option("lstm")
    hidden_size: int = option(256, "units per recurrent layer", integer(1, MAX_UNITS))
    num_layers: int = option(1, "stacked recurrent layers", integer(1, MAX_LAYERS))
    embedding_dim: int = option(32, "token embedding size", integer(1, MAX_UNITS))
    dropout: float = option(0.3, "dropout on embeddings, between layers and on outputs", rate())
    batch_size: int = option(16, "pieces per step", integer(1, MAX_BATCH))


def cache_dir() -> Path:
    """Where the parsed built-in chorales are kept between runs: $RNNKIT_CACHE, else
    $XDG_CACHE_HOME/rnnkit, else ~/.cache/rnnkit."""
    if os.environ.get("RNNKIT_CACHE"):
        return Path(os.environ["RNNKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnnkit"


def pieces_json(pieces, **extra) -> bytes:
    return json.dumps({"format": KEPT_FORMAT, **extra, "pieces": [p.to_json() for p in pieces]}).encode()


def read_pieces_json(path) -> list[music.Piece] | None:
    """The pieces of a file `pieces_json` wrote; None if it is not one; an error if it is one
    but damaged."""
    try:
        obj = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != KEPT_FORMAT:
        return None
    try:
        return [music.Piece.from_json(p) for p in obj["pieces"]]
    except (KeyError, TypeError, ValueError) as e:
        raise RnnkitValueError(f"--data: {path}: damaged pieces file ({type(e).__name__}: {e})") from None


def chorales(limit: int | None) -> list[music.Piece]:
    """The built-in chorales, four voices each (the first `limit`); the whole corpus is parsed
    once (about half a minute) and kept as JSON in cache_dir()."""
    cache = cache_dir() / f"chorales-music21-{music.music21_version()}-v{CACHE_VERSION}.json"
    if cache.is_file():
        try:
            pieces = read_pieces_json(cache)
        except RnnkitValueError:
            pieces = None
        if pieces:
            return pieces[:limit]
        print(
            f"music: ignoring {cache}, which is not a cache of ours (remove it to rebuild it)",
            file=sys.stderr,
        )
    pieces = list(_parsed(limit))
    if limit is None or len(pieces) < limit:  # the whole corpus
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            if not cache.exists():
                write_bytes(cache, pieces_json(pieces))
        except OSError:
            pass  # a read-only home: parsed again next time
    return pieces


@functools.lru_cache(maxsize=4)
def _parsed(limit: int | None) -> tuple[music.Piece, ...]:
    """The first `limit` chorales parsed, once per process (pieces are immutable)."""
    return tuple(_named(music.read_score(path, 4), name) for name, path in music.chorale_paths(limit))


def _named(piece: music.Piece, name: str) -> music.Piece:
    return music.Piece(name, piece.key, piece.length, piece.bars, piece.voices)


def read_folder(path, voices: int, limit: int | None) -> tuple[list[music.Piece], list[str]]:
    """The pieces of --data, a pieces file of ours (a run's own copy) or score files, and why
    files were skipped (music21 cannot read them, or they have too few parts). One score file
    that cannot be read is an error."""
    kept = read_pieces_json(path) if Path(path).is_file() else None
    if kept is not None:
        if any(len(p.voices) < voices for p in kept):
            raise RnnkitValueError(f"--data: {path} holds pieces with fewer than --voices {voices} voices")
        return [p.take_voices(voices) for p in kept][:limit], []
    files = music.score_files(path)[:limit]
    if Path(path).is_file():
        return [music.read_score(path, voices)], []
    pieces, skipped = [], []
    for f in files:
        try:
            pieces.append(music.read_score(f, voices))
        except RnnkitValueError as e:
            skipped.append(str(e).removeprefix("--data: "))
    return pieces, skipped


class MusicTask(Task):
    name = "music"
    metric = "nll_per_note"
    loss_unit = "cross-entropy (nats per token)"
    train_defaults = {"steps": 3000, "lr": 3e-3, "schedule": "cosine", "eval_every": 200, "patience": 5}
    sized_help = {"steps": "80 epochs of the training pieces, 300 to 3000", "eval_every": "steps / 15"}

    def __init__(self, config: MusicConfig, *, data=None, saved: dict | None = None):
        self.config, self.data = config, data
        c, why = config, ""
        if data is None:
            pieces = [p.take_voices(c.voices) for p in chorales(c.pieces)]
        else:
            pieces, skipped = read_folder(data, c.voices, c.pieces)
            why = f" ({len(skipped)} files skipped, e.g. {skipped[0]})" if skipped else ""
            if len(pieces) >= 3 and skipped:
                print(f"music: --data {data}: read {len(pieces)} pieces{why}", file=sys.stderr)
        if len(pieces) < 3:
            raise RnnkitValueError(
                f"--data: {data} gave {len(pieces)} pieces{why}; music needs at least 3 "
                "(train, validation, test)"
            )
        self.pieces = pieces
        order = np.random.default_rng(0).permutation(len(pieces))
        n_test = n_val = max(1, len(pieces) // 10)
        self.test = [pieces[i] for i in order[:n_test]]
        self.val = [pieces[i] for i in order[n_test : n_test + n_val]]
        self.train = [pieces[i] for i in order[n_test + n_val :]]
        shifts = [s for s in range(-c.transpose, c.transpose + 1)]
        self.train_tokens = [music.tokens(p.transposed(s)) for p in self.train for s in shifts]
        state = (saved or {}).get("task_state")
        if state:
            self.vocab = list(state["vocab"])
        else:
            seen = {t for seq in self.train_tokens for t in seq} - set(music.SPECIALS)
            keys = sorted((t for t in seen if t.startswith("K:")), key=lambda k: music.parse_key(k)[::-1])
            pitches = sorted((t for t in seen if not t.startswith("K:")), key=music.parse_pitch)
            self.vocab = [*music.SPECIALS, *keys, *pitches]
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.end, self.unk = self.index[music.END], self.index[music.UNK]
        self.train_ids = [self.encode(seq) for seq in self.train_tokens]
        self.train_lengths = torch.tensor([len(s) for s in self.train_ids])

    def describe(self) -> dict:
        return {"task": self.name, "task_config": asdict(self.config), "task_state": {"vocab": self.vocab}}

    def kept_data(self) -> tuple[str, bytes] | None:
        """What a run keeps of --data: the notes read from the folder, as JSON (a pieces file of
        ours is kept as it is)."""
        if self.data is None or (Path(self.data).is_file() and read_pieces_json(self.data) is not None):
            return None
        return "pieces.json", pieces_json(self.pieces)

    def build_model(self) -> LanguageModel:
        c = self.config
        return LanguageModel(
            LanguageModelConfig(
                len(self.vocab),
                embedding_dim=c.embedding_dim,
                hidden_size=c.hidden_size,
                num_layers=c.num_layers,
                cell=c.cell,
                dropout=c.dropout,
                **regularizers(c),
            )
        )

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, tokens: list[str]) -> torch.Tensor:
        """A piece's tokens as ids, <end> first (what the model reads before the key)."""
        return torch.tensor([self.end] + [self.index.get(t, self.unk) for t in tokens], dtype=torch.long)

    def batch(self, ids: list[torch.Tensor]):
        """(inputs (B, T), targets (B, T) with -100 past each piece)."""
        x, lengths = pad_ids([s[:-1] for s in ids])
        y = torch.full(x.shape, -100, dtype=torch.long)
        for b, s in enumerate(ids):
            y[b, : len(s) - 1] = s[1:]
        return x, y

    # --- training -------------------------------------------------------------------------------

    def sized_train_defaults(self) -> dict:
        """About 80 passes over the training pieces (300 to 3000 steps; measured on the chorale
        melodies: 40 passes gave 2.79 nats per note, 80 gave 2.53), validation 15 times a run;
        early stopping ends it sooner."""
        per_epoch = -(-len(self.train_ids) // self.config.batch_size)
        steps = max(300, min(3000, 80 * per_epoch))
        return {"steps": steps, "eval_every": max(10, steps // 15)}

    def batches(self, step: int):
        idx = bucket_batch(self.train_lengths, self.config.batch_size, step).tolist()
        return self.batch([self.train_ids[i] for i in idx])

    def step_fn(self, model, batch, state):
        x, y = batch
        logits, _ = model(x)
        tokens = (y != -100).sum()
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100), None, tokens

    @torch.no_grad()
    def nll(self, model, pieces, chunk: int = 32) -> float:
        """Total negative log-likelihood (nats) of the pieces' tokens, <end> included."""
        model.eval()
        ids = [self.encode(music.tokens(p)) for p in pieces]
        total = 0.0
        for idx in by_length(torch.tensor([len(s) for s in ids]), chunk):
            x, y = self.batch([ids[i] for i in idx.tolist()])
            logits, _ = model(x.to(device_of(model)))
            total += F.cross_entropy(
                logits.float().flatten(0, 1),
                y.to(logits.device).flatten(),
                ignore_index=-100,
                reduction="sum",
            ).item()
        return total

    def evaluate(self, model) -> dict:
        return {"nll_per_note": self.nll(model, self.val) / max(1, sum(p.notes() for p in self.val))}

    def trivial(self) -> tuple[float, str]:
        tokens = sum(len(music.tokens(p)) for p in self.val)
        notes = max(1, sum(p.notes() for p in self.val))
        return math.log(len(self.vocab)) * tokens / notes, f"a uniform guess over {len(self.vocab)} tokens"

    # --- the commands ---------------------------------------------------------------------------

    def test_metrics(self, model, data=None, **options) -> dict:
        """nll_per_note against the n-gram's; the pitch-class and interval distributions of
        SAMPLES drawn pieces against the test pieces' (total variation distance, 0 to 1), for
        the model and the n-gram."""
        test, skipped = (self.test, []) if data is None else read_folder(data, self.config.voices, None)
        if not test:
            why = f" ({len(skipped)} files skipped, e.g. {skipped[0]})" if skipped else ""
            raise RnnkitValueError(f"--data {data}: no piece to evaluate{why}")
        notes = sum(p.notes() for p in test)
        drawn = self.draw(model, SAMPLES, seed=0)
        baseline = self.baseline(test)
        return {
            "nll_per_note": self.nll(model, test) / max(1, notes),
            "baseline_nll_per_note": baseline["nll_per_note"],
            "baseline_order": baseline["order"],
            "sample_pitch_class_tv": _tv(music.pitch_classes(drawn), music.pitch_classes(test)),
            "baseline_sample_pitch_class_tv": baseline["sample_pitch_class_tv"],
            "sample_interval_tv": _tv(music.intervals(drawn), music.intervals(test)),
            "baseline_sample_interval_tv": baseline["sample_interval_tv"],
            "sample_notes_per_piece": sum(p.notes() for p in drawn) / len(drawn),
            "test_notes_per_piece": notes / len(test),
            "test_pieces": len(test),
            "test_notes": notes,
        }

    def max_tokens(self) -> int:
        """A drawn piece's cap: twice the longest training piece."""
        return 2 * int(self.train_lengths.max())

    def baseline(self, test) -> dict:
        """The Kneser-Ney n-gram on the training tokens (transposed ones included), its order
        chosen on validation from 1 to 12 V + 25 tokens (measured on the chorales: the melody's
        best is about 37, four voices' about 65), fitted once per run and test set
        (RUN_DIR/baseline.json)."""
        ids = [self.encode(music.tokens(p))[1:].tolist() for p in test]
        key = data_key(*[s.numpy() for s in self.train_ids], [",".join(map(str, s)) for s in ids])

        def fit() -> dict:
            V = self.config.voices
            model = KneserNey(
                [s[1:].tolist() for s in self.train_ids], len(self.vocab), 12 * V + 25, self.end
            )
            val = [self.encode(music.tokens(p))[1:].tolist() for p in self.val]
            scores = model.log_likelihoods(val)
            order = max(scores, key=scores.get)
            rng = np.random.default_rng(0)
            drawn = [
                music.from_tokens(
                    [
                        self.vocab[i]
                        for i in model.sample(order, self.max_tokens(), self.end, rng, never=self.unk)
                    ],
                    V,
                )
                for _ in range(SAMPLES)
            ]
            return {
                "order": order,
                "nll_per_note": -model.log_likelihoods(ids)[order] / max(1, sum(p.notes() for p in test)),
                "sample_pitch_class_tv": _tv(music.pitch_classes(drawn), music.pitch_classes(test)),
                "sample_interval_tv": _tv(music.intervals(drawn), music.intervals(test)),
            }

        def valid(saved) -> bool:
            return isinstance(saved.get("order"), int) and all(
                isinstance(saved.get(k), float) and math.isfinite(saved[k])
                for k in ("nll_per_note", "sample_pitch_class_tv", "sample_interval_tv")
            )

        return cached_baseline(self.run_dir, key, fit, valid)

    # --- sampling -------------------------------------------------------------------------------

    def prime_ids(self, model, prime: str) -> list[int]:
        """The ids a sample starts from: <end>, the key, a bar, then the prime's steps. A prime
        without a key gets the one the model finds likeliest to go with it."""
        tokens = music.parse_text(prime, self.config.voices)
        keys = [t for t in tokens if t.startswith("K:")]
        body = [t for t in tokens if not t.startswith("K:")]
        if body[:1] != [music.BAR]:
            body = [music.BAR, *body]
        if keys:
            if keys[0] not in self.index:
                known = [t for t in self.vocab if t.startswith("K:")]
                raise RnnkitValueError(
                    f"--prime: no training piece is in {keys[0]}; keys known: {' '.join(known)}"
                )
            return self.encode([keys[0], *body]).tolist()
        candidates = [t for t in self.vocab if t.startswith("K:")]
        if not body[1:] or not candidates:
            return [self.end]  # nothing to go with: the model draws the key
        rows = torch.stack([self.encode([k, *body]) for k in candidates]).to(device_of(model))
        with torch.no_grad():
            model.eval()
            logits, _ = model(rows[:, :-1])
            logp = logits.float().log_softmax(-1).gather(-1, rows[:, 1:, None])[..., 0].sum(1)
        return rows[int(logp.argmax())].tolist()

    @torch.no_grad()
    def continue_ids(
        self, model, start: list[int], steps: int, *, temperature=1.0, top_k=None, top_p=None, seed=0
    ):
        """`start` (one piece's ids) continued until <end> or `steps` time steps in all."""
        model.eval()
        device = device_of(model)
        V = self.config.voices
        prefix = torch.tensor([start], device=device)
        out = sample(
            self._stepper(model),
            prefix,
            steps * V + steps // 4 + 2,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=torch.Generator(device=device).manual_seed(seed),
            eos=self.end,
        )[0].tolist()
        tokens = [self.vocab[i] for i in start[1:] + out]
        return _cut(tokens, steps, V)

    def _stepper(self, model):
        """model.step that never draws <unk> (it stands for what training never saw)."""

        def step(token, state):
            logits, state = model.step(token, state)
            return logits.index_fill(-1, torch.tensor([self.unk], device=logits.device), float("-inf")), state

        return step

    def sample(self, model, *, prime: str, length: int, temperature: float, top_k, top_p, seed: int) -> str:
        """A piece as text (rnnkit.data.music.text): the prime and up to `length` sixteenth-note
        steps in all, or until the model ends the piece."""
        start = self.prime_ids(model, prime)
        tokens = self.continue_ids(
            model, start, length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        )
        return music.text(tokens, self.config.voices)

    sample_suffixes = (".mid", ".midi", ".musicxml", ".xml")

    def write_sample(self, text: str, path: Path) -> None:
        """A sample's text as MIDI (.mid, .midi) or MusicXML (.musicxml, .xml)."""
        V = self.config.voices
        music.write_score(music.from_tokens(music.parse_text(text, V), V), path)

    @torch.no_grad()
    def draw(self, model, n: int, seed: int) -> list[music.Piece]:
        """n pieces drawn from scratch (temperature 1), in one batch."""
        model.eval()
        device = device_of(model)
        prefix = torch.full((n, 1), self.end, dtype=torch.long, device=device)
        out = sample(
            self._stepper(model),
            prefix,
            self.max_tokens(),
            generator=torch.Generator(device=device).manual_seed(seed),
            eos=self.end,
        ).tolist()
        return [music.from_tokens([self.vocab[i] for i in row], self.config.voices) for row in out]

    def tensorboard_text(self, model) -> dict[str, str]:
        return {
            "sample": self.sample(model, prime="", length=64, temperature=1.0, top_k=None, top_p=None, seed=0)
        }

    def predict_values(self, model, inputs: list[str], **options) -> list[str]:
        """Each input (a prime in the text form) continued to a piece of up to 300 steps (seed 0)."""
        return [
            self.sample(model, prime=text, length=300, temperature=1.0, top_k=None, top_p=None, seed=0)
            for text in inputs
        ]

    # --- export and plot ------------------------------------------------------------------------

    def onnx_graphs(self, model) -> list[OnnxGraph]:
        return language_model_graphs(
            model, "ids of `vocabulary` (a piece starts with end_id)", "of the next token"
        )

    def onnx_metadata(self, model) -> dict:
        return {
            "vocabulary": self.vocab,
            "voices": self.config.voices,
            "end_id": self.end,
            "unknown_id": self.unk,
            "steps_per_quarter": music.STEPS_PER_QUARTER,
            "initial_state": [s[:, 0].tolist() for s in initial_states(model, 1)],
        }

    def plot(self, model, run_dir: Path) -> list[Path]:
        """RUN_DIR/pianoroll.png: a test piece above a drawn one (seed 0), a colour per voice."""
        drawn = self.draw(model, 1, seed=0)[0]
        plt = pyplot()
        real = self.test[0]
        width = max(real.length, drawn.length) / music.STEPS_PER_QUARTER
        fig, axes = plt.subplots(2, 1, figsize=(min(24, 3 + 0.22 * width), 7), sharex=True)
        colours = ("tab:red", "tab:green", "tab:blue", "tab:purple")
        for ax, piece, title in (
            (axes[0], real, f"test chorale {real.name}"),
            (axes[1], drawn, "drawn (seed 0)"),
        ):
            for k, notes in enumerate(piece.voices):
                for start, duration, pitch in notes:
                    ax.broken_barh(
                        [(start / music.STEPS_PER_QUARTER, duration / music.STEPS_PER_QUARTER)],
                        (pitch - 0.4, 0.8),
                        color=colours[k % 4],
                        label=None,
                    )
            for bar in piece.bars:
                ax.axvline(bar / music.STEPS_PER_QUARTER, color="0.85", lw=0.6, zorder=0)
            pitches = [p for v in piece.voices for _, _, p in v] or [60]
            ticks = [p for p in range(min(pitches) - 1, max(pitches) + 2) if p % 12 in (0, 7)] or [
                min(pitches)
            ]
            ax.set_yticks(ticks, [music.pitch_name(p) for p in ticks])
            ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
            ax.set_title(f"{title}, key {piece.key[2:]}", fontsize=10)
            ax.set_ylabel("pitch")
        names = music.VOICE_NAMES if self.config.voices == 4 else ["melody", *(f"voice {k}" for k in (2, 3))]
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in range(self.config.voices)]
        axes[0].legend(handles, names[: self.config.voices], loc="upper right", fontsize=8)
        axes[1].set_xlabel("quarter notes")
        out = Path(run_dir) / "pianoroll.png"
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return [out]


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two distributions (0: the same, 1: disjoint)."""
    return float(0.5 * np.abs(p - q).sum())


def _cut(tokens: list[str], steps: int, voices: int) -> list[str]:
    """`tokens` up to <end> or the end of time step `steps`, whichever comes first."""
    out, count = [], 0
    for t in tokens:
        if t == music.END:
            break
        if t != music.BAR and not t.startswith("K:"):
            if count >= steps * voices:
                break
            count += 1
        out.append(t)
    return out
