"""Checkpoints: exact round trips (weights, optimizer, RNG), resuming that continues bit for bit,
atomic writes that survive a crash midway, and clear errors for damaged files."""

import json
import os
import random

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.training import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def make_training(seed=0):
    torch.manual_seed(seed)
    model = rnnkit.LSTM(3, 6, num_layers=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt


def train_steps(model, opt, n):
    losses = []
    for _ in range(n):
        x = torch.randn(5, 4, 3)  # draws from the global generator: resuming must restore it
        loss = model(x)[0].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def snapshot(model, opt, step):
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": rng_state(),
        "step": step,
        "config": {"hidden": 6, "layers": (2, "lstm")},
    }


def test_round_trip_is_exact(tmp_path):
    model, opt = make_training()
    train_steps(model, opt, 3)
    tree = snapshot(model, opt, 3)
    save_checkpoint(tmp_path, "latest", tree)
    back = load_checkpoint(tmp_path, "latest")
    assert back["step"] == 3 and back["config"] == {"hidden": 6, "layers": (2, "lstm")}
    for k, v in tree["model"].items():
        assert torch.equal(back["model"][k], v)
    assert set(back["optimizer"]["state"]) == set(tree["optimizer"]["state"])  # int keys stay ints
    for k, st in tree["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(back["optimizer"]["state"][k][name]), torch.as_tensor(v))


def test_resume_continues_bit_for_bit(tmp_path):
    model, opt = make_training()
    torch.manual_seed(123)
    uninterrupted = train_steps(model, opt, 6)

    model, opt = make_training()
    torch.manual_seed(123)
    first = train_steps(model, opt, 3)
    save_checkpoint(tmp_path, "latest", snapshot(model, opt, 3))
    train_steps(model, opt, 2)  # work after the checkpoint is lost, as in a killed run

    model, opt = make_training(seed=99)  # a fresh process: different weights and generator
    state = load_checkpoint(tmp_path, "latest")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    assert first + train_steps(model, opt, 3) == uninterrupted


def test_rng_state_round_trip(tmp_path):
    save_checkpoint(tmp_path, "rng", {"rng": rng_state()})

    def draw():  # the legacy global NumPy generator is the one rng_state captures
        return random.random(), np.random.rand(), torch.rand(1).item()  # noqa: NPY002

    expected = draw()
    set_rng_state(load_checkpoint(tmp_path, "rng")["rng"])
    assert draw() == expected


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "latest", {"w": torch.ones(3), "step": 1})
    real_replace = os.replace
    calls = []

    def crash_on_commit(src, dst):  # the weights land, then the process dies before the JSON
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "latest", {"w": torch.zeros(3), "step": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    back = load_checkpoint(tmp_path, "latest")
    assert back["step"] == 1 and torch.equal(back["w"], torch.ones(3))
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind

    def crash_in_write(*args, **kwargs):  # dies while the weights are being written
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash_in_write)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, "latest", {"w": torch.full((3,), 7.0), "step": 3})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path, "latest")["step"] == 1
    save_checkpoint(tmp_path, "latest", {"w": torch.zeros(3), "step": 4})
    assert load_checkpoint(tmp_path, "latest")["step"] == 4
    assert len(list(tmp_path.glob("latest-*.safetensors"))) == 1  # stale weights cleaned up


def test_damaged_files_give_clear_errors(tmp_path):
    with pytest.raises(rnnkit.RnnkitFileError, match="no checkpoint"):
        load_checkpoint(tmp_path, "latest")
    index = save_checkpoint(tmp_path, "latest", {"w": torch.arange(10.0)})
    meta = json.loads(index.read_text())
    weights = tmp_path / meta["weights"]
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(rnnkit.RnnkitValueError, match="corrupted"):
        load_checkpoint(tmp_path, "latest")
    weights.unlink()
    with pytest.raises(rnnkit.RnnkitFileError, match="missing"):
        load_checkpoint(tmp_path, "latest")
    index.write_text("{not json")
    with pytest.raises(rnnkit.RnnkitValueError, match="not valid JSON"):
        load_checkpoint(tmp_path, "latest")
    index.write_text('{"hello": 1}')
    with pytest.raises(rnnkit.RnnkitValueError, match="not an rnnkit checkpoint"):
        load_checkpoint(tmp_path, "latest")
    with pytest.raises(rnnkit.RnnkitTypeError, match="cannot store"):
        save_checkpoint(tmp_path, "bad", {"f": object()})
