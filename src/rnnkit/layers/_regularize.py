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

from rnnkit.cells._regularize import Masks, Regularizer, check_masks
from rnnkit.errors import RnnkitTypeError, RnnkitValueError


def layer_masks(layer, masks, batch) -> list[Masks | None]:
    """The masks of one forward call, per layer-direction and in the kernels' batch order: the
    caller's (checked), else drawn with `layer.sample_masks` (training) or zoneout's expectation
    (eval); None where nothing changes."""
    reg: Regularizer = layer.regularizer
    LD = layer.num_layers * layer.num_directions
    steps, B = max(batch.total_length, batch.x.shape[0]), batch.x.shape[1]
    if masks is None:
        if not layer.training:
            return [reg.eval_masks()] * LD
        if not reg.active:
            return [None] * LD
        masks = layer.sample_masks(steps, B)
    else:
        if not isinstance(masks, (list, tuple)):
            raise RnnkitTypeError(
                f"masks must be a list of Masks (one per layer and direction), got {type(masks).__name__}"
            )
        if len(masks) != LD:
            raise RnnkitValueError(
                f"masks must hold {LD} Masks (num_layers * num_directions), got {len(masks)}"
            )
        masks = [
            check_masks(
                f"masks[{i}]", m, reg.shapes(B, layer.state_sizes, layer._recurrent_weights(i), steps=steps)
            )
            for i, m in enumerate(masks)
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
