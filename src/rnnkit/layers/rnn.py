"""The four sequence layers: each binds a cell family's kernel (and, for the regularisers' masked
loop, its step equations) to the shared layer plumbing of `recurrent.RecurrentBase`. Equations
live with the kernels in `rnnkit.cells`."""

from __future__ import annotations

from rnnkit._checks import check_bool, check_choice, check_no_projection
from rnnkit.cells.elman import NONLINEARITIES, elman_step, rnn_relu, rnn_tanh
from rnnkit.cells.gru import gru, gru_step
from rnnkit.cells.ln_gru import check_reset_after, ln_gru, ln_gru_step
from rnnkit.cells.ln_lstm import ln_lstm, ln_lstm_step
from rnnkit.cells.lstm import lstm, lstm_step
from rnnkit.cells.mgu import mgu, mgu_step
from rnnkit.layers.recurrent import RecurrentBase


class RNN(RecurrentBase):
    """Elman RNN layer, drop-in for torch.nn.RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    (or relu), per layer and direction; see `rnnkit.cells.elman`."""

    gates = 1

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        nonlinearity="tanh",
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        device=None,
        dtype=None,
        *,
        impl="fused",
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        layer_norm=False,
        proj_size=0,
    ):
        check_no_projection(proj_size, "RNN")
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self.nonlinearity = nonlinearity
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
            impl=impl,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            layer_norm=layer_norm,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity!r}"

    def _kernel(self, x, state, w, batch_sizes):
        kernel = rnn_tanh if self.nonlinearity == "tanh" else rnn_relu
        y, h = kernel(
            x, state[0], w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], batch_sizes=batch_sizes, impl=self.impl
        )
        return y, (h,)

    def _step(self, x_t, state, w, rec_mask):
        return elman_step(
            x_t, state, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], self.nonlinearity, rec_mask=rec_mask
        )


class LSTM(RecurrentBase):
    """LSTM layer, drop-in for torch.nn.LSTM (gate order i, f, g, o; `proj_size` as torch);
    forward returns (output, (h_n, c_n)). See `rnnkit.cells.lstm`; with `layer_norm=True`,
    `rnnkit.cells.ln_lstm` (proj_size supported)."""

    gates = 4
    num_states = 2
    layer_norm_family = "lstm"

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        proj_size=0,
        device=None,
        dtype=None,
        *,
        impl="fused",
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        layer_norm=False,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device=device,
            dtype=dtype,
            impl=impl,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            layer_norm=layer_norm,
        )

    def _kernel(self, x, state, w, batch_sizes):
        if w["ln"] is not None:
            y, h, c = ln_lstm(
                x,
                *state,
                *_torch_weights(w),
                **w["ln"],
                w_hr=w["w_hr"],
                batch_sizes=batch_sizes,
                impl=self.impl,
            )
            return y, (h, c)
        y, h, c = lstm(
            x,
            state[0],
            state[1],
            w["w_ih"],
            w["w_hh"],
            w["b_ih"],
            w["b_hh"],
            w_hr=w["w_hr"],
            batch_sizes=batch_sizes,
            impl=self.impl,
        )
        return y, (h, c)

    def _step(self, x_t, state, w, rec_mask):
        if w["ln"] is not None:
            return ln_lstm_step(x_t, state, *_torch_weights(w), **w["ln"], w_hr=w["w_hr"], rec_mask=rec_mask)
        return lstm_step(x_t, state, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], w["w_hr"], rec_mask=rec_mask)


class GRU(RecurrentBase):
    """GRU layer, drop-in for torch.nn.GRU (gate order r, z, n). `reset_after=True` is torch's
    form, `False` the original of Cho et al. 2014. See `rnnkit.cells.gru`; with `layer_norm=True`
    (reset_after=True only), `rnnkit.cells.ln_gru`."""

    gates = 3
    layer_norm_family = "gru"

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        device=None,
        dtype=None,
        *,
        impl="fused",
        reset_after=True,
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        layer_norm=False,
        proj_size=0,
    ):
        check_no_projection(proj_size, "GRU")
        check_bool("reset_after", reset_after)
        if layer_norm is True:
            check_reset_after(reset_after, "GRU")
        self.reset_after = reset_after
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
            impl=impl,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            layer_norm=layer_norm,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    def _kernel(self, x, state, w, batch_sizes):
        if w["ln"] is not None:
            y, h = ln_gru(x, state[0], *_torch_weights(w), **w["ln"], batch_sizes=batch_sizes, impl=self.impl)
            return y, (h,)
        y, h = gru(
            x,
            state[0],
            w["w_ih"],
            w["w_hh"],
            w["b_ih"],
            w["b_hh"],
            reset_after=self.reset_after,
            batch_sizes=batch_sizes,
            impl=self.impl,
        )
        return y, (h,)

    def _step(self, x_t, state, w, rec_mask):
        if w["ln"] is not None:
            return ln_gru_step(x_t, state, *_torch_weights(w), **w["ln"], rec_mask=rec_mask)
        return gru_step(
            x_t, state, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], self.reset_after, rec_mask=rec_mask
        )


class MGU(RecurrentBase):
    """Minimal gated unit layer (Zhou et al. 2016), with GRU's calling convention (gate order f,
    n). See `rnnkit.cells.mgu`."""

    gates = 2

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        device=None,
        dtype=None,
        *,
        impl="fused",
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        layer_norm=False,
        proj_size=0,
    ):
        check_no_projection(proj_size, "MGU")
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
            impl=impl,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            layer_norm=layer_norm,
        )

    def _kernel(self, x, state, w, batch_sizes):
        y, h = mgu(
            x, state[0], w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], batch_sizes=batch_sizes, impl=self.impl
        )
        return y, (h,)

    def _step(self, x_t, state, w, rec_mask):
        return mgu_step(x_t, state, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], rec_mask=rec_mask)


def _torch_weights(w: dict) -> tuple:
    """(w_ih, w_hh, b_ih, b_hh): the positional weights every kernel takes, in torch's order."""
    return w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"]
