"""The `rnnkit` command: train, evaluate, sample, predict, plot. Task and training flags are generated
from their config dataclasses, so the help cannot drift from the code.

Exit status: 0 on success, 2 for a usage or input error (one line on standard error), 1 else.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import rnnkit
from rnnkit._config import as_flags, valid_of
from rnnkit._entry import COMMANDS as HELP
from rnnkit._entry import top_parser
from rnnkit.cells.registry import load_entry_points
from rnnkit.cli_options import (
    EvaluateOptions,
    ExportOptions,
    GradientsOptions,
    PredictOptions,
    SampleOptions,
    TrainOptions,
)
from rnnkit.config_files import read_config_file, task_of_config
from rnnkit.errors import RnnkitError, RnnkitFileError, RnnkitTypeError, RnnkitValueError
from rnnkit.loss_plot import plot_losses
from rnnkit.metrics_table import format_metrics
from rnnkit.models import build, describe
from rnnkit.run_dir import check_weights, default_out, keep_data, prepare_out, read_config, task_of
from rnnkit.tasks.registry import TASKS
from rnnkit.trained import Run
from rnnkit.training import TrainConfig, Trainer

_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", tuple: "INTS", list: "NAMES"}


def _parser_of(valid):
    """argparse's `type`: a value parsed and checked against its declaration."""

    def parse(text: str):
        try:
            return valid.parse(text)
        except RnnkitError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _metavar(name: str, valid) -> str:
    if valid.kind is str:
        return "NAME" if valid.choices else ("PATH" if valid.low else "TEXT")
    return _METAVARS[valid.kind]


def _shown_default(value) -> str:
    if value is None:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def add_config_flags(parser: argparse.ArgumentParser, cls, title: str, defaults: dict | None = None) -> None:
    """--field-name for every field of a config dataclass, parsed and checked by its declaration,
    with its help, default and valid values in the help (`defaults` overrides the dataclass
    defaults shown, as a task does for TrainConfig). Flags default to None: "not given"."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        valid = valid_of(f)
        flag = "--" + f.name.replace("_", "-")
        default = (defaults or {}).get(f.name, f.default)
        if valid.kind is bool:
            text = f"{f.metadata['help']} (default: {'on' if default else 'off'})"
        elif valid.kind is str and not valid.choices:  # a name or a path: any text
            text = f"{f.metadata['help']}" + (f" (default: {default})" if default else "")
        else:
            text = f"{f.metadata['help']} (default: {_shown_default(default)}; {valid.describe()})"
        text = text.replace("%", "%%")
        if valid.kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(
                flag, type=_parser_of(valid), default=None, metavar=_metavar(f.name, valid), help=text
            )


def given(cls, args) -> list[str]:
    """The flags of config `cls` given on the command line."""
    return [
        "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    ]


def config_from(cls, args, base: dict | None = None):
    """The config with the flags given on the command line over `base` (or the defaults); an
    error names the flags."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    with as_flags():
        return cls(**values)


def train_task(argv: list[str]) -> str:
    """The task a `train` command line is about, so that only its flags are offered: the first
    argument naming a task, else the task of the run given to --resume, else charlm."""
    rest = argv[1:]
    for arg in rest:
        if arg in TASKS:
            return arg
    from_file = task_of_config(rest)
    if from_file in TASKS:
        return from_file
    for flag, value in zip(rest, rest[1:]):
        if flag == "--resume":
            try:
                return json.loads((Path(value) / "config.json").read_text())["task"]
            except (OSError, ValueError, KeyError, TypeError):
                break  # cmd_train reports the run directory's problem
    return "charlm"


def _other_task_flag(args: list[str], task: str) -> str | None:
    """A message for the first flag that belongs to other tasks but not to `task` (argparse would
    misread it, e.g. `train --dataset surnames` as an unknown task "surnames")."""
    if task not in TASKS:  # a damaged run's config.json names it: cmd_train reports that
        return None
    own = {f.name for cls in (TrainOptions, TrainConfig, TASKS[task][1]) for f in dataclasses.fields(cls)}
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0].removeprefix("no-").replace("-", "_")
        if name in own:
            continue
        owners = [t for t, (_, cls) in TASKS.items() if name in {f.name for f in dataclasses.fields(cls)}]
        if owners:
            which = " and ".join(owners) if len(owners) < 4 else f"{len(owners)} tasks"
            return (
                f"{arg.split('=', 1)[0]} is a flag of task {which}, not of {task} "
                f"(rnnkit train {owners[0]} {arg.split('=', 1)[0]} ...)"
            )
    return None


