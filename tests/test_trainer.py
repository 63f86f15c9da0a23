"""The trainer: resuming reproduces an uninterrupted run line for line, clipping gives the norm
asked for, non-finite steps never reach the weights, early stopping stops."""

import json
import math

import pytest
import torch

import rnnkit
from rnnkit.training import NonFiniteError, TrainConfig, Trainer


def lm_setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict(
        {
            "emb": torch.nn.Embedding(7, 8),
            "rnn": rnnkit.GRU(8, 16, batch_first=True),
            "head": torch.nn.Linear(16, 7),
            "drop": torch.nn.Dropout(0.2),
        }
    )

    def batches(step):  # the data of step i depends on i alone, so a resumed run sees the same data
        return torch.randint(0, 7, (4, 9), generator=torch.Generator().manual_seed(1000 + step))

    def step_fn(m, tokens, state):  # stateful language modelling: the state goes on between batches
        h, state = m["rnn"](m["drop"](m["emb"](tokens[:, :-1])), state)
        loss = torch.nn.functional.cross_entropy(m["head"](h).reshape(-1, 7), tokens[:, 1:].reshape(-1))
        return loss, state

    def evaluate(m):
        tokens = batches(-1)
        h, _ = m["rnn"](m["emb"](tokens[:, :-1]))
        return {
            "loss": torch.nn.functional.cross_entropy(
                m["head"](h).reshape(-1, 7), tokens[:, 1:].reshape(-1)
            ).item()
        }

    return model, batches, step_fn, evaluate


CONFIG = TrainConfig(steps=12, lr=1e-2, eval_every=4, warmup_steps=3, schedule="cosine", clip_norm=0.5)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    model, batches, step_fn, evaluate = lm_setup()
    Trainer(model, CONFIG, batches=batches, step_fn=step_fn, evaluate=evaluate, run_dir=tmp_path / "a").fit()

    model, batches, step_fn, evaluate = lm_setup()

    def dies_at_step_10(step):
        if step == 10:
            raise KeyboardInterrupt("killed")
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        Trainer(
            model, CONFIG, batches=dies_at_step_10, step_fn=step_fn, evaluate=evaluate, run_dir=tmp_path / "b"
        ).fit()
    logged = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(logged[-1])["step"] == 10  # step 9 -> 10 was logged after the checkpoint at 8

    model, batches, step_fn, evaluate = lm_setup(seed=5)  # a new process: other weights, other RNG
    trainer = Trainer(
        model, CONFIG, batches=batches, step_fn=step_fn, evaluate=evaluate, run_dir=tmp_path / "b"
    )
    trainer.resume()
    assert trainer.step == 8
    trainer.fit()
    a = (tmp_path / "a" / "metrics.jsonl").read_text()
    b = (tmp_path / "b" / "metrics.jsonl").read_text()
    assert a == b and len(a.splitlines()) == 12 + 3


def test_clipping_gives_the_norm_asked_for(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(steps=1, optimizer="sgd", momentum=0.0, lr=1.0, clip_norm=0.5, eval_every=1)

    def step_fn(m, batch, state):
        return 100 * m(batch).pow(2).sum(), None

    trainer = Trainer(model, config, batches=lambda i: torch.randn(4, 5), step_fn=step_fn, run_dir=tmp_path)
    counts = trainer.fit()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert counts["clipped"] == 1
    assert delta.norm().item() == pytest.approx(0.5, rel=1e-5)  # SGD, lr 1: the step is the gradient

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    before = [p.detach().clone() for p in model.parameters()]
    by_value = TrainConfig(
        steps=1, optimizer="sgd", momentum=0.0, lr=1.0, clip_norm=None, clip_value=0.01, eval_every=1
    )
    counts = Trainer(
        model, by_value, batches=lambda i: torch.randn(4, 5), step_fn=step_fn, run_dir=tmp_path / "v"
    ).fit()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert counts["clipped_value"] == 1 and delta.abs().max().item() == pytest.approx(0.01)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["grad_norm"] > 0.5  # the norm before clipping is what is logged


def test_nonfinite_steps_never_reach_the_weights(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    config = TrainConfig(steps=4, optimizer="sgd", lr=0.1, eval_every=2, max_nonfinite=2)
    weights = {}

    def step_fn(m, batch, state):
        weights[len(weights)] = m.weight.detach().clone()
        loss = m(batch).sum()
        return (loss * math.nan if len(weights) == 2 else loss), None

    counts = Trainer(
        model, config, batches=lambda i: torch.ones(2, 3), step_fn=step_fn, run_dir=tmp_path
    ).fit()
    assert counts["nonfinite"] == 1
    assert torch.equal(weights[1], weights[2])  # the NaN step changed nothing
    assert not torch.equal(weights[2], weights[3])
    assert all(torch.isfinite(w).all() for w in weights.values())

    with pytest.raises(NonFiniteError, match="2 steps in a row"):
        Trainer(
            model,
            config,
            batches=lambda i: torch.ones(2, 3),
            step_fn=lambda m, b, s: (m(b).sum() * math.inf, None),
            run_dir=tmp_path / "x",
        ).fit()


def test_early_stopping_stops(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    scores = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    trainer = Trainer(
        model,
        TrainConfig(steps=100, eval_every=5, patience=2),
        batches=lambda i: torch.ones(1, 2),
        step_fn=lambda m, b, s: (m(b).sum(), None),
        evaluate=lambda m: {"loss": next(scores)},
        run_dir=tmp_path,
    )
    trainer.fit()
    assert trainer.step == 20  # best at the 2nd evaluation (step 10); two worse ones: 15, 20
    assert trainer.best_step == 10
    assert rnnkit.training.load_checkpoint(tmp_path, "latest")["best_step"] == 10


def test_load_gives_the_selected_model(tmp_path):
    from rnnkit.models import LanguageModel, LanguageModelConfig, describe

    torch.manual_seed(0)
    model = LanguageModel(
        LanguageModelConfig(7, embedding_dim=8, hidden_size=8, tie_weights=True, cell="mgu")
    )
    _, batches, _, _ = lm_setup()

    def step_fn(m, tokens, state):
        logits, state = m(tokens[:, :-1], state)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 7), tokens[:, 1:].reshape(-1)), state

    scores = iter([3.0, 1.0, 2.0])  # the 2nd evaluation (step 4) is the best
    snapshots = {}

    def evaluate(m):
        snapshots[len(snapshots)] = {k: v.clone() for k, v in m.state_dict().items()}
        return {"loss": next(scores)}

    Trainer(
        model,
        TrainConfig(steps=6, eval_every=2, lr=1e-2),
        batches=batches,
        step_fn=step_fn,
        evaluate=evaluate,
        run_dir=tmp_path,
        meta={"model": describe(model)},
    ).fit()
    loaded = rnnkit.load(tmp_path)
    assert isinstance(loaded, LanguageModel) and not loaded.training
    assert loaded.head.weight is loaded.embedding.weight
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, snapshots[1][k])
    assert not torch.equal(loaded.head.bias, model.head.bias)  # not the last weights
    with pytest.raises(rnnkit.RnnkitFileError, match="does not exist"):
        rnnkit.load(tmp_path / "nope")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(rnnkit.RnnkitFileError, match="model.safetensors is missing"):
        rnnkit.load(tmp_path)


