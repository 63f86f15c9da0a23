"""tanh on CPU from a sigmoid, for every fused kernel with a tanh (switch: "sigmoid_tanh")."""

from __future__ import annotations

import torch

from rnnkit.cells import speed

# Device types on which the fused kernels take tanh from a sigmoid (`Tanh`). Elsewhere (CUDA)
# torch's tanh costs what its sigmoid does and every op is a kernel launch, so they call tanh.
TANH_VIA_SIGMOID = {"cpu"}


class Tanh:
    """The fused kernels' tanh of a pre-activation, on CPU as 2 sigmoid(2v) - 1.

    Why: on CPU torch's tanh costs several sigmoids (this machine, float32, `python
    benchmarks/op_floor.py`: 3.1 us against 2.1 us for a sigmoid and the add below at 16 x 64
    floats, 7.0 against 3.1 at 32 x 128, 77 against 16 at 128 x 512). A kernel makes the
    pre-activation through weights, biases or gains passed through `prep`, which doubles them on
    CPU (a power of two: exact), so that the pre-activation arrives as 2v at no cost; then
    `tanh(pre)` in place, or `into(pre, out)`, gives tanh(v): on CPU a sigmoid and one add, the
    same function to a few units in the last place of 1 in absolute terms; elsewhere torch's
    tanh. `undo_` turns a kept pre-activation back into v for the backward. Where a tanh shares
    one sigmoid with the gates (the LSTMs), the kernel doubles its rows itself (`doubled`) on
    every device and calls `from_sigmoid`.
    """

    def __init__(self, like: torch.Tensor):
        self.via_sigmoid = like.device.type in TANH_VIA_SIGMOID and speed.on("sigmoid_tanh")
        self.k = 2.0 if self.via_sigmoid else 1.0  # what `prep` multiplies by
        self.offsets = {scale: like.new_full((), -scale) for scale in (1.0, 2.0)}

    def prep(self, v: torch.Tensor | None, start: int = 0, stop: int | None = None) -> torch.Tensor | None:
        """v with rows start:stop (all by default) times k: a copy on CPU, v itself elsewhere."""
        return doubled(v, start, stop) if self.via_sigmoid else v

    def undo_(self, v: torch.Tensor) -> torch.Tensor:
        """A pre-activation made through `prep`, back to v, in place."""
        return v.mul_(0.5) if self.via_sigmoid else v

    def __call__(self, pre: torch.Tensor) -> torch.Tensor:
        """pre (k v) -> tanh(v), in place."""
        return self.from_sigmoid(pre.sigmoid_()) if self.via_sigmoid else pre.tanh_()

    def into(self, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """tanh(v) of pre (k v), into out."""
        if self.via_sigmoid:
            return self.from_sigmoid(torch.sigmoid(pre, out=out))
        return torch.tanh(pre, out=out)

    def from_sigmoid(self, s: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """s = sigmoid(2v) -> scale * tanh(v), in place (scale 1 or 2), on every device."""
        return torch.add(self.offsets[scale], s, alpha=2 * scale, out=s)


def doubled(v: torch.Tensor | None, start: int = 0, stop: int | None = None) -> torch.Tensor | None:
    """A copy of v with rows start:stop (all by default) times 2: the weights, biases or gains
    that make a pre-activation which goes through a tanh (`Tanh`)."""
    if v is None:
        return None
    out = v.clone()
    out[start:stop] *= 2
    return out
