"""Tests of labkit.mpc.compare: the adder circuit's sign bit, ReLU, comparisons, where and max."""

from __future__ import annotations

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc.sharing import reconstruct_xor, share_xor

EDGES = [0, 1, -1, 2**62, 2**63 - 1, -(2**63), -(2**62) + 3, 12345, -98765]


def _unary(fn, x: torch.Tensor, *, frac_bits: int | None = None):
    def program(ctx):
        v = ctx.input(0, ctx.private, shape=tuple(x.shape), frac_bits=frac_bits)
        return ctx.reveal(fn(v))
    return mpc.run(program, inputs={0: x}).output


def test_msb_is_exact_on_every_ring_element() -> None:
    x = torch.tensor(EDGES, dtype=torch.int64)
    for _ in range(3):  # fresh shares of the same values each time
        got = _unary(mpc.msb, x, frac_bits=0)
        assert got.tolist() == [int(v < 0) for v in EDGES]
    g = torch.Generator().manual_seed(5)
    r = mpc.random_ring((3000,), generator=g)
    assert torch.equal(_unary(mpc.msb, r, frac_bits=0), (r < 0).long())


def test_and_gates_and_b2a_in_a_program() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = mpc.random_ring((8,), generator=g), mpc.random_ring((2, 8), generator=g)
    a_sh, b_sh = share_xor(a, generator=g), share_xor(b, generator=g)
    bits = torch.randint(0, 2, (8,), generator=g)
    bit_sh = share_xor(bits, generator=g)

    def program(ctx):
        if ctx.is_dealer:
            mine = ctx.placeholders([(8,), (2, 8), (8,)])
        else:
            mine = (a_sh[ctx.rank], b_sh[ctx.rank], bit_sh[ctx.rank])
        z = mpc.and_gates(ctx, mine[0], mine[1])
        return z, ctx.reveal(mpc.b2a(ctx, mine[2]))

    r = mpc.run(program)
    assert torch.equal(reconstruct_xor([r.outputs[0][0], r.outputs[1][0]]), a & b)
    assert torch.equal(r.output[1], bits)


def test_relu_lt_gt_where_max_match_plaintext() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 7, generator=g) * 10
    y = torch.randn(4, 7, generator=g) * 10
    tol = 1e-4
    assert float((_unary(lambda v: v.relu(), x) - x.relu()).abs().max()) < tol
    assert torch.equal(_unary(lambda v: v < 1.5, x), (x < 1.5).long())
    assert torch.equal(_unary(lambda v: v > -2, x), (x > -2).long())
    assert torch.equal(_unary(lambda v: 0.5 > v, x), (x < 0.5).long())  # reflected operator
    assert torch.equal(_unary(lambda v: v >= 0.0, x), (x >= 0).long())
    for dim, keep in ((-1, False), (0, True)):
        want = x.max(dim=dim, keepdim=keep).values
        assert float((_unary(lambda v: v.max(dim=dim, keepdim=keep), x) - want).abs().max()) < tol

    def program(ctx):
        a = ctx.input(0, ctx.private, shape=(4, 7))
        b = ctx.input(1, ctx.private, shape=(4, 7))
        c = a < b
        return [ctx.reveal(v) for v in (c, mpc.where(c, a, b), mpc.where(c, 1.0, b), mpc.where(x > 0, a, b),
                                        mpc.where(c, a, torch.zeros(4, 7)))]

    lt, sel, sel_pub, sel_pubcond, sel_zero = mpc.run(program, inputs={0: x, 1: y}).output
    assert torch.equal(lt, (x < y).long())
    assert float((sel - torch.where(x < y, x, y)).abs().max()) < tol
    assert float((sel_pub - torch.where(x < y, 1.0, y)).abs().max()) < tol
    assert float((sel_pubcond - torch.where(x > 0, x, y)).abs().max()) < tol
    assert float((sel_zero - torch.where(x < y, x, 0.0)).abs().max()) < tol


def test_argmax_finds_the_index_of_the_maximum() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 9, generator=g) * 10
    got = _unary(lambda v: mpc.argmax_along(v, dim=-1), x)
    assert got.dtype == torch.float64 and torch.equal(got.round().long(), x.argmax(-1))
    assert torch.equal(got, got.round())  # the index is an exact integer, no truncation error
    cols = _unary(lambda v: mpc.argmax_along(v, dim=0), x).round().long()
    assert torch.equal(cols, x.argmax(0))
    hand = torch.tensor([[1.0, 7.0, -2.0], [0.5, -3.0, 4.0]])
    assert _unary(lambda v: mpc.argmax_along(v), hand).tolist() == [1.0, 2.0]
    ints = torch.tensor([3, -9, 12, 0, 5])
    assert _unary(lambda v: mpc.argmax_along(v), ints, frac_bits=0).tolist() == 2.0
    with pytest.raises(ValueError, match="at least one dimension"):
        _unary(lambda v: mpc.argmax_along(v.sum()), x)
    with pytest.raises(TypeError):
        mpc.argmax_along(x)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    with pytest.raises(TypeError):
        mpc.msb(torch.ones(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mpc.relu(torch.ones(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        _unary(lambda v: v.max(dim=2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="integer share"):
        _unary(lambda v: mpc.where(v, v, v), torch.ones(3))
    with pytest.raises(TypeError, match="at least one Shared"):
        mpc.where(torch.ones(2), torch.ones(2), torch.ones(2))
