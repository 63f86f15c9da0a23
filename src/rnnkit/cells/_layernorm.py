"""Layer normalisation inside recurrent cells (Ba, Kiros and Hinton 2016, "Layer Normalization",
section 3.1): what the LN-LSTM (`ln_lstm`) and LN-GRU (`ln_gru`) share.

A layer normalisation of a pre-activation v (B, N), with its own gain gamma and shift beta (N,):

    LN(v) = gamma * vhat + beta,   vhat = (v - mean(v)) / sigma,   sigma = sqrt(var(v) + eps)

mean and (biased) var over the N features of each row, eps = 1e-5 as torch.nn.LayerNorm. Its
backward, given dy = dL/dLN(v) and dvhat = dy * gamma:

    dv = (dvhat - mean(dvhat) - vhat * mean(dvhat * vhat)) / sigma
    dgamma = sum over rows of dy * vhat,   dbeta = sum over rows of dy

The fused kernels compute both with torch's fused layer-norm kernels (`native_layer_norm` and its
backward, one call per step where the formula written out is six); the tests check those against
the formula above. Also here: the parameters' names and initialisation, shared by the cells and
the layers, and the checks of the functional kernels' layer-norm arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnkit._checks import check_bool, check_like, check_shape, check_tensor
from rnnkit.cells.speed.workspace import empty as workspace_empty
from rnnkit.errors import RnnkitTypeError, RnnkitUnsupportedError

EPS = 1e-5  # torch.nn.LayerNorm's default, so a step matches torch.nn.functional.layer_norm

# Where each family normalises, with the normalised size in units of H: the input and recurrent
# pre-activations (all gates at once, as in Ba et al.) and, for the LSTM, the cell state.
LSTM_SITES = (("ih", 4), ("hh", 4), ("c", 1))
GRU_SITES = (("ih", 3), ("hh", 3))


def layer_norm(v: torch.Tensor, ln: tuple) -> torch.Tensor:
    """LN(v) over the last dimension with ln = (gain, shift): the step equations' form."""
    return nn.functional.layer_norm(v, (v.shape[-1],), ln[0], ln[1], EPS)


def normalize(v: torch.Tensor, gain=None, shift=None, *, pooled: bool = False):
    """(gain * vhat + shift, mean, 1/sigma) over v's last dimension; mean and 1/sigma keep it as 1.
    With `pooled`, the first is a buffer of `rnnkit.cells.speed.workspace` (a whole sequence's),
    written piece by piece (`_pieces`)."""
    if not pooled:
        return torch.native_layer_norm(v, (v.shape[-1],), gain, shift, EPS)
    n = v.shape[-1]
    out = workspace_empty(v.shape, v)
    mean, rstd = (v.new_empty((*v.shape[:-1], 1)) for _ in range(2))
    for rows, *dsts in _pieces(v, out, mean, rstd):
        for dst, src in zip(dsts, torch.native_layer_norm(rows, (n,), gain, shift, EPS)):
            dst.copy_(src)
    return out, mean, rstd


def normalize_backward(
    dy, v, mean, rstd, gain, shift=None, mask=(True, False, False), *, pooled: bool = False
):
    """(dL/dv, dL/dgain, dL/dshift) from dy = dL/dLN(v) (the module docstring's formulas), rows
    of v independent; `mask` says which of the three to compute (None for the others; dL/dshift
    needs `shift`, which it does not read otherwise). With `pooled`, the work goes piece by piece
    (`_pieces`): dL/dv into a pooled buffer, the parameters' sums summed over the pieces, and
    strided dy and v (blocks of a `rnnkit.cells.speed.record.StepRecord`) are read a piece at a time
    where torch's kernel would copy them whole."""
    n = v.shape[-1]
    backward = torch.ops.aten.native_layer_norm_backward
    if not pooled:
        return backward(dy, v, (n,), mean, rstd, gain, shift, mask)
    dv = workspace_empty(v.shape, v) if mask[0] else None
    sums = [None, None]
    for d, rows, mu, rs, *out in _pieces(dy, v, mean, rstd, *([dv] if mask[0] else [])):
        grads = backward(d, rows, (n,), mu, rs, gain, shift, mask)
        if out:
            out[0].copy_(grads[0])
        sums = [s if g is None else (g if s is None else s.add_(g)) for s, g in zip(sums, grads[1:])]
    return dv, *sums


# Rows per piece when a whole-sequence normalisation writes into a pooled buffer: torch's kernels
# return fresh tensors (their out= forms allocate one too), and a piece's is small enough (256
# KiB) for malloc to recycle, where a whole sequence's would be a fresh mapping, faulted page by
# page (see `rnnkit.cells.speed.workspace`).
PIECE_ELEMS = 1 << 16


