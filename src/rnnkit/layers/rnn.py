"""The torch drop-in layers: each is `TorchLayer` (`rnnkit.Recurrent` with torch's parameter
names) over one family's unit, with torch's constructor signature. Equations live with the units
in `rnnkit.cells`.

`layer_norm=True` (LSTM and GRU) picks the layer-normalised unit (`rnnkit.cells.ln_lstm`,
`ln_gru`; Ba et al. 2016): per layer and direction, after torch's parameters, the gains
layer_norm_{ih,hh}_weight_l{k}[_reverse] (G*H,) (1 at first) and shifts
layer_norm_{ih,hh}_bias_l{k}[_reverse] (0), and for the LSTM layer_norm_c_weight/_bias (H,).
"""

from __future__ import annotations

from rnnkit._checks import check_bool, check_choice, check_no_projection
from rnnkit.cells._layernorm import GRU_SITES, LSTM_SITES, check_layer_norm_flag
from rnnkit.cells.elman import NONLINEARITIES, ElmanReluUnit, ElmanUnit
from rnnkit.cells.gru import GRUResetBeforeUnit, GRUUnit
from rnnkit.cells.ln_gru import LNGRUUnit, check_reset_after
from rnnkit.cells.ln_lstm import LNLSTMUnit
from rnnkit.cells.lstm import LSTMUnit
from rnnkit.cells.mgu import MGUUnit
from rnnkit.layers.recurrent import TorchLayer


class _Normalizable(TorchLayer):
    """`layer_norm` shown in the repr when on."""

    layer_norm = False

    def extra_repr(self) -> str:
        return super().extra_repr() + (", layer_norm=True" if self.layer_norm else "")


class RNN(_Normalizable):
    """Elman RNN layer, drop-in for torch.nn.RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    (or relu), per layer and direction; see `rnnkit.cells.elman`."""

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
        check_layer_norm_flag(layer_norm, "RNN", None)
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        super().__init__(
            ElmanReluUnit if nonlinearity == "relu" else ElmanUnit,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            impl=impl,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            nonlinearity=nonlinearity,
        )
        self.nonlinearity = nonlinearity

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity!r}"


class LSTM(_Normalizable):
    """LSTM layer, drop-in for torch.nn.LSTM (gate order i, f, g, o; `proj_size` as torch);
    forward returns (output, (h_n, c_n)). See `rnnkit.cells.lstm`; with `layer_norm=True`,
    `rnnkit.cells.ln_lstm` (proj_size supported)."""

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
        self.layer_norm = check_layer_norm_flag(layer_norm, "LSTM", LSTM_SITES)
        super().__init__(
            LNLSTMUnit if layer_norm else LSTMUnit,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            impl=impl,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            proj_size=proj_size,
        )


class GRU(_Normalizable):
    """GRU layer, drop-in for torch.nn.GRU (gate order r, z, n). `reset_after=True` is torch's
    form, `False` the original of Cho et al. 2014. See `rnnkit.cells.gru`; with `layer_norm=True`
    (reset_after=True only), `rnnkit.cells.ln_gru`."""

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
        self.layer_norm = check_layer_norm_flag(layer_norm, "GRU", GRU_SITES)
        if layer_norm:
            check_reset_after(reset_after, "GRU")
        super().__init__(
            LNGRUUnit if layer_norm else GRUUnit if reset_after else GRUResetBeforeUnit,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            impl=impl,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
            **({} if layer_norm else {"reset_after": reset_after}),
        )
        self.reset_after = reset_after

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")


class MGU(_Normalizable):
    """Minimal gated unit layer (Zhou et al. 2016), with GRU's calling convention (gate order f,
    n). See `rnnkit.cells.mgu`."""

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
        check_layer_norm_flag(layer_norm, "MGU", None)
        super().__init__(
            MGUUnit,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            impl=impl,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            learn_initial_state=learn_initial_state,
        )
