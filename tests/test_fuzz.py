"""Fuzz of every flag of every command and of every input-file reader, from the declarations: a new
option is fuzzed without a new test. Each bad input must end with exit status 2, one line on
standard error that names the flag or the file, no traceback, no hang, and nothing written.

All cases run in this process through `rnnkit.cli.main` (starting Python and torch per case would
take hours)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit import RnnkitError
from rnnkit._config import Options, Valid, valid_of
from rnnkit.cli import build_parser, main
from rnnkit.cli_options import COMMAND_OPTIONS, TrainOptions
from rnnkit.tasks.registry import TASKS
from rnnkit.training import TrainConfig

# the positional arguments a command needs before its flags are looked at
POSITIONALS = {
    "evaluate": ["no-run"],
    "sample": ["no-run"],
    "predict": ["no-run", "x"],
    "gradients": [],
    "export": ["no-run"],
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def bad_values(valid: Valid) -> list[str]:
    """Command-line values outside a declaration: past each bound, zero or negative where they are
    not allowed, NaN and infinities, and text of the wrong type."""
    special = {v for v, _ in valid.special}
    if valid.kind is bool:
        return []  # --x / --no-x take no value; a value given to them is tested below
    if valid.kind is str:
        return ["no-such-choice", ""] if valid.choices else []
    if valid.kind is list:
        return ["no-such-name", ",", "rnn,no-such-name"]
    values = ["abc", "", "nan", "inf", "-inf", "1e999", "0x10"]
    if valid.kind is int:
        values += ["1.5", "2.0"]
    for bound, is_open, step in ((valid.low, valid.low_open, -1), (valid.high, valid.high_open, 1)):
        if bound is None:
            continue
        values.append(
            _num(bound)
            if is_open
            else _num(bound + step * (1 if valid.kind is not float else 1e-6 * max(1, abs(bound))))
        )
        values.append(_num(bound + step * 10**6))
    if valid.low is not None and valid.low >= 0:
        values += ["-1", "0"] if (valid.low > 0 or valid.low_open) else ["-1"]
    if valid.kind is tuple:
        values = ["", "a,b", "1,,2", "1.5"] + [v for v in values if v not in ("", "abc")]
    return [v for v in values if not _is_special(v, special)]


def _is_special(text: str, special: set) -> bool:
    with contextlib.suppress(ValueError):
        return float(text) in {s for s in special if s is not None}
    return False


def command_options() -> list[tuple[list[str], type, str]]:
    """(the command line before the flag, the config class, a field) for every flag of every
    command: train once per task with its trainer and task flags."""
    cases = []
    for task, (_, config_cls) in TASKS.items():
        for cls in (TrainOptions, TrainConfig, config_cls):
            cases += [(["train", task], cls, f.name) for f in dataclasses.fields(cls)]
    for command, cls in COMMAND_OPTIONS.items():
        if command != "train":
            cases += [([command, *POSITIONALS[command]], cls, f.name) for f in dataclasses.fields(cls)]
    return cases


@contextlib.contextmanager
def deadline(seconds: int):
    """No hang: a case that runs longer fails."""

    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(argv: list[str], capsys, named: str) -> None:
    """`argv` ends with exit 2, one line naming `named`, and writes nothing."""
    before = sorted(os.listdir("."))
    with deadline(30):
        code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, code, err)
    assert err.count("\n") == 1 and err.endswith("\n"), (argv, err)
    assert "Traceback" not in err and named in err, (argv, err)
    assert sorted(os.listdir(".")) == before, (argv, "wrote files")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "prefix, cls, name",
    command_options(),
    ids=[f"{' '.join(p[:2])}-{n}" for p, _, n in command_options()],
)
def test_every_flag_refuses_values_outside_its_declaration(in_tmp, capsys, prefix, cls, name):
    valid = valid_of({f.name: f for f in dataclasses.fields(cls)}[name])
    values = bad_values(valid)
    for value in values:
        refused([*prefix, f"{flag(name)}={value}"], capsys, flag(name))
    if valid.kind is bool:  # a value given to an on/off flag
        refused([*prefix, f"{flag(name)}=yes"], capsys, flag(name))
    else:  # a flag without its value
        refused([*prefix, flag(name)], capsys, flag(name))


def test_every_flag_is_declared():
    """Every flag the parser offers comes from a declaration (so the fuzz above covers it)."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in subparsers.choices.items():
        declared = {flag(f.name) for f in dataclasses.fields(COMMAND_OPTIONS[command])}
        if command == "train":
            for _, config_cls in TASKS.values():
                declared |= {
                    flag(f.name) for cls in (TrainConfig, config_cls) for f in dataclasses.fields(cls)
                }
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                assert option.removeprefix("--no-") in {d.removeprefix("--") for d in declared} or (
                    option in declared
                ), f"{command} {option} has no declaration"


