"""A selective state-space scan, written as a recurrence and as a parallel associative scan.

Mamba's selective SSM (Gu & Dao, arXiv:2312.00752), as Graph Mamba (Behrouz & Hashemi, "Graph
Mamba: Towards Learning on Graphs with State Space Models", arXiv:2402.08678, section 3) uses
it over sequences of graph tokens. Each channel ``d`` of the input carries a state of ``S``
numbers, updated per step with an input-dependent step size:

    Delta_t = softplus(W x_t + b)
    h_t = exp(Delta_t A) * h_{t-1} + Delta_t B_t x_t
    y_t = C_t . h_t

A small ``Delta_t`` keeps the state and ignores the token; a large one forgets and writes: that
choice, per token, is the *selection*. The recurrence is linear in ``h``, so it is also a
prefix product of affine maps ``h -> a h + b``, which compose associatively; the parallel form
computes all prefixes in ``log2(T)`` doubling steps (Hillis-Steele) and is tested equal to the
loop. The miniature leaves out Mamba's convolution, gating and hardware-aware kernel.

Shapes: L sequences, T steps, D channels, S state size.
Section: chapter 04, "Graph Mamba".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_int, check_tensor

__all__ = ["SelectiveSSM", "linear_scan_parallel", "linear_scan_sequential",
           "selective_scan"]


def _check_scan(a: torch.Tensor, b: torch.Tensor) -> None:
    check_tensor("a", a, dims=(2, 3, 4, 5), dtype="float", shape="(L, T, ...)")
    check_tensor("b", b, dims=(2, 3, 4, 5), dtype="float", shape="(L, T, ...)")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


def linear_scan_sequential(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = 0``, one step at a time.

    Args:
        a, b: (L, T, ...) decay and input of every step (same shape).

    Returns:
        (L, T, ...) the states ``h_t``.
    """
    _check_scan(a, b)
    h = torch.zeros_like(b[:, 0])
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def linear_scan_parallel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same states as :func:`linear_scan_sequential`, in ``ceil(log2 T)`` steps.

    Args:
        a, b: (L, T, ...) decay and input of every step (same shape).

    Returns:
        (L, T, ...) the states ``h_t``.
    """
    _check_scan(a, b)
    # show: start parallel_scan
    # step t holds the affine map h -> a h + b of steps (t - span, t];
    # composing (a1, b1) then (a2, b2) gives (a1 a2, a2 b1 + b2)
    n_steps = a.shape[1]
    span = 1
    while span < n_steps:
        # the map of the `span` steps before each t (identity: a=1, b=0)
        a_prev = torch.ones_like(a)
        b_prev = torch.zeros_like(b)
        a_prev[:, span:] = a[:, :-span]
        b_prev[:, span:] = b[:, :-span]
        a, b = a_prev * a, a * b_prev + b
        span *= 2
    # after the last doubling, b_t is the map of all steps 0..t applied to 0
    return b
    # show: end parallel_scan


def selective_scan(x: torch.Tensor, delta: torch.Tensor, a_log: torch.Tensor,
                   b_t: torch.Tensor, c_t: torch.Tensor, *,
                   parallel: bool = True) -> torch.Tensor:
    """Mamba's selective scan (Graph Mamba eq. for the SSM block, discretised by ZOH on A).

    Args:
        x: (L, T, D) inputs.
        delta: (L, T, D) positive step sizes.
        a_log: (D, S) with ``A = -exp(a_log)`` (A < 0: the state decays).
        b_t: (L, T, S) input projections ``B_t``.
        c_t: (L, T, S) output projections ``C_t``.
        parallel: the associative scan (True) or the step-by-step loop.

    Returns:
        (L, T, D) outputs ``y_t``.
    """
    check_tensor("x", x, dims=3, dtype="float", shape="(L, T, D)")
    check_tensor("delta", delta, dims=3, dtype="float", shape="(L, T, D)")
    check_tensor("a_log", a_log, dims=2, dtype="float", shape="(D, S)")
    check_tensor("b_t", b_t, dims=3, dtype="float", shape="(L, T, S)")
    check_tensor("c_t", c_t, dims=3, dtype="float", shape="(L, T, S)")
    if delta.shape != x.shape:
        raise ValueError(f"delta must have x's shape {tuple(x.shape)}, got "
                         f"{tuple(delta.shape)}")
    if a_log.shape[0] != x.shape[2]:
        raise ValueError(f"a_log must be (D={x.shape[2]}, S), got "
                         f"{tuple(a_log.shape)}")
    want = (*x.shape[:2], a_log.shape[1])
    if b_t.shape != want or c_t.shape != want:
        raise ValueError(f"b_t and c_t must be (L, T, S) = {want}, got "
                         f"{tuple(b_t.shape)} and {tuple(c_t.shape)}")
    # show: start selective_scan
    a_mat = -torch.exp(a_log)                            # A: (D, S), negative
    dt = delta.unsqueeze(-1)                              # (L, T, D, 1)
    decay = torch.exp(dt * a_mat)                         # exp(Delta_t A)
    write = dt * b_t.unsqueeze(2) * x.unsqueeze(-1)       # Delta_t B_t x_t
    scan = linear_scan_parallel if parallel else linear_scan_sequential
    h = scan(decay, write)                                # (L, T, D, S)
    return (h * c_t.unsqueeze(2)).sum(-1)                 # y_t = C_t h_t
    # show: end selective_scan


class SelectiveSSM(nn.Module):
    """One selective SSM block: projections of the tokens to ``Delta_t``, ``B_t``, ``C_t``.

    ``bidirectional`` runs a second scan over the reversed sequence and adds it (Graph Mamba's
    bidirectional scan over ordered nodes); a skip term ``D * x`` as in Mamba.
    """

    def __init__(self, dim: int, state: int = 8, *,
                 bidirectional: bool = True) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        check_int("state", state, 1)
        self.bidirectional = bidirectional
        n_dir = 2 if bidirectional else 1
        self.delta = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_dir))
        self.proj_bc = nn.ModuleList(nn.Linear(dim, 2 * state, bias=False)
                                     for _ in range(n_dir))
        # A = -exp(a_log): decay rates spread from slow to fast, as in S4D
        init = torch.log(torch.arange(1, state + 1, dtype=torch.float32))
        self.a_log = nn.ParameterList(
            nn.Parameter(init.repeat(dim, 1).clone()) for _ in range(n_dir))
        self.skip = nn.Parameter(torch.ones(dim))
        self.state = state

    def _one(self, x: torch.Tensor, i: int, parallel: bool) -> torch.Tensor:
        # Delta_t = softplus(W x_t + b)
        delta = F.softplus(self.delta[i](x))
        b_t, c_t = self.proj_bc[i](x).split(self.state, dim=-1)
        return selective_scan(x, delta, self.a_log[i], b_t, c_t,
                              parallel=parallel)

    def forward(self, x: torch.Tensor, *, parallel: bool = True) -> torch.Tensor:
        """(L, T, D) tokens -> (L, T, D) outputs."""
        check_tensor("x", x, dims=3, dtype="float", shape="(L, T, D)")
        y = self._one(x, 0, parallel) + self.skip * x
        if self.bidirectional:
            y = y + self._one(x.flip(1), 1, parallel).flip(1)
        return y
