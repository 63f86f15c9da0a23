"""Every task end to end through the command on tiny settings (train -> evaluate --json ->
predict -> plot), user files through --data, and exit 2 with one line for malformed files."""

import json

import numpy as np
import pytest

import rnnkit
from rnnkit.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def run_task(tmp_path, capsys, task, *flags, data=None):
    run = tmp_path / f"{task}-run"
    args = ["train", task, "--out", str(run), "--steps", "6", "--eval-every", "3", *flags]
    if data is not None:
        args += ["--data", str(data)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)  # one JSON object and nothing else
    assert main(["plot", str(run)]) == 0
    figures = capsys.readouterr().out.split()
    assert len(figures) >= 2  # the loss curves and the task's own figure
    for path in figures:  # pictures, and the arrays of one (attention.npz: a zip)
        with open(path, "rb") as f:
            assert f.read(8) == PNG if path.endswith(".png") else path.endswith(".npz")
    return run, metrics


def predict(capsys, run, *inputs, extra=()):
    assert main(["predict", str(run), *inputs, *extra]) == 0
    lines = capsys.readouterr().out.splitlines()
    # rnnkit.Run.predict gives the values those lines format, each line's first field its value
    options = {k.removeprefix("--"): v for k, v in zip(extra[::2], extra[1::2])}
    values = rnnkit.Run.load(run).predict(list(inputs), **options)
    assert len(values) == len(lines) == len(inputs)
    for line, value in zip(lines, values):
        if isinstance(value, tuple):  # classify: (label, probability)
            assert line == f"{value[0]}\t{value[1]:.4f}" and 0 <= value[1] <= 1
        elif isinstance(value, list):  # forecast: the next values
            assert line == ",".join(f"{v:.4g}" for v in value) and all(isinstance(v, float) for v in value)
        else:
            assert line.split("\t")[0] == value
    return lines


def test_classify_digits(tmp_path, capsys):
    run, m = run_task(tmp_path, capsys, "classify", "--hidden-size", "16")
    assert 0 <= m["accuracy"] <= 1 and 0.8 < m["baseline_accuracy"] <= 1  # the baseline is fitted for real
    assert len(m["confusion"]) == 10 and sum(map(sum, m["confusion"])) == m["test_examples"]
    (line,) = predict(capsys, run, ",".join(["0.5"] * 64))
    label, p = line.split("\t")
    assert label in [str(d) for d in range(10)] and 0 < float(p) <= 1


def test_classify_baseline_is_fitted_once_per_run(tmp_path, capsys, monkeypatch):
    """The n-gram logistic regression is fitted by the training run and stored in
    RUN_DIR/baseline.json; evaluate and plot read it back and never refit it."""
    from rnnkit.tasks.classify import ClassifyTask

    run = tmp_path / "run"
    argv = ["train", "classify", "--hidden-size", "8", "--steps", "2", "--eval-every", "2", "--out", str(run)]
    assert main(argv) == 0
    stored = json.loads((run / "baseline.json").read_text())
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert stored["accuracy"] == test["baseline_accuracy"] > 0.8

    def refit(*args, **kwargs):
        raise AssertionError("the baseline was refitted")

    monkeypatch.setattr(ClassifyTask, "_fit_baseline", refit)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["baseline_accuracy"] == stored["accuracy"]
    assert main(["plot", str(run)]) == 0
    (run / "baseline.json").write_text('{"key": "edited", "accuracy": 2}')  # not ours: refitted
    with pytest.raises(AssertionError, match="refitted"):
        main(["evaluate", str(run)])


