"""The built-in families as Cells (rnnkit.cells._unit.Unit), registered by name: a unit owning its
parameters inside rnnkit.Recurrent equals the family's torch-style layer (the same numbers,
outputs and every gradient, to 1e-10 in float64), and each unit's fused kernel
(forward_sequence) equals stepping its forward in a loop written here."""

import ast
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.cells._unit import Unit
from rnnkit.cells.registry import BUILTIN, registered

TOL = {"rtol": 0, "atol": 1e-10}
I, H = 3, 5


def generic_copy(layer):
    """rnnkit.Recurrent over the layer's unit class, with the cells' parameters copied from the
    torch-style layer's (weight_ih_l1_reverse -> cells.3.weight_ih)."""
    D = layer.num_directions
    unit = layer.cell_class
    options = {}
    for name in ("nonlinearity", "reset_after", "log_space", "mode"):
        if hasattr(layer, name) and name in unit.__init__.__code__.co_varnames:
            options[name] = getattr(layer, name)
    if layer.proj_size:
        options["proj_size"] = layer.proj_size
    generic = rnnkit.Recurrent(
        unit, I, H, layer.num_layers, bidirectional=layer.bidirectional, dtype=torch.float64, **options
    )
    with torch.no_grad():
        for i, cell in enumerate(generic.cells):
            suffix = f"_l{i // D}" + ("_reverse" if i % D else "")
            for name, p in cell.named_parameters():
                p.copy_(layer.get_parameter(name + suffix))
    return generic


def layer_of(name, **kw):
    torch.manual_seed(0)
    return rnnkit.Recurrent(name, I, H, 2, bidirectional=True, dtype=torch.float64, **kw)


def grads(module, x, lengths):
    x = x.detach().requires_grad_()
    y, state = module(x, lengths=lengths)
    (y.square().sum() + sum(s.sin().sum() for s in state)).backward()
    return y, state, x.grad, [p.grad for p in module.parameters()]