def test_a_run_of_your_own_model_loads_into_it(tmp_path):
    """A run the library cannot rebuild (a user's model, no "model" in config.json) loads with
    rnnkit.load(run_dir, model=...): the selected weights, checked against the model given."""
    model, batches, step_fn, evaluate = lm_setup()
    Trainer(model, CONFIG, batches=batches, step_fn=step_fn, evaluate=evaluate, run_dir=tmp_path).fit()
    with pytest.raises(rnnkit.RnnkitValueError, match=r"model=YourModel"):
        rnnkit.load(tmp_path)
    fresh, *_ = lm_setup(seed=5)
    loaded = rnnkit.load(tmp_path, model=fresh)
    assert loaded is fresh and not loaded.training
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == loaded.state_dict().keys()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, saved[k])
    other = torch.nn.ModuleDict({"emb": torch.nn.Embedding(7, 9)})
    with pytest.raises(rnnkit.RnnkitValueError, match="does not fit"):
        rnnkit.load(tmp_path, model=other)
    with pytest.raises(rnnkit.RnnkitTypeError, match="torch.nn.Module"):
        rnnkit.load(tmp_path, model="GRU")


def test_schedules():
    from rnnkit.training.trainer import lr_factor

    warm = TrainConfig(steps=100, warmup_steps=4, schedule="cosine")
    assert [lr_factor(warm, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(warm, 4) == pytest.approx(1.0) and lr_factor(warm, 52) == pytest.approx(0.5)
    assert lr_factor(warm, 100) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(steps=100, schedule="step", step_size=10, gamma=0.5)
    assert [lr_factor(step, s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_plateau_schedule_and_tensorboard(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    scores = iter([1.0, 2.0, 2.0, 2.0, 2.0])
    config = TrainConfig(steps=25, eval_every=5, lr=0.1, schedule="plateau", plateau_patience=2, gamma=0.1)
    lrs = []

    def step_fn(m, b, s):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return m(b).sum(), None

    trainer = Trainer(
        model,
        config,
        batches=lambda i: torch.ones(1, 2),
        step_fn=step_fn,
        evaluate=lambda m: {"loss": next(scores)},
        run_dir=tmp_path,
    )
    trainer.fit()
    # evaluations at 5 (best), 10, 15 (2 without improvement: x0.1), 20, 25 (4: x0.1 again)
    assert lrs[:15] == [0.1] * 15 and lrs[15:20] == pytest.approx([0.01] * 5)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_bf16_precision_trains(tmp_path):
    model, _, step_fn, _ = lm_setup()

    def batches(step):  # a learnable stream: each token is the previous one plus one, mod 7
        start = torch.randint(0, 7, (4, 1), generator=torch.Generator().manual_seed(step))
        return (start + torch.arange(9)) % 7

    losses = []
    trainer = Trainer(
        model,
        TrainConfig(steps=30, lr=1e-2, eval_every=30, precision="bf16"),
        batches=batches,
        step_fn=step_fn,
        run_dir=tmp_path,
        progress=lambda r: losses.append(r.get("loss")),
    )
    counts = trainer.fit()
    losses = [v for v in losses if v is not None]
    assert counts["nonfinite"] == 0 and len(losses) == 30
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
