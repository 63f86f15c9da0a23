"""Gradient flow through time: the vanishing and exploding gradients of the RNN textbooks, measured.

For a one-layer recurrence h_t = f(x_t, h_{t-1}; theta), t = 1..T, and a loss L on its outputs, the
gradient that reaches the hidden state h_t as a node of the recurrence (every path through later
steps included) obeys backpropagation through time:

    dL/dh_t = dL/dy_t + (dh_{t+1}/dh_t)^T dL/dh_{t+1},        dL/dh_T = dL/dy_T

so for the loss L = sum(y_T) ("last") it is a product of T - t step Jacobians:

    dL/dh_t = (dh_{t+1}/dh_t)^T ... (dh_T/dh_{T-1})^T 1,
    dh_{t+1}/dh_t = diag(tanh'(a_{t+1})) W_hh                 (Elman RNN, a the pre-activation).

Its norm ||dL/dh_t|| (Frobenius over batch and units) shrinks or grows geometrically in T - t when
the Jacobians contract or expand; for the Elman RNN their size is bounded by the singular values
of W_hh (and |tanh'| <= 1), hence `spectrum`. The gated cells (LSTM, GRU) add paths whose Jacobian
is a gate (the LSTM's c_t = f_t * c_{t-1} + ..., the GRU's h_t = (1 - z_t) * n_t + z_t * h_{t-1})
and keep gradients alive over longer spans.

The parameter gradient is the sum over steps of each step's local contribution,

    dL/dtheta = sum_t g_t,    g_t = (d h_t / d theta_t)^T dL/dh_t   (theta_t: the use at step t),

so `gradient_flow` reports how much of it comes from the earliest steps, and what clipping its
norm (torch.nn.utils.clip_grad_norm_) does: it rescales every g_t by the same factor, which tames
an exploding norm but cannot bring back contributions that have vanished.

Public: `hidden_grad_norms`, `spectrum`, `gradient_flow`, `plot_gradient_flow`, `write_report`.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from rnnkit._checks import check_choice, check_positive_int, check_tensor
from rnnkit.cells.elman import ElmanReluUnit, ElmanUnit
from rnnkit.cells.gru import GRUUnit
from rnnkit.cells.lstm import LSTMUnit
from rnnkit.cells.registry import available, name_of, registered
from rnnkit.errors import RnnkitTypeError, RnnkitValueError
from rnnkit.layers.by_name import builtin_layer
from rnnkit.layers.recurrent import TorchLayer
from rnnkit.training.checkpoint import write_bytes

LOSSES = ("last", "all")


def gradient_cells() -> list[str]:
    """The cells whose gradient flow is defined here: the built-in ones with a square recurrent
    weight whose row blocks (gates) they name (`gate_names`)."""
    return [n for n in available() if getattr(registered(n), "gate_names", ())]


def _check_layer(layer) -> None:
    """One layer, one direction: only then is the layer's state a single recurrence h_t."""
    if not isinstance(layer, (nn.RNNBase, TorchLayer)):
        raise RnnkitTypeError(
            "layer must be an rnnkit or torch.nn RNN, LSTM, GRU (or rnnkit MGU) layer, "
            f"got {type(layer).__name__}"
        )
    if layer.num_layers != 1 or layer.bidirectional:
        raise RnnkitValueError(
            "layer must be one unidirectional layer (num_layers=1, bidirectional=False), got "
            f"num_layers={layer.num_layers}, bidirectional={layer.bidirectional}"
        )


def _unit_of(layer) -> type:
    """The unit (`rnnkit.cells._unit.Unit`) whose equations a layer runs: an rnnkit layer says so;
    torch's layers are the LSTM, GRU and Elman units."""
    if isinstance(layer, TorchLayer):
        return layer.cell_class
    if isinstance(layer, nn.LSTM):
        return LSTMUnit
    if isinstance(layer, nn.GRU):
        return GRUUnit
    return ElmanReluUnit if getattr(layer, "nonlinearity", "tanh") == "relu" else ElmanUnit