def test_classify_text_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [
        f"{lab}\t{''.join(rng.choice(list(chars), 6))}"
        for lab, chars in (("a", "abc"), ("x", "xyz"))
        for _ in range(20)
    ]
    path = tmp_path / "names.tsv"
    path.write_text("\n".join(rows) + "\n")
    run, m = run_task(tmp_path, capsys, "classify", "--hidden-size", "8", data=path)
    assert m["test_examples"] == 6 and m["baseline_accuracy"] == 1.0  # n-grams separate the alphabets
    lines = predict(capsys, run, "abcab", "zzyx\u2603")  # an unseen character maps to unknown
    assert [ln.split("\t")[0] for ln in lines] and all(ln.split("\t")[0] in "ax" for ln in lines)
    assert main(["predict", str(run), ""]) == 2 and "INPUT is empty" in capsys.readouterr().err
    # evaluate on another file of the same labels
    other = tmp_path / "other.tsv"
    other.write_text("a\tcab\nx\tzyx\n")
    assert main(["evaluate", str(run), "--data", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_examples"] == 2


def test_classify_csv_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = ["label,v1,v2,v3,v4"] + [
        f"{lab},{','.join(f'{v:.3f}' for v in rng.normal(mu, 0.1, 4))}"
        for lab, mu in (("lo", 0), ("hi", 1))
        for _ in range(15)
    ]
    path = tmp_path / "seq.csv"
    path.write_text("\n".join(lines) + "\n")
    run, m = run_task(tmp_path, capsys, "classify", "--hidden-size", "8", "--features", "2", data=path)
    assert m["baseline_accuracy"] == 1.0
    (line,) = predict(capsys, run, "1,1,1,1")
    assert line.split("\t")[0] in ("lo", "hi")


def test_forecast_csv_file(tmp_path, capsys):
    t = np.arange(90)
    series = 10 + 5 * np.sin(t / 4) + np.random.default_rng(0).normal(0, 0.2, 90)
    path = tmp_path / "series.csv"
    path.write_text("t,y,other\n" + "".join(f"{i},{v:.4f},{i % 7}\n" for i, v in zip(t, series)))
    run, m = run_task(
        tmp_path, capsys, "forecast", "--target", "y", "--columns", "other", "--window", "5", data=path
    )
    assert {"rmse", "rmse_multistep", "baseline_rmse"} <= set(m)
    assert m["baseline_rmse"] < 1.0  # ARIMA on a noisy sine: well under its amplitude
    assert m["test_points"] == len(m["forecast"]) == round(90 * 0.13)
    (line,) = predict(capsys, run, "10,11;12,3;13,4;12,5;11,6")
    assert len(line.split(",")) == 5 and all(np.isfinite(float(v)) for v in line.split(","))
    capsys.readouterr()
    assert main(["predict", str(run), "10,11;nan,3;13,inf"]) == 2  # not finite: an input error
    assert "finite numbers" in capsys.readouterr().err


def test_forecast_sunspots_baseline_is_arima(tmp_path, capsys):
    run, m = run_task(tmp_path, capsys, "forecast", "--hidden-size", "8")
    # the AIC search over p <= 10, d <= 1, q <= 2 on 1700-1968 (measured: ARIMA(5, 1, 2), 17.76)
    assert m["test_points"] == 40 and m["baseline_order"] == [5, 1, 2]
    assert m["baseline_rmse"] == pytest.approx(17.76, abs=0.05)
    assert (run / "baseline.json").is_file()  # the order search is cached in the run directory
    (line,) = predict(capsys, run, "10,20,40,80,100,90,60,30,15,8")
    assert len(line.split(",")) == 5


def test_colors(tmp_path, capsys):
    run, m = run_task(tmp_path, capsys, "colors", "--hidden-size", "16")
    assert m["baseline_loss"] == pytest.approx(2.97, abs=0.05) and m["test_names"] == 94
    lines = predict(capsys, run, "0.1,0.5,0.2", "1,1,1")
    # the greedy name (Run.predict's value) first, then the input and three sampled names
    assert len(lines) == 2 and lines[0].split("\t")[1] == "0.1,0.5,0.2" and lines[0].count(" | ") == 2


@pytest.mark.parametrize("problem", ["adding", "copy-memory"])
def test_memory(tmp_path, capsys, problem):
    run, m = run_task(tmp_path, capsys, "memory", "--problem", problem, "--lag", "12", "--hidden-size", "8")
    assert main(["evaluate", str(run), "--json", "--lengths", "5,20"]) == 0
    by_length = json.loads(capsys.readouterr().out)
    key = "mse" if problem == "adding" else "accuracy"
    assert key in m and set(by_length[f"{key}_by_length"]) == {"5", "20"}
    if problem == "adding":
        assert m["baseline_mse"] == pytest.approx(1 / 6, abs=0.02)
    assert main(["predict", str(run), "1"]) == 2  # memory has no predict
    assert "no predict" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["copy", "repeat-copy", "associative-recall"])
@pytest.mark.parametrize("model", ["ntm", "lstm"])
def test_memory_bit_problems(tmp_path, capsys, problem, model):
    flags = ["--problem", problem, "--model", model, "--hidden-size", "8", "--memory-slots", "16"]
    flags += ["--memory-width", "4", "--max-length", "3", "--max-repeats", "2", "--eval-size", "20"]
    run, m = run_task(tmp_path, capsys, "memory", *flags)
    assert m["bit_errors"] >= 0 and m["loss"] > 0
    assert main(["evaluate", str(run), "--json", "--lengths", "2,4"]) == 0
    by_length = json.loads(capsys.readouterr().out)["bit_errors_by_length"]
    assert set(by_length) == {"2", "4"} and all(v >= 0 for v in by_length.values())


def test_memory_ntm_needs_a_bit_problem(tmp_path, capsys):
    assert (
        main(["train", "memory", "--problem", "adding", "--model", "ntm", "--out", str(tmp_path / "r")]) == 2
    )
    assert "model ntm is for" in capsys.readouterr().err


def bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "task, name, text, flags, message",
    [
        ("classify", "one.tsv", "a\tabc\na\tabd\nb\txyz\n", [], "single example"),
        ("classify", "cols.tsv", "a\tabc\tmore\n", [], "expected 'label<TAB>text'"),
        ("classify", "empty.tsv", "", [], "is empty"),
        ("classify", "num.csv", "label,v1\na,1\na,x\nb,2\nb,3\n", [], "expected a finite number"),
        ("classify", "nolabel.csv", "y,v1\na,1\n", [], "no such column"),
        ("classify", "ragged.csv", "label,v1,v2\na,1\n", [], "has 2 columns"),
        (
            "forecast",
            "series.csv",
            "t,y\n" + "".join(f"{i},{i}\n" for i in range(80)),
            ["--target", "z"],
            "no such column",
        ),
        ("forecast", "series.csv", "t,y\n1,2\n2,oops\n", ["--target", "y"], "expected a finite number"),
        (
            "forecast",
            "short.csv",
            "t,y\n" + "".join(f"{i},{i}\n" for i in range(12)),
            ["--target", "y"],
            "too short",
        ),
    ],
)
def test_malformed_files_exit_2(tmp_path, capsys, task, name, text, flags, message):
    path = bad(tmp_path, name, text)
    assert main(["train", task, "--data", str(path), "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_flag_of_another_task_is_refused(tmp_path, capsys):
    assert main(["train", "classify", "--lag", "10", "--out", str(tmp_path / "r")]) == 2
    assert "--lag is a flag of task memory, not of classify" in capsys.readouterr().err


def test_train_help_shows_the_tasks_own_defaults(capsys):
    assert main(["train", "memory", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--lag INT" in text and "--seq-len" not in text  # memory's flags, not charlm's
    assert "(default: 6000;" in text  # memory's steps, not TrainConfig's 1000


def test_gradients_command(tmp_path, capsys):
    assert main(["gradients", "--cell", "rnn,gru", "--length", "20", "--out", str(tmp_path / "g")]) == 0
    report = json.loads((tmp_path / "g" / "gradients.json").read_text())
    assert set(report["cells"]) == {"rnn", "gru"} and len(report["cells"]["rnn"]["grad_norms"]) == 20
    assert (tmp_path / "g" / "gradients.png").read_bytes()[:8] == PNG
    run, _ = run_task(tmp_path, capsys, "memory", "--lag", "10", "--hidden-size", "8", "--model", "gru")
    assert main(["gradients", str(run), "--cell", "gru", "--length", "15"]) == 0
    assert set(json.loads((run / "gradients.json").read_text())["cells"]) == {"gru", "trained gru"}
    assert main(["gradients", "--cell", "nope"]) == 2
    assert "--cell: must be comma-separated names from rnn, lstm, gru" in capsys.readouterr().err


def test_dates(tmp_path, capsys):
    run, m = run_task(
        tmp_path,
        capsys,
        "dates",
        "--hidden-size",
        "16",
        "--embedding-dim",
        "8",
        "--val-pairs",
        "20",
        "--test-pairs",
        "30",
        "--max-output",
        "12",
    )
    assert {"exact_match", "cer", "exact_match_beam"} <= set(m) and m["test_pairs"] == 30
    lines = predict(capsys, run, "3 mars 2021", "lip 03 1933", extra=["--locale", "fr"])
    assert len(lines) == 2 and all(len(line) <= 12 for line in lines)
    assert len(predict(capsys, run, "3 March 2021")) == 1  # no --locale: the <any> token
    assert main(["predict", str(run), "x", "--locale", "xx_NOPE"]) == 2
    assert "not a known locale" in capsys.readouterr().err


def test_translate_file(tmp_path, capsys):
    words = ["cat", "dog", "sun", "moon", "tree", "house", "river", "stone", "bird", "fish", "rain", "snow"]
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{w}\t{w[::-1].upper()}\n" for w in words * 2))
    run, m = run_task(tmp_path, capsys, "translate", "--hidden-size", "16", "--max-output", "8", data=path)
    assert m["test_pairs"] == 2 and 0 <= m["exact_match"] <= 1 and m["cer"] >= 0
    (line,) = predict(capsys, run, "cat")
    assert len(line) <= 8
    assert main(["predict", str(run), "cat", ""]) == 2  # nothing to read: an input error
    assert capsys.readouterr().err.count("\n") == 1
    other = tmp_path / "other.tsv"
    other.write_text("sun\tNUS\nmoon\tNOOM\nzzz\tZZZ\n")  # z was never seen: the unknown symbol
    assert main(["evaluate", str(run), "--data", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_pairs"] == 3
    assert main(["train", "translate", "--out", str(tmp_path / "none")]) == 2  # translate needs --data
    assert "needs a file" in capsys.readouterr().err


def test_predict_reads_a_file_or_standard_input_and_takes_a_beam(tmp_path, capsys, monkeypatch):
    import io

    words = ["cat", "dog", "sun", "moon", "tree", "house", "river", "stone", "bird", "fish", "rain", "snow"]
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{w}\t{w[::-1].upper()}\n" for w in words * 2))
    run, _ = run_task(tmp_path, capsys, "translate", "--hidden-size", "16", "--max-output", "8", data=path)
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("cat\n\ndog\n")
    assert main(["predict", str(run), "--input-file", str(inputs)]) == 0
    from_file = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("cat\ndog\n"))
    assert main(["predict", str(run), "--input-file", "-"]) == 0
    assert capsys.readouterr().out == from_file and len(from_file.splitlines()) == 2
    assert main(["predict", str(run), "cat", "dog", "--beam-size", "3"]) == 0
    beamed = capsys.readouterr().out.splitlines()
    assert beamed == rnnkit.Run.load(run).predict(["cat", "dog"], beam_size=3)
    assert main(["predict", str(run)]) == 2 and "needs INPUT" in capsys.readouterr().err


def test_attention_weights_are_saved_as_arrays(tmp_path, capsys):
    words = ["cat", "dog", "sun", "moon", "tree", "house", "river", "stone", "bird", "fish", "rain", "snow"]
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{w}\t{w[::-1].upper()}\n" for w in words * 2))
    flags = ("--hidden-size", "8", "--max-output", "6", "--attention", "additive")
    run, _ = run_task(tmp_path, capsys, "translate", *flags, data=path)
    assert main(["plot", str(run)]) == 0
    arrays = np.load(run / "attention.npz", allow_pickle=False)
    weights, inputs, outputs = arrays["weights_0"], arrays["inputs_0"], arrays["outputs_0"]
    assert weights.shape == (len(outputs), len(inputs)) and np.allclose(weights.sum(1), 1, atol=1e-5)


def test_teacher_forcing_schedules_and_the_exposure_gap(tmp_path, capsys):
    from rnnkit.tasks.translate import TranslateConfig

    linear = TranslateConfig(teacher_forcing_schedule="linear", teacher_forcing_k=1.0, teacher_forcing_c=0.1)
    assert [round(linear.teacher_forcing_at(i), 6) for i in (0, 1, 10, 50)] == [1.0, 0.9, 0.0, 0.0]
    assert TranslateConfig(teacher_forcing=0.7).teacher_forcing_at(999) == 0.7
    decay = TranslateConfig(teacher_forcing_schedule="inverse-sigmoid", teacher_forcing_k=10.0)
    assert decay.teacher_forcing_at(0) > 0.9 > decay.teacher_forcing_at(50) > decay.teacher_forcing_at(100)
    with pytest.raises(rnnkit.RnnkitValueError, match="teacher_forcing_k must be < 1"):
        TranslateConfig(teacher_forcing_schedule="exponential", teacher_forcing_k=2.0)
    words = ["cat", "dog", "sun", "moon", "tree", "house", "river", "stone", "bird", "fish", "rain", "snow"]
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{w}\t{w[::-1].upper()}\n" for w in words * 2))
    flags = ("--hidden-size", "8", "--max-output", "6", "--teacher-forcing-schedule", "exponential")
    run, m = run_task(tmp_path, capsys, "translate", *flags, "--teacher-forcing-k", "0.9", data=path)
    assert m["exposure_gap"] == pytest.approx(m["teacher_forced_accuracy"] - m["free_running_accuracy"])
    assert 0 <= m["free_running_accuracy"] <= 1
