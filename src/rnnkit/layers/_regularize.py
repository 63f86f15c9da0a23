"""The layers' side of recurrent regularisation (rates, masks, the masked loop and the equations
are in `rnnkit.cells._regularize`): one `Masks` per layer and direction, in the caller's batch
order at the boundary and in the kernels' order inside, and per layer-direction the choice
between the fused kernel and the masked loop.

A layer's masks for T steps and B sequences: recurrent (B, P), weight (G*H, P) and zoneout
(T, B, n) per state, where row t of a zoneout mask acts at the direction's t-th step (for a
reverse direction, counted from each sequence's own end).
"""

from __future__ import annotations

import torch

from rnnkit.cells._regularize import Masks, Regularizer, check_masks, drop_weight, masked_loop
from rnnkit.errors import RnnkitTypeError, RnnkitValueError


def sample_layer_masks(reg: Regularizer, steps: int, batch: int, sizes: tuple, w_hhs: list) -> list[Masks]:
    """Fresh masks for every layer-direction, in order (layer * D + direction)."""
    return [reg.sample(batch, sizes, w_hh, steps=steps) for w_hh in w_hhs]


def layer_masks(layer, masks, batch) -> list[Masks | None]:
    """The masks of one forward call, per layer-direction and in the kernels' batch order: the
    caller's (checked), else drawn with `layer.sample_masks` (training) or zoneout's expectation
    (eval); None where nothing changes."""
    reg: Regularizer = layer.regularizer
    w_shapes = [w.shape for w in layer._recurrent_weights()]
    steps, B = max(batch.total_length, batch.x.shape[0]), batch.x.shape[1]
    if masks is None:
        if not layer.training:
            return [reg.eval_masks()] * len(w_shapes)
        if not reg.active:
            return [None] * len(w_shapes)
        masks = layer.sample_masks(steps, B)
    else:
        if not isinstance(masks, (list, tuple)):
            raise RnnkitTypeError(
                f"masks must be a list of Masks (one per layer and direction), got {type(masks).__name__}"
            )
        if len(masks) != len(w_shapes):
            raise RnnkitValueError(
                f"masks must hold {len(w_shapes)} Masks (num_layers * num_directions), got {len(masks)}"
            )
        sizes = layer._state_sizes()
        masks = [
            check_masks(f"masks[{i}]", m, reg.shapes(B, sizes, shape, steps=steps))
            for i, (m, shape) in enumerate(zip(masks, w_shapes))
        ]
    return [_kernel_order(m, batch) for m in masks]


def _kernel_order(m: Masks, batch) -> Masks:
    """Caller's batch order and padded length -> the kernels' (sorted by length, longest steps)."""
    steps, index = batch.x.shape[0], batch.sorted_indices

    def rows(t: torch.Tensor, dim: int) -> torch.Tensor:
        return t if index is None else t.index_select(dim, index)

    return Masks(
        recurrent=None if m.recurrent is None else rows(m.recurrent, 0),
        weight=m.weight,
        zoneout=tuple(rows(d[:steps], 1) if isinstance(d, torch.Tensor) else d for d in m.zoneout),
    )


def run_direction(kernel, step, x, state: tuple, w: dict, batch_sizes, masks: Masks | None):
    """One layer and direction: the fused kernel when no per-step mask is in play (DropConnect
    only masks W_hh, so the kernel still applies), else the masked loop over the family's step
    equations, `step(x_t, state, w, rec_mask)`. Returns (y (T, B, P), final state tuple)."""
    if masks is None:
        return kernel(x, state, w, batch_sizes)
    w = {**w, "w_hh": drop_weight(w["w_hh"], masks)}
    if masks.recurrent is None and all(d is None for d in masks.zoneout):
        return kernel(x, state, w, batch_sizes)
    return masked_loop(lambda x_t, s, m: step(x_t, s, w, m), x, state, batch_sizes, masks)