def build_parser(task: str = "charlm") -> argparse.ArgumentParser:
    parser, sub = top_parser()

    train = sub.add_parser("train", help=HELP["train"])
    train.add_argument("task", nargs="?", default=None, choices=sorted(TASKS))
    add_config_flags(train, TrainOptions, "run")
    task_cls, config_cls = TASKS.get(task, TASKS["charlm"])
    shown = {**task_cls.train_defaults, **task_cls.sized_help}
    add_config_flags(train, TrainConfig, f"training (defaults of task {task})", shown)
    add_config_flags(train, config_cls, f"task {task} (see: rnnkit train TASK --help)")

    evaluate = sub.add_parser("evaluate", help=HELP["evaluate"])
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    add_config_flags(evaluate, EvaluateOptions, "options")

    sample = sub.add_parser("sample", help=HELP["sample"])
    sample.add_argument("run_dir", metavar="RUN_DIR")
    add_config_flags(sample, SampleOptions, "options")

    plot = sub.add_parser("plot", help=HELP["plot"])
    plot.add_argument("run_dir", metavar="RUN_DIR")

    gradients = sub.add_parser("gradients", help=HELP["gradients"])
    gradients.add_argument(
        "run_dir", nargs="?", metavar="RUN_DIR", help="also show this run's trained recurrence"
    )
    add_config_flags(gradients, GradientsOptions, "options")

    predict = sub.add_parser("predict", help=HELP["predict"])
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("inputs", nargs="*", metavar="INPUT")
    add_config_flags(predict, PredictOptions, "options")

    export = sub.add_parser("export", help=HELP["export"])
    export.add_argument("run_dir", metavar="RUN_DIR")
    add_config_flags(export, ExportOptions, "options")
    return parser


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global generator user code draws from)
    torch.manual_seed(seed)


def _device(opts) -> str:
    """--device auto | cpu | cuda (of any command's options) as a device name."""
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise RnnkitValueError("--device cuda: no CUDA device is available")
    return "cuda" if opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available()) else "cpu"


def _load(run_dir) -> torch.nn.Module:
    """A run's model, its weights checked to be finite."""
    return check_weights(rnnkit.load(run_dir), run_dir)


def train(task: str | None = "charlm", *, data=None, out=None, steps=None, seed=0, resume=None, **options):
    """`rnnkit.train`: train as `rnnkit train TASK` does, with the flags as keyword arguments
    (underscores for dashes: hidden_size=64, clip_norm=None, learn_initial_state=True), and return
    the run (`rnnkit.Run`). `resume=RUN_DIR` continues a run (task None, or the run's own). Every
    value is checked by the flag's declaration; the caller's global random state (Python, numpy,
    torch) and torch's thread count are as they were afterwards."""
    if resume is not None and task == "charlm" and data is None:
        task = None  # resuming: the run says which task
    if task is not None and task not in TASKS:
        raise RnnkitValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    classes = [TrainOptions, TrainConfig, *([TASKS[task][1]] if task else [c for _, c in TASKS.values()])]
    names = {f.name for cls in classes for f in dataclasses.fields(cls)} - {"print_config", "nproc"}
    seed = None if resume is not None and seed == 0 else seed  # a resumed run keeps its own
    given = {"data": data, "out": out, "steps": steps, "seed": seed, "resume": resume, **options}
    for name in options:
        if name not in names:
            raise RnnkitTypeError(f"train() takes no option {name!r} (for task {task or 'of the run'})")
    args = argparse.Namespace(**dict.fromkeys(names), task=task)
    for name, value in given.items():
        if value is not None:
            setattr(
                args,
                name,
                tuple(value) if isinstance(value, list) else str(value) if isinstance(value, Path) else value,
            )
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state(), torch.get_num_threads()  # noqa: NPY002
    try:
        return Run.load(_train(args))
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])  # noqa: NPY002
        torch.random.set_rng_state(states[2])
        torch.set_num_threads(states[3])


