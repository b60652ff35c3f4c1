"""Random sparse matrices for timing SpMM: uniform rows, and power-law rows with a few huge ones.

Also the inputs of ``benchmarks/graphs_spmm.py``.

Shapes: N nodes (rows and columns), M nonzeros.
Section: chapter 01, "Message passing is a sparse matrix product" (the GPU timing).
"""

from __future__ import annotations

import warnings

import torch

from labkit.validation import check_int, check_real

__all__ = ["power_law_csr", "uniform_csr"]


def _csr(rows: torch.Tensor, cols: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Sort (row, col) pairs and pack them as an (N, N) float32 CSR tensor with values in [0, 1)."""
    key, _ = torch.sort(rows * n + cols)
    rows, cols = key // n, key % n
    crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    values = torch.rand(cols.numel(), generator=generator, device="cpu").to(rows.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, (n, n), check_invariants=False)


def uniform_csr(n: int, m: int, *, seed: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
    """M nonzeros at uniformly random (row, col) positions: every row holds about M / N.

    Returns:
        (N, N) float32 CSR, values in [0, 1); repeated positions stay separate entries.
    """
    n, m = check_int("n", n, 1), check_int("m", m, 0)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(n, (m,), generator=g).to(device)
    cols = torch.randint(n, (m,), generator=g).to(device)
    return _csr(rows, cols, n, g)


def power_law_csr(n: int, m: int, *, exponent: float = 1.0, seed: int = 0,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """M nonzeros whose rows follow a Zipf law: row of popularity rank r is chosen with
    probability proportional to ``r^-exponent`` (ranks in random order), columns uniform.

    With ``exponent=1`` and a million rows the largest row holds about 7% of all nonzeros and the
    median row a handful: the shape of social and interaction graphs, and the case that stalls a
    kernel giving one program per row. ``exponent=0`` gives uniform rows.

    Returns:
        (N, N) float32 CSR, values in [0, 1); repeated positions stay separate entries.
    """
    n, m = check_int("n", n, 1), check_int("m", m, 0)
    exponent = check_real("exponent", exponent, 0.0)
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randperm(n, generator=g).double() + 1.0
    weights = ranks.pow(-exponent)
    # inverse-CDF sampling (torch.multinomial is limited to 2^24 categories)
    cdf = torch.cumsum(weights, 0)
    rows = torch.searchsorted(cdf, torch.rand(m, generator=g, dtype=torch.float64) * cdf[-1]).clamp(max=n - 1)
    cols = torch.randint(n, (m,), generator=g)
    return _csr(rows.to(device), cols.to(device), n, g)
