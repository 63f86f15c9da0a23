"""Neural Turing Machine (Graves, Wayne and Danihelka 2014, arXiv 1410.5401): a controller network
that reads from and writes to an external memory matrix through differentiable, soft attention.

B batch, T steps, N memory slots, M memory width, R read heads, K shift range, H controller size.

Addressing (section 3.3), for each head, from the controller output h_t (B, H):
  k, beta, g, s, gamma = heads(h_t)                            one Linear for all heads, then
      k     (B, M)        key, as is (cosine similarity ignores its scale)
      beta  (B, 1)        key strength, softplus(.) >= 0
      g     (B, 1)        interpolation gate, sigmoid(.) in (0, 1)
      s     (B, 2K+1)     shift weighting over the shifts -K..K, softmax(.)
      gamma (B, 1)        sharpening exponent, 1 + softplus(.) >= 1
  w^c_t(i) = exp(beta K(k, M_{t-1}(i))) / sum_j exp(beta K(k, M_{t-1}(j)))   (B, N)   (5)
      K(u, v) = u.v / (||u|| ||v||)                                                   (6)
  w^g_t    = g w^c_t + (1 - g) w_{t-1}                                       (B, N)   (7)
  w~_t(i)  = sum_{j=0}^{N-1} w^g_t(j) s_t((i - j) mod N)                     (B, N)   (8)
  w_t(i)   = w~_t(i)^gamma / sum_j w~_t(j)^gamma                             (B, N)   (9)

Reading and writing (sections 3.1 and 3.2):
  r_t      = sum_i w_t(i) M_{t-1}(i) = w_t^T M_{t-1}                         (B, M)   (2)
  M_t      = M_{t-1} * (1 - w_t e_t^T) + w_t a_t^T                           (B, N, M) (3), (4)
      e (B, M) erase vector, sigmoid(.) in (0, 1); a (B, M) add vector, tanh(.)

One step of the machine (the paper leaves the order open; this is the one here):
  h_t = controller([x_t; r^1_{t-1}; ...; r^R_{t-1}])        LSTM cell, or tanh(W [.] + b)
  every head addresses M_{t-1}; the R read heads read r^i_t from M_{t-1}; THEN the write head
  writes, giving M_t. So READS COME BEFORE THE WRITE within a step: what is written at step t is
  first readable at step t + 1.
  y_t = W_y [h_t; r^1_t; ...; r^R_t] + b_y                   (B, output_size) logits

Initial state, as Collier and Beel (2018, "Implementing Neural Turing Machines") found to train
stably: the memory starts at the small constant 1e-6 everywhere (not random per sequence, which
they found to train worse; every row equal, so content addressing starts uniform and the learned,
focused w_0 below is what breaks the symmetry between the slots), and the initial read
vectors r_0, the initial weightings w_0 = softmax(learned bias) and the initial LSTM state
(h_0, c_0) are learned parameters shared by every sequence of the batch.

Numerical guards, so that values and gradients stay finite at exact zeros:
  K(u, v) = u.v / (sqrt(||u||^2 + eps) sqrt(||v||^2 + eps)), eps = 1e-8: an all-zero memory row
      or key gives K = 0 (not 0/0), with a finite gradient (torch.norm's gradient at 0 is NaN).
  eq. (9) is computed as softmax_i(gamma log(w(i) + 1e-12)): torch.pow(0, gamma) has a NaN
      gradient in gamma (through log 0), and focused weightings do contain exact zeros; the
      softmax's max subtraction keeps the denominator >= 1 (it cannot underflow to 0).
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit._checks import check_choice, check_like, check_positive_int, check_tensor, shape_str
from rnnkit.cells.lstm import LSTMUnit
from rnnkit.cells.registry import name_of, registered
from rnnkit.errors import RnnkitTypeError, RnnkitValueError

FEEDFORWARD = "feedforward"  # the controller that is not a recurrent cell


def controllers() -> tuple[str, ...]:
    """A controller: the LSTM cell (Graves et al.'s choice), by its registered name, or
    feedforward. (The model builds a cell controller through the registry, from its name.)"""
    return (name_of(LSTMUnit), FEEDFORWARD)


MEMORY_INIT = 1e-6  # Collier and Beel's constant memory initialisation
COSINE_EPS = 1e-8  # inside the norms of eq. (6)
SHARPEN_EPS = 1e-12  # added to w before w^gamma in eq. (9)


def _eps(value: float, like: torch.Tensor) -> float:
    """`value`, or the smallest normal number of `like`'s dtype where `value` would underflow
    (1e-12 is 0 in float16, and then the guard guards nothing)."""
    return max(value, torch.finfo(like.dtype).tiny)


def _check_last(name: str, value: torch.Tensor, size: int, meaning: str) -> None:
    if value.shape[-1] != size:
        raise RnnkitValueError(
            f"{name} must have {size} ({meaning}) in its last dimension, got shape {shape_str(value)}"
        )


def content_weights(memory: torch.Tensor, key: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Content addressing, eqs. (5)-(6): w^c(i) = softmax_i(beta K(k, M(i))).

    memory (B, N, M), key (B, M), beta (B, 1) -> (B, N); extra leading dimensions broadcast
    (memory (B, 1, N, M) with key (B, R, M) addresses R heads at once). K is the cosine
    similarity with eps = 1e-8 inside both norms, so an all-zero row or key scores 0 and an
    all-zero memory gives the uniform weighting, with finite gradients.
    """
    check_tensor("memory", memory)
    check_tensor("key", key)
    check_tensor("beta", beta)
    if memory.dim() < 2 or key.dim() != memory.dim() - 1:
        raise RnnkitValueError(
            f"memory must be (B, N, M) and key (B, M), "
            f"got memory {shape_str(memory)} and key {shape_str(key)}"
        )
    _check_last("key", key, memory.shape[-1], "the memory width M")
    _check_last("beta", beta, 1, "one key strength per head")
    eps = _eps(COSINE_EPS, memory)
    dot = (memory @ key.unsqueeze(-1)).squeeze(-1)  # (B, N)
    mem_norm = torch.sqrt(memory.pow(2).sum(-1) + eps)  # (B, N)
    key_norm = torch.sqrt(key.pow(2).sum(-1, keepdim=True) + eps)  # (B, 1)
    return torch.softmax(beta * dot / (mem_norm * key_norm), dim=-1)  # (B, N)


def interpolate(w_c: torch.Tensor, w_prev: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Interpolation, eq. (7): w^g = g w^c + (1 - g) w_{t-1}.

    w_c (B, N), w_prev (B, N), g (B, 1) in [0, 1] -> (B, N).
    """
    check_tensor("w_c", w_c)
    check_tensor("w_prev", w_prev)
    check_tensor("g", g)
    if w_prev.shape != w_c.shape:
        raise RnnkitValueError(f"w_prev must have the shape of w_c {shape_str(w_c)}, got {shape_str(w_prev)}")
    _check_last("g", g, 1, "one gate per head")
    return g * w_c + (1 - g) * w_prev  # (B, N)


def shift(w_g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Rotation by circular convolution, eq. (8): w~(i) = sum_j w^g(j) s((i - j) mod N).

    w_g (B, N), s (B, 2K+1) -> (B, N); s[..., k] is the weight of the shift by k - K slots
    (index K: stay, K + 1: move one slot up, with wrap-around). One torch.roll per shift.
    """
    check_tensor("w_g", w_g)
    check_tensor("s", s)
    if s.shape[-1] % 2 != 1:
        raise RnnkitValueError(
            f"s must have 2K+1 (an odd number of) shifts in its last dimension, got {shape_str(s)}"
        )
    K = s.shape[-1] // 2
    # roll(w, d)[i] = w[i - d]: the term of shift d = i - j is w(i - d) s(d)
    rolled = torch.stack([torch.roll(w_g, k - K, dims=-1) for k in range(2 * K + 1)], dim=-1)  # (B, N, 2K+1)
    return (rolled * s.unsqueeze(-2)).sum(-1)  # (B, N)


def sharpen(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Sharpening, eq. (9): w(i)^gamma / sum_j w(j)^gamma.

    w (B, N) >= 0, gamma (B, 1) >= 1 -> (B, N). Computed as softmax_i(gamma log(w(i) + 1e-12)),
    the same quotient: the 1e-12 makes exact zeros in w (a focused weighting shifted by a one-hot
    s has them) give finite values and finite gradients in both w and gamma (torch.pow(0, gamma)
    has a NaN gradient in gamma, through log 0), and the softmax subtracts the largest term
    first, so the denominator is >= 1 instead of underflowing to 0 when every w(i)^gamma does
    (an all-zero w comes out uniform).
    """
    check_tensor("w", w)
    check_tensor("gamma", gamma)
    _check_last("gamma", gamma, 1, "one exponent per head")
    return torch.softmax(gamma * torch.log(w + _eps(SHARPEN_EPS, w)), dim=-1)  # (B, N)


class HeadParams(NamedTuple):
    """The addressing parameters of a head, constrained: key (B, M), beta (B, 1) >= 0,
    g (B, 1) in (0, 1), s (B, 2K+1) a distribution over the shifts -K..K, gamma (B, 1) >= 1."""

    key: torch.Tensor
    beta: torch.Tensor
    g: torch.Tensor
    s: torch.Tensor
    gamma: torch.Tensor


def head_width(memory_width: int, shift_range: int) -> int:
    """Controller outputs per head for addressing: M (k) + 1 (beta) + 1 (g) + 2K+1 (s) + 1 (gamma)."""
    return memory_width + 2 * shift_range + 4


def head_params(raw: torch.Tensor, memory_width: int, shift_range: int) -> HeadParams:
    """Split and constrain raw controller outputs (B, M + 2K + 4), laid out [k, beta, g, s, gamma]:
    k as is, beta = softplus, g = sigmoid, s = softmax over the 2K+1 shifts, gamma = 1 + softplus."""
    check_tensor("raw", raw)
    _check_last("raw", raw, head_width(memory_width, shift_range), "M + 2K + 4 head outputs")
    k, beta, g, s, gamma = raw.split([memory_width, 1, 1, 2 * shift_range + 1, 1], dim=-1)
    return HeadParams(k, F.softplus(beta), torch.sigmoid(g), torch.softmax(s, dim=-1), 1 + F.softplus(gamma))


def erase_add(raw: torch.Tensor, memory_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The write head's erase and add vectors from raw outputs (B, 2M), laid out [e, a]:
    e = sigmoid (each entry a fraction to erase), a = tanh (each add bounded, as the controller's
    own outputs are)."""
    check_tensor("raw", raw)
    _check_last("raw", raw, 2 * memory_width, "2M: erase and add vectors")
    e, a = raw.split(memory_width, dim=-1)
    return torch.sigmoid(e), torch.tanh(a)  # (B, M) each


def address(memory: torch.Tensor, params: HeadParams, w_prev: torch.Tensor) -> torch.Tensor:
    """The whole addressing pipeline of figure 2, eqs. (5)-(9): content, interpolation, shift,
    sharpening. memory (B, N, M), params of (B, .), w_prev (B, N) -> w (B, N)."""
    w_c = content_weights(memory, params.key, params.beta)  # (B, N)
    w_g = interpolate(w_c, w_prev, params.g)  # (B, N)
    return sharpen(shift(w_g, params.s), params.gamma)  # (B, N)


def memory_read(memory: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Read, eq. (2): r = sum_i w(i) M(i) = w^T M. memory (B, N, M), w (B, N) -> (B, M);
    extra leading dimensions broadcast (memory (B, 1, N, M), w (B, R, N) -> (B, R, M))."""
    check_tensor("memory", memory)
    check_tensor("w", w)
    _check_last("w", w, memory.shape[-2], "the number of memory slots N")
    return (w.unsqueeze(-2) @ memory).squeeze(-2)  # (B, M)


def memory_write(
    memory: torch.Tensor, w: torch.Tensor, erase: torch.Tensor, add: torch.Tensor
) -> torch.Tensor:
    """Erase then add, eqs. (3)-(4): M_t = M_{t-1} * (1 - w e^T) + w a^T.

    memory (B, N, M), w (B, N), erase (B, M) in [0, 1], add (B, M) -> (B, N, M).
    """
    check_tensor("memory", memory, ndim=3)
    check_tensor("w", w, ndim=2)
    _check_last("w", w, memory.shape[-2], "the number of memory slots N")
    _check_last("erase", erase, memory.shape[-1], "the memory width M")
    _check_last("add", add, memory.shape[-1], "the memory width M")
    w = w.unsqueeze(-1)  # (B, N, 1)
    return memory * (1 - w * erase.unsqueeze(-2)) + w * add.unsqueeze(-2)  # (B, N, M)


@dataclass(frozen=True)
class NTMConfig:
    input_size: int
    output_size: int
    _: KW_ONLY
    controller: str = "lstm"  # the LSTM cell (its step), or "feedforward" (one tanh layer)
    controller_size: int = 100
    memory_slots: int = 128  # N
    memory_width: int = 20  # M
    read_heads: int = 1  # R
    shift_range: int = 1  # K: the heads can move by -K..K slots per step

    def __post_init__(self):
        check_positive_int("input_size", self.input_size)
        check_positive_int("output_size", self.output_size)
        check_choice("controller", self.controller, controllers())
        check_positive_int("controller_size", self.controller_size)
        check_positive_int("memory_slots", self.memory_slots)
        check_positive_int("memory_width", self.memory_width)
        check_positive_int("read_heads", self.read_heads)
        K = self.shift_range
        if isinstance(K, bool) or not isinstance(K, int):
            raise RnnkitTypeError(f"shift_range must be an int, got {type(K).__name__}")
        if K < 0:
            raise RnnkitValueError(f"shift_range must be >= 0, got {K}")
        if 2 * K + 1 > self.memory_slots:
            # more shifts than slots would alias: two shifts that are the same rotation mod N
            raise RnnkitValueError(
                f"shift_range must be at most (memory_slots - 1) // 2 = {(self.memory_slots - 1) // 2} so "
                f"that the 2K+1 shifts are distinct rotations, got {K} with memory_slots={self.memory_slots}"
            )


class NTM(nn.Module):
    """forward(x (B, T, input_size), *, return_trace=False) -> logits (B, T, output_size); with
    return_trace=True, (logits, trace), trace holding detached "read_weights" (B, T, R, N),
    "write_weights" (B, T, N) and the final "memory" (B, N, M).

    Parameters:
      controller        the LSTM cell's step (I + R M -> H), or Linear(I + R M, H) followed by
                        tanh; its output h is its first state
      controller_h0/c0  (H,) learned initial states (h, c) of the LSTM controller, zeros at first
      heads             Linear(H, (R + 1)(M + 2K + 4) + 2M): the R read heads' addressing
                        outputs, then the write head's, each [k, beta, g, s, gamma]; then [e, a]
      output            Linear(H + R M, output_size)
      read0             (R, M) learned initial read vectors r_0, zeros at first
      weighting0        (R + 1, N) logits of the initial weightings w_0 (read heads, then the
                        write head): 0.99 of the weight on slot 0 at first, so the heads start
                        focused (a uniform start gives uniform writes into a constant memory,
                        a symmetry that location addressing cannot break)
    The linear layers keep torch's default initialisation. The memory starts at `memory_init`
    (an attribute, MEMORY_INIT = 1e-6, not a parameter) everywhere.
    """

    def __init__(self, config: NTMConfig):
        super().__init__()
        if not isinstance(config, NTMConfig):
            raise RnnkitTypeError(f"config must be an NTMConfig, got {type(config).__name__}")
        self.config = config
        c = config
        R, N, M, H = c.read_heads, c.memory_slots, c.memory_width, c.controller_size
        controller_in = c.input_size + R * M
        self._initial = []  # the names of a cell controller's learned initial states
        if c.controller == FEEDFORWARD:
            self.controller = nn.Linear(controller_in, H)
        else:
            self.controller = registered(c.controller)(controller_in, H)
            for name, n in zip(("controller_h0", "controller_c0"), self.controller.state_sizes):
                self.register_parameter(name, nn.Parameter(torch.zeros(n)))
                self._initial.append(name)
        self.head_width = head_width(M, c.shift_range)
        self.heads = nn.Linear(H, (R + 1) * self.head_width + 2 * M)
        self.output = nn.Linear(H + R * M, c.output_size)
        self.read0 = nn.Parameter(torch.zeros(R, M))
        focus = math.log(99 * (N - 1)) if N > 1 else 0.0  # softmax puts 0.99 on slot 0
        self.weighting0 = nn.Parameter(torch.zeros(R + 1, N).index_fill_(1, torch.tensor([0]), focus))
        self.memory_init = MEMORY_INIT

    def _controller(self, inp: torch.Tensor, state):
        if self.config.controller == FEEDFORWARD:
            return torch.tanh(self.controller(inp)), None  # (B, H)
        state = tuple(self.controller(inp, state))  # the cell's step; h (B, H) first
        return state[0], state

    def forward(self, x: torch.Tensor, *, return_trace: bool = False):
        check_tensor("x", x, ndim=3)
        c = self.config
        if x.shape[-1] != c.input_size:
            raise RnnkitValueError(
                f"x must have {c.input_size} features (input_size) in its last dimension, "
                f"got shape {shape_str(x)}"
            )
        if x.shape[1] == 0:
            raise RnnkitValueError(f"x must have at least one time step, got shape {shape_str(x)}")
        check_like("x", x, "the NTM's parameters", self.read0)
        B, T, _ = x.shape
        R, N, M, K = c.read_heads, c.memory_slots, c.memory_width, c.shift_range
        A = self.head_width

        memory = x.new_full((B, N, M), self.memory_init)  # (B, N, M) M_0
        reads = self.read0.expand(B, R, M)  # (B, R, M) r_0
        weights = torch.softmax(self.weighting0, dim=-1).expand(B, R + 1, N)  # (B, R+1, N) w_0
        state = None
        if self._initial:
            state = tuple(getattr(self, n).expand(B, -1) for n in self._initial)  # (B, n) each

        logits, read_trace, write_trace = [], [], []
        for t in range(T):
            h, state = self._controller(torch.cat([x[:, t], reads.flatten(1)], dim=1), state)  # (B, H)
            raw = self.heads(h)  # (B, (R+1) A + 2M)
            params = head_params(raw[:, : (R + 1) * A].view(B, R + 1, A), M, K)  # of (B, R+1, .)
            # every head addresses M_{t-1}: the write happens after the reads
            weights = address(memory.unsqueeze(1), params, weights)  # (B, R+1, N)
            reads = memory_read(memory.unsqueeze(1), weights[:, :R])  # (B, R, M) from M_{t-1}
            erase, add = erase_add(raw[:, (R + 1) * A :], M)  # (B, M) each
            memory = memory_write(memory, weights[:, R], erase, add)  # (B, N, M) M_t
            logits.append(self.output(torch.cat([h, reads.flatten(1)], dim=1)))  # (B, output_size)
            if return_trace:
                read_trace.append(weights[:, :R].detach())
                write_trace.append(weights[:, R].detach())

        out = torch.stack(logits, dim=1)  # (B, T, output_size)
        if not return_trace:
            return out
        trace = {
            "read_weights": torch.stack(read_trace, dim=1),  # (B, T, R, N)
            "write_weights": torch.stack(write_trace, dim=1),  # (B, T, N)
            "memory": memory.detach(),  # (B, N, M) M_T
        }
        return out, trace
