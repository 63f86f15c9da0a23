"""Reused memory for the fused kernels' whole-sequence buffers (the (T, B, *) arrays of a call).

Why: on CPU a fresh large buffer is mapped page by page on its first write, and the allocator
hands freed large blocks straight back to the operating system, so every kernel call paid a
page fault per 4 KiB of every array it wrote. On this 2-core VM that is ~1-2 us a page: 38,000
faults, about a third of a layer-norm LSTM training step at T=1000, B=16, H=64 (`python
benchmarks/op_floor.py` counts them with the pool on and off). A loop of per-step autograd ops
does not pay it: its small blocks are recycled by malloc. Here the kernels take their arrays
from a pool instead.

A buffer is lent as a tensor over a storage the pool keeps, and it is free again exactly when
nothing else holds that storage: the pool reads the storage's reference count, which every
tensor and view over it raises. So nothing is given back by hand, and no use can be cut short:
an output the caller keeps (or any view of it), a graph kept for a second backward
(`retain_graph=True`), or one dropped without a backward all keep or free their memory as they
would have with `torch.empty`.

The pool is bounded: it holds at most `limit()` bytes, lent and idle together (idle storages
are dropped, least recently used first, to make room; past the bound a request is a plain
allocation). `release()` drops every idle storage. Only CPU tensors are pooled: CUDA's caching
allocator already reuses memory; nor are tensor subclasses. Where this torch lacks the reference
count, nothing is pooled.
"""

from __future__ import annotations

import functools
import math
import threading

import torch

from rnnkit.cells import speed
from rnnkit.errors import RnnkitTypeError, RnnkitValueError

_use_count = getattr(torch._C, "_storage_Use_Count", None)

DEFAULT_LIMIT = 512 * 2**20  # bytes; a small model's whole training step (~130 MB at H=64, T=1000)


class _Pool:
    def __init__(self, limit: int):
        self.limit = limit
        self.storages: list[torch.UntypedStorage] = []  # least recently lent first
        self.lock = threading.Lock()

    def _idle(self, st: torch.UntypedStorage) -> bool:
        return _use_count(st._cdata) == 1  # only the pool's own reference

    def lend(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        nbytes = math.prod(shape) * dtype.itemsize
        with self.lock:
            # the smallest idle storage that fits, up to twice the request (sizes vary with T)
            best = None
            for st in self.storages:
                size = st.nbytes()
                if nbytes <= size <= 2 * nbytes and (best is None or size < best.nbytes()) and self._idle(st):
                    best = st
            if best is None:
                if self._shrink_to(self.limit - nbytes) + nbytes > self.limit:
                    return None
                best = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
            else:
                self.storages.remove(best)
            self.storages.append(best)
            # made under the lock: once the tensor exists the storage counts as lent
            return torch.empty(0, dtype=dtype).set_(best, 0, shape)

    def _shrink_to(self, nbytes: int) -> int:
        """Drop idle storages, least recently lent first, until at most `nbytes` are held (or
        none idle is left); returns the bytes still held. Called with the lock held."""
        held = sum(st.nbytes() for st in self.storages)
        for st in [st for st in self.storages if self._idle(st)]:
            if held <= nbytes:
                break
            self.storages.remove(st)
            held -= st.nbytes()
        return held


_POOL = _Pool(DEFAULT_LIMIT)


def empty(shape, like: torch.Tensor, *, zero: bool = False) -> torch.Tensor:
    """An uninitialised (or, with `zero`, zeroed) contiguous tensor of `shape` with `like`'s dtype
    and device: from the pool on CPU, else `torch.empty`."""
    shape = tuple(shape)
    t = None
    # plain CPU tensors only: a tensor subclass (FakeTensor while torch.compile traces, say) has
    # no real storage to share
    pooled = _use_count is not None and speed.on("workspace")
    if type(like) is torch.Tensor and like.device.type == "cpu" and pooled:
        t = _POOL.lend(shape, like.dtype)
    if t is None:
        t = torch.empty(shape, dtype=like.dtype, device=like.device)
    return t.zero_() if zero else t


def empty_like(t: torch.Tensor, *, zero: bool = False) -> torch.Tensor:
    """`empty(t.shape, t)`: a contiguous buffer of t's shape (the layout of t is not copied)."""
    return empty(t.shape, t, zero=zero)


def allocator(zero: bool):
    """`empty_like` with `zero` fixed: a kernel's `new(t)` for its whole-sequence buffers (zeroed
    for packed sequences, whose padded rows must read 0)."""
    return functools.partial(empty_like, zero=zero)


def copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t in a pooled buffer (a pooled `t.clone()`)."""
    return empty(t.shape, t).copy_(t)


def limit() -> int:
    """The most bytes the pool holds, lent and idle together."""
    return _POOL.limit


def set_limit(nbytes: int) -> None:
    """Bound the pool to `nbytes` (0 turns pooling off); idle storages over it are dropped now."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool):
        raise RnnkitTypeError(f"nbytes must be an int (bytes), got {type(nbytes).__name__}")
    if nbytes < 0:
        raise RnnkitValueError(f"nbytes must be >= 0, got {nbytes}")
    with _POOL.lock:
        _POOL.limit = nbytes
        _POOL._shrink_to(nbytes)


def release() -> None:
    """Drop every idle buffer, giving its memory back (what is lent stays with its holders)."""
    with _POOL.lock:
        _POOL._shrink_to(0)


def held() -> tuple[int, int]:
    """(bytes held, of which idle): what the pool keeps now."""
    with _POOL.lock:
        sizes = [(st.nbytes(), _POOL._idle(st)) for st in _POOL.storages]
    return sum(n for n, _ in sizes), sum(n for n, idle in sizes if idle)
