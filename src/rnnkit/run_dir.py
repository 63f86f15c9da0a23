"""Run directories as the command line reads and makes them, checked so that a damaged or edited
file gives one line naming it, never a traceback or a wrong figure.

RUN_DIR/config.json        what rebuilds the run: task, task_config (and the task's state:
                           vocabulary, labels, scaling), model, train, seed, data. Checked on every
                           read: types and ranges of every option, and that the task's state and
                           options give the model config.json describes.
RUN_DIR/model.safetensors  the weights selected by validation; checked against config.json's model.
RUN_DIR/metrics.jsonl      one strict JSON object per line (a non-finite value is null).
RUN_DIR/latest.json        the checkpoint resuming continues from, with its weights file
                           latest-<sha256 prefix>.safetensors (rnnkit.training.checkpoint).
RUN_DIR/data/NAME          the run's copy of its --data file; config.json records it relative to
                           the run, and only a regular file inside the run is ever read from there.
RUN_DIR/tb/                TensorBoard event files.

A run never writes over or deletes a file it did not write: --out must be new, empty, or (with
--force) free of the names above.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import stat
from pathlib import Path

import torch

from rnnkit._config import MAX_SEED
from rnnkit.errors import RnnkitError, RnnkitFileError, RnnkitValueError
from rnnkit.models import describe
from rnnkit.tasks.registry import TASKS
from rnnkit.training import TrainConfig
from rnnkit.training.checkpoint import write_bytes

# What a run writes at its top level: --force never lets a run start where one of these is.
RUN_FILES = (
    "config.json",
    "model.safetensors",
    "metrics.jsonl",
    "latest.json",
    "baseline.json",
    "dynamic.json",
    "data",
    "tb",
)


def _strict(token: str):
    raise ValueError(f"{token} is not JSON")


def read_json(path: Path):
    """A JSON file, strictly (NaN and Infinity refused), or a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_strict)
    except FileNotFoundError:
        raise RnnkitFileError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RnnkitValueError(f"{path} is not readable JSON: {e}") from None


def read_config(run_dir) -> dict:
    """RUN_DIR/config.json, with every part checked against what it must hold."""
    run = Path(run_dir)
    if not run.exists():
        raise RnnkitFileError(f"run directory {run} does not exist")
    if not run.is_dir():
        raise RnnkitFileError(f"{run} is not a run directory (it is a file)")
    path = run / "config.json"
    if not path.is_file():
        raise RnnkitFileError(f"{run} is not a run directory (no config.json)")
    config = read_json(path)
    if not isinstance(config, dict):
        raise RnnkitValueError(f"{path} is not a run configuration (a JSON object)")
    if config.get("task") not in TASKS:
        raise RnnkitValueError(f"{path}: task is {config.get('task')!r}, not one of {', '.join(TASKS)}")
    for key in ("task_config", "train", "model"):
        if not isinstance(config.get(key), dict):
            raise RnnkitValueError(f"{path}: {key} must be an object, got {type(config.get(key)).__name__}")
    # an option added since the run was saved takes the value that gives the run as it was
    config["task_config"] = {**getattr(TASKS[config["task"]][1], "SAVED_BEFORE", {}), **config["task_config"]}
    _options(path, "task_config", TASKS[config["task"]][1], config["task_config"])
    _options(path, "train", TrainConfig, config["train"])
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RnnkitValueError(f"{path}: seed must be an int in [0, {MAX_SEED}], got {seed!r}")
    if config.get("data") is not None and not isinstance(config["data"], str):
        raise RnnkitValueError(f"{path}: data must be a path or null, got {config['data']!r}")
    return config


def _options(path: Path, key: str, cls, values: dict):
    try:
        return cls(**values)
    except TypeError as e:  # an unknown or missing field
        raise RnnkitValueError(f"{path}: {key} does not fit {cls.__name__}: {e}") from None
    except RnnkitValueError as e:
        raise RnnkitValueError(f"{path}: {key}: {e}") from None


def recorded_data(config: dict, run_dir) -> str | None:
    """The run's own copy of its --data file, as config.json records it: only ever a regular
    file inside the run directory (never a device, a FIFO, or a path elsewhere)."""
    data = config.get("data")
    if data is None:
        return None
    run = Path(run_dir).resolve()
    path = (run / data).resolve()
    if run not in path.parents or not path.exists() or not stat.S_ISREG(path.stat().st_mode):
        raise RnnkitValueError(
            f"{Path(run_dir) / 'config.json'}: the run's data {data!r} is not a regular file inside the "
            f"run directory; give the data again with rnnkit train --resume {run_dir} --data PATH"
        )
    return str(path)


