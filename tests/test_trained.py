"""rnnkit.Run (API.md, "Trained runs from Python"): a run directory used from Python gives what the
command line prints, which is a formatting of it (predict, evaluate --json, sample); other tasks'
predict values are checked against the command in tests/test_tasks.py."""

import json

import pytest
import torch

import rnnkit
from rnnkit.cli import main

SMALL = ["--hidden-size", "16", "--embedding-dim", "8", "--seq-len", "16", "--batch-size", "4"]


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory, text_file):
    run = tmp_path_factory.mktemp("runs") / "charlm"
    argv = ["train", "--data", str(text_file), "--steps", "6", "--eval-every", "3", "--out", str(run)]
    assert main([*argv, *SMALL]) == 0
    return run


def test_run_is_what_the_command_prints(charlm_run, capsys):
    run = rnnkit.Run.load(charlm_run)
    assert run.task == "charlm" and run.config["task"] == "charlm" and not run.model.training
    assert isinstance(run.model, type(rnnkit.load(charlm_run)))
    capsys.readouterr()
    assert main(["evaluate", str(charlm_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(run.evaluate()))
    assert main(["sample", str(charlm_run), "--prime", "The ", "--length", "40", "--seed", "3"]) == 0
    sampled = run.sample(prime="The ", length=40, seed=3)
    assert capsys.readouterr().out == sampled + "\n" and sampled.startswith("The ")
    assert run.sample(prime="The ", length=40, seed=3) == sampled  # seeded
    assert main(["predict", str(charlm_run), "import ", "def "]) == 0
    values = run.predict(["import ", "def "])
    assert all(isinstance(v, str) for v in values) and values[0].startswith("import ")
    assert capsys.readouterr().out == "".join(v + "\n" for v in values)


def test_run_leaves_the_global_generator_alone(charlm_run):
    import torch

    run = rnnkit.Run.load(charlm_run)
    torch.manual_seed(11)
    want = torch.rand(3)
    torch.manual_seed(11)
    run.sample(length=20, seed=5)
    run.predict(["x"])
    assert torch.equal(torch.rand(3), want)


def test_bad_arguments_are_clear_errors(charlm_run, tmp_path):
    run = rnnkit.Run.load(charlm_run)
    with pytest.raises(rnnkit.RnnkitTypeError, match="list of strings"):
        run.predict("import ")
    with pytest.raises(rnnkit.RnnkitValueError, match="non-empty"):
        run.predict([])
    with pytest.raises(rnnkit.RnnkitValueError, match="--locale does not apply to task charlm"):
        run.predict(["x"], locale="fr")
    with pytest.raises(rnnkit.RnnkitTypeError, match="no option 'nope'"):
        run.predict(["x"], nope=1)
    with pytest.raises(rnnkit.RnnkitValueError, match="length"):
        run.sample(length=0)
    with pytest.raises(rnnkit.RnnkitValueError, match="temperature"):
        run.sample(temperature=-1.0)
    with pytest.raises(rnnkit.RnnkitValueError, match="--lengths does not apply"):
        run.evaluate(lengths=[5])
    with pytest.raises(rnnkit.RnnkitFileError):
        rnnkit.Run.load(tmp_path / "nothing-here")


def test_train_from_python_equals_the_command(tmp_path, text_file, capsys):
    """rnnkit.train(...) runs what `rnnkit train` runs: the same metrics.jsonl for the same seed,
    the Run returned, the caller's global random state untouched."""
    train = rnnkit.train
    flags = {"hidden_size": 16, "embedding_dim": 8, "seq_len": 16, "batch_size": 4, "eval_every": 3}
    argv = ["train", "--data", str(text_file), "--steps", "5", "--seed", "2", "--out", str(tmp_path / "cli")]
    for k, v in flags.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    assert main(argv) == 0
    torch.manual_seed(123)
    want = torch.rand(2)
    torch.manual_seed(123)
    run = train("charlm", data=text_file, out=tmp_path / "py", steps=5, seed=2, **flags)
    assert torch.equal(torch.rand(2), want)  # the caller's generator as it was
    assert isinstance(run, rnnkit.Run) and run.task == "charlm"

    def records(d):
        return [
            {k: v for k, v in json.loads(line).items() if k not in ("time", "elapsed", "wall_s")}
            for line in (d / "metrics.jsonl").read_text().splitlines()
        ]

    assert records(tmp_path / "py") == records(tmp_path / "cli")
    resumed = train(resume=tmp_path / "py", steps=7)
    assert records(tmp_path / "py")[-1]["step"] == 7 and resumed.task == "charlm"
    with pytest.raises(rnnkit.RnnkitTypeError, match="no option 'hidden'"):
        train("charlm", data=text_file, hidden=3)
    with pytest.raises(rnnkit.RnnkitValueError, match="--hidden-size"):
        train("charlm", data=text_file, out=tmp_path / "bad", hidden_size=0)


def test_the_readme_example_runs(tmp_path, capsys):
    """README, "Use a trained model": the code block, as written, on fewer steps."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Use a trained model\n.*?```python\n(.*?)```", readme, re.S)[1]
    code = block.replace("steps=300", "steps=3, eval_every=3, seq_len=16, batch_size=4")
    code = code.replace('"runs/tour"', repr(str(tmp_path / "tour")))
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    last_json = max(i for i, line in enumerate(lines) if line.startswith("{"))
    out = lines[last_json + 1 :]  # after training's JSON lines
    bpc, sampled, predicted = out[0], "\n".join(out[1:-1]), out[-1]
    assert float(bpc) > 0 and sampled.startswith("The ") and predicted.startswith("['def ")


def test_a_run_loads_onto_a_device(charlm_run, capsys):
    """Weights are read to the CPU and the model moved where asked; the commands take --device."""
    run = rnnkit.Run.load(charlm_run, device="cpu")
    assert next(run.model.parameters()).device.type == "cpu"
    meta = rnnkit.load(charlm_run, device="meta")
    assert next(meta.parameters()).device.type == "meta"
    assert main(["sample", str(charlm_run), "--length", "5", "--device", "cpu"]) == 0
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main(["evaluate", str(charlm_run), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(rnnkit.RnnkitTypeError, match="no option 'device'"):
        run.predict(["x"], device="cpu")  # where a run runs is Run.load's


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_run_evaluates_samples_and_predicts_on_cuda(charlm_run):
    run = rnnkit.Run.load(charlm_run, device="cuda")
    assert next(run.model.parameters()).is_cuda
    cpu = rnnkit.Run.load(charlm_run)
    assert abs(run.evaluate()["bpc"] - cpu.evaluate()["bpc"]) < 1e-3
    assert run.sample(prime="The ", length=20, seed=1).startswith("The ")
    assert all(v.startswith("def ") for v in run.predict(["def "]))


def test_charlm_samples_without_its_cache_unless_asked(charlm_run, capsys):
    """sample draws from the recurrent model alone (the cache would copy the sample's own slips);
    cache=True / --cache draws with it, as the model's own step does."""
    from rnnkit.decoding import sample
    from rnnkit.tasks.charlm import without_cache

    run = rnnkit.Run.load(charlm_run)
    assert run.model.config.cache_size > 0
    prime = run._task.vocab.encode("The ")[None]

    def drawn(model):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            out = sample(model.step, prime, 60, temperature=1.0, generator=g)
        return "The " + run._task.vocab.decode(out[0])

    capsys.readouterr()
    assert main(["sample", str(charlm_run), "--prime", "The ", "--length", "60", "--cache"]) == 0
    assert capsys.readouterr().out == run.sample("The ", 60, cache=True) + "\n"
    run.model.cache_lambda.fill_(0.5)  # a share that shows (the fitted one may be 0 on so short a run)
    assert run.sample("The ", 60) == drawn(without_cache(run.model))
    assert run.sample("The ", 60, cache=True) == drawn(run.model)
    assert run.sample("The ", 60, cache=True) != run.sample("The ", 60)
    with pytest.raises(rnnkit.RnnkitTypeError, match="cache"):
        run.sample(cache="yes")
