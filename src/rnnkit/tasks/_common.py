"""What the supervised tasks share: the Task interface the command drives, deterministic batches
by step number (so a resumed run draws exactly the batches it would have), splits, and figures.

A task owns its data, builds its model from its config, and says what `evaluate`, `predict` and
`plot` show. The trainer sees only `batches`, `step_fn`, `evaluate` and `metric`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnkit._config import Options, flag, one_of, option, rate
from rnnkit.cells.registry import available
from rnnkit.errors import RnnkitUnsupportedError, RnnkitValueError
from rnnkit.training.checkpoint import write_json


@dataclass(frozen=True)
class OnnxGraph:
    """One ONNX file of `rnnkit export`: `module` called with `inputs` (example tensors, in order),
    `names` for its inputs and `outputs`, and per input its dynamic axes ({axis: name}); `part`
    names the file among several ("" for a task's only graph)."""

    module: torch.nn.Module
    inputs: tuple
    names: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: dict
    part: str = ""
    doc: str = ""  # the inputs and outputs in words (shapes, dtypes), for the JSON beside it


class FlatStates(torch.nn.Module):
    """A stateful model `model(inputs, state) -> (outputs, state)` as a graph of flat tensors:
    forward(inputs, states) -> (outputs, *states), states a tuple with one tensor per state of its
    recurrent layer, (num_layers * num_directions, batch, size) each (the LSTM's h then c)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, states: tuple):
        outputs, state = self.model(inputs, states[0] if len(states) == 1 else states)
        return (outputs, *(state if isinstance(state, tuple) else (state,)))


def state_axes(layer, prefix: str) -> tuple[tuple[str, ...], dict, list]:
    """Names, dynamic axes and descriptions of a recurrent layer's states as graph inputs or
    outputs (`prefix`_0, `prefix`_1, ...)."""
    LD = layer.num_layers * layer.num_directions
    names = tuple(f"{prefix}_{j}" for j in range(layer.num_states))
    docs = [f"{n}: float32 ({LD}, batch, {size})" for n, size in zip(names, layer.state_sizes)]
    return names, {n: {1: "batch"} for n in names}, docs


def cache_size(model) -> int:
    """The positions a language model's continuous cache keeps (0: none, as for a model of a user's
    own, which has no `config`)."""
    return getattr(getattr(model, "config", None), "cache_size", 0)


def initial_states(model, batch: int) -> list:
    """The states a language model starts a sequence from (batch second): its own
    `default_states` (a cache's memory included), else its recurrent layer's."""
    own = getattr(model, "default_states", None)
    return list(own(batch) if own is not None else model.rnn.default_states(batch))


def language_model_graphs(model, tokens_doc: str, logits_doc: str) -> list[OnnxGraph]:
    """The one graph of a language model read with its state carried (charlm, music): tokens
    (B, T) and the states in -> logits (B, T, V) and the states out; `tokens_doc` and
    `logits_doc` say what the ids and the logits are. A model with a cache has its memory as two
    more states (rnnkit.models._cache), of cache_size slots each, zeros when empty."""
    layer = model.rnn
    tokens = torch.zeros(2, 5, dtype=torch.long, device=next(model.parameters()).device)
    ins, axes, docs = state_axes(layer, "state_in")
    outs, _, out_docs = state_axes(layer, "state_out")
    size = cache_size(model)
    if size:
        H, n = model.config.hidden_size, layer.num_states
        ins, outs = (
            ins + (f"state_in_{n}", f"state_in_{n + 1}"),
            outs + (f"state_out_{n}", f"state_out_{n + 1}"),
        )
        axes |= {name: {1: "batch"} for name in ins[-2:]}
        for names, described in ((ins, docs), (outs, out_docs)):
            described += [
                f"{names[-2]}: float32 ({size}, batch, {H}), the cache's keys: the last {size} positions' "
                "outputs at unit length, oldest first (zeros: an empty slot)",
                f"{names[-1]}: float32 ({size}, batch, 1), each slot's input token id + 1 (0: an empty slot)",
            ]
    V = model.config.vocab_size
    return [
        OnnxGraph(
            FlatStates(model),
            (tokens, tuple(initial_states(model, 2))),
            ("tokens", *ins),
            ("logits", *outs),
            {"tokens": {0: "batch", 1: "time"}, **axes},
            doc="; ".join(
                [
                    f"tokens: int64 (batch, time), {tokens_doc}",
                    *docs,
                    f"logits: float32 (batch, time, {V}), {logits_doc}",
                    *out_docs,
                ]
            ),
        )
    ]


class _Encode(torch.nn.Module):
    """inputs -> the leaves of `model.initial_state(*inputs)` (the decoding state), flat."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: tuple):
        return tuple(torch.utils._pytree.tree_leaves(self.model.initial_state(*inputs)))


class _DecodeStep(torch.nn.Module):
    """(token (B,), the state's leaves) -> (logits (B, V), the next state's leaves): `model.step`
    with the nested state rebuilt from `spec`."""

    def __init__(self, model: torch.nn.Module, spec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, token, states: tuple):
        logits, state = self.model.step(token, torch.utils._pytree.tree_unflatten(list(states), self.spec))
        return (logits, *torch.utils._pytree.tree_leaves(state))


def decoding_graphs(model, inputs: tuple, names: tuple, axes: dict, state_axes, doc: str) -> list[OnnxGraph]:
    """The two graphs of a model decoded step by step (`initial_state(*inputs)`, then `step(token,
    state)`, as `rnnkit.decoding` drives it): "encoder" (inputs -> state_0, state_1, ...) and
    "decoder" (token and state_j_in -> logits and state_j_out, to feed back). `state_axes(j,
    shape)` gives state j's dynamic axes."""
    leaves, spec = torch.utils._pytree.tree_flatten(model.initial_state(*inputs))
    k = len(leaves)
    laxes = [state_axes(j, tuple(t.shape)) for j, t in enumerate(leaves)]

    def words(name, t, ax):
        dims = ", ".join(ax.get(i, str(n)) for i, n in enumerate(t.shape))
        return f"{name}: {str(t.dtype).removeprefix('torch.')} ({dims})"

    states = "; ".join(words(f"state_{j}", t, a) for j, (t, a) in enumerate(zip(leaves, laxes)))
    token = torch.zeros(inputs[0].shape[0], dtype=torch.long, device=leaves[0].device)
    ins = tuple(f"state_{j}_in" for j in range(k))
    vocab = model.step(token, torch.utils._pytree.tree_unflatten(leaves, spec))[0].shape[-1]
    return [
        OnnxGraph(
            _Encode(model),
            (inputs,),
            names,
            tuple(f"state_{j}" for j in range(k)),
            axes,
            "encoder",
            f"{doc}; outputs {states}",
        ),
        OnnxGraph(
            _DecodeStep(model, spec),
            (token, tuple(leaves)),
            ("token", *ins),
            ("logits", *(f"state_{j}_out" for j in range(k))),
            {"token": {0: "batch"}, **dict(zip(ins, laxes))},
            "decoder",
            f"token: int64 (batch,), the previous output id (start_id first); state_j_in: the encoder's "
            f"state_j, then the previous step's state_j_out; logits: float32 (batch, {vocab}), of the "
            "next output id",
        ),
    ]


class Task:
    """The interface of a task (charlm implements it too). `state` is what the task derived from
    its training data (vocabulary, labels, scaling) and must reuse on other data: it is saved in
    the run's config.json and handed back when the run is reopened."""

    name = ""
    metric = "loss"  # the validation metric that selects the weights (lower is better)
    loss_unit = "cross-entropy (nats per prediction)"  # the training loss, as loss.png labels it
    train_defaults: dict = {}  # this task's defaults for TrainConfig fields
    sized_help: dict = {}  # how sized_train_defaults sets a field, for --help
    evaluate_options: tuple = ()  # keyword options of test_metrics beyond data (e.g. lengths)
    predict_options: tuple = ()  # keyword options of predict (e.g. locale)
    run_dir: Path | None = None  # set by the command: where a task may cache what it computed

    def describe(self) -> dict:
        raise NotImplementedError

    def build_model(self):
        raise NotImplementedError

    def test_metrics(self, model, data=None, **options) -> dict:
        raise NotImplementedError

    def predict_values(self, model, inputs: list[str], **options) -> list:
        """One Python value per input (what `rnnkit.Run.predict` returns)."""
        raise RnnkitUnsupportedError(f"task {self.name} has no predict")

    def format_prediction(self, text: str, value) -> str:
        """The line `rnnkit predict` prints for an input: its value first."""
        return str(value)

    def predict(self, model, inputs: list[str], **options) -> list[str]:
        """The lines `rnnkit predict` prints: a formatting of `predict_values`."""
        values = self.predict_values(model, inputs, **options)
        return [self.format_prediction(text, v) for text, v in zip(inputs, values)]

    def tensorboard_text(self, model) -> dict[str, str]:
        """Text TensorBoard shows at each evaluation, by tag (charlm: a sample); none by default."""
        return {}

    def onnx_graphs(self, model) -> list[OnnxGraph]:
        """What `rnnkit export` writes: the inference graphs (one, or e.g. an encoder and a
        decoder step) with the model inside, named inputs and outputs, dynamic axes."""
        raise RnnkitUnsupportedError(f"task {self.name} has no export (it has no predict)")

    def onnx_files(self) -> dict[str, str]:
        """Text files `rnnkit export` writes beside the graphs, by name (a word or BPE run: its
        tokenizer); each is written as MODEL.NAME.json and named in the JSON under NAME."""
        return {}

    def onnx_metadata(self, model) -> dict:
        """What a program needs beside the graphs to predict (vocabulary, labels, scaling, the
        decoding loop's tokens): JSON values, written next to them."""
        return {}

    def plot(self, model, run_dir: Path) -> list[Path]:
        return []

    def kept_data(self) -> tuple[str, bytes] | None:
        """What a run keeps of its --data when not a copy of it: (file name, content), e.g. the
        notes music read from a folder of scores; None keeps a copy of the file."""
        return None

    def sized_train_defaults(self) -> dict:
        """TrainConfig defaults that depend on the data this task has read (classify: the steps
        by the number of training examples), over `train_defaults`; flags still win."""
        return {}

    def trivial(self) -> tuple[float, str] | None:
        """The validation `metric` of a predictor that learned nothing (a uniform guess, the
        mean), and its name: a run that ends worse than this is said to have gone wrong."""
        return None


def cell_option(default: str):
    """A task's --cell: any cell of the registry, the ones users register included (asked when a
    value is checked, so a cell registered after import is accepted)."""
    return option(default, "recurrent cell (rnnkit.cells.available())", one_of(available))


@dataclass(frozen=True, kw_only=True)
class RegularizerOptions(Options):
    """The regularisers of a task's recurrent layers (rnnkit.cells._regularize), all off by
    default; zoneout and recurrent dropout run the per-step loop instead of the fused kernels."""

    zoneout: float = option(0.0, "zoneout rate of every state, at each step (Krueger et al. 2016)", rate())
    recurrent_dropout: float = option(
        0.0, "dropout of h_{t-1} where W_hh reads it, one mask a sequence", rate()
    )
    weight_dropout: float = option(0.0, "DropConnect on W_hh, one mask a forward (AWD-LSTM)", rate())
    learn_initial_state: bool = option(False, "the initial state is a parameter", flag())


def uniform(classes: int) -> tuple[float, str]:
    """Cross-entropy (nats) of a uniform guess over `classes` outcomes."""
    return math.log(classes), f"a uniform guess over {classes}"


def epoch_batch(n: int, batch_size: int, step: int, seed: int = 0) -> torch.Tensor:
    """The indices of step `step`'s batch: each epoch visits all n examples once, in an order
    drawn from (seed, epoch) alone, so any step's batch is known without replaying earlier ones."""
    per_epoch = max(1, -(-n // batch_size))
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[i * batch_size : (i + 1) * batch_size]


def bucket_batch(
    lengths: torch.Tensor, batch_size: int, step: int, seed: int = 0, pool: int = 50
) -> torch.Tensor:
    """The indices of step `step`'s batch, of sequences of similar lengths: each epoch's order
    (drawn from (seed, epoch) alone, as epoch_batch draws it) is cut into pools of `pool` batches,
    each pool sorted by length and cut into batches, and the epoch's batches are visited in an
    order drawn from the same generator. Every example once an epoch; a padded batch then wastes
    few steps, and any step's batch is known without replaying earlier ones."""
    n = len(lengths)
    span = pool * batch_size
    per_epoch = sum(-(-min(span, n - start) // batch_size) for start in range(0, n, span)) or 1
    epoch, i = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    batches = []
    for start in range(0, n, span):
        chunk = order[start : start + span]
        chunk = chunk[torch.sort(lengths[chunk], stable=True).indices]
        batches += list(chunk.split(batch_size))
    return batches[int(torch.randperm(len(batches), generator=generator)[i])] if batches else order


def by_length(lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Evaluation batches: the indices sorted by length, cut into batches of `size` (put the
    outputs back in place with `torch.cat(outputs)[torch.cat(batches).argsort()]`)."""
    return list(torch.sort(lengths, stable=True).indices.split(size))


def stratified_split(labels: list, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> tuple[list[int], ...]:
    """Index lists for train / validation / test with each label's share in every part (a label
    needs at least 2 examples; with fewer than 3 it is left out of validation)."""
    by_label = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    parts = ([], [], [])
    for label, idx in sorted(by_label.items(), key=lambda kv: str(kv[0])):
        if len(idx) < 2:
            raise RnnkitValueError(
                f"--data: label {label!r} has a single example; every label needs at least 2 "
                "(one to train on, one to test)"
            )
        rng.shuffle(idx)
        n_test = max(1, round(len(idx) * fractions[2]))
        n_val = max(1, round(len(idx) * fractions[1])) if len(idx) >= 3 else 0
        parts[2].extend(idx[:n_test])
        parts[1].extend(idx[n_test : n_test + n_val])
        parts[0].extend(idx[n_test + n_val :])
    return tuple(sorted(p) for p in parts)


def pad_ids(seqs: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id sequences -> (B, T) padded ids and (B,) lengths."""
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = s
    return out, lengths


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def pyplot():
    """matplotlib's pyplot on the file-only backend (plots are PNG files, never windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def data_key(*arrays) -> str:
    """A short hash of what a baseline depends on (numpy arrays, or lists of strings)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes() if hasattr(a, "tobytes") else "\x00".join(map(str, a)).encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


def cached_shares(run_dir: Path | None, key: str, compute, names: tuple[str, ...]) -> dict:
    """`cached_baseline` for figures that are shares in [0, 1] (accuracy, F1, exact match):
    {name: value}, NaN where `compute` gave None (nothing to fit); a saved record with a
    missing or out-of-range figure is computed again."""

    def valid(saved) -> bool:
        return all(
            name in saved
            and (saved[name] is None or (isinstance(saved[name], float) and 0 <= saved[name] <= 1))
            for name in names
        )

    saved = cached_baseline(run_dir, key, compute, valid)
    return {name: float("nan") if saved[name] is None else saved[name] for name in names}


def cached_baseline(
    run_dir: Path | None, key: str, compute, valid=lambda saved: True, name: str = "baseline.json"
) -> dict:
    """A baseline's figures, fitted once per run: RUN_DIR/`name` when it holds `key` (a
    `data_key` of the data the fit used) and passes `valid`, else `compute()` (a dict of JSON
    values), written there. A cache that is damaged or edited is ignored and rewritten."""
    cache = None if run_dir is None else Path(run_dir) / name
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if isinstance(saved, dict) and saved.get("key") == key and valid(saved):
                return saved
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    result = {"key": key, **compute()}
    if cache is not None:
        write_json(cache, result)
    return result
