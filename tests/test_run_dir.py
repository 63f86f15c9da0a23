"""Run directories that defend themselves, and a user's files that are never lost: edited or
damaged run files give one line naming them; a run never writes over or deletes what it did not
write; a run killed before its first checkpoint resumes; metrics.jsonl is strict JSON; a run that
went wrong says so."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from rnnkit.cli import main
from rnnkit.training import TrainConfig, Trainer
from rnnkit.training.checkpoint import save_checkpoint, write_bytes

SMALL = [
    "--hidden-size",
    "24",
    "--embedding-dim",
    "8",
    "--seq-len",
    "20",
    "--batch-size",
    "4",
    "--eval-every",
    "5",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
    """A finished charlm run, copied afresh for each test that edits it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--data", str(text_file), "--steps", "10", "--out", str(run), *SMALL]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def one_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def snapshot(folder) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def metric_lines(run, splits=("train", "val")):
    return [
        ln for ln in (run / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["split"] in splits
    ]


# --- a user's files -----------------------------------------------------------------------------


def users_folder(tmp_path):
    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "latest-precious.safetensors").write_bytes(b"my own weights")
    (folder / "latest-0123456789abcdef.safetensors").write_bytes(b"named like a checkpoint, but mine")
    (folder / "notes" / "text.txt").write_text("my notes")
    (folder / "loss.csv").write_text("1,2,3\n")
    return folder


def test_out_at_a_users_directory_is_refused_and_nothing_changes(tmp_path, text_file, capsys):
    folder = users_folder(tmp_path)
    before = snapshot(folder)
    assert main(["train", "--data", str(text_file), "--steps", "5", "--out", str(folder), *SMALL]) == 2
    one_line(capsys, f"--out {folder}", "--force")
    assert snapshot(folder) == before


def test_force_writes_beside_a_users_files_and_keeps_every_one(tmp_path, text_file, capsys):
    """The run writes its checkpoints several times (so the cleanup of old ones runs) and keeps
    its data: the user's files, even those named like a checkpoint, are byte-identical after."""
    folder = users_folder(tmp_path)
    before = snapshot(folder)
    argv = ["train", "--data", str(text_file), "--steps", "15", "--out", str(folder), *SMALL, "--force"]
    assert main(argv) == 0
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before
    assert (folder / "config.json").is_file() and len(list(folder.glob("latest-*.safetensors"))) == 3


def test_force_refuses_where_a_run_would_write_over_a_users_file(tmp_path, text_file, capsys):
    folder = users_folder(tmp_path)
    (folder / "data").mkdir()
    (folder / "data" / text_file.name).write_text("the user's own file of that name")
    before = snapshot(folder)
    argv = ["train", "--data", str(text_file), "--steps", "5", "--out", str(folder), *SMALL, "--force"]
    assert main(argv) == 2
    one_line(capsys, "data")
    assert snapshot(folder) == before


def test_out_naming_a_file_is_refused(tmp_path, text_file, capsys):
    path = tmp_path / "a-file"
    path.write_text("mine")
    for out in (path, path / "below"):
        assert main(["train", "--data", str(text_file), "--steps", "2", "--out", str(out), *SMALL]) == 2
        one_line(capsys, "--out")
    assert path.read_text() == "mine"


def test_checkpoint_cleanup_deletes_only_what_it_wrote(tmp_path):
    (tmp_path / "latest-precious.safetensors").write_bytes(b"mine")
    (tmp_path / "latest-0123456789abcdef.safetensors").write_bytes(b"mine too")
    for step in range(3):
        save_checkpoint(tmp_path, "latest", {"w": torch.full((3,), float(step))})
    names = sorted(p.name for p in tmp_path.glob("latest-*.safetensors"))
    assert len(names) == 3 and "latest-precious.safetensors" in names
    assert (tmp_path / "latest-0123456789abcdef.safetensors").read_bytes() == b"mine too"
    # an orphan of a killed write (named by its own hash) is ours, and goes
    orphan_blob = b"x" * 10
    orphan = tmp_path / f"latest-{hashlib.sha256(orphan_blob).hexdigest()[:16]}.safetensors"
    orphan.write_bytes(orphan_blob)
    save_checkpoint(tmp_path, "latest", {"w": torch.ones(2)})
    assert not orphan.exists() and (tmp_path / "latest-precious.safetensors").exists()


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    stale = tmp_path / ".metrics.jsonl.abc123.tmp"
    stale.write_text("half a write")
    other = tmp_path / ".notes.txt.abc123.tmp"
    other.write_text("not ours to touch")
    write_bytes(tmp_path / "metrics.jsonl", b"{}\n")
    assert not stale.exists() and other.exists()
    assert (tmp_path / "metrics.jsonl").read_bytes() == b"{}\n"


# --- edited or damaged run files ----------------------------------------------------------------


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def tree_of(data):
    """latest.json's tree as a dict of its top-level keys (the checkpoint's own encoding)."""
    return {k: i for i, (k, _) in enumerate(data["tree"]["__dict__"])}


