"""Tests of labkit.mpc.shared: free operators, views, and clear errors for misuse."""

from __future__ import annotations

import pytest
import torch

import labkit.mpc as mpc


def _run(fn, x: torch.Tensor, **kw):
    def program(ctx):
        return fn(ctx, ctx.input(0, ctx.private, shape=tuple(x.shape)))
    return mpc.run(program, inputs={0: x}, **kw)


def test_free_operations_match_plaintext_and_send_nothing() -> None:
    x = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4) / 8 - 1
    fns = {
        "add": (lambda v: v + v + 1.5 - torch.ones(4), lambda t: t + t + 1.5 - 1),
        "neg": (lambda v: 2.0 - (-v), lambda t: 2 + t),
        "sum": (lambda v: v.sum(1), lambda t: t.sum(1)),
        "sum_all": (lambda v: v.sum(), lambda t: t.sum()),
        "views": (lambda v: v.reshape(6, 4).transpose(0, 1).flatten()[3:9], lambda t: t.reshape(6, 4).T.flatten()[3:9]),
        "permute": (lambda v: v.permute(2, 0, 1).unsqueeze(0).squeeze(0), lambda t: t.permute(2, 0, 1)),
        "index": (lambda v: v[:, torch.tensor([2, 0])][..., 1], lambda t: t[:, [2, 0]][..., 1]),
        "mask": (lambda v: v[x > 0], lambda t: t[x > 0]),
        "cat": (lambda v: mpc.cat([v, v.narrow(1, 0, 1)], dim=1), lambda t: torch.cat([t, t[:, :1]], 1)),
        "stack": (lambda v: mpc.stack([v, -v], dim=0), lambda t: torch.stack([t, -t])),
        "expand": (lambda v: v[:, :1].expand(2, 5, 4).mT, lambda t: t[:, :1].expand(2, 5, 4).mT),
        "int_mul": (lambda v: v * 3 * torch.tensor([1, -1, 2, 0]), lambda t: t * 3 * torch.tensor([1, -1, 2, 0])),
    }

    def program(ctx, v):
        with ctx.scope("free"):
            outs = [f(v) for f, _ in fns.values()]
        return [ctx.reveal(o) for o in outs]

    r = _run(program, x)
    assert r.cost(scope="free") == mpc.Cost()
    for (name, (_, ref)), got in zip(fns.items(), r.output):
        assert torch.allclose(got, ref(x).double(), atol=1e-4), name


def test_scales_promote_and_truncate() -> None:
    def program(ctx, v):
        b = v > 0  # integer 0/1
        assert b.frac_bits == 0 and v.frac_bits == ctx.frac_bits
        return [ctx.reveal(b + v), ctx.reveal(b + 0.5), ctx.reveal(b * v), ctx.reveal(v.mean()), ctx.reveal(v.to_fixed())]

    x = torch.tensor([-1.5, 2.0, 0.25])
    sum_, half, masked, mean, same = _run(program, x).output
    assert sum_.tolist() == [-1.5, 3.0, 1.25] and half.tolist() == [0.5, 1.5, 1.5]
    assert masked.tolist() == [0.0, 2.0, 0.25] and same.tolist() == x.tolist()
    assert abs(float(mean) - float(x.mean())) < 1e-4


def test_misuse_gives_clear_errors() -> None:
    kept = []
    _run(lambda ctx, v: kept.append(v), torch.ones(3))
    with pytest.raises(ValueError, match="different sessions"):
        _run(lambda ctx, v: v + kept[0], torch.ones(3))
    with pytest.raises(ValueError, match="mismatched shapes"):
        _run(lambda ctx, v: v + v[:2], torch.ones(3))
    with pytest.raises(ValueError, match="mismatched shapes"):
        _run(lambda ctx, v: v + torch.ones(4), torch.ones(3))
    with pytest.raises(TypeError, match="truth value"):
        _run(lambda ctx, v: 1 if v > 0 else 0, torch.ones(3))
    with pytest.raises(TypeError, match="int64"):
        _run(lambda ctx, v: mpc.Shared(ctx, torch.ones(3), ctx.frac_bits), torch.ones(3))
    with pytest.raises(ValueError, match="frac_bits"):
        _run(lambda ctx, v: mpc.Shared(ctx, v.share, 5), torch.ones(3))
    with pytest.raises(TypeError, match="reciprocal"):
        _run(lambda ctx, v: 1.0 / v, torch.ones(3))
    with pytest.raises(TypeError, match="public operands"):
        _run(lambda ctx, v: v * "2", torch.ones(3))
    with pytest.raises(TypeError, match="public operands"):
        _run(lambda ctx, v: v + True, torch.ones(3))
    with pytest.raises(TypeError, match="real"):
        _run(lambda ctx, v: v * torch.tensor([1j]), torch.ones(3))
    with pytest.raises(TypeError, match="Party"):
        mpc.Shared(None, torch.zeros(3, dtype=torch.int64), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mpc.cat([])


def _runtime_imports(module: str) -> dict[str, list[str]]:
    """The relative modules ``labkit/mpc/<module>.py`` imports at run time: ``{"top": [...], "lazy": [...]}``
    (imports under ``if TYPE_CHECKING:`` only serve annotations and are left out)."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(mpc.__file__).parent / f"{module}.py").read_text())
    found: dict[str, list[str]] = {"top": [], "lazy": []}

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                found[where].append(child.module or "")
            visit(child, "lazy" if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where)

    visit(tree, "top")
    return found


def test_no_import_cycle_between_shared_values_and_their_protocols() -> None:
    for module in ("engine", "beaver"):  # protocols return through their operand, Party.input wraps via the registry
        imports = _runtime_imports(module)
        assert "shared" not in imports["top"] + imports["lazy"], module
    shared = _runtime_imports("shared")
    assert {"beaver", "engine"} <= set(shared["top"])  # the one direction that stays
    assert "compare" in shared["lazy"] and "compare" not in shared["top"]  # operator sugar, imported lazily
    assert mpc.Party.value_type is mpc.Shared
    assert not hasattr(__import__("labkit.mpc.shared", fromlist=["Public"]), "Public")