def _apply_config_file(args) -> None:
    """--config FILE: its values where no flag was given, checked by the same declarations."""
    task, values = read_config_file(args.config)
    if task is not None and args.task is None:  # a TASK on the command line wins
        if task not in TASKS:
            raise RnnkitValueError(
                f"--config {args.config}: task must be one of {', '.join(TASKS)}, got {task!r}"
            )
        args.task = task
    fields = {
        f.name: f
        for cls in (TrainOptions, TrainConfig, TASKS[args.task or "charlm"][1])
        for f in dataclasses.fields(cls)
        if f.name not in ("config", "print_config", "resume")
    }
    unknown = sorted(k for k in values if k not in fields)
    if unknown:
        raise RnnkitValueError(
            f"--config {args.config}: {', '.join('--' + k.replace('_', '-') for k in unknown)} "
            f"is not a flag of rnnkit train {args.task or 'charlm'}"
        )
    for name, value in values.items():
        if getattr(args, name, None) is None and value is not None:
            setattr(args, name, tuple(value) if isinstance(value, list) else value)


def cmd_train(args) -> int:
    opts = config_from(TrainOptions, args)
    if opts.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args, opts)
    _train(args)
    return 0


def _launch(args, opts: TrainOptions) -> int:
    """--nproc N: this command again under `torch.distributed.run` (torchrun) with N processes on
    this machine, --nproc dropped and the run directory named here, so every rank agrees on it."""
    argv, rest = [], list(args.argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg == "--nproc":
            rest.pop(0)
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    if not opts.out and not opts.resume:
        argv += ["--out", str(default_out(args.task or "charlm"))]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={opts.nproc}",
    ]
    return subprocess.run([*launcher, "-m", "rnnkit", "train", *argv]).returncode


def _train(args) -> Path | None:
    """Train (or resume) the run the arguments describe; its directory (None: --print-config)."""
    if getattr(args, "config", None):
        _apply_config_file(args)
    opts = config_from(TrainOptions, args)
    if opts.resume:
        return _resume(args, opts)
    name = args.task or "charlm"
    task_cls, config_cls = TASKS[name]
    task_config = config_from(config_cls, args)  # every flag checked before any work
    config_from(TrainConfig, args, task_cls.train_defaults)
    if opts.print_config:
        _seed(opts.seed)
        task = task_cls(task_config, data=opts.data)  # some defaults depend on the data's size
        train_config = config_from(
            TrainConfig, args, {**task_cls.train_defaults, **task.sized_train_defaults()}
        )
        resolved = {"task": name, "seed": opts.seed, "data": opts.data}
        print(
            json.dumps(
                {**resolved, **dataclasses.asdict(task_config), **dataclasses.asdict(train_config)}, indent=1
            )
        )
        return None
    device = _join_process_group(_device(opts))
    out = _agreed(lambda: _checked_out(Path(opts.out) if opts.out else default_out(name), opts.force))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    _seed(opts.seed)
    task = task_cls(task_config, data=opts.data)
    train_config = config_from(TrainConfig, args, {**task_cls.train_defaults, **task.sized_train_defaults()})
    model = task.build_model()
    data = keep_data(opts.data, out, task.kept_data())
    meta = {"model": describe(model), **task.describe(), "data": data, "seed": opts.seed}
    task.run_dir = out
    _fit(task, model, train_config, out, meta, device, opts, resume=False)
    return out


def _resume(args, opts: TrainOptions) -> int:
    """Continue a run; one killed before its first checkpoint starts over, as it first did."""
    run = Path(opts.resume)
    saved = read_config(run)
    if args.task is not None and args.task != saved["task"]:
        raise RnnkitValueError(f"--resume {run} is a {saved['task']} run, not {args.task}")
    fixed = given(TASKS[saved["task"]][1], args) + [f for f in ("--out", "--force") if getattr(args, f[2:])]
    if args.seed is not None and args.seed != saved.get("seed", 0):
        fixed.append("--seed")
    if fixed:
        raise RnnkitValueError(
            f"--resume {run}: {', '.join(fixed)} cannot change in a resumed run (its model, data and "
            "seed are fixed); start a new run with --out"
        )
    train_config = config_from(TrainConfig, args, saved["train"])
    device = _join_process_group(_device(opts))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    meta = {k: v for k, v in saved.items() if k != "train"}
    _seed(saved.get("seed", 0))  # before the task, as the run's first start did
    task = task_of(saved, run, data=opts.data)  # on the data given again, else the run's own copy
    if opts.data is not None:  # the run keeps a copy (a different one there is refused)
        meta["data"] = keep_data(opts.data, run, task.kept_data())
    fresh = not (run / "latest.json").exists()
    model = task.build_model() if fresh else build(saved["model"])
    _fit(task, model, train_config, run, meta, device, opts, resume=True)
    return run


