"""Dynamic evaluation (rnnkit.training.dynamic, `rnnkit evaluate --dynamic`)."""

import json
import math

import pytest
import torch

from rnnkit.cli import main
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.tasks.charlm import bits_per_char
from rnnkit.training.dynamic import dynamic_bits, tune


def _model(vocab=7, seed=0):
    torch.manual_seed(seed)
    return LanguageModel(LanguageModelConfig(vocab, embedding_dim=5, hidden_size=12, dropout=0.3)).double()


def test_learning_rate_zero_is_the_static_evaluation_of_the_same_segments():
    model = _model()
    ids = torch.randint(0, 7, (203,), generator=torch.Generator().manual_seed(1))
    static = bits_per_char(model, ids, streams=1, chunk=20)
    assert dynamic_bits(model, ids, lr=0.0, segment=20) == pytest.approx(static, rel=1e-12)


def test_the_weights_stay_as_they_were_and_a_repeat_gets_cheaper():
    """A text that repeats itself (a phrase of 9 tokens, 60 times): adapting to what it has read
    makes the rest far cheaper than the static model finds it; the model handed in is not
    changed."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 7, (9,), generator=torch.Generator().manual_seed(2)).repeat(60)
    static = dynamic_bits(model, ids, lr=0.0, segment=25)
    adapted = dynamic_bits(model, ids, lr=3.0, decay=1e-3, segment=25)
    assert adapted < static - 1, (adapted, static)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_plain_sgd_step_after_each_segment():
    """The update against a loop written here: score a segment, then theta -= lr * grad (mean
    loss of the segment) and theta += decay * (theta_0 - theta)."""
    model = _model(seed=3).eval()
    ids = torch.randint(0, 7, (61,), generator=torch.Generator().manual_seed(4))
    lr, decay, seg = 0.2, 0.05, 15
    ref = _model(seed=3).eval()
    theta0 = [p.detach().clone() for p in ref.parameters()]
    total, state = 0.0, None
    for s in range(0, 60, seg):
        x = ids[s : min(s + seg, 60) + 1][None]
        logits, state = ref(x[:, :-1], state)
        loss = torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum")
        total += loss.item()
        ref.zero_grad()
        (loss / (x.shape[1] - 1)).backward()
        with torch.no_grad():
            for p, p0 in zip(ref.parameters(), theta0):
                p -= lr * p.grad
                p += decay * (p0 - p)
        state = tuple(t.detach() for t in state)
    expected = total / 60 / math.log(2)
    assert dynamic_bits(model, ids, lr=lr, decay=decay, segment=seg) == pytest.approx(expected, rel=1e-10)


def test_tune_walks_the_grid_and_keeps_the_best():
    curve = {0.0: 2.0, 0.01: 1.9, 0.1: 1.8, 1.0: 1.95}
    chosen = tune(
        lambda lr, decay: curve[lr] - (0.05 if decay == 0.001 else 0),
        lrs=(0.01, 0.1, 1.0),
        decays=(0.0, 0.001, 0.01),
    )
    assert (chosen["lr"], chosen["decay"]) == (0.1, 0.001) and chosen["static_bits"] == 2.0
    assert chosen["bits"] == pytest.approx(1.75)


def test_evaluate_dynamic_on_a_run(tmp_path, text_file, capsys):
    """`rnnkit evaluate RUN --dynamic`: bpc_dynamic beside bpc, the choice kept in the run (a
    second evaluate reads it), the run's weights unchanged."""
    run = tmp_path / "run"
    flags = ["--hidden-size", "16", "--embedding-dim", "8", "--seq-len", "20", "--steps", "30"]
    assert (
        main(
            ["train", "--data", str(text_file), *flags, "--eval-every", "30", "--no-plots", "--out", str(run)]
        )
        == 0
    )
    weights = (run / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--dynamic", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["bpc_dynamic"] < first["bpc"] and first["dynamic_lr"] > 0
    chosen = json.loads((run / "dynamic.json").read_text())
    assert chosen["lr"] == first["dynamic_lr"] and chosen["static_bits"] > chosen["bits"]
    assert main(["evaluate", str(run), "--dynamic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert (run / "model.safetensors").read_bytes() == weights
    assert main(["evaluate", str(run)]) == 0
    assert "bpc_dynamic" not in capsys.readouterr().out
