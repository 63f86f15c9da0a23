"""The options of each `rnnkit` command that belong to the command itself (not to a task or to the
trainer, whose configs declare their own), declared like every config: with their valid values,
from which the command line builds its flags and checks them before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnkit._config import (
    MAX_LENGTH,
    MAX_SEED,
    MAX_UNITS,
    Options,
    flag,
    integer,
    ints,
    names,
    one_of,
    option,
    path,
    real,
    string,
)
from rnnkit.diagnostics import gradient_cells

MAX_SAMPLE = MAX_LENGTH  # characters `sample` draws: ~1 minute of a 1x256 LSTM on 2 cores


def _path(help: str):
    return option(None, help, path(special={None: "not given"}))


def _seed(help: str):
    return option(0, help, integer(0, MAX_SEED))


@dataclass(frozen=True)
class TrainOptions(Options):
    data: str | None = _path("a data file instead of the built-in data (with --resume: the run's data)")
    out: str | None = _path("the run directory (default: runs/<task>-<UTC timestamp>)")
    resume: str | None = _path(
        "continue this run directory to its total --steps (the training flags may change: --steps, "
        "--eval-every, --patience, ...; the task's flags, --seed and --out may not)"
    )
    force: bool = option(
        False, "train into an existing --out directory that holds other files (never overwritten)", flag()
    )
    seed: int = _seed("seed of every random generator")
    threads: int | None = option(
        None, "torch CPU threads", integer(1, 1024, special={None: "torch's default"})
    )
    device: str = option("auto", "where to train (auto: cuda when available)", one_of("auto", "cpu", "cuda"))
    config: str | None = _path(
        "a JSON or TOML file of flags (names as the flags'; \"task\" the task), or a run's config.json to "
        "reproduce it; flags given here override it"
    )
    nproc: int = option(
        1, "processes to train with (> 1: the same command under torch.distributed.run, DDP)", integer(1, 256)
    )
    log_gradient_flow: bool = option(
        False, "TensorBoard: the first layer's ||dL/dh_t|| over t as a figure at each evaluation", flag()
    )
    plots: bool = option(
        True,
        "when training ends, write the run's figures (as rnnkit plot: RUN_DIR/*.png, TensorBoard images)",
        flag(),
    )
    print_config: bool = option(
        False, "print the resolved configuration as JSON (ready for --config) and stop", flag()
    )


def _run_device():
    return option(
        "cpu", "where the run's model runs (auto: cuda when available)", one_of("auto", "cpu", "cuda")
    )


@dataclass(frozen=True)
class EvaluateOptions(Options):
    data: str | None = _path("evaluate on this file as test data")
    json: bool = option(False, "one JSON object on standard output", flag())
    lengths: tuple | None = option(
        None,
        "memory: sequence lengths to evaluate at",
        ints(1, MAX_LENGTH, special={None: "the training length"}),
    )
    dynamic: bool = option(
        False,
        "charlm: also bpc_dynamic, the test text under dynamic evaluation (the model adapts to what "
        "it has read; Krause et al. 2018), its lr and decay chosen on the validation text",
        flag(),
    )
    device: str = _run_device()


@dataclass(frozen=True)
class SampleOptions(Options):
    prime: str = option(
        "", "text the sample continues (music: its opening, e.g. 'K:G | G4 - A4 -')", string()
    )
    length: int = option(
        300, "characters to draw (music: sixteenth-note steps at most)", integer(1, MAX_SAMPLE)
    )
    # below 1e-3 the scaled logits of a float32 model overflow to inf
    temperature: float = option(1.0, "softmax temperature", real(1e-3, 1e3))
    top_k: int | None = option(None, "draw from the k likeliest only", integer(1, special={None: "all"}))
    top_p: float | None = option(
        None, "draw from the nucleus of this mass only", real(0.0, 1.0, low_open=True, special={None: "all"})
    )
    seed: int = _seed("seed of the draw")
    cache: bool = option(
        False,
        "charlm: draw with the model's continuous cache too (it copies from the sample's own text, "
        "which feeds back its slips: samples read worse; evaluation always uses it)",
        flag(),
    )
    out: str | None = _path("also write the sample to this new file (music: .mid MIDI or .musicxml)")
    device: str = _run_device()


@dataclass(frozen=True)
class PredictOptions(Options):
    locale: str | None = option(
        None, "dates: the locale the inputs are written in", string(special={None: "any"})
    )
    beam_size: int | None = option(
        None,
        "dates, translate: decode by beam search of this width",
        integer(1, 256, special={None: "greedy"}),
    )
    input_file: str | None = option(
        None,
        "read the inputs from this file, one per line (- for standard input)",
        path(special={None: "none"}),
    )
    device: str = _run_device()


@dataclass(frozen=True)
class PlotOptions(Options):
    pass


@dataclass(frozen=True)
class GradientsOptions(Options):
    cell: tuple = option(("rnn", "lstm", "gru"), "fresh cells to compare", names(gradient_cells))
    length: int = option(100, "time steps T", integer(1, 10_000))
    hidden_size: int = option(64, "units of the fresh cells", integer(1, MAX_UNITS // 4))
    clip: float = option(1.0, "gradient-norm clipping threshold shown", real(0.0, low_open=True))
    seed: int = _seed("seed of the fresh cells and inputs")
    out: str | None = _path("where to write (default: RUN_DIR, else runs/gradients-<UTC timestamp>)")


@dataclass(frozen=True)
class ExportOptions(Options):
    out: str | None = _path(
        "the .onnx file to write (default: RUN_DIR/model.onnx; a task with an encoder and a decoder "
        "writes OUT's stem + .encoder.onnx and .decoder.onnx), with OUT's stem + .json beside it"
    )


COMMAND_OPTIONS = {
    "train": TrainOptions,
    "evaluate": EvaluateOptions,
    "sample": SampleOptions,
    "predict": PredictOptions,
    "plot": PlotOptions,
    "gradients": GradientsOptions,
    "export": ExportOptions,
}