def _tensorboard_extras(task, model, step: int, writer, gradient_flow: bool) -> None:
    """What TensorBoard shows at each evaluation beyond the scalars: the task's text (charlm: a
    sample) and, with --log-gradient-flow, the first layer's ||dL/dh_t|| over t as a figure."""
    for tag, text in task.tensorboard_text(model).items():
        writer.add_text(tag, text, step)
    if gradient_flow:
        figure = gradient_flow_figure(model, step)
        if figure is not None:
            writer.add_figure("gradient_flow", figure, step)


def gradient_flow_figure(model, step: int, length: int = 100):
    """||dL/dh_t|| (L = the sum of the last output) of the model's first recurrent layer on a
    seeded N(0, 1) input, t = 1..length, log scale; None for a model without one."""
    from rnnkit.diagnostics import first_layer, hidden_grad_norms
    from rnnkit.tasks._common import pyplot

    try:
        kind, layer = first_layer(model)
    except RnnkitValueError:  # no recurrent layer with a square W_hh (the NTM's, a projection)
        return None
    x = torch.randn(length, 8, layer.input_size, generator=torch.Generator().manual_seed(0))
    norms = hidden_grad_norms(layer.double(), x.double()).tolist()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(range(1, length + 1), norms)
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/dh_t|| (L = sum of y_T)")
    ax.set_title(f"gradient flow through the first {kind} layer, step {step}")
    ax.grid(alpha=0.3, which="both")
    return fig


