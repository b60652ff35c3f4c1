"""Benchmark: Triton CSR SpMM (labkit.graphs) against cuSPARSE and scatter-based message passing.

For a uniform random graph and a power-law graph (default 1M nodes, 16M edges, F = 64 and 256,
float32) it times:

- ``torch.sparse.mm(adj, x)`` on the CSR matrix (cuSPARSE), the anchor;
- gather + ``index_add_``: ``zeros(N, F).index_add_(0, row, val[:, None] * x[col])``;
- ``torch_geometric.utils.scatter`` of the same messages, when torch_geometric imports;
- ours, ``spmm_triton(adj, x, plan=plan)`` with the work list built once, and separately the
  one-time cost of building it (``row_chunks``).

Graphs. Row ``i`` of ``adj`` (a destination node) gets ``deg(i)`` nonzeros. Uniform: every edge
picks its row uniformly at random (degrees ~ Poisson(M / N)). Power-law: row of rank ``r`` gets
a share ``(r + 1) ** -s / H`` of the edges (Zipf's rank law, ``--zipf s``, default 1.0, i.e. a
degree distribution with P(deg >= d) ~ 1/d, density exponent 1 + 1/s = 2), capped at N_src
nonzeros per row with the excess handed to the next rows, ranks shuffled over the rows. With the
defaults the largest row holds 1M nonzeros (6% of all), the top 100 rows about a third. Columns
of row ``i``: ``(b_i + k * P) mod N_src`` for ``k < deg(i)``, a random offset ``b_i`` and a
stride ``P`` near 0.62 N_src coprime with it (distinct, scattered columns), sorted; values
uniform in [0, 1). Both graphs therefore gather x rows at scattered addresses and differ only
in how the nonzeros are spread over rows.

Before timing, ours is checked against the labkit reference (``spmm_reference``: gather the
messages, segment-sum each row; computed 64 features at a time to bound its memory): the largest
error over the largest output must stay below 1e-4 (float32 sums of up to 10^6 terms in another
order; a dropped or doubled nonzero is far above that). Each ``--sweep`` configuration is checked
the same way before it is timed. Timer: :func:`labkit.runtime.cuda_median_seconds`.

Bandwidth: the fraction of the device-to-device copy bandwidth measured in the same run, under
a gather model: bytes = M * (index + value + 4F gathered x) + N * 4F (out) + (N + 1) * 8 (ptr).

    python benchmarks/graphs_spmm.py [--nodes 1000000 --edges 16000000 --features 64 256] [--sweep]
                                     [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from _common import Report, add_options, check_relative, copy_bandwidth, device, run

FULL = {"nodes": 1_000_000, "edges": 16_000_000, "features": [64, 256]}
QUICK = {"nodes": 200_000, "edges": 3_200_000, "features": [64]}
INTERPRET = {"nodes": 32, "edges": 160, "features": [4]}
ERROR_BOUND = 1e-4  # largest |ours - reference| / largest |reference|, float32


def ms(seconds: float) -> str:
    """Milliseconds with three decimals, or n/a for a column that could not run."""
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.3f}"


def validate(adj: torch.Tensor, x: torch.Tensor, out: torch.Tensor, *, what: str = "spmm_triton") -> float:
    """Ours against ``spmm_reference`` (64 feature columns at a time); returns the relative error."""
    from labkit.graphs.sparse import spmm_reference

    ref = torch.empty_like(out)
    for j in range(0, x.shape[1], 64):
        ref[:, j:j + 64] = spmm_reference(adj, x[:, j:j + 64].contiguous())
    return check_relative(what, out, ref, bound=ERROR_BOUND)


def uniform_lengths(n: int, m: int, g: torch.Generator) -> torch.Tensor:
    """Row lengths when each of the m edges picks its row uniformly at random."""
    rows = torch.randint(0, n, (m,), generator=g, device=g.device)
    return torch.bincount(rows, minlength=n)


def power_law_lengths(n: int, m: int, n_src: int, s: float, g: torch.Generator) -> torch.Tensor:
    """Row lengths following Zipf's rank law with exponent s, capped at n_src, ranks shuffled."""
    if n * n_src < m:
        raise ValueError(f"{m} edges do not fit in {n} rows of at most {n_src} nonzeros")
    dev = g.device
    weight = torch.arange(1, n + 1, device=dev, dtype=torch.float64) ** -s  # (N,) by rank
    lengths = torch.zeros(n, dtype=torch.int64, device=dev)
    for _ in range(50):  # water-filling: hand what the capped rows cannot take to the others
        left = m - int(lengths.sum())
        free = lengths < n_src
        if left <= 0 or left < int(free.sum()):
            break
        share = torch.where(free, weight, 0.0)
        add = torch.floor(left * share / share.sum()).long()
        lengths = torch.minimum(lengths + add, torch.full_like(lengths, n_src))
    left = m - int(lengths.sum())
    free_rows = torch.nonzero(lengths < n_src).flatten()
    lengths[free_rows[:left]] += 1  # the last few edges, one each to the highest free ranks
    return lengths[torch.randperm(n, generator=g, device=dev)]


