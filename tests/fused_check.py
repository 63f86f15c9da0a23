"""The check a cell with its own fused `forward_sequence` must pass (IndRNN, the peephole LSTM,
and any cell written against the public hook): through rnnkit.Recurrent (2 layers,
bidirectional, float64), the fused kernel and stepping `forward` (impl="loop") give the same
outputs, final states and gradients (input, initial states, every parameter), to 1e-10, with
padded `lengths` or a PackedSequence."""

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit


def assert_fused_equals_stepping(cell_class, hidden_size: int, *, bias: bool, packed: bool, scale: float):
    make = dict(num_layers=2, bidirectional=True, dtype=torch.float64, bias=bias)
    fused = rnnkit.Recurrent(cell_class, 3, hidden_size, **make)
    stepped = rnnkit.Recurrent(cell_class, 3, hidden_size, impl="loop", **make)
    with torch.no_grad():
        for p in fused.parameters():
            p.normal_(0, scale)
    stepped.load_state_dict(fused.state_dict())
    lengths = [7, 7, 4, 1]
    x = torch.randn(7, 4, 3, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(4, 4, n, dtype=torch.float64, requires_grad=True) for n in fused.state_sizes)

    def run(layer):
        inp = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False) if packed else x
        y, states = layer(inp, hx, **({} if packed else {"lengths": lengths}))
        y = pad_packed_sequence(y)[0] if packed else y
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * weights).sum() + sum((s**3).sum() for s in states)
        return (y, *states, *torch.autograd.grad(loss, [x, *hx, *layer.parameters()]))

    for a, b in zip(run(fused), run(stepped), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