def _join_process_group(device: str) -> str:
    """Under torchrun (WORLD_SIZE > 1), join the process group before anything is written, so
    that rank 0 can make the run directory and tell the others; the device this rank trains on
    (CUDA: the rank's own GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda" and torch.distributed.is_initialized():
        return f"cuda:{torch.cuda.current_device()}"
    return device


def _checked_out(out: Path, force: bool) -> Path:
    """A new run's directory, checked: nothing of another's is written over (the trainer makes
    it on rank 0, once the data has been read: a run refused for its data leaves nothing)."""
    prepare_out(out, force)
    return out


def _agreed(make: Callable[[], Path]) -> Path:
    """`make()` on rank 0 alone, its result given to every rank (under torchrun; else just
    `make()`): one process names and checks the run directory, and every rank uses the same one
    (timestamps taken by each rank could differ). When rank 0 fails it reports why; the others
    exit without a second message."""
    if not torch.distributed.is_initialized():
        return make()
    agreed: list = [None]
    error = None
    if torch.distributed.get_rank() == 0:
        try:
            agreed[0] = str(make())
        except RnnkitError as e:
            error = e
    torch.distributed.broadcast_object_list(agreed, src=0)
    if error is not None:
        raise error
    if agreed[0] is None:
        raise SystemExit(2)  # rank 0 said why
    return Path(agreed[0])


def _fit(task, model, train_config, out: Path, meta: dict, device: str, opts: TrainOptions, *, resume: bool):
    progress = _Progress(train_config.steps, task.metric)
    model = model.to(device)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    trainer = Trainer(
        model,
        train_config,
        batches=task.batches,
        step_fn=task.step_fn,
        evaluate=task.evaluate,
        metric=task.metric,
        run_dir=out,
        meta=meta,
        progress=progress if int(os.environ.get("RANK", "0")) == 0 else None,
        on_evaluate=lambda model, step, writer: _tensorboard_extras(
            task, model, step, writer, opts.log_gradient_flow
        ),
    )
    try:
        if resume:
            trainer.resume()
            done = [r for r in _metrics(out) if r["split"] == "test" and r["step"] == trainer.step]
            if trainer.step >= train_config.steps and done:  # a finished run: nothing to add
                if trainer.rank == 0:  # under torchrun, once
                    print(
                        f"rnnkit train: {out} has finished (step {trainer.step} of {train_config.steps}); "
                        "nothing to do (give a larger --steps to train on)",
                        file=sys.stderr,
                    )
                return
        started, first = time.perf_counter(), trainer.step
        with progress.showing(first):
            trainer.fit()
        if trainer.rank == 0:  # under torchrun, rank 0 alone reports
            test = task.test_metrics(_load(out))
            counts = {
                "clipped_steps": trainer.counts["clipped"],
                "nonfinite_steps": trainer.counts["nonfinite"],
            }
            trainer.log(
                {"step": trainer.step, "split": "test", "selected_step": trainer.best_step, **test, **counts}
            )
            trainer.log_hparams(
                {"task": task.name, **meta.get("task_config", {}), **dataclasses.asdict(train_config)}
            )
            warning = runaway(task, _metrics(out))
            if warning:
                print(f"rnnkit train: warning: {warning}", file=sys.stderr)
            if opts.plots:
                write_figures(task, _load(out), out, _metrics(out), trainer.writer())
            progress.summary(trainer, first, time.perf_counter() - started, test, out)
    finally:
        if world > 1:
            _leave_process_group(failed=sys.exc_info()[0] is not None)


def _leave_process_group(failed: bool) -> None:
    """Leave the torchrun process group on every way out of training, the early "nothing to do"
    return included: a process that exits with its gloo pairs alive can abort at exit ("terminate
    called without an active exception"). After a clean run the ranks wait for each other first:
    a rank that destroys its pairs while another is still busy (rank 0 writing the test metrics)
    can abort the other. After an error there is no waiting: the others may never arrive."""
    if not torch.distributed.is_initialized():
        return
    if not failed:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def runaway(task, records: list[dict], after: int = 3) -> str | None:
    """A line saying a run went wrong, or None: its last validation metric is not finite, or
    (after `after` evaluations) worse than a predictor that learned nothing."""
    val = [r for r in records if r["split"] == "val" and task.metric in r]
    if not val:
        return None
    last, step = val[-1][task.metric], val[-1]["step"]
    if last is None or not math.isfinite(last):
        return (
            f"validation {task.metric} at step {step} is not finite: the run diverged "
            "(try a lower --lr or a --clip-norm)"
        )
    trivial = task.trivial()
    if trivial is not None and len(val) >= after and last > trivial[0]:
        return (
            f"validation {task.metric} at step {step} is {last:.4g}, worse than {trivial[1]} "
            f"({trivial[0]:.4g}): the run did not learn (too few --steps, or too high an --lr?)"
        )
    return None


class _Progress:
    """What a person watching a training sees. On a terminal (standard error): a tqdm bar from the
    first step (rate, ETA, the running loss, the last validation figure), each evaluation on its
    own line above it, an early stop announced, and at the end a summary (`summary`). Elsewhere
    (CI, a pipe, a file): JSON lines on standard output: those of metrics.jsonl (every 50th
    training step, every evaluation, the test record), then {"run_dir": ...}."""

    def __init__(self, total: int, metric: str, tty: bool | None = None):
        self.total, self.metric = total, metric
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar, self.last_val, self.last_loss = None, None, None

    @contextlib.contextmanager
    def showing(self, first: int):
        if self.tty:
            # a terminal that reports no size (a bare pseudo-terminal) gets 100 x 24: with 0 rows
            # tqdm would hide the bar
            size = os.get_terminal_size(sys.stderr.fileno())
            sized = size.columns > 0 and size.lines > 0
            self.bar = tqdm(
                total=self.total,
                initial=first,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=sized,
                ncols=None if sized else 100,
                nrows=None if sized else 24,
            )
        try:
            yield
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def __call__(self, record: dict) -> None:
        if not self.tty:
            if record["split"] != "train" or record["step"] % 50 == 0:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
                print(json.dumps(shown), flush=True)
            return
        if self.bar is None:  # the test record, after the bar: the summary shows it
            return
        if record["split"] == "train":
            self.bar.update(record["step"] - self.bar.n)
            self.last_loss = record["loss"]
        elif record["split"] == "val":
            self.last_val = record.get(self.metric)
            self.bar.write(f"step {record['step']}: validation " + _figures(record))
        postfix = {} if self.last_loss is None else {"loss": f"{self.last_loss:.4f}"}
        if _number(self.last_val):
            postfix[f"val {self.metric}"] = f"{self.last_val:.4f}"
        self.bar.set_postfix(postfix, refresh=record["split"] == "val")

    def summary(self, trainer, first: int, seconds: float, test: dict, out: Path) -> None:
        """The end of a run: what ran, why it stopped, what was selected, the test figures."""
        if not self.tty:  # one more JSON line: where the run is (its default name has a timestamp)
            print(json.dumps({"run_dir": str(out)}), flush=True)
            return
        ran = trainer.step - first
        if trainer.step < self.total:
            why = f"early stop: no better validation {self.metric} in {trainer.since_best} evaluations"
        else:
            why = f"reached --steps {self.total}"
        lines = [f"trained {ran} steps in {_duration(seconds)} ({why})"]
        if trainer.best_step is not None:
            lines.append(f"selected: step {trainer.best_step}, validation {self.metric} {trainer.best:.4f}")
        counts = trainer.counts
        lines.append(
            f"clipped: {counts['clipped']} of {trainer.step} updates (--clip-norm); "
            f"skipped as non-finite: {counts['nonfinite']}"
        )
        numbers = {k: v for k, v in test.items() if _number(v) and not k.endswith("_steps")}
        if numbers:  # the figures; the tables and examples are `rnnkit evaluate`'s
            lines += ["test:", *format_metrics(numbers, indent="  ")]
        lines.append(f"run directory: {out}")
        print("\n".join(lines), flush=True)


def _figures(record: dict) -> str:
    return "  ".join(
        f"{k} {v:.4f}"
        for k, v in record.items()
        if k not in ("step", "split") and _number(v) and isinstance(v, float)
    )


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"


def _metrics(run: Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl, each with a step and a split, or a one-line error."""
    path = run / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RnnkitFileError(f"{run} has no metrics.jsonl") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RnnkitValueError(f"cannot read {path}: {e}") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)  # NaN read too: runs written before metrics were strict
        except json.JSONDecodeError as e:
            raise RnnkitValueError(f"{path} line {n} is not JSON: {e}") from None
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("step"), int)
            or record.get("split") not in ("train", "val", "test")
        ):
            raise RnnkitValueError(
                f"{path} line {n} is not a metrics record (an int step; split train, val or test)"
            )
        records.append(record)
    return records


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def cmd_plot(args) -> int:
    """RUN_DIR/loss.png (one panel per unit: `rnnkit.loss_plot`), then the task's own figures."""
    run = Path(args.run_dir)
    task = task_of(read_config(run), run)
    from torch.utils.tensorboard import SummaryWriter

    with contextlib.closing(SummaryWriter(str(run / "tb"))) as writer:
        paths = write_figures(task, _load(run), run, _metrics(run), writer)
    for path in paths:
        print(path)
    return 0