def task_of(config: dict, run_dir, data: str | None = None):
    """The task of a checked config.json (on `data` when given, else on the run's own data),
    after checking that its options and state give the model config.json describes."""
    task_cls, config_cls = TASKS[config["task"]]
    data = data if data is not None else recorded_data(config, run_dir)
    try:
        task = task_cls(config_cls(**config["task_config"]), data=data, saved=config)
    except RnnkitError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        # with good data and checked options, only an edited state (vocabulary, labels, scaling)
        raise RnnkitValueError(
            f"{Path(run_dir) / 'config.json'}: the task's saved state is malformed ({type(e).__name__}: {e})"
        ) from None
    task.run_dir = Path(run_dir)  # where a task may cache results
    with torch.device("meta"):  # shapes only: nothing allocated, no random numbers drawn
        model = task.build_model()
    saved = _plain(config["model"])
    if isinstance(saved.get("config"), dict) and dataclasses.is_dataclass(getattr(model, "config", None)):
        # a model setting added since the run was saved: absent means its default, as `load` reads it
        defaults = {
            f.name: f.default
            for f in dataclasses.fields(model.config)
            if f.default is not dataclasses.MISSING
        }
        saved["config"] = {**_plain(defaults), **saved["config"]}
    _same_model(Path(run_dir) / "config.json", _plain(describe(model)), saved)
    return task


def _plain(obj):
    return json.loads(json.dumps(obj))


def _same_model(path: Path, expected: dict, saved: dict) -> None:
    if expected == saved:
        return
    if saved.get("class") != expected["class"] or not isinstance(saved.get("config"), dict):
        raise RnnkitValueError(
            f"{path}: model is {saved.get('class')!r}, but the task builds {expected['class']!r}"
        )
    differ = sorted(
        k
        for k in expected["config"].keys() | saved["config"].keys()
        if expected["config"].get(k) != saved["config"].get(k)
    )
    k = differ[0]
    raise RnnkitValueError(
        f"{path}: model {k} is {saved['config'].get(k)!r}, but the task's options and state "
        f"(vocabulary, labels) give {expected['config'].get(k)!r}: the file was edited"
    )


def check_weights(model: torch.nn.Module, run_dir) -> torch.nn.Module:
    """`model` if every weight is finite, else an error naming model.safetensors."""
    for name, p in model.state_dict().items():
        bad = int((~torch.isfinite(p)).sum()) if p.is_floating_point() else 0
        if bad:
            raise RnnkitValueError(
                f"{Path(run_dir) / 'model.safetensors'} holds non-finite weights ({bad} in {name}): "
                "the run diverged; train again with a lower --lr"
            )
    return model


def prepare_out(out: Path, force: bool) -> None:
    """Refuse an --out where a new run would write over or beside what is not its own."""
    if out.exists() and not out.is_dir():
        raise RnnkitValueError(f"--out {out} is a file, not a directory")
    if (out / "config.json").exists():
        raise RnnkitValueError(f"--out {out} is already a run directory; continue it with --resume {out}")
    if not out.is_dir():  # made by the trainer once the data is read: check now that it can be
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise RnnkitValueError(f"--out {out} cannot be made: {parent} is not a writable directory")
        return
    if not any(out.iterdir()):
        return
    if not force:
        raise RnnkitValueError(
            f"--out {out} holds files that are not a run's; choose a new or empty directory, or add "
            "--force to write the run beside them (none is overwritten)"
        )
    taken = [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
    if taken:
        raise RnnkitValueError(f"--out {out} already holds {', '.join(taken)}, which a run writes")


def keep_data(path: str | None, out: Path, derived: tuple[str, bytes] | None = None) -> str | None:
    """A copy of the --data file in the run directory, and its path there (relative), which
    config.json records: a run must be enough on its own for evaluate, sample, predict, plot and
    resuming (API.md), wherever it is moved and whatever becomes of the original. `derived`
    (a name and content) is kept instead where the task read what it needs out of something
    else (music: the notes of a folder of scores). Written by rank 0 only, atomically; an
    existing file of that name is kept, and must hold the same."""
    if path is None:
        return None
    name, content = derived if derived is not None else (Path(path).name, None)
    kept = Path("data") / name
    if os.environ.get("RANK", "0") != "0":
        return str(kept)
    content = Path(path).read_bytes() if content is None else content
    dst = out / kept
    if dst.exists() or dst.is_symlink():
        if not dst.is_file() or dst.read_bytes() != content:
            raise RnnkitValueError(
                f"--data {path}: the run already keeps a different {kept} (a run's data cannot change)"
            )
        return str(kept)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(dst, content)
    return str(kept)


def default_out(name: str, now: datetime.datetime | None = None) -> Path:
    """runs/<name>-<UTC timestamp>, created here (empty), with -2, -3, ... after it when a run
    started within the same second took the name: the directory is made with mkdir, which one
    process alone succeeds at, so two runs never share one. (Under torchrun rank 0 alone calls
    this and tells the other ranks.)"""
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{name}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        out = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise RnnkitValueError(f"{base}: 10,000 runs started within one second; give --out")