def _unroll(layer, x: torch.Tensor, *, step_params: bool = False):
    """Run `layer` one step at a time from a zero state.

    Returns (hs, params): hs the T state tensors h_t, each (1, B, P), every one a node of the graph
    that the next step reads, so autograd gives dL/dh_t with all later paths included whatever
    the kernel (a fused backward only exposes gradients at its inputs and outputs). With
    `step_params`, each step runs on its own clone of the parameters, so the gradient w.r.t. the
    clones of step t is that step's contribution g_t to dL/dtheta; params is then the list of
    those T dicts (else None)."""
    state, hs, params = None, [], [] if step_params else None
    for t in range(x.shape[0]):
        x_t = x[t : t + 1]  # (1, B, I)
        x_t = x_t.transpose(0, 1) if layer.batch_first else x_t
        if step_params:
            # clone(), not the parameter itself: a separate node per step keeps the g_t apart
            p_t = {n: p.clone() for n, p in layer.named_parameters()}
            params.append(p_t)
            _, state = functional_call(layer, p_t, (x_t, state))
        else:
            _, state = layer(x_t, state)
        # the LSTM's state is (h, c); h is its output and the state reported here
        hs.append(state[0] if isinstance(state, tuple) else state)  # (1, B, P)
    return hs, params


def _loss(hs: list[torch.Tensor], loss: str) -> torch.Tensor:
    # h_t equals the output y_t for one unidirectional layer; the loss is read from the state
    # tensors so that the state is the only path from h_t to L
    return hs[-1].sum() if loss == "last" else torch.stack(hs).sum()


def hidden_grad_norms(layer, x: torch.Tensor, *, loss: str = "last") -> torch.Tensor:
    """||dL/dh_t|| for t = 1..T, as a (T,) tensor (x's dtype and device, no graph).

    layer: a one-layer unidirectional rnnkit or torch.nn RNN / LSTM / GRU (or rnnkit MGU), any
    impl; x: (T, B, I), time-major even when the layer is batch_first (each step is transposed
    for it); the initial state is zero. loss="last": L = sum(y_T); loss="all": L = sum_t sum(y_t).
    dL/dh_t is the gradient w.r.t. the hidden state as a node of the recurrence (paths through
    later steps included), and the norm is Frobenius over (B, H). For the LSTM the state is h_t
    (with proj_size, the projected h_t); c_t is not reported, because inside a black-box step
    c_t reaches h_t by a path that no tensor exposes."""
    _check_layer(layer)
    check_tensor("x", x, ndim=3)
    if x.shape[0] < 1:
        raise RnnkitValueError(f"x must hold at least one time step (T >= 1), got shape {tuple(x.shape)}")
    check_choice("loss", loss, LOSSES)
    with torch.enable_grad():  # callers may sit under no_grad; the graph is ours and dropped
        hs, _ = _unroll(layer, x)
        grads = torch.autograd.grad(_loss(hs, loss), hs)
    return torch.stack([g.norm() for g in grads])  # (T,)


def _block_spectrum(w: torch.Tensor) -> dict:
    """Singular values and eigenvalue moduli (both descending) of a square block (H, H)."""
    sv = torch.linalg.svdvals(w)
    moduli = torch.linalg.eigvals(w).abs().sort(descending=True).values
    return {
        "singular_values": sv.tolist(),
        "eigenvalue_moduli": moduli.tolist(),
        "spectral_radius": float(moduli[0]),
    }


def spectrum(layer) -> dict:
    """The spectrum of the recurrent weight W_hh (weight_hh_l0) of a one-layer recurrent layer.

    weight_hh_l0 (G*H, H) is split into its G gate blocks (H, H) (LSTM i, f, g, o; GRU r, z, n;
    MGU f, n; the Elman RNN one block named "hh"). Returns plain Python values (JSON-ready):
        {"gates": [names], "blocks": {name: {"singular_values": [H, descending],
         "eigenvalue_moduli": [H, descending], "spectral_radius": float}},
         "singular_values": [H] of the whole (G*H, H) matrix, "spectral_radius": the largest
         spectral radius over the blocks}
    For the tanh RNN (|tanh'| <= 1), a largest singular value of W_hh below 1 is sufficient for
    the gradients to vanish, and above 1 necessary for them to explode (Pascanu et al. 2013)."""
    _check_layer(layer)
    if getattr(layer, "proj_size", 0):
        raise RnnkitValueError(
            f"layer must have square recurrent blocks (proj_size=0), got proj_size={layer.proj_size}"
        )
    names = _unit_of(layer).gate_names
    if not names:
        raise RnnkitValueError(
            f"layer {type(layer).__name__} has no recurrent weight W_hh to take the spectrum of"
        )
    w = layer.weight_hh_l0.detach()  # (G*H, H)
    blocks = {n: _block_spectrum(b) for n, b in zip(names, w.split(layer.hidden_size, dim=0))}
    return {
        "gates": list(names),
        "blocks": blocks,
        "singular_values": torch.linalg.svdvals(w).tolist(),
        "spectral_radius": max(b["spectral_radius"] for b in blocks.values()),
    }


