"""The `rnnkit` command, mostly in-process through cli.main (importing torch in a subprocess
costs seconds), once through a real subprocess."""

import json
import subprocess
import sys

import pytest

from rnnkit.cli import main

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


def lines(run, splits=("train", "val")):
    return [
        ln for ln in (run / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["split"] in splits
    ]


def test_train_evaluate_sample_predict(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "charlm", "--data", str(text_file), "--steps", "10", "--out", str(run), *SMALL]) == 0
    )
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "latest.json"):
        assert (run / name).is_file()
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val", "test"} and all("step" in r for r in records)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)  # one JSON object and nothing else
    assert {"bpc", "gzip_bpc", "xz_bpc", "xz_cond_bpc"} <= set(metrics)
    assert 0 < metrics["bpc"] < 8 and 0 < metrics["xz_cond_bpc"] < metrics["xz_bpc"]
    assert main(["sample", str(run), "--prime", "The ", "--length", "30", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("The ") and len(first.rstrip("\n")) >= 34 - 1
    saved = run.parent / "sample.txt"
    main(["sample", str(run), "--prime", "The ", "--length", "30", "--seed", "3", "--out", str(saved)])
    assert capsys.readouterr().out == first  # seeded
    assert saved.read_text() == first.rstrip("\n")  # --out keeps the text too
    assert main(["sample", str(run), "--out", str(saved)]) == 2  # and never overwrites a file
    assert main(["predict", str(run), "import ", "\u2603 unseen"]) == 0  # unseen characters map to unknown
    out = capsys.readouterr().out
    assert "import " in out and "\u2603 unseen" in out


def test_refuses_to_train_over_a_run(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--steps", "2", "--out", str(run), *SMALL]) == 0
    assert main(["train", "--data", str(text_file), "--steps", "2", "--out", str(run), *SMALL]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_the_run(tmp_path, text_file):
    # a constant learning rate: charlm's default cosine decay is laid out over --steps, which
    # a resume to a larger --steps changes
    flags = [*SMALL, "--schedule", "constant"]
    a, b = tmp_path / "a", tmp_path / "b"
    main(["train", "--data", str(text_file), "--steps", "20", "--out", str(a), *flags])
    main(["train", "--data", str(text_file), "--steps", "10", "--out", str(b), *flags])
    assert main(["train", "--resume", str(b), "--steps", "20"]) == 0
    assert lines(a) == lines(b)


@pytest.mark.parametrize(
    "content, fragment",
    [(None, "no such file"), (b"", "is empty"), (b"\xff\xfe\x00bad", "not UTF-8")],
)
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    assert main(["train", "--data", str(path), "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_usage_errors_exit_2(tmp_path, capsys):
    for argv in (["train", "nosuchtask"], ["train", "--no-such-flag"], ["frobnicate"], []):
        assert main(argv) == 2
        err = capsys.readouterr().err  # argparse's usage error, in one line
        assert err.startswith("rnnkit") and err.count("\n") == 1 and "--help" in err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["sample"], ["predict"], ["plot"]])
def test_help(command, capsys):
    assert main([*command, "--help"]) == 0 and "usage: rnnkit" in capsys.readouterr().out


def test_subprocess_error_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rnnkit", "sample", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_plot_and_tensorboard(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    main(["train", "--data", str(text_file), "--steps", "10", "--out", str(run), *SMALL])
    assert main(["plot", str(run)]) == 0
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_resume_after_the_process_is_killed(tmp_path, text_file):
    import signal
    import time

    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--data", str(text_file), "--steps", "200", *SMALL]
    main(["train", *args, "--out", str(a)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnkit", "train", *args, "--out", str(b)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait for a checkpoint, then kill
        if (b / "metrics.jsonl").exists() and len(lines(b, ("val",))) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL  # killed mid-run, not finished
    assert len(lines(b, ("val",))) < len(lines(a, ("val",)))
    assert main(["train", "--resume", str(b)]) == 0
    assert lines(a) == lines(b)


def test_device_and_precision_flags(tmp_path, text_file, capsys):
    import torch

    run = tmp_path / "run"
    args = ["train", "--data", str(text_file), "--steps", "4", *SMALL]
    assert main([*args, "--out", str(run), "--device", "cpu", "--precision", "bf16"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "bf16"
    if not torch.cuda.is_available():
        assert main([*args, "--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_truncated_bptt_flags(tmp_path, text_file):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(text_file),
                "--steps",
                "6",
                "--out",
                str(run),
                *SMALL,
                "--seq-len",
                "8",
                "--bptt-steps",
                "24",
            ]
        )
        == 0
    )
    config = json.loads((run / "config.json").read_text())["task_config"]
    assert config["seq_len"] == 8 and config["bptt_steps"] == 24
    assert len(lines(run, ("train",))) == 6


def test_evaluate_on_a_file_and_flag_help(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    main(["train", "--data", str(text_file), "--steps", "3", "--out", str(run), *SMALL])
    other = tmp_path / "other.txt"
    other.write_text("Some other text, with a snowman \u2603 never seen in training.\n" * 3, encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(other), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_chars"] == len(other.read_text(encoding="utf-8"))
    assert main(["train", "--help"]) == 0
    assert "units per recurrent layer" in capsys.readouterr().out  # help comes from the config fields


def test_run_directory_is_enough_on_its_own(tmp_path, text_file, capsys):
    """A run trained on --data keeps a copy of it: moved elsewhere, with the original gone,
    evaluate, sample, predict, plot and resuming still work (API.md, run directories)."""
    data = tmp_path / "mine.txt"
    data.write_text(text_file.read_text(encoding="utf-8"), encoding="utf-8")
    run = tmp_path / "a" / "run"
    assert main(["train", "charlm", "--data", str(data), "--steps", "6", "--out", str(run), *SMALL]) == 0
    assert json.loads((run / "config.json").read_text())["data"] == "data/mine.txt"
    assert (run / "data" / "mine.txt").read_text(encoding="utf-8") == data.read_text(encoding="utf-8")
    data.unlink()
    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    (run).rename(moved)
    capsys.readouterr()
    assert main(["evaluate", str(moved), "--json"]) == 0
    assert "bpc" in json.loads(capsys.readouterr().out)
    assert main(["sample", str(moved), "--length", "10", "--seed", "0"]) == 0
    assert main(["predict", str(moved), "The "]) == 0
    assert main(["plot", str(moved)]) == 0
    assert main(["train", "--resume", str(moved), "--steps", "8"]) == 0


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("config.json", "{not json", "is not readable JSON"),
        ("config.json", "[]", "not a run configuration"),
        (
            "config.json",
            '{"task": "charlm", "task_config": {"no_such_option": 1}, "train": {}, "model": {}}',
            "task_config does not fit CharLMConfig",
        ),
        ("metrics.jsonl", '{"step": 1, "split": "train"}\ngarbage\n', "line 2 is not JSON"),
        ("metrics.jsonl", None, "has no metrics.jsonl"),
    ],
)
def test_bad_run_files_exit_2_with_one_line(tmp_path, text_file, capsys, name, content, fragment):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--steps", "2", "--out", str(run), *SMALL]) == 0
    if content is None:
        (run / name).unlink()
    else:
        (run / name).write_text(content)
    capsys.readouterr()
    commands = [["plot", str(run)]] + (
        [["evaluate", str(run)], ["predict", str(run), "x"]] if name == "config.json" else []
    )
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_translate_plot_with_one_test_pair(tmp_path, capsys):
    """A small --data file leaves one test pair: the attention plot still draws (one panel)."""
    data = tmp_path / "pairs.tsv"
    words = [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]
    data.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words), encoding="utf-8")
    run = tmp_path / "run"
    argv = ["train", "translate", "--data", str(data), "--steps", "4", "--eval-every", "2", "--out", str(run)]
    assert main(argv) == 0
    assert main(["plot", str(run)]) == 0
    assert (run / "attention.png").is_file()


def test_charlm_on_a_short_text_and_a_one_character_test_file(tmp_path, capsys):
    """A text shorter than --batch-size windows trains with fewer parallel streams (it crashed
    stacking windows past its end); evaluating on one character is an input error (exit 2, one
    line), not `NaN` in the --json output."""
    data = tmp_path / "short.txt"
    data.write_text("hello world, this is some text for a tiny model.\n" * 25, encoding="utf-8")
    run = tmp_path / "run"
    argv = ["train", "charlm", "--data", str(data), "--steps", "4", "--eval-every", "2", "--out", str(run)]
    assert main([*argv, "--hidden-size", "16"]) == 0
    one = tmp_path / "one.txt"
    one.write_text("x", encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--data", str(one)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no finite bpc" in captured.err and captured.err.count("\n") == 1
    tiny = tmp_path / "tiny.txt"  # over the file minimum, under one training window
    tiny.write_text("abcdefghij" * 12, encoding="utf-8")
    assert main(["train", "charlm", "--data", str(tiny), "--steps", "2", "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "fewer than one window" in err and err.count("\n") == 1


def _in_a_terminal(argv: list[str]) -> str:
    """The screen of `python -m rnnkit ARGV` run in a pseudo-terminal (stdout and stderr)."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnkit", *argv], stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def test_a_terminal_shows_a_bar_evaluations_and_a_summary(tmp_path, text_file):
    import re

    common = ["train", "--data", str(text_file), *SMALL]
    screen = _in_a_terminal([*common, "--steps", "60", "--eval-every", "30", "--out", str(tmp_path / "a")])
    bars = re.findall(r"(\d+)/60 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+step/s", screen)  # rate and ETA
    assert bars and int(bars[0]) < 50
    assert "step 30: validation bpc" in screen and "step 60: validation bpc" in screen
    assert "trained 60 steps in" in screen and "(reached --steps 60)" in screen
    assert re.search(r"selected: step (30|60), validation bpc \d", screen)
    assert re.search(r"test:\n +bpc +\d", screen) and f"run directory: {tmp_path / 'a'}" in screen
    assert "{" not in screen  # no JSON lines on a terminal
    # a learning rate too small to move any weight: validation never improves, patience 1 stops
    screen = _in_a_terminal(
        [
            *common,
            "--steps",
            "60",
            "--eval-every",
            "10",
            "--lr",
            "1e-12",
            "--patience",
            "1",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert "early stop: no better validation bpc in 1 evaluations" in screen and "trained 20 steps" in screen


def test_through_a_pipe_only_json_lines(tmp_path, text_file):
    import subprocess
    import sys

    argv = [
        "train",
        "--data",
        str(text_file),
        *SMALL,
        "--steps",
        "60",
        "--eval-every",
        "30",
        "--out",
        str(tmp_path / "r"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "rnnkit", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]  # JSON lines only
    assert records[-1] == {"run_dir": str(tmp_path / "r")}
    assert [r["split"] for r in records[:-1]] == ["val", "train", "val", "test"]  # 30, 50, 60
    assert [r["step"] for r in records[:-1]] == [30, 50, 60, 60] and not done.stderr


def test_the_test_record_names_the_selected_step_and_a_finished_run_resumes_to_nothing(
    tmp_path, text_file, capsys
):
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(text_file),
        *SMALL,
        "--steps",
        "6",
        "--eval-every",
        "2",
        "--clip-norm",
        "0",
    ]
    assert main([*argv, "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    best = min(val, key=lambda r: r["bpc"])  # the first of equals, as the trainer keeps it
    assert records[-1]["split"] == "test" and records[-1]["selected_step"] == best["step"]
    assert json.loads((run / "config.json").read_text())["train"]["clip_norm"] == 0  # 0: no clipping
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "has finished (step 6 of 6); nothing to do" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before  # nothing appended
    assert main(["train", "--resume", str(run), "--steps", "8"]) == 0  # a larger --steps trains on
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["split"] == "test" and records[-1]["step"] == 8


# a charlm run of a few steps on a tiny model, for the tests of what a run writes
TINY_CHARLM = [
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--hidden-size",
    "16",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
]


def test_config_files(tmp_path, text_file, capsys):
    """--config: JSON or TOML of the flags' names (flags given override it), --print-config its
    resolved form (which --config reads back), and a run's own config.json reproduces the run."""
    (tmp_path / "c.json").write_text(
        '{"task": "classify", "hidden-size": 24, "steps": 3, "dataset": "surnames"}'
    )
    assert main(["train", "--config", str(tmp_path / "c.json"), "--steps", "7", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "classify" and printed["hidden_size"] == 24 and printed["steps"] == 7
    assert printed["dataset"] == "surnames" and printed["lr"] > 0  # the task's defaults filled in
    (tmp_path / "printed.json").write_text(json.dumps(printed))
    assert main(["train", "--config", str(tmp_path / "printed.json"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    (tmp_path / "c.toml").write_text('task = "forecast"\nhidden_size = 0\n')
    assert main(["train", "--config", str(tmp_path / "c.toml")]) == 2
    assert "--hidden-size must be" in capsys.readouterr().err
    (tmp_path / "typo.json").write_text('{"hiden_size": 3}')
    assert main(["train", "--config", str(tmp_path / "typo.json")]) == 2
    assert "--hiden-size is not a flag of rnnkit train charlm" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    # a run's config.json: the same run again, to the last number
    a, b = tmp_path / "a", tmp_path / "b"
    flags = TINY_CHARLM
    assert main(["train", "--data", str(text_file), *flags, "--seed", "3", "--out", str(a)]) == 0
    assert main(["train", "--config", str(a / "config.json"), "--out", str(b)]) == 0
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()


def test_evaluate_prints_tables_a_person_reads():
    """Without --json: figures aligned, a per-class table, the confusion matrix with its labels,
    examples as lines, long series summarised, control characters escaped."""
    from rnnkit.metrics_table import format_metrics

    metrics = {
        "accuracy": 0.5,
        "test_examples": 4,
        "per_class": {"cat": {"precision": 1.0, "recall": 0.5, "support": 2}, "dog": {"precision": 0.25}},
        "confusion": [[1, 1], [1, 1]],
        "forecast": [float(i) for i in range(40)],
        "examples": {"red": "rouge\x03"},
        "errors": [{"output": "x", "truth": "y"}] * 15,
    }
    text = "\n".join(format_metrics(metrics))
    assert "accuracy  0.5000" in text and "test_examples  4" in text
    assert "per_class  precision     recall    support" in text and "cat           1.0000" in text
    assert "confusion (rows: true, columns: predicted)" in text and "cat    1   1" in text.replace(
        "  1 1", "   1   1"
    )
    assert "40 values: 0.0000, 1.0000, 2.0000, ..., 39.0000" in text
    assert "red -> rouge\\x03" in text and "... and 3 more" in text


def test_a_flag_of_another_task_names_its_task(capsys):
    assert main(["train", "--dataset", "surnames"]) == 2
    assert "--dataset is a flag of task classify and forecast, not of charlm" in capsys.readouterr().err
    assert main(["train", "classify", "--lag=5"]) == 2
    assert "--lag is a flag of task memory, not of classify" in capsys.readouterr().err


def test_tensorboard_holds_hparams_samples_figures_and_gradient_flow(tmp_path, text_file):
    import contextlib

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb-run"
    flags = TINY_CHARLM
    assert main(["train", "--data", str(text_file), *flags, "--log-gradient-flow", "--out", str(run)]) == 0
    assert (run / "loss.png").is_file()  # training ends by writing the figures, as `rnnkit plot` does
    tags = {"images": set(), "tensors": set(), "scalars": set(), "hparams": set()}
    for events in (run / "tb").glob("events.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0})
        acc.Reload()
        for kind in ("images", "tensors", "scalars"):
            tags[kind] |= set(acc.Tags()[kind])
        with contextlib.suppress(KeyError):
            tags["hparams"] |= set(acc.PluginTagToContent("hparams"))
        if "gradient_flow" in acc.Tags()["images"]:
            assert [e.step for e in acc.Images("gradient_flow")] == [3, 6]  # one per evaluation
    assert {"gradient_flow", "figures/loss"} <= tags["images"]
    assert "sample/text_summary" in tags["tensors"]
    assert {"train/clipped_steps", "train/nonfinite_steps", "val/bpc"} <= tags["scalars"]
    assert "_hparams_/experiment" in tags["hparams"]
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert test["split"] == "test" and test["clipped_steps"] >= 0 and test["nonfinite_steps"] == 0
    quiet = tmp_path / "no-plots"
    assert main(["train", "--data", str(text_file), *flags, "--no-plots", "--out", str(quiet)]) == 0
    assert not list(quiet.glob("*.png"))