def write_figures(task, model, run: Path, records: list[dict], writer) -> list[Path]:
    """The run's figures: RUN_DIR/loss.png (one panel per unit: `rnnkit.loss_plot`), then the
    task's own (and their data files, e.g. attention.npz); the pictures also as images in
    TensorBoard (`writer`, tag figures/<file name>) at the run's last step. What `rnnkit plot`
    writes, and `rnnkit train` when it ends (unless --no-plots)."""
    import matplotlib.image

    out = plot_losses(
        records, task=task.name, run=run, loss_unit=task.loss_unit, metric=task.metric, out=run / "loss.png"
    )
    paths = [out, *task.plot(model, run)]
    step = max(r["step"] for r in records)
    for path in paths:
        if path.suffix == ".png":
            image = matplotlib.image.imread(path)[..., :3]  # (H, W, RGB) in [0, 1]
            writer.add_image(f"figures/{path.stem}", image, step, dataformats="HWC")
    writer.flush()
    return paths


def cmd_evaluate(args) -> int:
    opts = config_from(EvaluateOptions, args)
    options = {} if opts.lengths is None else {"lengths": list(opts.lengths)}
    if opts.dynamic:
        options["dynamic"] = True
    metrics = Run.load(args.run_dir, _device(opts)).evaluate(opts.data, **options)
    if opts.json:
        print(json.dumps(metrics, allow_nan=False))
    else:
        print("\n".join(format_metrics(metrics)))
    return 0