def csr_from_lengths(lengths: torch.Tensor, n_src: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR matrix (and its COO row index) whose rows have these lengths; see the docstring."""
    dev, n = lengths.device, lengths.numel()
    ptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    ptr[1:] = torch.cumsum(lengths, 0)
    m = int(ptr[-1])
    row = torch.repeat_interleave(torch.arange(n, device=dev), lengths, output_size=m)  # (M,)
    k = torch.arange(m, device=dev) - ptr[row]  # position of each nonzero within its row
    stride = int(0.618 * n_src) | 1
    while math.gcd(stride, n_src) != 1:
        stride += 2
    offset = torch.randint(0, n_src, (n,), generator=g, device=dev)
    col = (offset[row] + k * stride) % n_src
    col = (torch.sort(row * n_src + col).values % n_src).contiguous()  # sorted within each row
    val = torch.rand(m, generator=g, device=dev)
    adj = torch.sparse_csr_tensor(ptr, col, val, size=(n, n_src), check_invariants=False)
    return adj, row


def body(args: argparse.Namespace, report: Report) -> int:
    from labkit.graphs._kernels import spmm_triton
    from labkit.graphs.sparse import row_chunks
    from labkit.runtime import cuda_median_seconds as bench

    try:
        from torch_geometric.utils import scatter as pyg_scatter
    except Exception as exc:  # noqa: BLE001 (absent or broken install: skip that column)
        pyg_scatter = None
        print(f"torch_geometric.utils.scatter unavailable ({type(exc).__name__}: {exc}); skipping it")

    dev = device()
    copy_bw = copy_bandwidth()
    print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)")

    n, m = args.nodes, args.edges
    g = torch.Generator(device=dev).manual_seed(0)
    graphs = {"uniform": uniform_lengths(n, m, g),
              f"power-law s={args.zipf:g}": power_law_lengths(n, m, n, args.zipf, g)}
    rows = []
    for kind, lengths in graphs.items():
        adj, row = csr_from_lengths(lengths, n, g)
        ptr, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
        top = torch.sort(lengths, descending=True).values
        print(f"\n{kind}: N={n:,} M={m:,}; largest row {int(top[0]):,} nonzeros, top 100 rows hold "
              f"{float(top[:100].sum()) / m:.0%}, empty rows {int((lengths == 0).sum()):,}")
        plan = row_chunks(ptr)
        for f in args.features:
            x = torch.randn(n, f, device=dev)
            err = validate(adj, x, spmm_triton(adj, x, plan=plan))
            err_cold = validate(adj, x, spmm_triton(adj, x), what="spmm_triton, work list built per call")
            torch.cuda.empty_cache()
            if f == args.features[0]:
                t_plan = bench(lambda: row_chunks(ptr))
                print(f"work list: {plan.split_rows.numel():,} split rows, {plan.extra_row.numel():,} extra "
                      f"programs; built in {t_plan * 1e3:.3f} ms")
            t_cusparse = bench(lambda: torch.sparse.mm(adj, x))
            t_ours = bench(lambda: spmm_triton(adj, x, plan=plan))
            t_ours_cold = bench(lambda: spmm_triton(adj, x))  # work list rebuilt on every call

            def index_add() -> torch.Tensor:
                return torch.zeros(n, f, device=dev).index_add_(0, row, val[:, None] * x[col])

            try:
                t_index_add = bench(index_add)
            except torch.OutOfMemoryError:
                t_index_add = float("nan")
            t_pyg = float("nan")
            if pyg_scatter is not None:
                try:
                    t_pyg = bench(lambda: pyg_scatter(val[:, None] * x[col], row, dim=0, dim_size=n, reduce="sum"))
                except torch.OutOfMemoryError:
                    pass
            torch.cuda.empty_cache()
            moved = m * (col.element_size() + val.element_size() + 4 * f) + n * 4 * f + (n + 1) * 8
            r = dict(graph=kind, features=f, cusparse_ms=t_cusparse * 1e3, index_add_ms=t_index_add * 1e3,
                     pyg_ms=t_pyg * 1e3, ours_ms=t_ours * 1e3, ours_cold_ms=t_ours_cold * 1e3,
                     vs_cusparse=t_cusparse / t_ours, vs_index_add=t_index_add / t_ours,
                     of_copy=moved / t_ours / copy_bw, plan_ms=t_plan * 1e3, rel_err=max(err, err_cold))
            rows.append(r)
            print(f"  F={f}: max rel. error {r['rel_err']:.1e}; cuSPARSE {ms(t_cusparse)} ms, gather+index_add_ "
                  f"{ms(t_index_add)} ms, PyG scatter {ms(t_pyg)} ms, ours {ms(t_ours)} ms "
                  f"({ms(t_ours_cold)} ms with the work list rebuilt); {r['vs_cusparse']:.2f}x cuSPARSE, "
                  f"{r['vs_index_add']:.1f}x index_add_; {r['of_copy']:.0%} of copy bandwidth", flush=True)
            if args.sweep:
                sweep(adj, x, ptr, t_cusparse, row_chunks, spmm_triton)
            del x

    lines = ["| graph | F | torch.sparse.mm (ms) | gather + index_add_ (ms) | PyG scatter (ms) | ours (ms) "
             "| ours vs sparse.mm | ours vs index_add_ | of copy BW | work list (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['graph']} | {r['features']} | {r['cusparse_ms']:.3f} | {ms(r['index_add_ms'] / 1e3)} "
              f"| {ms(r['pyg_ms'] / 1e3)} | {r['ours_ms']:.3f} | {r['vs_cusparse']:.2f}x "
              f"| {r['vs_index_add']:.1f}x | {r['of_copy']:.0%} | {r['plan_ms']:.3f} |" for r in rows]
    report.table(f"CSR SpMM, float32, N={n:,} nodes, M={m:,} nonzeros; copy {copy_bw / 1e9:.0f} GB/s",
                 "\n".join(lines), rows)
    return 0


def sweep(adj: torch.Tensor, x: torch.Tensor, ptr: torch.Tensor, t_anchor: float, row_chunks, spmm_triton) -> None:
    """Time the kernel at a few configurations around the default one, each checked first; a
    chunk of 2**40 nonzeros splits no row: the plain one-program-per-row kernel."""
    from labkit.runtime import cuda_median_seconds as bench

    f = x.shape[1]
    configs = [dict(chunk_nnz=c, block_k=32) for c in (2**40, 64, 1024)]
    configs += [dict(chunk_nnz=256, block_k=k) for k in (16, 64)]
    configs += [dict(chunk_nnz=256, block_k=32, num_warps=w) for w in (2, 4, 8)]
    if f > 128:
        configs += [dict(chunk_nnz=256, block_k=16, block_f=256, num_warps=w) for w in (4, 8)]
    for cfg in configs:
        plan = row_chunks(ptr, chunk_nnz=cfg["chunk_nnz"])
        knobs = {k: v for k, v in cfg.items() if k != "chunk_nnz"}
        validate(adj, x, spmm_triton(adj, x, plan=plan, **knobs), what=f"spmm_triton {cfg}")
        t = bench(lambda: spmm_triton(adj, x, plan=plan, **knobs))
        print(f"    sweep {cfg}: {t * 1e3:.3f} ms ({t_anchor / t:.2f}x cuSPARSE)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=None, help=f"N (full: {FULL['nodes']:,}, quick: {QUICK['nodes']:,})")
    p.add_argument("--edges", type=int, default=None, help=f"M (full: {FULL['edges']:,}, quick: {QUICK['edges']:,})")
    p.add_argument("--features", type=int, nargs="+", default=None,
                   help=f"F values (full: {FULL['features']}, quick: {QUICK['features']})")
    p.add_argument("--zipf", type=float, default=1.0, help="rank exponent s of the power-law graph")
    p.add_argument("--sweep", action="store_true", help="also time a few other kernel configurations")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("graphs_spmm", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
