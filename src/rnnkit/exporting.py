"""`rnnkit export`: a trained run's inference model as ONNX, for onnxruntime and numpy alone.

    rnnkit.export_onnx("runs/charlm-...")          -> [Path("runs/charlm-.../model.onnx"), ...]

Each task says what to write (`Task.onnx_graphs`: the graphs, their named inputs and outputs and
dynamic axes; `Task.onnx_metadata`: the vocabulary, labels or scaling a program needs beside
them). The graphs are traced by `torch.onnx.export(dynamo=True)`, the recurrent layers lowered as
`rnnkit.cells.traced` describes (ONNX's LSTM/GRU/RNN, else a Scan), batch and time dynamic. Next
to `model.onnx` goes `model.json`: the task, the files, every input and output in words, and the
metadata. A task with several graphs (seq2seq: encoder and decoder step) writes `model.<part>.onnx`.

Files are written atomically; a path that exists is replaced only when it is an export of ours
(its `model.json` says so), never a file this program did not write.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch

from rnnkit import __version__
from rnnkit.errors import RnnkitFileError, RnnkitUnsupportedError, RnnkitValueError
from rnnkit.training.checkpoint import write_bytes, write_json

FORMAT = "rnnkit-onnx-1"
# torch.onnx.ops.symbolic_multi_out (ONNX's own LSTM/GRU/RNN) and the scan higher-order op's
# translation to ONNX Scan came after the package's minimum torch; tested with 2.13.
MIN_TORCH = (2, 9)


def export_onnx(run, out=None, *, check: bool = True) -> list[Path]:
    """Write `run` (an `rnnkit.Run`) as ONNX at `out` (default RUN_DIR/model.onnx) with its JSON
    beside it; with `check`, run each file in onnxruntime on the example inputs and compare with
    the PyTorch model (max absolute difference 1e-4). Returns the paths written."""
    _check_requirements()
    task = run._task
    graphs = task.onnx_graphs(run.model)
    out = Path(out) if out is not None else run.run_dir / "model.onnx"
    if out.suffix != ".onnx":
        raise RnnkitValueError(f"--out must name a .onnx file, got {out}")
    meta_path = out.with_suffix(".json")
    paths = {g.part: out if not g.part else out.with_name(f"{out.stem}.{g.part}.onnx") for g in graphs}
    extra = {
        name: (out.with_name(f"{out.stem}.{name}.json"), text) for name, text in task.onnx_files().items()
    }
    _check_writable([*paths.values(), *(p for p, _ in extra.values()), meta_path], meta_path)
    blobs = {g.part: _onnx_bytes(g) for g in graphs}  # all traced and checked before anything is written
    if check:
        for g in graphs:
            _check_against_torch(blobs[g.part], g)
    out.parent.mkdir(parents=True, exist_ok=True)
    described = []
    for g in graphs:
        write_bytes(paths[g.part], blobs[g.part])
        described.append(
            {
                "part": g.part or "model",
                "file": paths[g.part].name,
                "inputs": list(g.names),
                "outputs": list(g.outputs),
                "doc": g.doc,
            }
        )
    for path, text in extra.values():
        write_bytes(path, text.encode("utf-8"))
    write_json(
        meta_path,
        {
            "format": FORMAT,
            "written_by": f"rnnkit {__version__} export",
            "task": task.name,
            "graphs": described,
            **task.onnx_metadata(run.model),
            **{name: path.name for name, (path, _) in extra.items()},
        },
    )
    return [*paths.values(), *(p for p, _ in extra.values()), meta_path]


def _check_requirements() -> None:
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        raise RnnkitUnsupportedError(
            f"rnnkit export needs torch >= {'.'.join(map(str, MIN_TORCH))} (this is {torch.__version__})"
        )
    missing = [m for m in ("onnx", "onnxscript") if not _importable(m)]
    if missing:
        raise RnnkitUnsupportedError(
            f"rnnkit export needs {' and '.join(missing)}: pip install 'rnnkit[export]'"
        )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_writable(paths: list[Path], meta_path: Path) -> None:
    """Refuse to replace a file this program did not write: an existing path is fine only when
    the JSON beside it is one of our exports."""
    existing = [p for p in paths if p.exists()]
    if not existing:
        return
    ours = False
    try:
        ours = json.loads(meta_path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        pass
    if not ours:
        raise RnnkitFileError(
            f"{existing[0]} exists and is not an rnnkit export; choose another --out or remove it"
        )


def _onnx_bytes(graph) -> bytes:
    from torch.export import Dim

    dims: dict[str, Dim] = {}
    names = iter(graph.names)  # the inputs' names in order, nested inputs (a tuple of states) flattened

    def axes(_tensor):
        found = graph.axes.get(next(names), {})
        return {axis: dims.setdefault(name, Dim(name)) for axis, name in found.items()} or None

    shapes = torch.utils._pytree.tree_map(axes, graph.inputs)
    graph.module.eval()
    with _quiet():
        program = torch.onnx.export(
            graph.module,
            graph.inputs,
            input_names=list(graph.names),
            output_names=list(graph.outputs),
            dynamic_shapes=shapes,
            dynamo=True,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines and warnings (torchvision absent, deprecations of its own
    internals) say nothing to a user of `rnnkit export`; errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_against_torch(blob: bytes, graph) -> None:
    """The graph on onnxruntime against the module on the example inputs (if onnxruntime is here)."""
    if not _importable("onnxruntime"):
        return
    import onnxruntime

    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for inputs in (graph.inputs, _grown(graph)):  # as traced, and one longer along every dynamic axis
        flat = torch.utils._pytree.tree_leaves(inputs)
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(graph.names, flat)}
        try:
            got = session.run(None, feeds)
        except Exception as e:  # noqa: BLE001 (onnxruntime's own error types)
            raise RnnkitValueError(
                f"the ONNX graph does not run at other sizes on onnxruntime (a loop unrolled at the traced "
                f"length? a cell without a Scan form): {str(e).splitlines()[0]}"
            ) from None
        with torch.no_grad():
            want = torch.utils._pytree.tree_leaves(graph.module(*inputs))
        for name, a, b in zip(graph.outputs, got, want):
            b = b.detach().cpu().double().numpy()
            diff = float(abs(a.astype("float64") - b).max()) if a.size else 0.0
            if not diff <= 1e-4:
                raise RnnkitValueError(
                    f"the ONNX graph's {name} differs from the PyTorch model's by {diff:.3g} on onnxruntime"
                )


def _grown(graph) -> tuple:
    """The example inputs with one more row along each dynamic axis (the first row repeated), so
    the check runs at a size other than the traced one."""
    names = iter(graph.names)

    def grow(t):
        for axis in sorted(graph.axes.get(next(names), {})):
            t = torch.cat([t, t.narrow(axis, 0, 1)], dim=axis)
        return t

    return torch.utils._pytree.tree_map(grow, graph.inputs)
