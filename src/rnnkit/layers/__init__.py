"""Sequence layers: the loop over layers and directions, lengths, states; torch-compatible."""

from rnnkit.layers.generic import Recurrent
from rnnkit.layers.jordan import JordanRNN
from rnnkit.layers.minimal import MinGRU, MinLSTM
from rnnkit.layers.rnn import GRU, LSTM, MGU, RNN

__all__ = ["GRU", "LSTM", "MGU", "RNN", "JordanRNN", "MinGRU", "MinLSTM", "Recurrent"]