def all_configs() -> list[type]:
    return [TrainConfig, *COMMAND_OPTIONS.values(), *(c for _, c in TASKS.values())]


@pytest.mark.parametrize("cls", all_configs(), ids=lambda c: c.__name__)
def test_every_config_checks_its_fields_in_python(cls):
    """The library's side of the same declarations: a config constructed in Python with a value
    outside a field's declaration, or of the wrong type, is an rnnkit error naming the field."""
    assert issubclass(cls, Options)
    cls()  # the defaults are valid
    for f in dataclasses.fields(cls):
        valid = valid_of(f)
        assert valid is not None, f"{cls.__name__}.{f.name} declares no valid values"
        wrong = [object(), {"a": 1}] + ([] if valid.kind in (tuple, list) else [[1]])
        if valid.kind is not str:
            wrong.append("3")
        if valid.kind in (int, tuple):
            wrong += [1.5, True]
        if valid.kind is float:
            wrong += [math.nan, math.inf, True]
        if valid.kind is bool:
            wrong += [1, 0, "true"]
        for value in wrong:
            if any(value is v for v, _ in valid.special):
                continue
            with pytest.raises(RnnkitError) as info:
                cls(**{f.name: value})
            assert f.name in str(info.value) and "\n" not in str(info.value)
            assert isinstance(info.value, (ValueError, TypeError))


def every_declaration() -> list[Valid]:
    return [valid_of(f) for cls in all_configs() for f in dataclasses.fields(cls)]


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(every_declaration()) - 1), text=st.text(max_size=12))
def test_parsing_any_text_is_a_value_or_one_line(index, text):
    """Whatever text a user types for an option, it parses to a value the declaration allows, or
    to one clear line saying what is allowed."""
    valid = every_declaration()[index]
    if valid.kind is bool:
        return
    try:
        value = valid.parse(text)
    except RnnkitError as e:
        assert isinstance(e, ValueError) and "\n" not in str(e) and "must be" in str(e)
        return
    assert valid.check("x", value) == value


# --- input files ---------------------------------------------------------------------------------

# Every reader, with what makes a good file for it: (task, flags, a valid file's text).
READERS = {
    "charlm": ([], "text.txt", "Some text to model, long enough for a window or two. " * 20),
    "classify-text": (["classify"], "labelled.tsv", "".join(f"{'ab'[i % 2]}\tword {i}\n" for i in range(40))),
    "classify-csv": (
        ["classify"],
        "labelled.csv",
        "label,a,b\n" + "".join(f"{'ab'[i % 2]},{i},{i}\n" for i in range(40)),
    ),
    "forecast": (
        ["forecast", "--target", "y"],
        "series.csv",
        "t,y\n" + "".join(f"{i},{i % 7}\n" for i in range(200)),
    ),
    "translate": (["translate"], "pairs.tsv", "".join(f"{i}\t{2 * i}\n" for i in range(40))),
    "tag-chars": (["tag"], "tagged.tsv", "".join(f"a{i}\tx{' y' * len(str(i))}\n" for i in range(40))),
    "tag-conll": (["tag"], "tagged.conll", "".join(f"w{i}\tB-X\nis\tO\n\n" for i in range(40))),
    # a folder of scores or one score file (a good one is binary: tests/test_music.py writes them)
    "music": (["music"], "score.mid", ""),
}

