"""Checkpoints that are never half-written and never unpickled.

A checkpoint NAME in a directory is two files:
  NAME.json                    what is not a tensor (config, step, optimizer hyperparameters,
                               RNG states, data position, ...) as a tree in which every tensor is
                               replaced by {"__tensor__": key}; plus the name and SHA-256 of:
  NAME-<sha256 prefix>.safetensors   every tensor of the tree, by key.
Both are written to a temporary file in the same directory, flushed, fsynced and renamed into
place, weights first. The JSON file is the commit point: it always names a complete weights file,
so a crash at any moment leaves the previous checkpoint loadable. After the commit the weights
file the previous checkpoint named is removed, and so is any file left by a killed write that is
provably ours (its name carries the SHA-256 prefix of its content); nothing else is ever deleted.
Temporary files of killed writes (.NAME.*.tmp) are removed by the next write of NAME. Loading
checks the hash and the structure and raises an rnnkit error naming the file, never a pickle or a
KeyError.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from rnnkit.errors import RnnkitFileError, RnnkitTypeError, RnnkitValueError

FORMAT = "rnnkit-checkpoint/1"
_UMASK = os.umask(0o022)  # read by setting it, then put back as it was
os.umask(_UMASK)
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


def _flatten(tree, tensors: dict, path: str):
    """tree -> JSON-able tree; tensors move into `tensors` under their path."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().cpu().clone()  # a copy: tied weights must not share storage
        return {_TENSOR: path}
    if isinstance(tree, dict):
        if not all(isinstance(k, (str, int)) for k in tree):
            raise RnnkitTypeError(
                f"checkpoint keys must be str or int, got {[type(k).__name__ for k in tree]} at {path!r}"
            )
        # int keys (optimizer state is keyed by parameter index) are kept apart from str keys
        return {"__dict__": [[k, _flatten(v, tensors, f"{path}/{k}")] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        items = [_flatten(v, tensors, f"{path}/{i}") for i, v in enumerate(tree)]
        return {_TUPLE: items} if isinstance(tree, tuple) else items
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise RnnkitTypeError(f"cannot store a {type(tree).__name__} in a checkpoint (at {path!r})")


def _unflatten(tree, tensors: dict, source: Path):
    if isinstance(tree, dict):
        if _TENSOR in tree:
            key = tree[_TENSOR]
            if not isinstance(key, str) or key not in tensors:
                raise RnnkitValueError(f"checkpoint {source} names a tensor {key!r} its weights file lacks")
            return tensors[key]
        if _TUPLE in tree:
            return tuple(_unflatten(v, tensors, source) for v in tree[_TUPLE])
        if "__dict__" in tree:
            items = tree["__dict__"]
            if not isinstance(items, list) or not all(
                isinstance(i, list) and len(i) == 2 and isinstance(i[0], (str, int)) for i in items
            ):
                raise RnnkitValueError(f"checkpoint {source} holds a malformed object: {str(items)[:80]}")
            return {k: _unflatten(v, tensors, source) for k, v in items}
        raise RnnkitValueError(f"checkpoint {source} holds an object of unknown form: {sorted(tree)}")
    if isinstance(tree, list):
        return [_unflatten(v, tensors, source) for v in tree]
    return tree


def write_bytes(path, data: bytes) -> None:
    """`data` as the file `path`, atomically: a temporary file in the same directory, flushed,
    fsynced and renamed into place. Temporaries that a killed earlier write of `path` left are
    removed first."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600, made what open() would have made
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_weights(path, state_dict: dict) -> None:
    """A state_dict as one safetensors file, written atomically (tied weights stored twice)."""
    write_bytes(path, save_tensors({k: v.detach().cpu().clone() for k, v in state_dict.items()}))


def write_json(path, obj) -> None:
    """JSON written atomically (strict: a NaN or infinity is an error, not invalid JSON)."""
    write_bytes(path, json.dumps(obj, indent=1, allow_nan=False).encode())


def save_checkpoint(directory, name: str, tree) -> Path:
    """Write `tree` (nested dicts, lists, tuples, tensors and JSON scalars) as checkpoint `name`
    in `directory`, atomically. Returns the path of its JSON file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    skeleton = _flatten(tree, tensors, "")
    blob = save_tensors(tensors) if tensors else save_tensors({"": torch.zeros(0)})
    digest = hashlib.sha256(blob).hexdigest()
    weights = directory / f"{name}-{digest[:16]}.safetensors"
    if not weights.exists():
        write_bytes(weights, blob)
    meta = {"format": FORMAT, "weights": weights.name, "sha256": digest, "tree": skeleton}
    index = directory / f"{name}.json"
    previous = _named_weights(index)
    write_bytes(index, json.dumps(meta, indent=1).encode())
    # weights no checkpoint names any more: the previous checkpoint's, and those of killed writes
    # (their name is the hash of their content: a user's file of a similar name is never touched)
    pattern = re.compile(re.escape(name) + r"-([0-9a-f]{16})\.safetensors")
    for old in directory.glob(f"{glob_escape(name)}-*.safetensors"):
        if old.name == weights.name:
            continue
        match = pattern.fullmatch(old.name)
        if old.name == previous or (match and _digest(old).startswith(match[1])):
            old.unlink(missing_ok=True)
    return index


def _named_weights(index: Path) -> str | None:
    """The weights file a checkpoint index names, if it is one."""
    try:
        return Path(json.loads(index.read_text())["weights"]).name
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def glob_escape(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def load_checkpoint(directory, name: str):
    """The tree saved as checkpoint `name` in `directory`, validated."""
    index = Path(directory) / f"{name}.json"
    try:
        meta = json.loads(index.read_text())
    except FileNotFoundError:
        raise RnnkitFileError(f"no checkpoint {name!r} in {directory} (missing {index.name})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RnnkitFileError(f"cannot read checkpoint {index}: {e}") from None
    except json.JSONDecodeError as e:
        raise RnnkitValueError(f"checkpoint {index} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "weights" not in meta:
        raise RnnkitValueError(f"{index} is not an rnnkit checkpoint (format {FORMAT})")
    weights = index.parent / Path(meta["weights"]).name
    try:
        blob = weights.read_bytes()
    except FileNotFoundError:
        raise RnnkitFileError(f"checkpoint {index} names weights {weights.name}, which are missing") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise RnnkitValueError(f"weights {weights} do not match the hash in {index}: the file is corrupted")
    try:
        tensors = load_tensors(blob)
    except SafetensorError as e:
        raise RnnkitValueError(f"weights {weights} are not a valid safetensors file: {e}") from None
    return _unflatten(meta["tree"], tensors, index)


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's global generators, in a checkpointable tree."""
    # NumPy's legacy global generator is the one user code and libraries draw from implicitly
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # noqa: NPY002
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": cuda,  # one state per visible device, where CUDA is in use
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (after a checkpoint round trip)."""
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(state["cuda"]))
    except (KeyError, TypeError, ValueError) as e:
        raise RnnkitValueError(f"checkpoint RNG state is malformed: {e}") from None