def _pieces(*tensors):
    """Matching blocks of rows of tensors (T, ..., N) (and of their statistics (T, ..., 1)), each
    block about PIECE_ELEMS elements of the first (or one leading slice, if larger), as (rows, N)
    matrices. Where a tensor is strided (a block of a step record, whose rows do not flatten to
    one stride), blocks are whole leading slices, and such a tensor is copied a piece at a time;
    a tensor written into must be contiguous, so that its pieces are views."""
    if all(t.is_contiguous() for t in tensors):  # rows of any leading index
        flat = [t.reshape(-1, t.shape[-1]) for t in tensors]
        step = max(1, PIECE_ELEMS // tensors[0].shape[-1])
    else:  # whole leading slices (steps), a few at a time
        flat, step = tensors, max(1, PIECE_ELEMS // tensors[0][0].numel())
    for r in range(0, flat[0].shape[0], step):
        yield [t[r : r + step].reshape(-1, t.shape[-1]) for t in flat]


def stacked_stats(per_step, v: torch.Tensor, batch_sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/sigma) of every row of v (T, B, N), each (T, B, 1), for an LN backward over all
    steps at once after a loop: the loop's per-step pairs `per_step` stacked (two ops, where
    recomputing them was a full pass over v), or, for packed sequences (whose steps have fewer
    rows), recomputed in one call, the rows past a sequence's end included."""
    if batch_sizes is None:
        mean, rstd = zip(*per_step)
        return torch.stack(mean), torch.stack(rstd)
    return normalize(v)[1:]


# --- parameters: names, shapes, initialisation ------------------------------------------------


def check_layer_norm_flag(layer_norm, owner: str, sites: tuple | None) -> bool:
    """The `layer_norm` keyword of a cell or layer: a bool, and True only where the family has
    sites to normalise (`sites`, None where it has none)."""
    check_bool("layer_norm", layer_norm)
    if layer_norm and sites is None:
        raise RnnkitUnsupportedError(
            f"layer_norm=True is not supported by {owner}: layer normalisation is implemented for "
            "the LSTM and the GRU (rnnkit.LSTM, rnnkit.GRU, rnnkit.cells.LSTMCell, GRUCell)"
        )
    return layer_norm


def layer_norm_shapes(sites: tuple, hidden_size: int, suffix: str = "") -> dict[str, tuple[int]]:
    """Parameter name -> shape, in registration order: layer_norm_{site}_weight{suffix} (the gain)
    and layer_norm_{site}_bias{suffix} (the shift) for each site, e.g. layer_norm_ih_weight_l0."""
    shapes = {}
    for site, gates in sites:
        shapes[f"layer_norm_{site}_weight{suffix}"] = (gates * hidden_size,)
        shapes[f"layer_norm_{site}_bias{suffix}"] = (gates * hidden_size,)
    return shapes


def reset_layer_norm_(params: dict[str, nn.Parameter]) -> None:
    """Gains to 1 and shifts to 0 (Ba et al.; torch.nn.LayerNorm): each LN starts as the plain
    standardisation, so the first steps see unit-scale pre-activations whatever W's scale."""
    with torch.no_grad():
        for name, p in params.items():
            p.fill_(1.0 if "_weight" in name else 0.0)


def layer_norm_args(params: dict[str, nn.Parameter], sites: tuple, suffix: str = "") -> dict[str, tuple]:
    """The kernels' keyword arguments ln_ih=(gain, shift), ln_hh=..., (ln_c=...) from the params."""
    return {
        f"ln_{site}": (params[f"layer_norm_{site}_weight{suffix}"], params[f"layer_norm_{site}_bias{suffix}"])
        for site, _ in sites
    }


def check_layer_norm_args(sites: tuple, hidden_size: int, w_ih: torch.Tensor, **lns) -> None:
    """Each ln_{site} must be a pair (gain, shift) of 1-D tensors of the site's size, like w_ih."""
    for site, gates in sites:
        name = f"ln_{site}"
        pair = lns[name]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            got = type(pair).__name__ + (f" of length {len(pair)}" if isinstance(pair, (tuple, list)) else "")
            raise RnnkitTypeError(
                f"{name} must be a pair (gain, shift) of tensors of shape ({gates * hidden_size},), got {got}"
            )
        for part, t in zip(("gain", "shift"), pair):
            check_tensor(f"{name} {part}", t, ndim=1)
            check_shape(f"{name} {part}", t, (gates * hidden_size,), f"(= ({gates}*hidden_size,))")
            check_like(f"{name} {part}", t, "w_ih", w_ih)
