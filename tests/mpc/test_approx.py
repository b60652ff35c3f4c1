"""Tests of labkit.mpc.approx: PUMA's approximations in plaintext (float64) and in secret (f = 16).

Each approximation: a hand-checked value, its error bound on its domain in both worlds, its
measured cost equal to the closed form, and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc import approx as A
from labkit.mpc import approx_cost as AC

F64 = torch.float64


def _secure(fn, x: torch.Tensor, **kw) -> mpc.MPCRun:
    """Run ``fn(shared x, **kw)`` in the simulator inside scope "f"; reveal to both."""
    def program(ctx):
        xs = ctx.input(0, ctx.private, shape=tuple(x.shape))
        with ctx.scope("f"):
            y = fn(xs, **kw)
        return ctx.reveal(y)

    return mpc.run(program, inputs={0: x})


def test_gelu_hand_checked_pieces() -> None:
    x = torch.tensor([-7.5, -4.5, 0.0, 4.5, 7.5], dtype=F64)
    y = A.gelu(x)
    assert y[0] == 0 and y[1] == 0  # below the left cut: exactly 0
    assert y[3] == 4.5 and y[4] == 7.5  # above the right cut: exactly x
    assert abs(float(y[2])) < 1e-3  # GeLU(0) = 0, from the degree-8 piece


def test_gelu_error_bounds_plain_and_secure_and_cost() -> None:
    x = torch.linspace(-8, 8, 801, dtype=F64)
    exact = A.gelu_exact(x)
    assert float((A.gelu(x) - exact).abs().max()) < 1e-3
    run = _secure(A.gelu, x)
    assert float((run.output - exact).abs().max()) < 2e-3
    assert run.cost(scope="f") == AC.gelu_cost(801)
    low = _secure(A.gelu, x, degree_low=2, degree_high=5)
    assert low.cost(scope="f") == AC.gelu_cost(801, degree_low=2, degree_high=5)
    assert low.cost(scope="f").rounds < run.cost(scope="f").rounds


def test_fit_gelu_is_a_least_squares_fit_in_t() -> None:
    fit = A.fit_gelu(-1.5, 4.0, 8)
    assert fit.center == 1.25 and fit.half == 2.75 and fit.degree == 8
    t = torch.linspace(-1, 1, 101, dtype=F64)
    p = sum(c * t**k for k, c in enumerate(fit.coeffs))
    assert float((p - A.gelu_exact(1.25 + 2.75 * t)).abs().max()) <= fit.max_error + 1e-12
    assert fit.max_error < 1e-3
    assert A.fit_gelu(-1.5, 4.0, 4).max_error > fit.max_error  # lower degree, larger error


def test_global_polynomial_explodes_outside_its_interval() -> None:
    inside = torch.linspace(-5, 5, 201, dtype=F64)
    assert float((A.gelu_global_poly(inside, degree=12) - A.gelu_exact(inside)).abs().max()) < 1e-2
    outside = torch.tensor([8.0], dtype=F64)
    assert float((A.gelu_global_poly(outside, degree=12) - 8.0).abs()) > 10


def test_exp_hand_checked_and_bounds() -> None:
    x = torch.tensor([0.0, -1.0, -12.5, -300.0], dtype=F64)
    y = A.exp(x)
    assert y[0] == 1.0 and y[2] == 0.0 and y[3] == 0.0  # e^0 exactly; below the cut exactly 0
    assert float(A.exp(torch.tensor([-1.0], dtype=F64), squarings=1, cut=-4.0)) == 0.25  # (1 - 1/2)^2
    grid = torch.linspace(-16, 0, 641, dtype=F64)
    assert float((A.exp(grid) - grid.exp()).abs().max()) < 2.2e-3
    run = _secure(A.exp, grid)
    assert float((run.output - grid.exp()).abs().max()) < 4e-3
    assert run.cost(scope="f") == AC.exp_cost(641)


def test_reciprocal_guess_by_hand_and_newton_bound() -> None:
    a, b, e0 = A.reciprocal_guess(1.0, 3.0)
    assert (a, b, e0) == pytest.approx((8 / 7, 2 / 7, 1 / 7))
    x = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    y0 = A.reciprocal(x, low=1.0, high=3.0, iterations=0)
    assert torch.allclose(1 - x * y0, torch.tensor([1, -1, 1], dtype=F64) / 7)  # equioscillation
    grid = torch.linspace(1, 64, 500, dtype=F64)
    _, _, e0 = A.reciprocal_guess(1.0, 64.0)
    for k in (3, 5, 8):
        err = float((grid * A.reciprocal(grid, iterations=k) - 1).abs().max())
        assert err <= e0 ** (2**k) + 1e-12
    run = _secure(A.reciprocal, grid)
    assert float((grid * run.output - 1).abs().max()) < 2 * 64 * 2.0**-16
    assert run.cost(scope="f") == AC.reciprocal_cost(500)


def test_rsqrt_staircase_by_hand_and_bounds() -> None:
    thresholds, guesses = A.rsqrt_thresholds(1.0, 8.0)
    assert thresholds == (2.0, 4.0)
    assert guesses == pytest.approx([2**-0.25, 2**-0.75, 2**-1.25])
    x = torch.tensor([1.5, 3.0, 7.0], dtype=F64)
    y0 = A.rsqrt(x, low=1.0, high=8.0, iterations=0)
    assert torch.allclose(y0, torch.tensor(guesses, dtype=F64))
    grid = torch.logspace(-6, 12, 400, base=2, dtype=F64)
    assert float((A.rsqrt(grid) * grid.sqrt() - 1).abs().max()) < 1e-4
    run = _secure(A.rsqrt, grid)
    assert float((run.output * grid.sqrt() - 1).abs().max()) < 2 * 64 * 2.0**-16
    assert run.cost(scope="f") == AC.rsqrt_cost(400)


def test_softmax_rows_sum_to_one_and_masked_entries_are_zero() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 7, 7, generator=g, dtype=F64) * 4
    mask = torch.tril(torch.ones(7, 7, dtype=torch.bool))
    ref = torch.softmax(s.masked_fill(~mask, -math.inf), -1)
    p = A.softmax(s, mask=mask)
    assert float((p.sum(-1) - 1).abs().max()) < 1e-2
    assert bool((p[..., ~mask] == 0).all())
    assert float((p - ref).abs().max()) < 4e-3
    run = _secure(A.softmax, s, mask=mask)
    assert bool((run.output[..., ~mask] == 0).all())
    assert float((run.output - ref).abs().max()) < 6e-3
    assert run.cost(scope="f") == AC.softmax_cost((2, 3, 7, 7))


def test_layer_norm_matches_torch_plain_and_secure() -> None:
    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([0.05, 0.5, 3.0, 7.0], dtype=F64).view(-1, 1)
    x = torch.randn(4, 16, generator=g, dtype=F64) * scale + 1.0
    w, b = torch.randn(16, generator=g, dtype=F64), torch.randn(16, generator=g, dtype=F64)
    ref = torch.nn.functional.layer_norm(x, (16,), w, b)
    assert float((A.layer_norm(x, w, b) - ref).abs().max()) < 1e-3
    run = _secure(A.layer_norm, x, weight=w, bias=b)
    assert float((run.output - ref).abs().max()) < 1e-2
    assert run.cost(scope="f") == AC.layer_norm_cost((4, 16), shared_weight=False)


def test_ops_for_picks_the_value_type() -> None:
    assert isinstance(A.ops_for(torch.zeros(2, dtype=F64)), A.PlainOps)
    with pytest.raises(TypeError, match="floating-point"):
        A.ops_for(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="Shared"):
        A.ops_for([1.0, 2.0])


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda x: A.gelu(x, cuts=(1.0, 0.0, 2.0)), ValueError, "increasing"),
    (lambda x: A.gelu(x, cuts=(1.0, 2.0)), TypeError, "cuts"),
    (lambda x: A.gelu(x, degree_high=0), ValueError, "degree_high"),
    (lambda x: A.gelu(x * 10), ValueError, r"gelu: inputs must lie in \[-8, 8\]"),
    (lambda x: A.exp(x.abs()), ValueError, "exp: inputs"),
    (lambda x: A.exp(-x.abs(), squarings=0), ValueError, "squarings"),
    (lambda x: A.exp(-x.abs(), squarings=4, cut=-40.0), ValueError, "cut"),
    (lambda x: A.reciprocal(x.abs() + 1, low=2.0, high=1.0), ValueError, "low < high"),
    (lambda x: A.reciprocal(x.abs() + 100), ValueError, "reciprocal: inputs"),
    (lambda x: A.reciprocal(x.abs() + 1, iterations=1.5), TypeError, "iterations"),
    (lambda x: A.rsqrt(x.abs() + 1, low=0.0), ValueError, "low"),
    (lambda x: A.rsqrt(x.abs() * 0), ValueError, "rsqrt: inputs"),
    (lambda x: A.softmax(x, mask=torch.full((5,), 2)), ValueError, "mask"),
    (lambda x: A.layer_norm(x.view(1, 5), x, x, eps=-1.0), ValueError, "eps"),
    (lambda x: A.fit_gelu(1.0, 1.0, 3), ValueError, "low < high"),
])
def test_bad_arguments_raise_clearly(call, error, match) -> None:
    x = torch.linspace(-1, 1, 5, dtype=F64)
    with pytest.raises(error, match=match):
        call(x)