def _check_cells(cells) -> tuple[str, ...]:
    cells = (cells,) if isinstance(cells, str) else tuple(cells)
    known = tuple(gradient_cells())
    if not cells:
        raise RnnkitValueError(f"cells must name at least one of {', '.join(known)}, got an empty sequence")
    for c in cells:
        check_choice("cells", c, known)
    if len(set(cells)) != len(cells):
        raise RnnkitValueError(f"cells must not repeat a name, got {cells!r}")
    return cells


def _check_clip(clip) -> float:
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real):
        raise RnnkitTypeError(
            f"clip must be a positive number (a max gradient norm), got {type(clip).__name__}"
        )
    if not (math.isfinite(clip) and clip > 0):
        raise RnnkitValueError(f"clip must be a positive finite number (a max gradient norm), got {clip}")
    return float(clip)


def _total_norm(tensors) -> float:
    """The 2-norm of tensors taken as one flat vector (what clip_grad_norm_ measures)."""
    return torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors])).item()


def _clipping(layer, hs, params, loss: str, clip: float) -> dict:
    """Per-step parameter-gradient contributions g_t, their sum, and clip_grad_norm_ on it."""
    T = len(params)
    flat = [p for p_t in params for p in p_t.values()]
    grads = torch.autograd.grad(_loss(hs, loss), flat)
    n = len(params[0])
    per_step = [grads[t * n : (t + 1) * n] for t in range(T)]  # T tuples of n gradients
    step_norms = [_total_norm(g_t) for g_t in per_step]
    for i, p in enumerate(layer.parameters()):  # same order as named_parameters
        p.grad = sum(g_t[i] for g_t in per_step)
    before = float(nn.utils.clip_grad_norm_(layer.parameters(), clip))
    after = _total_norm([p.grad for p in layer.parameters()])
    early = max(1, math.ceil(0.1 * T))  # the earliest 10% of steps, at least one
    total = sum(step_norms)
    return {
        "clip": clip,
        "total_norm_before": before,
        "total_norm_after": after,
        "step_grad_norms": step_norms,
        "early_steps": early,
        "early_fraction": sum(step_norms[:early]) / total if total > 0 else 0.0,
    }


def _one_cell(layer, x: torch.Tensor, loss: str, clip: float) -> dict:
    """gradient_flow's entry for one layer: one unrolled graph serves both gradients."""
    with torch.enable_grad():
        hs, params = _unroll(layer, x, step_params=True)
        # the graph is kept for the parameter gradients that _clipping takes next
        norms = [g.norm().item() for g in torch.autograd.grad(_loss(hs, loss), hs, retain_graph=True)]
        clipping = _clipping(layer, hs, params, loss, clip)
    return {
        "grad_norms": norms,
        "ratio_first_last": norms[0] / norms[-1] if norms[-1] > 0 else None,
        "spectrum": spectrum(layer),
        "clipping": clipping,
    }


def _fresh(cell: str, input_size: int, hidden_size: int, seed: int, dtype) -> nn.Module:
    # the same seed for every cell, so one cell's weights do not depend on which others are listed;
    # fork_rng leaves the caller's global generator as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builtin_layer(cell, input_size, hidden_size, dtype=dtype)


