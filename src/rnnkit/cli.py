"""The `rnnkit` command: train, evaluate, sample, predict, plot. Task and training flags are generated
from their config dataclasses, so the help cannot drift from the code.

Exit status: 0 on success, 2 for a usage or input error (one line on standard error), 1 else.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import rnnkit
from rnnkit.errors import RnnkitError, RnnkitFileError, RnnkitUnsupportedError, RnnkitValueError
from rnnkit.models import build, describe
from rnnkit.tasks.registry import TASKS
from rnnkit.train import TrainConfig, Trainer

_TYPES = {"int": int, "float": float, "str": str}


def add_config_flags(parser: argparse.ArgumentParser, cls, title: str, defaults: dict | None = None) -> None:
    """--field-name for every field of a config dataclass, typed, defaulted and explained by it
    (`defaults` overrides the dataclass defaults shown, as a task does for TrainConfig)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        default = (defaults or {}).get(f.name, f.default)
        text = f"{f.metadata.get('help', '')} (default: {default})".strip()
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(
                flag, type=_TYPES.get(kind, str), default=None, metavar=kind.upper(), help=text
            )


def config_from(cls, args, base: dict | None = None):
    """The config with the flags given on the command line over `base` (or the defaults)."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls(**values)


def train_task(argv: list[str]) -> str:
    """The task a `train` command line is about, so that only its flags are offered: the first
    argument naming a task, else the task of the run given to --resume, else charlm."""
    rest = argv[1:]
    for arg in rest:
        if arg in TASKS:
            return arg
    for flag, value in zip(rest, rest[1:]):
        if flag == "--resume":
            try:
                return json.loads((Path(value) / "config.json").read_text())["task"]
            except (OSError, ValueError, KeyError):
                break  # cmd_train reports the run directory's problem
    return "charlm"


def build_parser(task: str = "charlm") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="Recurrent neural networks as the textbooks describe them."
    )
    parser.add_argument("--version", action="version", version=f"rnnkit {rnnkit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a task (default: charlm) into a run directory")
    train.add_argument("task", nargs="?", default="charlm", choices=sorted(TASKS))
    train.add_argument("--data", help="a data file instead of the built-in data")
    train.add_argument("--out", help="the run directory (default: runs/<task>-<UTC timestamp>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue this run to its total --steps")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to train (auto: cuda when available; default: auto)",
    )
    task_cls, config_cls = TASKS.get(task, TASKS["charlm"])
    add_config_flags(train, TrainConfig, f"training (defaults of task {task})", task_cls.train_defaults)
    add_config_flags(train, config_cls, f"task {task} (see: rnnkit train TASK --help)")

    evaluate = sub.add_parser("evaluate", help="the test metrics of a run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", help="evaluate on this file as test data")
    evaluate.add_argument("--json", action="store_true", help="one JSON object on standard output")
    evaluate.add_argument("--lengths", help="memory: comma-separated sequence lengths to evaluate at")

    sample = sub.add_parser("sample", help="generate from a run's model")
    sample.add_argument("run_dir")
    sample.add_argument("--prime", default="")
    sample.add_argument("--length", type=int, default=300)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int)
    sample.add_argument("--top-p", type=float)
    sample.add_argument("--seed", type=int, default=0)

    plot = sub.add_parser("plot", help="the loss curves of a run and the figures of its task (PNG)")
    plot.add_argument("run_dir")

    gradients = sub.add_parser(
        "gradients",
        help="gradient flow through time: ||dL/dh_t|| for every t and the spectrum of W_hh (PNG, JSON)",
    )
    gradients.add_argument("run_dir", nargs="?", help="also show this run's trained recurrence")
    gradients.add_argument(
        "--cell", default="rnn,lstm,gru", help="fresh cells to compare (default: rnn,lstm,gru)"
    )
    gradients.add_argument("--length", type=int, default=100, help="time steps T (default: 100)")
    gradients.add_argument(
        "--hidden-size", dest="grad_hidden", type=int, default=64, help="of the fresh cells"
    )
    gradients.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold shown")
    gradients.add_argument("--seed", type=int, default=0)
    gradients.add_argument(
        "--out", help="where to write (default: RUN_DIR, else runs/gradients-<UTC timestamp>)"
    )

    predict = sub.add_parser("predict", help="a run's model on each INPUT")
    predict.add_argument("run_dir")
    predict.add_argument("inputs", nargs="+", metavar="INPUT")
    predict.add_argument("--locale", help="dates: the locale the inputs are written in")
    return parser


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global generator user code draws from)
    torch.manual_seed(seed)


def _run_config(run_dir) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RnnkitFileError(f"{run_dir} is not a run directory (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RnnkitValueError(f"{path} is not a readable run configuration: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task_config"), dict):
        raise RnnkitValueError(f"{path} is not a run configuration (no task_config object)")
    return config


def _keep_data(path: str | None, out: Path) -> str | None:
    """A copy of the --data file in the run directory, and its path there (relative), which
    config.json records: a run must be enough on its own for evaluate, sample, predict, plot and
    resuming (API.md), wherever it is moved and whatever becomes of the original. Written by
    rank 0 only, atomically."""
    if path is None:
        return None
    kept = Path("data") / Path(path).name
    if os.environ.get("RANK", "0") == "0":
        dst = out / kept
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".partial")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dst)
    return str(kept)


def _task_of(config: dict, run_dir=None):
    if config.get("task") not in TASKS:
        raise RnnkitValueError(f"config.json names task {config.get('task')!r}, not one of {sorted(TASKS)}")
    task_cls, config_cls = TASKS[config["task"]]
    data = config.get("data")
    if data is not None and run_dir is not None and (Path(run_dir) / data).is_file():
        data = str(Path(run_dir) / data)  # the run's own copy (`_keep_data`)
    try:
        task_config = config_cls(**config["task_config"])
    except TypeError as e:
        msg = f"config.json's task_config does not fit task {config['task']!r}: {e}"
        raise RnnkitValueError(msg) from None
    task = task_cls(task_config, data=data, saved=config)
    task.run_dir = None if run_dir is None else Path(run_dir)  # where a task may cache results
    return task


def cmd_train(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        saved = _run_config(args.resume)
        task, out = _task_of(saved, args.resume), Path(args.resume)
        model = build(saved["model"])
        train_config = config_from(TrainConfig, args, saved["train"])
        meta = {k: v for k, v in saved.items() if k != "train"}
    else:
        _seed(args.seed)
        task_cls, config_cls = TASKS[args.task]
        task = task_cls(config_from(config_cls, args), data=args.data)
        model = task.build_model()
        train_config = config_from(TrainConfig, args, task.train_defaults)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = Path(args.out or f"runs/{args.task}-{stamp}")
        if (out / "config.json").exists():
            raise RnnkitValueError(f"--out {out} is already a run directory; continue it with --resume {out}")
        data = _keep_data(args.data, out)
        meta = {"model": describe(model), **task.describe(), "data": data, "seed": args.seed}
        task.run_dir = out

    def progress(record):
        if record["split"] != "train" or record["step"] % 50 == 0:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
            print(json.dumps(shown), flush=True)

    device = (
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if device == "cuda" and not torch.cuda.is_available():
        raise RnnkitValueError("--device cuda: no CUDA device is available")
    model = model.to(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():  # launched by torchrun
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            model = model.to(f"cuda:{torch.cuda.current_device()}")
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    trainer = Trainer(
        model,
        train_config,
        batches=task.batches,
        step_fn=task.step_fn,
        evaluate=task.evaluate,
        metric=task.metric,
        run_dir=out,
        meta=meta,
        progress=progress,
    )
    if args.resume:
        trainer.resume()
    trainer.fit()
    if trainer.rank == 0:  # under torchrun, rank 0 alone reports
        test = task.test_metrics(rnnkit.load(out))
        trainer.log({"step": trainer.step, "split": "test", **test})
        print(f"run directory: {out}")
    if world > 1:
        # Tear down together: a rank that destroys its gloo pairs while another is still busy
        # (rank 0 writing the test metrics) can abort the other at exit.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


class _Progress:
    """A tqdm bar (loss, rate, ETA) on a terminal; plain periodic lines when not a terminal."""

    def __init__(self, start: int, total: int):
        self.bar = (
            tqdm(total=total, initial=start, unit="step", dynamic_ncols=True) if sys.stderr.isatty() else None
        )

    def __call__(self, record: dict) -> None:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
        if self.bar is not None:
            if record["split"] == "train":
                self.bar.update(record["step"] - self.bar.n)
                self.bar.set_postfix(loss=shown.get("loss"))
            else:
                self.bar.write(json.dumps(shown))
        elif record["split"] != "train" or record["step"] % 50 == 0:
            print(json.dumps(shown), flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _metrics(run: Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl, each with a step and a split, or a one-line error."""
    path = run / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise RnnkitFileError(f"{run} has no metrics.jsonl") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RnnkitValueError(f"cannot read {path}: {e}") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RnnkitValueError(f"{path} line {n} is not JSON: {e}") from None
        if not isinstance(record, dict) or "step" not in record or "split" not in record:
            raise RnnkitValueError(f"{path} line {n} is not a metrics record (step and split)")
        records.append(record)
    return records