def set_in_tree(key, value):
    def change(data):
        data["tree"]["__dict__"][tree_of(data)[key]][1] = value

    return change


def drop_from_tree(key):
    def change(data):
        del data["tree"]["__dict__"][tree_of(data)[key]]

    return change


def tensor_name_as_list(data):
    model = data["tree"]["__dict__"][tree_of(data)["model"]][1]["__dict__"]
    model[0][1] = {"__tensor__": ["a", "list"]}


LATEST_EDITS = {
    "a string step": (set_in_tree("step", "10"), "step must be an int"),
    "a negative step": (set_in_tree("step", -50), "step must be in [0, 10]"),
    "a step past the run's": (set_in_tree("step", 10**9), "step must be in [0, 10]"),
    "no rng": (drop_from_tree("rng"), "lacks rng"),
    "a list for a tensor name": (tensor_name_as_list, "names a tensor"),
    "rng of the wrong form": (set_in_tree("rng", {"__dict__": [["python", 3]]}), "RNG state"),
    "a tree of unknown form": (set_in_tree("rng", {"python": 3}), "unknown form"),
    "not a checkpoint": (lambda d: d.clear(), "not an rnnkit checkpoint"),
    "counts of the wrong type": (set_in_tree("counts", {"__dict__": [["clipped", "many"]]}), "counts"),
}


@pytest.mark.parametrize("edit", list(LATEST_EDITS))
def test_tampered_latest_json_is_one_line_on_resume(run, capsys, edit):
    change, fragment = LATEST_EDITS[edit]
    edit_json(run / "latest.json", change)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "20"]) == 2
    one_line(capsys, "latest.json", fragment)


def drop_vocab_char(data):
    data["vocab"] = data["vocab"][:-1]


CONFIG_EDITS = {
    "a vocabulary that no longer fits the weights": (drop_vocab_char, "vocab_size"),
    "a data path to a device": (lambda d: d.update(data="/dev/zero"), "not a regular file inside the run"),
    "a data path outside the run": (lambda d: d.update(data="../outside.txt"), "not a regular file inside"),
    "a data path that is a folder": (lambda d: d.update(data="."), "not a regular file inside the run"),
    "a data path through a link": (lambda d: d.update(data="data/link.txt"), "not a regular file inside"),
    "a size of the wrong type": (lambda d: d["task_config"].update(hidden_size="24"), "hidden_size"),
    "a size out of range": (lambda d: d["task_config"].update(hidden_size=0), "hidden_size"),
    "a model that is not the task's": (lambda d: d["model"]["config"].update(hidden_size=25), "hidden_size"),
    "a vocabulary of numbers": (
        lambda d: d.update(vocab=[d["vocab"][0], *range(len(d["vocab"]) - 1)]),
        "vocab",
    ),
    "a vocabulary reordered": (lambda d: d.update(vocab=[d["vocab"][0], *d["vocab"][:0:-1]]), "vocabulary"),
    "a vocabulary with a repeat": (lambda d: d.update(vocab=[*d["vocab"][:-1], d["vocab"][1]]), "vocabulary"),
    "an unknown task": (lambda d: d.update(task="nope"), "task"),
    "a training option out of range": (lambda d: d["train"].update(lr=-1), "lr"),
    "a seed of the wrong type": (lambda d: d.update(seed="zero"), "seed"),
}


@pytest.mark.parametrize("edit", list(CONFIG_EDITS))
def test_tampered_config_json_is_one_line_everywhere(run, capsys, edit, tmp_path):
    (tmp_path / "outside.txt").write_text("not the run's " * 100)
    (run / "data" / "link.txt").symlink_to(tmp_path / "outside.txt")
    change, fragment = CONFIG_EDITS[edit]
    edit_json(run / "config.json", change)
    capsys.readouterr()
    for argv in (
        ["evaluate", str(run)],
        ["sample", str(run), "--length", "5"],
        ["predict", str(run), "abc"],
        ["plot", str(run)],
        ["train", "--resume", str(run), "--steps", "20"],
    ):
        assert main(argv) == 2, argv
        one_line(capsys, "config.json", fragment)


def test_weights_that_do_not_fit_the_config_are_one_line(run, capsys):
    edit_json(
        run / "config.json",
        lambda d: (d["model"]["config"].update(hidden_size=25), d["task_config"].update(hidden_size=25)),
    )
    assert main(["evaluate", str(run)]) == 2
    one_line(capsys, "model.safetensors", "does not fit", "shape")


def test_evaluate_names_non_finite_weights(run, capsys):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(run / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], math.nan)
    save_file(weights, str(run / "model.safetensors"))
    for argv in (["evaluate", str(run)], ["sample", str(run)], ["predict", str(run), "x"]):
        assert main(argv) == 2
        one_line(capsys, "model.safetensors", "non-finite weights", name)