@pytest.mark.parametrize("name", list(BUILTIN))
def test_a_unit_in_recurrent_equals_the_named_layer(name):
    layer = layer_of(name)
    assert isinstance(layer, rnnkit.Recurrent) and issubclass(layer.cell_class, Unit)
    assert registered(name) is BUILTIN[name] and issubclass(BUILTIN[name], rnnkit.cells.Cell)
    generic = generic_copy(layer)
    x = torch.randn(6, 4, I, dtype=torch.float64)
    lengths = [6, 3, 5, 1]
    y, state, dx, dps = grads(layer, x, lengths)
    y2, state2, dx2, dps2 = grads(generic, x, lengths)
    torch.testing.assert_close(y2, y, **TOL)
    for s, s2 in zip(state, state2, strict=True):
        torch.testing.assert_close(s2, s, **TOL)
    torch.testing.assert_close(dx2, dx, **TOL)
    D = layer.num_directions
    for i, cell in enumerate(generic.cells):  # every parameter's gradient, by name
        suffix = f"_l{i // D}" + ("_reverse" if i % D else "")
        for n, p in cell.named_parameters():
            torch.testing.assert_close(p.grad, layer.get_parameter(n + suffix).grad, **TOL)
    assert len(dps) == len(dps2)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_a_units_fused_kernel_equals_stepping_its_forward(name):
    torch.manual_seed(1)
    cell = registered(name)(I, H).double()
    T, B = 7, 3
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    s0 = tuple(torch.rand(B, n, dtype=torch.float64, requires_grad=True) for n in cell.state_sizes)
    y, final = cell.forward_sequence(x, s0)
    s, ys = s0, []
    for t in range(T):  # the reference: a plain loop over the cell's step
        s = cell(x[t], s)
        ys.append(s[0])
    torch.testing.assert_close(y, torch.stack(ys), **TOL)
    for a, b in zip(final, s, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    inputs = [x, *s0, *cell.parameters()]
    loss_fused = y.square().sum() + sum(f.sin().sum() for f in final)
    loss_step = torch.stack(ys).square().sum() + sum(f.sin().sum() for f in s)
    for g1, g2 in zip(torch.autograd.grad(loss_fused, inputs), torch.autograd.grad(loss_step, inputs)):
        torch.testing.assert_close(g1, g2, **TOL)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_a_units_fused_kernel_takes_packed_lengths(name):
    """forward_sequence with batch_sizes (sorted by decreasing length): y zero past each length,
    and each sequence's state at its own last step, as running it alone."""
    torch.manual_seed(2)
    cell = registered(name)(I, H).double()
    lengths = [5, 4, 2]
    x = torch.randn(5, 3, I, dtype=torch.float64)
    bs = pack_padded_sequence(x, lengths).batch_sizes.tolist()
    s0 = tuple(torch.rand(3, n, dtype=torch.float64) for n in cell.state_sizes)
    y, final = cell.forward_sequence(x, s0, batch_sizes=bs)
    for b, n in enumerate(lengths):
        alone, s_alone = cell.forward_sequence(x[:n, b : b + 1], tuple(s[b : b + 1] for s in s0))
        torch.testing.assert_close(y[:n, b : b + 1], alone, **TOL)
        assert not y[n:, b].any()
        for a, s in zip(final, s_alone, strict=True):
            torch.testing.assert_close(a[b : b + 1], s, **TOL)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn", "mgu", "ln_lstm"])
def test_regularised_units_match_the_named_layer_with_the_same_masks(name):
    kw = {"zoneout": 0.3, "recurrent_dropout": 0.2, "weight_dropout": 0.4}
    layer = layer_of(name, **kw).train()
    generic = rnnkit.Recurrent(layer.cell_class, I, H, 2, bidirectional=True, dtype=torch.float64, **kw)
    generic.load_state_dict(
        {
            f"cells.{i}.{n}": layer.get_parameter(n + f"_l{i // 2}" + ("_reverse" if i % 2 else ""))
            for i, cell in enumerate(generic.cells)
            for n, _ in cell.named_parameters()
        }
    )
    x = torch.randn(6, 4, I, dtype=torch.float64)
    masks = layer.sample_masks(6, 4)
    y, state = layer(x, masks=masks)
    y2, state2 = generic(x, masks=masks)
    torch.testing.assert_close(y2, y, **TOL)
    for s, s2 in zip(state if isinstance(state, tuple) else (state,), state2):
        torch.testing.assert_close(s2, s, **TOL)


def test_a_builtin_unit_is_registered_and_cannot_be_taken():
    for name, unit in BUILTIN.items():
        assert name in rnnkit.cells.available()
        with pytest.raises(rnnkit.RnnkitValueError, match="built-in"):
            rnnkit.cells.register(name, unit)
    # options a unit does not take are a clear error at construction
    with pytest.raises(rnnkit.RnnkitTypeError, match="proj_size"):
        rnnkit.Recurrent(BUILTIN["gru"], I, H, proj_size=2)
    with pytest.raises(rnnkit.RnnkitValueError, match="recurrent_dropout"):
        rnnkit.Recurrent(BUILTIN["min_gru"], I, H, recurrent_dropout=0.1)


def _allowed_literals(tree: ast.AST, path: Path) -> set[int]:
    """ids of string constants that may spell a cell name outside the registry: default values
    (of config fields and of function parameters), `__all__` lists of function names, and
    min_rnn's two forms (MIN_GRU, MIN_LSTM in cells/minimal.py)."""
    allowed: set[int] = set()

    def mark(node):
        allowed.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in [*node.args.defaults, *node.args.kw_defaults]:
                if d is not None:
                    mark(d)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and item.value is not None:
                    v = item.value
                    is_option = isinstance(v, ast.Call) and getattr(v.func, "id", "") == "option"
                    mark(v.args[0] if is_option and v.args else v)
        elif isinstance(node, ast.Assign):
            targets = {getattr(t, "id", None) for t in node.targets}
            for t in node.targets:
                if isinstance(t, ast.Tuple):
                    targets |= {getattr(e, "id", None) for e in t.elts}
            if "__all__" in targets or (path.name == "minimal.py" and {"MIN_GRU", "MIN_LSTM"} & targets):
                mark(node.value)
    return allowed


def test_builtin_cell_names_are_written_only_in_the_registry():
    """Issue 17: adding a cell is one file plus one registry line, so no other module lists the
    built-in names (models, tasks, diagnostics and help texts ask the registry)."""
    root = Path(rnnkit.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "cells" / "registry.py":
            continue
        tree = ast.parse(path.read_text())
        allowed = _allowed_literals(tree, path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in BUILTIN and id(node) not in allowed:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert not found, "built-in cell names outside the registry:\n" + "\n".join(found)
