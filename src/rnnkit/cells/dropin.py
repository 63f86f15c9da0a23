"""The torch drop-in single-step cells (`rnnkit.cells.RNNCell`, `LSTMCell`, `GRUCell`, `MGUCell`):
torch's calling convention (forward(input, hx=None) -> h', or (h', c') for the LSTM), parameters
and initialisation, plus the regularisers and `layer_norm` of `CellBase`. Each runs its family's
step equations (`rnnkit.cells.elman`, `lstm`, `gru`, `mgu`, and with `layer_norm=True`
`ln_lstm`, `ln_gru`): this file sits above the families, which never import one another."""

from __future__ import annotations

from rnnkit._checks import check_bool, check_choice
from rnnkit.cells._layernorm import GRU_SITES, LSTM_SITES
from rnnkit.cells._module import CellBase
from rnnkit.cells.elman import NONLINEARITIES, elman_step
from rnnkit.cells.gru import gru_step
from rnnkit.cells.ln_gru import check_reset_after, ln_gru_step
from rnnkit.cells.ln_lstm import ln_lstm_step
from rnnkit.cells.lstm import lstm_step
from rnnkit.cells.mgu import mgu_step
from rnnkit.errors import RnnkitTypeError


class RNNCell(CellBase):
    """One Elman step, drop-in for `torch.nn.RNNCell` (same arguments, parameters and shapes).

    forward(input (B, I) or (I,), hx (B, H) or (H,) or None, *, masks=None) -> h' of hx's shape.
    The keyword-only regularisers and `learn_initial_state` are `CellBase`'s.
    """

    gates = 1

    def __init__(
        self,
        input_size,
        hidden_size,
        bias=True,
        nonlinearity="tanh",
        device=None,
        dtype=None,
        *,
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        layer_norm=False,  # accepted so that True meets a clear error: LSTM and GRU only
    ):
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        super().__init__(
            input_size,
            hidden_size,
            bias,
            device=device,
            dtype=dtype,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            layer_norm=layer_norm,
        )
        self.nonlinearity = nonlinearity

    def _step(self, x, state, w_hh, rec_mask):
        return elman_step(
            x, state, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, self.nonlinearity, rec_mask=rec_mask
        )

    def forward(self, input, hx=None, *, masks=None):
        x, (h,), unbatched = self._batched(input, {"hx": hx})
        (h,) = self._regularized_step(x, (h,), masks)
        return h.squeeze(0) if unbatched else h


class LSTMCell(CellBase):
    """One LSTM step, drop-in for `torch.nn.LSTMCell` (same arguments, parameters and shapes).

    forward(input (B, I) or (I,), hx=(h, c) or None, *, masks=None) -> (h', c'). The keyword-only
    regularisers and `learn_initial_state` are `CellBase`'s; zoneout may be a pair (p_h, p_c).
    `layer_norm=True`: the layer-normalised step of `rnnkit.cells.ln_lstm` (Ba et al. 2016).
    """

    gates = 4
    num_states = 2
    layer_norm_sites = LSTM_SITES

    def _step(self, x, state, w_hh, rec_mask):
        if self.layer_norm:
            lns = self._layer_norm_args()
            return ln_lstm_step(
                x, state, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, **lns, rec_mask=rec_mask
            )
        return lstm_step(x, state, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, rec_mask=rec_mask)

    def forward(self, input, hx=None, *, masks=None):
        if hx is None:
            hx = (None, None)
        elif not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise RnnkitTypeError(
                f"hx must be a tuple (h, c) of two tensors or None, got {type(hx).__name__}"
                + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            )
        x, (h, c), unbatched = self._batched(input, {"hx[0] (h)": hx[0], "hx[1] (c)": hx[1]})
        h, c = self._regularized_step(x, (h, c), masks)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


class GRUCell(CellBase):
    """One GRU step, drop-in for `torch.nn.GRUCell` (same arguments, parameters and shapes), plus
    `reset_after` (False: the original form of Cho et al. 2014).

    forward(input (B, I) or (I,), hx (B, H) or (H,) or None, *, masks=None) -> h' of hx's shape.
    The keyword-only regularisers and `learn_initial_state` are `CellBase`'s. `layer_norm=True`:
    the layer-normalised step of `rnnkit.cells.ln_gru` (Ba et al. 2016; reset_after=True only).
    """

    gates = 3
    layer_norm_sites = GRU_SITES

    def __init__(
        self,
        input_size,
        hidden_size,
        bias=True,
        device=None,
        dtype=None,
        *,
        reset_after=True,
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        layer_norm=False,
    ):
        check_bool("reset_after", reset_after)
        if layer_norm is True:
            check_reset_after(reset_after, "GRUCell")
        super().__init__(
            input_size,
            hidden_size,
            bias,
            device=device,
            dtype=dtype,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            layer_norm=layer_norm,
        )
        self.reset_after = reset_after

    def _step(self, x, state, w_hh, rec_mask):
        if self.layer_norm:
            lns = self._layer_norm_args()
            return ln_gru_step(
                x, state, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, **lns, rec_mask=rec_mask
            )
        return gru_step(
            x, state, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, self.reset_after, rec_mask=rec_mask
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    def forward(self, input, hx=None, *, masks=None):
        x, (h,), unbatched = self._batched(input, {"hx": hx})
        (h,) = self._regularized_step(x, (h,), masks)
        return h.squeeze(0) if unbatched else h


class MGUCell(CellBase):
    """One MGU step, with torch.nn.GRUCell's arguments (parameters stacked f, n: (2H, I), (2H, H)).

    forward(input (B, I) or (I,), hx (B, H) or (H,) or None, *, masks=None) -> h' of hx's shape.
    The keyword-only regularisers and `learn_initial_state` are `CellBase`'s.
    """

    gates = 2

    def _step(self, x, state, w_hh, rec_mask):
        return mgu_step(x, state, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, rec_mask=rec_mask)

    def forward(self, input, hx=None, *, masks=None):
        x, (h,), unbatched = self._batched(input, {"hx": hx})
        (h,) = self._regularized_step(x, (h,), masks)
        return h.squeeze(0) if unbatched else h