# Ways a file goes wrong for any reader, and for the readers of a kind of file.
ANY_FILE = {
    "missing": None,
    "empty": b"",
    "blank": b" \n\t\n",
    "not utf-8": b"\xff\xfe\x00bad bytes\x80\n" * 10,
}
TABLE = {
    "nan cell": "label,a,b\nx,1,2\nx,nan,2\ny,1,2\ny,3,4\n",
    "inf cell": "label,a,b\nx,1,2\nx,inf,2\ny,1,2\ny,3,4\n",
    "-inf cell": "label,a,b\nx,1,2\nx,-inf,2\ny,1,2\ny,3,4\n",
    "text cell": "label,a,b\nx,1,2\nx,one,2\ny,1,2\ny,3,4\n",
    "ragged row": "label,a,b\nx,1,2\nx,1\ny,1,2\ny,3,4\n",
    "header only": "label,a,b\n",
}
PAIRS = {
    "no tab": "a\tb\nno tab here\nc\td\n",
    "empty field": "a\tb\n\tno source\nc\td\n",
    "three fields": "a\tb\tc\n",
}


def reader_cases():
    cases = []
    for reader, (_, name, _) in READERS.items():
        cases += [(reader, kind, content) for kind, content in ANY_FILE.items()]
        cases += [(reader, kind, None) for kind in ("directory", "fifo", "device")]
        if name.endswith(".csv"):
            table = (
                TABLE
                if reader == "classify-csv"
                else {k: v.replace("label,", "y,") for k, v in TABLE.items()}
            )
            cases += [(reader, kind, content.encode()) for kind, content in table.items()]
        if name.endswith(".tsv"):
            cases += [(reader, kind, content.encode()) for kind, content in PAIRS.items()]
    return cases


def bad_file(tmp_path, name: str, kind: str, content):
    path = tmp_path / "files" / name
    path.parent.mkdir(exist_ok=True)
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # read naively, this blocks forever
    elif kind == "device":
        return "/dev/zero"  # read naively, this exhausts memory
    elif content is not None:
        path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    "reader, kind, content", reader_cases(), ids=[f"{r}-{k}" for r, k, _ in reader_cases()]
)
def test_every_reader_refuses_malformed_files(in_tmp, capsys, reader, kind, content):
    flags, name, _ = READERS[reader]
    path = bad_file(in_tmp, name, kind, content)
    refused(["train", *flags, "--data", path, "--steps", "1", "--out", "run"], capsys, path)
    assert not (in_tmp / "run").exists() or not any((in_tmp / "run").iterdir())


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    _, name, text = READERS["charlm"]
    data = run.parent / name
    data.write_text(text)
    small = ["--hidden-size", "8", "--embedding-dim", "4", "--seq-len", "20", "--batch-size", "2"]
    assert (
        main(["train", "--data", str(data), "--steps", "2", "--eval-every", "2", "--out", str(run), *small])
        == 0
    )
    return run


@pytest.mark.parametrize("kind", [*ANY_FILE, "directory", "fifo", "device"])
def test_evaluate_refuses_malformed_test_files(in_tmp, capsys, charlm_run, kind):
    path = bad_file(in_tmp, "test.txt", kind, ANY_FILE.get(kind))
    capsys.readouterr()
    refused(["evaluate", str(charlm_run), "--data", path], capsys, path)


# --- values inside the declarations --------------------------------------------------------------


def low_edge(cls) -> list[str]:
    """Every bounded number of `cls` at the lowest value its declaration allows."""
    argv = []
    for f in dataclasses.fields(cls):
        valid = valid_of(f)
        if valid.kind in (int, float) and valid.low is not None and f.name != "lr":
            low = valid.low + (1 if valid.kind is int else 1e-3) * valid.low_open
            argv += [flag(f.name), str(int(low)) if valid.kind is int else repr(float(low))]
    return argv


EDGE_DATA = {"translate": "translate"}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_trains_at_the_low_edge_of_every_option(in_tmp, capsys, task, quick_arima):
    """The lowest value of every declared range is a real option: a run with all of them at once
    trains and reports (a warning that it learned nothing is expected), never crashes."""
    data = []
    if task in EDGE_DATA:
        _, name, text = READERS[EDGE_DATA[task]]
        (in_tmp / name).write_text(text)
        data = ["--data", name]
    argv = [
        "train",
        task,
        *data,
        *low_edge(TASKS[task][1]),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--out",
        "run",
    ]
    with deadline(600):  # forecast fits its ARIMA baseline: a minute or two on a loaded machine
        assert main(argv) == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err


