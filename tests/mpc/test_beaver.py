"""Tests of labkit.mpc.beaver: products and matmuls of shared values, and truncation's error."""

from __future__ import annotations

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc.beaver import truncate_share
from labkit.mpc.ring import encode
from labkit.mpc.sharing import share

F = mpc.DEFAULT_FRAC_BITS
ULP = 2.0**-F


def _pair_program(op):
    def program(ctx, sx, sy):
        x = ctx.input(0, ctx.private, shape=sx)
        y = ctx.input(1, ctx.private, shape=sy)
        return ctx.reveal(op(x, y))
    return program


def test_hand_example_product() -> None:
    r = mpc.run(_pair_program(lambda x, y: x * y), args=((2,), (2,)),
                inputs={0: torch.tensor([1.5, -2.0]), 1: torch.tensor([4.0, 0.25])})
    assert r.output.tolist() == [6.0, -0.5]  # exact: all values are dyadic
    assert torch.equal(r.outputs[0], r.outputs[1]) and r.outputs[2] is None


def test_products_match_plaintext_within_fixed_point_error() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    w = torch.randn(5, 4, generator=g)
    bound = lambda a, b: (a.abs().max() + b.abs().max() + 2) * ULP  # encoding + truncation
    for op, ref, yy in [(lambda a, b: a * b, x * y, y), (lambda a, b: a @ b, x @ w, w),
                        (lambda a, b: a.square() + b.sum() * 0, x * x, y)]:
        r = mpc.run(_pair_program(op), args=(tuple(x.shape), tuple(yy.shape)), inputs={0: x, 1: yy})
        scale = 5 if r.output.shape != x.shape else 1
        assert float((r.output - ref).abs().max()) <= scale * float(bound(x, yy))


def test_batched_matmul_and_public_operands() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 4, generator=g), torch.randn(2, 4, 5, generator=g)
    r = mpc.run(_pair_program(lambda a, b: a @ b), args=((2, 3, 4), (2, 4, 5)), inputs={0: q, 1: k})
    assert float((r.output - q @ k).abs().max()) < 1e-3
    pub = torch.randn(4, 2, generator=g)

    def program(ctx):
        x = ctx.input(0, ctx.private, shape=(2, 3, 4))
        return [ctx.reveal(v) for v in (x @ pub, pub.T @ x.mT, x * 3, x / 4.0, 2 - x * 0.5, x.mean(-1))]

    outs = mpc.run(program, inputs={0: q}).output
    refs = [q @ pub, pub.T @ q.mT, q * 3, q / 4, 2 - q * 0.5, q.mean(-1)]
    for out, ref in zip(outs, refs):
        assert float((out - ref).abs().max()) < 1e-3


def test_truncation_is_off_by_at_most_one_unit() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-(2**40), 2**40, (20_000,), generator=g)  # |x| < 2^40: failures ~2^-23
    s0, s1 = share(x, generator=g)
    t = truncate_share(s0, F, party=0) + truncate_share(s1, F, party=1)
    diff = t - (x >> F)  # exact floor
    assert set(diff.unique().tolist()) <= {0, 1}


def test_truncation_fails_with_the_predicted_probability_for_huge_values() -> None:
    g = torch.Generator().manual_seed(3)
    n = 20_000
    x = torch.randint(2**59, 2**60, (n,), generator=g) * torch.where(torch.rand(n, generator=g) < 0.5, -1, 1)
    s0, s1 = share(x, generator=g)
    t = truncate_share(s0, F, party=0) + truncate_share(s1, F, party=1)
    failed = ((t - (x >> F)).abs() > 1).double()
    expected = float((x.double().abs() / 2.0**64).mean())  # P(fail | x) = |x| / 2^64
    sd = (expected * (1 - expected) / n) ** 0.5
    assert abs(float(failed.mean()) - expected) < 5 * sd


def test_a_secret_product_fails_in_proportion_to_the_product_range() -> None:
    r = mpc.product_range(F)
    assert r == 2.0 ** (64 - 2 * F) == 2.0**32 and mpc.representable_range(F) == 2.0**46  # far looser
    n = 4096

    def squares(value: float) -> torch.Tensor:
        program = lambda ctx: ctx.reveal(ctx.input(0, ctx.private, shape=(n,)).square())
        return mpc.run(program, inputs={0: torch.full((n,), value, dtype=torch.float64)}).output

    small = squares(8.0)  # 64 / 2^32: a failure somewhere among 4096 elements has probability 6e-5
    assert float((small - 64.0).abs().max()) <= ULP
    for x in (4e4, 5e4):  # 1.6e9 (encodable, 37% wrong) and 2.5e9 (58% wrong)
        got, want = squares(x), x * x
        p = want / r
        failed = (got - want).abs() > 1
        assert abs(float(failed.double().mean()) - p) < 5 * (p * (1 - p) / n) ** 0.5
        assert torch.allclose(got[failed], torch.tensor(want - r, dtype=torch.float64), atol=1)  # e.g. -2.69e9


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="mismatched shapes"):
        mpc.run(_pair_program(lambda a, b: a * b), args=((3,), (4,)),
                inputs={0: torch.ones(3), 1: torch.ones(4)})
    with pytest.raises(ValueError, match="mismatched shapes for @"):
        mpc.run(_pair_program(lambda a, b: a @ b), args=((3, 2), (3, 2)),
                inputs={0: torch.ones(3, 2), 1: torch.ones(3, 2)})
    with pytest.raises(TypeError, match="reciprocal"):
        mpc.run(_pair_program(lambda a, b: a / b), args=((3,), (3,)), inputs={0: torch.ones(3), 1: torch.ones(3)})
    with pytest.raises(ValueError, match="bits"):
        truncate_share(encode(torch.ones(2)), 63, party=0)
    with pytest.raises(ValueError, match="party"):
        truncate_share(encode(torch.ones(2)), 3, party=2)
    with pytest.raises(TypeError):
        truncate_share(torch.ones(2), 3, party=0)


def test_the_truncation_audit_predicts_the_failures() -> None:
    n = 4096
    program = lambda ctx: ctx.reveal(ctx.input(0, ctx.private, shape=(n,)).square())
    x = torch.full((n,), 4e4, dtype=torch.float64)
    r = mpc.run(program, inputs={0: x}, audit_truncation=True)
    expected = n * 4e4**2 / mpc.product_range(F)  # every element: |x^2| / R
    assert r.truncation_risk == pytest.approx(expected, rel=1e-6)
    failed = int(((r.output - 1.6e9).abs() > 1).sum())
    assert abs(failed - expected) < 5 * (expected * (1 - expected / n)) ** 0.5
    assert mpc.run(program, inputs={0: x}).truncation_risk is None
    with pytest.raises(ValueError, match="simulator"):
        mpc.run(program, inputs={0: x}, runtime="processes", audit_truncation=True)
