"""Charged particles: the N-body task of EGNN, simulated by a seeded leapfrog integrator.

A handful of particles with charges +-1 attract or repel each other by a softened Coulomb force
``a_i = sum_j c_i c_j (x_i - x_j) / (|x_i - x_j|^2 + eps^2)^{3/2}`` (unit masses). The leapfrog
(velocity Verlet) step is symplectic, so the energy drifts only by a bounded, step-size
dependent amount; the tests check it against ``scipy.integrate.solve_ivp``. The learning task,
as in EGNN and the position-orientation paper: from positions, velocities and charges, predict
the positions a fixed horizon later. Used to train :mod:`~labkit.spatial.ponita`'s models.

Shapes: S systems, P particles per system.
Section: chapter 03, "Position-orientation space: invariants of point pairs"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labkit.data.synthetic import make_generator
from labkit.validation import check_finite_tensor, check_int, check_real, check_tensor

__all__ = ["ChargedSystems", "accelerations", "charged_systems", "energy", "leapfrog"]


def _check_state(x: torch.Tensor, charges: torch.Tensor, v: torch.Tensor | None = None) -> None:
    check_tensor("x", x, dims=3, dtype="float", shape="(S, P, 3)")
    if x.shape[-1] != 3:
        raise ValueError(f"x must have shape (S, P, 3), got {tuple(x.shape)}")
    check_finite_tensor("x", x)
    check_tensor("charges", charges, dims=2, dtype="float", shape="(S, P)")
    if charges.shape != x.shape[:2]:
        raise ValueError(f"charges must have shape {tuple(x.shape[:2])} to match x, got {tuple(charges.shape)}")
    if v is not None:
        check_tensor("v", v, dims=3, dtype="float", shape="(S, P, 3)")
        if v.shape != x.shape:
            raise ValueError(f"v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
        check_finite_tensor("v", v)


def accelerations(x: torch.Tensor, charges: torch.Tensor, *, softening: float = 0.1) -> torch.Tensor:
    """Softened Coulomb accelerations (S, P, 3) of particles at ``x`` (S, P, 3), unit masses."""
    _check_state(x, charges)
    eps2 = check_real("softening", softening, 0.0) ** 2
    d = x[:, :, None, :] - x[:, None, :, :]  # (S, P, P, 3): x_i - x_j
    self_pair = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    r2 = ((d**2).sum(-1) + eps2).masked_fill(self_pair, 1.0)  # (S, P, P); no 0/0 on the diagonal
    qq = charges[:, :, None] * charges[:, None, :]  # (S, P, P): c_i c_j
    coef = (qq / r2**1.5).masked_fill(self_pair, 0.0)  # no self-force
    return (coef[..., None] * d).sum(dim=2)


def energy(x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor, *, softening: float = 0.1) -> torch.Tensor:
    """Total energy (S,): kinetic ``sum |v|^2 / 2`` plus ``sum_{i<j} c_i c_j / sqrt(r^2 + eps^2)``."""
    _check_state(x, charges, v)
    eps2 = check_real("softening", softening, 0.0) ** 2
    r = (((x[:, :, None, :] - x[:, None, :, :]) ** 2).sum(-1) + eps2).sqrt()
    r = r.masked_fill(torch.eye(x.shape[1], dtype=torch.bool, device=x.device), 1.0)
    qq = charges[:, :, None] * charges[:, None, :]
    upper = torch.triu(torch.ones_like(r, dtype=torch.bool), diagonal=1)
    potential = torch.where(upper, qq / r, torch.zeros_like(r)).sum(dim=(1, 2))
    return 0.5 * (v**2).sum(dim=(1, 2)) + potential


def leapfrog(x: torch.Tensor, v: torch.Tensor, charges: torch.Tensor, *, dt: float, steps: int,
             softening: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate ``steps`` velocity-Verlet steps of size ``dt``; returns ``(x, v)`` at the end."""
    _check_state(x, charges, v)
    dt = check_real("dt", dt, 0.0, strict=True)
    steps = check_int("steps", steps, 0)
    a = accelerations(x, charges, softening=softening)
    for _ in range(steps):
        v_half = v + 0.5 * dt * a  # kick
        x = x + dt * v_half  # drift
        a = accelerations(x, charges, softening=softening)
        v = v_half + 0.5 * dt * a  # kick
    return x, v


@dataclass(frozen=True)
class ChargedSystems:
    """Seeded charged-particle systems and where they are a horizon later.

    Attributes:
        x, v: (S, P, 3) positions and velocities at the start.
        charges: (S, P) charges, each +1 or -1.
        x_next: (S, P, 3) positions after the horizon.
    """

    x: torch.Tensor
    v: torch.Tensor
    charges: torch.Tensor
    x_next: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


def charged_systems(n_systems: int, *, n_particles: int = 5, horizon: float = 0.5, dt: float = 0.01,
                    speed: float = 0.5, spread: float = 0.5, softening: float = 0.1, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> ChargedSystems:
    """Draw systems (positions ~ N(0, spread^2), velocities of norm ``speed`` in random
    directions, random charges) and integrate each for ``horizon`` time units."""
    n_systems = check_int("n_systems", n_systems, 1)
    n_particles = check_int("n_particles", n_particles, 2)
    horizon = check_real("horizon", horizon, 0.0)
    dt = check_real("dt", dt, 0.0, strict=True)
    gen = make_generator(seed)
    x = check_real("spread", spread, 0.0) * torch.randn(n_systems, n_particles, 3, generator=gen, dtype=torch.float64)
    v = torch.nn.functional.normalize(torch.randn(n_systems, n_particles, 3, generator=gen, dtype=torch.float64), dim=-1)
    v = check_real("speed", speed, 0.0) * v
    charges = torch.randint(0, 2, (n_systems, n_particles), generator=gen).to(torch.float64) * 2 - 1
    x_next, _ = leapfrog(x, v, charges, dt=dt, steps=round(horizon / dt), softening=softening)
    return ChargedSystems(x.to(dtype), v.to(dtype), charges.to(dtype), x_next.to(dtype))