def cmd_sample(args) -> int:
    opts = config_from(SampleOptions, args)
    print(
        Run.load(args.run_dir, _device(opts)).sample(
            prime=opts.prime,
            length=opts.length,
            temperature=opts.temperature,
            top_k=opts.top_k,
            top_p=opts.top_p,
            seed=opts.seed,
            out=opts.out,
            cache=opts.cache,
        )
    )
    if opts.out:
        print(f"wrote {opts.out}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    opts = config_from(PredictOptions, args)
    inputs = list(args.inputs) + (_input_lines(opts.input_file) if opts.input_file else [])
    if not inputs:
        raise RnnkitValueError("predict needs INPUT arguments or --input-file FILE (- for standard input)")
    run = Run.load(args.run_dir, _device(opts))
    options = {k: getattr(opts, k) for k in ("locale", "beam_size") if getattr(opts, k) is not None}
    for line in run.predict_lines(inputs, **options):
        print(line, flush=True)
    return 0


def _input_lines(path: str) -> list[str]:
    """The inputs of --input-file: one per line (the line ending dropped, blank lines skipped)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RnnkitFileError(f"--input-file {path}: cannot be read ({e})") from None
    return [line for line in text.splitlines() if line.strip()]


def cmd_gradients(args) -> int:
    """gradients.json and gradients.png: fresh cells side by side, and a run's trained one."""
    from rnnkit.diagnostics import first_layer, gradient_flow, write_report

    opts = config_from(GradientsOptions, args)
    layers = {}
    if args.run_dir:
        read_config(args.run_dir)
        kind, layer = first_layer(_load(args.run_dir))
        layers[f"trained {kind}"] = layer
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(opts.out or args.run_dir or f"runs/gradients-{stamp}")
    if out.exists() and not out.is_dir():
        raise RnnkitValueError(f"--out {out} is a file, not a directory")
    result = gradient_flow(
        list(opts.cell),
        length=opts.length,
        hidden_size=opts.hidden_size,
        clip=opts.clip,
        seed=opts.seed,
        layers=layers,
    )
    paths = write_report(result, out)
    print(f"{'cell':>14}  {'||dL/dh_1||':>12}  {'||dL/dh_T||':>12}  {'W_hh radius':>11}  {'early share':>11}")
    for name, r in result["cells"].items():
        print(
            f"{name:>14}  {r['grad_norms'][0]:12.3e}  {r['grad_norms'][-1]:12.3e}  "
            f"{r['spectrum']['spectral_radius']:11.3f}  {r['clipping']['early_fraction']:11.3e}"
        )
    for path in paths.values():
        print(path)
    return 0


def cmd_export(args) -> int:
    opts = config_from(ExportOptions, args)
    for path in Run.load(args.run_dir).export(opts.out):
        print(path)
    return 0


COMMANDS = {
    "export": cmd_export,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sample": cmd_sample,
    "predict": cmd_predict,
    "plot": cmd_plot,
    "gradients": cmd_gradients,
}


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 on success, 2 for a usage or input error (one line on standard error), 1
    for anything else."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        load_entry_points()  # cells of installed packages, so --cell offers them
    except RnnkitError as e:
        print(f"rnnkit: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    task = train_task(argv) if argv and argv[0] == "train" else "charlm"
    if argv and argv[0] == "train":
        foreign = _other_task_flag(argv[1:], task)
        if foreign:
            print(f"rnnkit train: error: {foreign}", file=sys.stderr)
            return 2
    try:
        args = build_parser(task).parse_args(argv)
    except SystemExit as e:  # --help, --version (0), or a usage error, said in one line (2)
        return e.code if isinstance(e.code, int) else 0
    args.argv = argv  # the command line as given (train --nproc runs it again under torchrun)
    try:
        return COMMANDS[args.command](args)
    except RnnkitError as e:
        print(f"rnnkit {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a run keeps its last checkpoint (--resume continues it)
        print(f"rnnkit {args.command}: interrupted", file=sys.stderr)
        return 130