def test_resume_cannot_change_the_model(run, capsys):
    assert main(["train", "--resume", str(run), "--hidden-size", "64"]) == 2
    one_line(capsys, "--hidden-size", "cannot change")
    assert main(["train", "classify", "--resume", str(run)]) == 2
    one_line(capsys, "charlm run")


# --- a run killed before its first checkpoint ---------------------------------------------------


def test_killed_before_its_first_checkpoint_then_resumed_equals_an_uninterrupted_run(tmp_path, text_file):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--data", str(text_file), "--steps", "300", *SMALL, "--eval-every", "300"]
    assert main(["train", *args, "--out", str(a)]) == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnkit", "train", *args, "--out", str(b)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # some steps logged, then kill -9
        if (b / "metrics.jsonl").exists() and len(metric_lines(b)) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert (b / "config.json").exists() and not (b / "latest.json").exists()  # before a checkpoint
    assert main(["train", *args, "--out", str(b)]) == 2  # the same --out: it is a run, resume it
    assert main(["train", "--resume", str(b)]) == 0
    assert metric_lines(a) == metric_lines(b)
    assert metric_lines(a, ("test",)) == metric_lines(b, ("test",))


# --- strict metrics and runs that went wrong ----------------------------------------------------


def strict_json(line: str):
    def refuse(token):
        raise ValueError(f"{token} in metrics.jsonl")

    return json.loads(line, parse_constant=refuse)


def test_a_diverging_run_warns_and_its_metrics_are_strict_json(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(text_file), "--steps", "20", "--out", str(run), *SMALL, "--lr", "1e6"]
    assert main(argv) == 0  # the run did what was asked
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: validation bpc" in err and "uniform guess" in err
    records = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["split"] == "test" and records[-1]["bpc"] > 8


def test_a_healthy_run_does_not_warn(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(text_file), "--steps", "30", "--out", str(run), *SMALL, "--lr", "3e-3"]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err


def test_non_finite_metrics_are_written_as_null(tmp_path):
    model = torch.nn.Linear(2, 1)

    def evaluate(m):
        return {"loss": math.nan, "other": math.inf}

    def step_fn(m, batch, state):
        return m(torch.ones(1, 2)).sum() * 0, None

    trainer = Trainer(
        model,
        TrainConfig(steps=2, eval_every=1),
        batches=lambda s: None,
        step_fn=step_fn,
        evaluate=evaluate,
        run_dir=tmp_path,
    )
    trainer.fit()
    records = [strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert val and all(r["loss"] is None and r["other"] is None for r in val)
    assert strict_json((tmp_path / "latest.json").read_text())  # the checkpoint index too


def test_a_non_finite_final_metric_warns():
    from rnnkit.cli import runaway

    class Task:
        metric = "loss"

        def trivial(self):
            return 1.0, "a guess"

    val = [{"step": s, "split": "val", "loss": v} for s, v in ((1, 0.5), (2, None))]
    assert "not finite" in runaway(Task(), val)
    worse = [{"step": s, "split": "val", "loss": 2.0} for s in (1, 2, 3)]
    assert "worse than a guess" in runaway(Task(), worse)
    assert runaway(Task(), worse[:2]) is None  # not after fewer than 3 evaluations
    assert runaway(Task(), [{"step": 1, "split": "val", "loss": 0.5}] * 3) is None


def test_resume_rewrites_metrics_atomically(run, monkeypatch):
    import rnnkit.training.trainer as trainer_module

    written = []
    real = trainer_module.write_bytes
    monkeypatch.setattr(trainer_module, "write_bytes", lambda p, d: (written.append(p.name), real(p, d)))
    assert main(["train", "--resume", str(run), "--steps", "12"]) == 0
    assert "metrics.jsonl" in written


# --- other commands -----------------------------------------------------------------------------


def test_a_negative_number_is_an_input_not_a_flag(tmp_path, capsys, quick_arima):
    series = tmp_path / "series.csv"
    series.write_text("t,y\n" + "".join(f"{i},{math.sin(i / 3):.4f}\n" for i in range(120)))
    run = tmp_path / "run"
    argv = ["train", "forecast", "--data", str(series), "--target", "y", "--window", "3", "--steps", "3"]
    assert main([*argv, "--eval-every", "3", "--out", str(run), "--hidden-size", "4"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), "-1,-0.5,0.25"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and "," in out


def test_default_out_names_are_unique_within_one_second(tmp_path, monkeypatch):
    import datetime

    from rnnkit.run_dir import default_out

    monkeypatch.chdir(tmp_path)
    now = datetime.datetime(2026, 12, 3, 16, 59, 1, tzinfo=datetime.timezone.utc)
    names = [default_out("charlm", now) for _ in range(3)]
    assert [str(p) for p in names] == [
        "runs/charlm-20261203-165901",
        "runs/charlm-20261203-165901-2",
        "runs/charlm-20261203-165901-3",
    ]
    assert all(p.is_dir() and not any(p.iterdir()) for p in names)  # made, empty, each once