def first_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(cell name, a one-layer unidirectional copy) of the bottom layer, forward direction, of the
    first recurrent layer in `model` (a trained model's recurrence, for `gradient_flow`)."""
    for module in model.modules():
        if isinstance(module, (nn.RNNBase, TorchLayer)):
            break
    else:
        raise RnnkitValueError(f"model {type(model).__name__} has no recurrent layer")
    if getattr(module, "proj_size", 0):
        raise RnnkitValueError(
            "an LSTM with proj_size has no square W_hh; its gradient flow is not defined here"
        )
    unit = _unit_of(module)
    name = name_of(unit)
    if not unit.gate_names:
        raise RnnkitValueError(
            f"{type(module).__name__} has no recurrent weight W_hh; its gradient flow is not defined here"
        )
    single = builtin_layer(name, module.input_size, module.hidden_size, bias=module.bias)
    single.load_state_dict({n: getattr(module, n).detach().cpu() for n in single.state_dict()})
    return name, single


def gradient_flow(
    cells: Sequence[str] = ("rnn", "lstm", "gru"),
    *,
    length: int = 100,
    hidden_size: int = 64,
    input_size: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    clip: float = 1.0,
    loss: str = "last",
    layers: dict[str, nn.Module] | None = None,
) -> dict:
    """Gradient flow through `length` steps of fresh, default-initialised (U(-1/sqrt(H), 1/sqrt(H)))
    rnnkit layers of each named cell (`gradient_cells()`: the built-in cells with a recurrent
    weight W_hh, e.g. rnn (tanh), lstm, gru, mgu), on one seeded N(0, 1)
    input (length, batch_size, input_size), in float64 so that geometrically vanishing gradients
    stay representable. L is as in `hidden_grad_norms` (`loss`).

    Returns plain Python values (JSON-ready):
        {"config": {"cells", "length", "hidden_size", "input_size", "batch_size", "seed", "clip",
                    "loss", "dtype"},
         "cells": {name: {
             "grad_norms": [length] ||dL/dh_t||, t = 1..length,
             "ratio_first_last": grad_norms[0] / grad_norms[-1] (< 1: vanishing, > 1: exploding),
             "spectrum": spectrum(layer),
             "clipping": {"clip", "total_norm_before", "total_norm_after" (after
                 clip_grad_norm_(params, clip)), "step_grad_norms": [length] ||g_t||,
                 "early_steps": k = ceil(length / 10), "early_fraction"}}}}

    early_fraction = sum_{t<=k} ||g_t|| / sum_t ||g_t||, with g_t step t's contribution to
    dL/dtheta (module docstring): the share of the parameter gradient that the earliest 10% of
    steps supply, i.e. how much the weights learn from the distant past. Clipping multiplies every
    g_t by the same factor min(1, clip / ||dL/dtheta||), so it leaves this share unchanged.

    `layers` adds given one-layer layers (a trained model's, from `first_layer`) under their
    names, each on a seeded N(0, 1) input of its own input size."""
    cells = _check_cells(cells)
    for name, value in (
        ("length", length),
        ("hidden_size", hidden_size),
        ("input_size", input_size),
        ("batch_size", batch_size),
    ):
        check_positive_int(name, value)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RnnkitTypeError(f"seed must be an int, got {type(seed).__name__}")
    clip = _check_clip(clip)
    check_choice("loss", loss, LOSSES)
    dtype = torch.float64
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(length, batch_size, input_size, generator=gen, dtype=dtype)  # (T, B, I)
    out = {c: _one_cell(_fresh(c, input_size, hidden_size, seed, dtype), x, loss, clip) for c in cells}
    for name, layer in (layers or {}).items():
        _check_layer(layer)
        layer = copy.deepcopy(layer).to(dtype)
        own = torch.randn(length, batch_size, layer.input_size, generator=gen, dtype=dtype)  # (T, B, I)
        out[name] = _one_cell(layer, own, loss, clip)
    config = {
        "cells": list(cells),
        "length": length,
        "hidden_size": hidden_size,
        "input_size": input_size,
        "batch_size": batch_size,
        "seed": seed,
        "clip": clip,
        "loss": loss,
        "dtype": str(dtype).removeprefix("torch."),
    }
    return {"config": config, "cells": out}


def plot_gradient_flow(result: dict, path) -> Path:
    """One PNG of a `gradient_flow` result: left ||dL/dh_t|| over t (log scale) per cell, right
    the singular values of each cell's W_hh (all gate blocks stacked). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, r in result["cells"].items():
        norms = r["grad_norms"]
        left.plot(range(1, len(norms) + 1), norms, label=name)
        sv = r["spectrum"]["singular_values"]
        right.plot(
            range(1, len(sv) + 1),
            sv,
            "o-",
            ms=2.5,
            label=f"{name} (rho = {r['spectrum']['spectral_radius']:.2f})",
        )
    left.set_yscale("log")
    left.set_xlabel("time step t")
    left.set_ylabel("||dL/dh_t|| (log scale)")
    left.set_title("gradient reaching each hidden state")
    right.set_xlabel("index k (descending)")
    right.set_ylabel("singular value sigma_k of W_hh (gate blocks stacked)")
    right.set_title("spectrum of the recurrent weight")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    cfg = result.get("config", {})
    loss = "sum(y_T)" if cfg.get("loss", "last") == "last" else "sum_t sum(y_t)"
    fig.suptitle(f"Gradient flow through time (L = {loss}, H = {cfg.get('hidden_size', '?')}, default init)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(result: dict, out_dir) -> dict[str, Path]:
    """out_dir/gradients.json (the result, indented) and out_dir/gradients.png (the plot);
    out_dir is created if missing. Returns {"json": path, "png": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "gradients.json"
    write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())  # atomically
    return {"json": json_path, "png": plot_gradient_flow(result, out_dir / "gradients.png")}
