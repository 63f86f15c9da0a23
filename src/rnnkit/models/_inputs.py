"""The input end shared by the models that read either token ids or feature vectors, and the
recurrent layers behind it."""

from __future__ import annotations

import torch
from torch import nn

from rnnkit._checks import check_tensor, shape_str
from rnnkit.cells.traced import tracing
from rnnkit.errors import RnnkitValueError
from rnnkit.models._recurrent import recurrent_layer, regularizers


class InputEncoder(nn.Module):
    """Token ids (B, T) through an embedding when `vocab_size` is set, else feature vectors
    (B, T, input_size) as they are; checked at the boundary either way."""

    def __init__(self, *, vocab_size: int | None, input_size: int | None, embedding_dim: int):
        super().__init__()
        if (vocab_size is None) == (input_size is None):
            raise RnnkitValueError(
                "give exactly one of vocab_size (token ids) and input_size (feature vectors), got "
                f"vocab_size={vocab_size}, input_size={input_size}"
            )
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if vocab_size else None
        self.output_size = embedding_dim if vocab_size else input_size

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            check_tensor("inputs", inputs, ndim=3)
            if inputs.shape[-1] != self.output_size:
                raise RnnkitValueError(
                    f"inputs must have {self.output_size} features (input_size), "
                    f"got shape {shape_str(inputs)}"
                )
            return inputs
        check_token_ids("inputs", inputs, self.vocab_size)
        return self.embedding(inputs)  # (B, T, D)


def check_token_ids(name: str, tokens, V: int) -> None:
    """tokens: an integer tensor (B, T) of ids in 0..V-1. The values are not read under tracing
    (torch.compile / export: data-dependent); an id out of range then fails in the embedding."""
    check_tensor(name, tokens, ndim=2)
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise RnnkitValueError(f"{name} must be integer token ids (B, T), got dtype {tokens.dtype}")
    if tracing() or not tokens.numel():
        return
    low, high = (int(v) for v in torch.aminmax(tokens))
    if low < 0 or high >= V:
        raise RnnkitValueError(
            f"{name} must be ids in 0..{V - 1} (vocab_size {V}), got values in {low}..{high} "
            f"(shape {shape_str(tokens)})"
        )


def valid_mask(lengths, B: int, T: int, device) -> torch.Tensor:
    """(B, T) True at the valid steps of each sequence (all of them when lengths is None)."""
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    lens = torch.as_tensor(lengths, device=device)
    return torch.arange(T, device=device)[None, :] < lens[:, None]


def encoder_and_layer(config) -> tuple[InputEncoder, nn.Module]:
    """The input end and the recurrent layers of a model whose config has vocab_size or
    input_size, embedding_dim, cell, hidden_size, num_layers, dropout, bidirectional and impl."""
    encoder = InputEncoder(
        vocab_size=config.vocab_size, input_size=config.input_size, embedding_dim=config.embedding_dim
    )
    layer = recurrent_layer(
        config.cell,
        encoder.output_size,
        config.hidden_size,
        num_layers=config.num_layers,
        dropout=config.dropout,
        bidirectional=config.bidirectional,
        impl=config.impl,
        **regularizers(config),
    )
    return encoder, layer