def cmd_plot(args) -> int:
    """RUN_DIR/loss.png: the training loss and the validation metric over steps."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    run = Path(args.run_dir)
    _run_config(run)
    records = _metrics(run)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    train = [r for r in records if r["split"] == "train" and "loss" in r]
    ax.plot(
        [r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.7, label="train loss (nats)"
    )
    for key in sorted({k for r in records if r["split"] == "val" for k in r} - {"step", "split"}):
        val = [r for r in records if r["split"] == "val" and key in r]
        ax.plot([r["step"] for r in val], [r[key] for r in val], "o-", label=f"validation {key}")
    ax.set_xlabel("step")
    ax.set_title(str(run))
    ax.grid(alpha=0.3)
    ax.legend()
    out = run / "loss.png"
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(out)
    for path in _task_of(_run_config(run), run).plot(rnnkit.load(run), run):
        print(path)
    return 0


def cmd_evaluate(args) -> int:
    task = _task_of(_run_config(args.run_dir), args.run_dir)
    options = {}
    if args.lengths is not None:
        options["lengths"] = _lengths(args.lengths)
    _check_options("evaluate", task, options, task.evaluate_options)
    metrics = task.test_metrics(rnnkit.load(args.run_dir), data=args.data, **options)
    undefined = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if undefined:  # e.g. a test text too short to predict one character: an input error
        source = f"--data {args.data}" if args.data else "the run's test data"
        raise RnnkitValueError(f"{source} gives no finite {', '.join(undefined)} (too little test data?)")
    if args.json:
        print(json.dumps(metrics, allow_nan=False))
    else:
        for k, v in metrics.items():
            if isinstance(v, (dict, list)):
                v = json.dumps(v)
            print(f"{k:>18}  {v:.4f}" if isinstance(v, float) else f"{k:>18}  {v}")
    return 0


def _check_options(command: str, task, given: dict, known: tuple) -> None:
    for name in given:
        if name not in known:
            raise RnnkitValueError(f"{command} --{name} does not apply to task {task.name}")


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(v) for v in text.split(",")]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise RnnkitValueError(f"--lengths must be positive integers separated by commas, got {text!r}")
    return lengths


def cmd_sample(args) -> int:
    task = _task_of(_run_config(args.run_dir), args.run_dir)
    if not hasattr(task, "sample"):
        raise RnnkitUnsupportedError(f"task {task.name} has no sample; try rnnkit predict {args.run_dir}")
    print(
        task.sample(
            rnnkit.load(args.run_dir),
            prime=args.prime,
            length=args.length,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    )
    return 0


def cmd_predict(args) -> int:
    task = _task_of(_run_config(args.run_dir), args.run_dir)
    options = {} if args.locale is None else {"locale": args.locale}
    _check_options("predict", task, options, task.predict_options)
    for line in task.predict(rnnkit.load(args.run_dir), args.inputs, **options):
        print(line)
    return 0


def cmd_gradients(args) -> int:
    """gradients.json and gradients.png: fresh cells side by side, and a run's trained one."""
    from rnnkit.diagnostics import first_layer, gradient_flow, write_report

    if args.length < 1:
        raise RnnkitValueError(f"--length must be a positive int, got {args.length}")
    layers = {}
    if args.run_dir:
        _run_config(args.run_dir)
        kind, layer = first_layer(rnnkit.load(args.run_dir))
        layers[f"trained {kind}"] = layer
    cells = [c.strip() for c in args.cell.split(",") if c.strip()]
    result = gradient_flow(
        cells, length=args.length, hidden_size=args.grad_hidden, clip=args.clip, seed=args.seed, layers=layers
    )
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or args.run_dir or f"runs/gradients-{stamp}")
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


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sample": cmd_sample,
    "predict": cmd_predict,
    "plot": cmd_plot,
    "gradients": cmd_gradients,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    task = train_task(argv) if argv and argv[0] == "train" else "charlm"
    args = build_parser(task).parse_args(argv)  # usage errors: argparse exits with status 2
    try:
        return COMMANDS[args.command](args)
    except RnnkitError as e:
        print(f"rnnkit {args.command}: error: {e}", file=sys.stderr)
        return 2
