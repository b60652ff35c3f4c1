"""Charged particles: leapfrog against scipy's solve_ivp, energy conservation, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from labkit.spatial.nbody import accelerations, charged_systems, energy, leapfrog


def test_two_charges_by_hand() -> None:
    # +1 and -1 one unit apart on the x axis, no softening: they attract with |a| = 1 / 1^2
    x = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]], dtype=torch.float64)
    q = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    a = accelerations(x, q, softening=0.0)
    torch.testing.assert_close(a, torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0]]], dtype=torch.float64))
    v = torch.zeros_like(x)
    assert float(energy(x, v, q, softening=0.0)) == pytest.approx(-1.0)  # c_i c_j / r


def test_forces_cancel_in_total() -> None:
    """Newton's third law: the accelerations of unit masses sum to zero."""
    s = charged_systems(6, n_particles=5, horizon=0.0, seed=2)
    total = accelerations(s.x, s.charges).sum(dim=1)
    assert float(total.abs().max()) < 1e-12


def test_leapfrog_matches_solve_ivp_and_conserves_energy() -> None:
    s = charged_systems(2, n_particles=5, horizon=0.0, seed=0)
    x, v, q = s.x, s.v, s.charges
    x_lf, v_lf = leapfrog(x, v, q, dt=1e-3, steps=500)

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        pos = torch.from_numpy(y[: x.numel()].reshape(x.shape))
        vel = y[x.numel():]
        return np.concatenate([vel, accelerations(pos, q).numpy().ravel()])

    y0 = np.concatenate([x.numpy().ravel(), v.numpy().ravel()])
    sol = solve_ivp(rhs, (0.0, 0.5), y0, method="DOP853", rtol=1e-10, atol=1e-12)
    x_ref = torch.from_numpy(sol.y[: x.numel(), -1].reshape(x.shape))
    # second-order method, dt = 1e-3 over 500 steps: error of order dt^2 * t, well under 1e-4
    assert float((x_lf - x_ref).abs().max()) < 1e-4
    e0 = energy(x, v, q)
    drift = float(((energy(x_lf, v_lf, q) - e0) / e0.abs()).abs().max())
    assert drift < 1e-3
    # a second-order integrator: doubling the step multiplies the energy error by about 4
    x_2, v_2 = leapfrog(x, v, q, dt=2e-3, steps=250)
    drift_2 = float(((energy(x_2, v_2, q) - e0) / e0.abs()).abs().max())
    assert 2.5 < drift_2 / drift < 6


def test_charged_systems_shapes_seed_and_charges() -> None:
    s = charged_systems(3, n_particles=4, horizon=0.1, seed=5)
    assert s.x.shape == s.v.shape == s.x_next.shape == (3, 4, 3) and len(s) == 3
    assert set(s.charges.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(s.v.norm(dim=-1), torch.full((3, 4), 0.5, dtype=torch.float64))
    again = charged_systems(3, n_particles=4, horizon=0.1, seed=5)
    assert torch.equal(s.x_next, again.x_next)
    assert charged_systems(3, horizon=0.1, seed=5, dtype=torch.float32).x.dtype == torch.float32


def test_bad_inputs() -> None:
    x = torch.zeros(1, 2, 3, dtype=torch.float64)
    q = torch.ones(1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="non-finite"):
        accelerations(torch.full_like(x, float("nan")), q)
    with pytest.raises(ValueError, match="charges must have shape"):
        accelerations(x, torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="v must have the shape"):
        leapfrog(x, torch.zeros(1, 3, 3, dtype=torch.float64), q, dt=0.1, steps=1)
    with pytest.raises(ValueError, match="dt"):
        leapfrog(x, x, q, dt=0.0, steps=1)
    with pytest.raises(ValueError, match="n_particles"):
        charged_systems(2, n_particles=1)