COMBINATIONS = [
    ["memory", "--problem", "copy-memory", "--lag", "2", "--eval-size", "1", "--batch-size", "1"],
    [
        "memory",
        "--problem",
        "copy",
        "--model",
        "ntm",
        "--memory-slots",
        "3",
        "--memory-width",
        "1",
        "--eval-size",
        "1",
    ],
    ["memory", "--problem", "repeat-copy", "--min-length", "1", "--max-length", "1", "--max-repeats", "1"],
    [
        "memory",
        "--problem",
        "associative-recall",
        "--min-length",
        "1",
        "--max-length",
        "1",
        "--eval-size",
        "1",
    ],
    [
        "charlm",
        "--seq-len",
        "1",
        "--bptt-steps",
        "2",
        "--dropout",
        "0.999",
        "--num-layers",
        "3",
        "--eval-chars",
        "2",
    ],
    ["dates", "--teacher-forcing", "0", "--attention", "none", "--context", "every_step", "--val-pairs", "1"],
    [
        "dates",
        "--test-pairs",
        "1",
        "--max-output",
        "1",
        "--beam-size",
        "1",
        "--no-locale-token",
        "--val-pairs",
        "1",
    ],
    ["colors", "--feed", "every_step", "--samples", "0", "--batch-size", "1"],
    ["charlm", "--optimizer", "sgd", "--schedule", "plateau", "--gamma", "1e-9", "--plateau-patience", "1"],
    ["charlm", "--warmup-steps", "5", "--clip-norm", "none", "--clip-value", "1e-9", "--patience", "1"],
    ["charlm", "--precision", "bf16", "--momentum", "0", "--weight-decay", "1e9", "--optimizer", "adamw"],
    [
        "charlm",
        "--schedule",
        "step",
        "--step-size",
        "1",
        "--gamma",
        "1",
        "--optimizer",
        "rmsprop",
        "--threads",
        "1",
    ],
    pytest.param(
        ["classify", "--dataset", "surnames", "--pooling", "attention", "--cell", "mgu"],
        marks=pytest.mark.slow,
    ),
    pytest.param(
        ["forecast", "--dataset", "macrodata", "--window", "1", "--test-fraction", "0.49"],
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("argv", COMBINATIONS)
def test_combinations_of_valid_options_train(in_tmp, capsys, argv):
    small = ["--hidden-size", "4"] if "--hidden-size" not in argv else []
    with deadline(300):
        code = main(
            ["train", *argv, *small, "--steps", "3", "--eval-every", "1", "--out", "run", "--device", "cpu"]
        )
    assert code == 0, capsys.readouterr().err


# --- the examples the outside check found -------------------------------------------------------

EXAMPLES = [
    (["train", "--seq-len", "0"], "--seq-len"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "classify", "--batch-size", "0"], "--batch-size"),
    (["train", "forecast", "--batch-size", "0"], "--batch-size"),
    (["train", "--batch-size", "-2"], "--batch-size"),
    (["train", "classify", "--features", "0"], "--features"),
    (["train", "memory", "--eval-size", "0"], "--eval-size"),
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--threads", "-1"], "--threads"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--eval-chars", "0"], "--eval-chars"),
    (["train", "memory", "--batch-size", "0"], "--batch-size"),
    (["train", "dates", "--max-output", "0"], "--max-output"),
    (["train", "dates", "--beam-size", "0"], "--beam-size"),
    (["train", "--bptt-steps", "-1"], "--bptt-steps"),
    (["train", "--warmup-steps", "-5"], "--warmup-steps"),
    (["sample", "no-run", "--length", str(10**12)], "--length"),
    (["train", "nosuchtask"], "nosuchtask"),
    (["frobnicate"], "frobnicate"),
]


@pytest.mark.parametrize("argv, named", EXAMPLES, ids=[" ".join(a) for a, _ in EXAMPLES])
def test_the_examples_found_from_outside(in_tmp, capsys, argv, named):
    refused(argv, capsys, named)


def test_out_naming_an_existing_file(in_tmp, capsys):
    (in_tmp / "a-file").write_text("mine")
    refused(["train", "--out", "a-file", "--steps", "1"], capsys, "--out a-file")
    assert (in_tmp / "a-file").read_text() == "mine"
