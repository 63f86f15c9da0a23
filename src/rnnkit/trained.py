"""`rnnkit.Run`: a trained run directory used from Python, what `rnnkit evaluate`, `sample` and
`predict` are a formatting of (one implementation: the command line prints what these return).

    run = rnnkit.Run.load("runs/charlm-...")
    run.task, run.config, run.model       # its task's name, config.json as a dict, the model
    run.predict(["The "])                 # one Python value per input (the task's predict_values)
    run.evaluate()                        # the test metrics, as `evaluate --json` prints them
    run.sample(prime="The ", length=200)  # charlm: a string; music: a piece as text (out=: MIDI)
    run.export()                          # ONNX: RUN_DIR/model.onnx and model.json

The task object (its vocabulary, labels, scaling; rebuilt from config.json and the run's data)
is what turns inputs into tensors and outputs into values; the options are checked with the
declarations the command line uses (`rnnkit.cli_options`), so both accept the same values.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rnnkit.cli_options import EvaluateOptions, PredictOptions, SampleOptions
from rnnkit.errors import RnnkitTypeError, RnnkitUnsupportedError, RnnkitValueError
from rnnkit.run_dir import check_weights, read_config, task_of
from rnnkit.runs import load


class Run:
    """A trained run; see the module docstring. Build it with `Run.load(run_dir)`."""

    def __init__(self, run_dir: Path, config: dict, task_object, model: torch.nn.Module):
        self.run_dir, self.config, self.model = Path(run_dir), config, model
        self._task = task_object

    @classmethod
    def load(cls, run_dir, device=None) -> Run:
        """The run in `run_dir`: config.json checked, its task rebuilt on the run's own data, and
        its model (the weights selected by validation, checked finite) in eval mode, on `device`
        (default: the CPU), wherever the run was trained."""
        config = read_config(run_dir)
        task = task_of(config, run_dir)
        return cls(Path(run_dir), config, task, check_weights(load(run_dir, device=device), run_dir))

    @property
    def task(self) -> str:
        """The task's name, e.g. "charlm"."""
        return self._task.name

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, task={self.task!r})"

    def predict(self, inputs, **options) -> list:
        """One value per input (a list of strings, as `rnnkit predict` takes them): a string for
        charlm, dates and translate; a (label, probability) pair for classify; a list of floats
        for forecast; the greedy name for colors. Options as `rnnkit predict` takes them
        (`locale=` for dates)."""
        given = self._predict_options(inputs, options)
        with torch.no_grad():
            return self._task.predict_values(self.model, list(inputs), **given)

    def predict_lines(self, inputs, **options) -> list[str]:
        """What `rnnkit predict` prints: a line per input, its `predict` value first."""
        given = self._predict_options(inputs, options)
        with torch.no_grad():
            return self._task.predict(self.model, list(inputs), **given)

    def _predict_options(self, inputs, options: dict) -> dict:
        """The checks of predict's inputs and options; the options as the task takes them."""
        if isinstance(inputs, str) or not isinstance(inputs, (list, tuple)):
            raise RnnkitTypeError(f"inputs must be a list of strings, got {type(inputs).__name__}")
        if not inputs or not all(isinstance(i, str) for i in inputs):
            raise RnnkitValueError("inputs must be a non-empty list of strings")
        checked = PredictOptions(**_known(PredictOptions, "predict", options))
        given = {k: getattr(checked, k) for k in options}
        _applies("predict", self._task, given, self._task.predict_options)
        return given

    def evaluate(self, data=None, **options) -> dict:
        """The test metrics (of `data`, a file as `--data` takes, if given), as `rnnkit evaluate
        --json` prints them; options as `evaluate` takes them (`lengths=` for memory)."""
        checked = EvaluateOptions(
            data=None if data is None else str(data), **_known(EvaluateOptions, "evaluate", options)
        )
        given = {
            k: list(v) if isinstance(v, tuple) else v
            for k in options
            if (v := getattr(checked, k)) is not None
        }
        _applies("evaluate", self._task, given, self._task.evaluate_options)
        metrics = self._task.test_metrics(self.model, data=checked.data, **given)
        undefined = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
        if undefined:  # e.g. a test text too short to predict one character: an input error
            source = f"data {checked.data}" if checked.data else "the run's test data"
            raise RnnkitValueError(f"{source} gives no finite {', '.join(undefined)} (too little test data?)")
        return metrics

    def export(self, out=None) -> list[Path]:
        """The model as ONNX (`rnnkit export`): RUN_DIR/model.onnx or `out`, with model.json beside
        it; each graph is checked on onnxruntime against this model before anything is written.
        Returns the paths written. Needs the `export` extra (onnx, onnxscript, onnxruntime)."""
        from rnnkit.exporting import export_onnx

        return export_onnx(self, out)

    def sample(
        self, prime="", length=300, temperature=1.0, top_k=None, top_p=None, seed=0, out=None, cache=False
    ) -> str:
        """charlm: `prime` continued by `length` drawn characters (a string); music: a piece of
        up to `length` sixteenth-note steps, as text (`prime` its opening or key). With `out`, the
        sample is also written there (music: MIDI for .mid/.midi, MusicXML for .musicxml/.xml;
        charlm: the text), a new file only. charlm draws from the recurrent model alone unless
        `cache` (its continuous cache too). As `rnnkit sample`."""
        if not hasattr(self._task, "sample"):
            raise RnnkitUnsupportedError(f"task {self.task} has no sample; use predict")
        if not isinstance(cache, bool):
            raise RnnkitTypeError(f"cache must be True or False, got {cache!r}")
        _applies(
            "sample", self._task, {"cache": cache} if cache else {}, getattr(self._task, "sample_options", ())
        )
        o = SampleOptions(
            prime=prime,
            length=length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            out=None if out is None else str(out),
        )
        target = (
            None if o.out is None else _new_file(Path(o.out), getattr(self._task, "sample_suffixes", None))
        )
        with torch.no_grad():
            text = self._task.sample(
                self.model,
                prime=o.prime,
                length=o.length,
                temperature=o.temperature,
                top_k=o.top_k,
                top_p=o.top_p,
                seed=o.seed,
                **({"cache": True} if cache else {}),
            )
        if target is not None:
            write = getattr(self._task, "write_sample", None)
            if write is None:
                target.write_text(text, encoding="utf-8")
            else:
                write(text, target)
        return text


def _new_file(path: Path, suffixes) -> Path:
    """sample's --out, checked before any work: a file that does not exist yet (nothing a user has
    is overwritten), in an existing folder, with a suffix the task writes."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise RnnkitValueError(f"--out {path}: expected a file ending in {', '.join(suffixes)}")
    if path.exists() or path.is_symlink():
        raise RnnkitValueError(
            f"--out {path} exists; sample writes a new file only (remove it or name another)"
        )
    if not path.parent.is_dir():
        raise RnnkitValueError(f"--out {path}: no such folder {path.parent}")
    return path


def _known(options_class, command: str, options: dict) -> dict:
    """`options` if every name is an option of the command (lists as the tuples its declaration
    takes), else an error naming the first."""
    # device is Run.load's; data and input files are the caller's to read
    names = set(options_class.__dataclass_fields__) - {"data", "json", "device", "input_file"}
    for name in options:
        if name not in names:
            raise RnnkitTypeError(
                f"{command} takes no option {name!r} (options: {', '.join(sorted(names)) or 'none'})"
            )
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def _applies(command: str, task, given: dict, known: tuple) -> None:
    for name in given:
        if name not in known:
            raise RnnkitValueError(f"{command} --{name.replace('_', '-')} does not apply to task {task.name}")
