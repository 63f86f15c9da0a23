"""Sequence layers: the loop over layers and directions, lengths, states; torch-compatible."""

from rnnkit.layers.rnn import GRU, LSTM, MGU, RNN

__all__ = ["GRU", "LSTM", "MGU", "RNN"]
