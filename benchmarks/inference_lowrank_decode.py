"""Benchmark: decode attention over a low-rank KV cache (labkit.inference) against SDPA, full and projected.

One decode step of grouped-query attention, ``--heads`` (32) query heads sharing ``--kv-heads``
(8) key-value heads of width ``--head-dim`` d (128), for B requests (``--batch``, 1 and 32) of T
cached positions (``--context``, 4k and 32k) each, in bfloat16. The cache keeps r (``--ranks``,
32 and 64) of the d directions of each head (MatryoshkaKV's ``K~ = K P_k``, ``V~ = V P_v``, the
P's orthonormal columns). Timed with :func:`labkit.runtime.cuda_median_seconds`:

- SDPA on the full cache: ``F.scaled_dot_product_attention`` over K and V (B, Hkv, T, d), the G
  = Hq / Hkv query heads of each key-value head passed as G query positions of one head (no
  mask: a decode query sees the whole cache), so the fused kernels apply; what the model
  costs without compression;
- SDPA on the projected cache, the fair anchor: ``q~ = q P_k`` (one batched matmul), then SDPA
  over K~ and V~ (B, Hkv, T, r) with the scale ``1 / sqrt(d)``;
- ours, ``lowrank_decode_triton``: the projection in the prologue, the context split into
  chunks with an online softmax each, a log-sum-exp merge (:mod:`labkit.inference._kernels`).

Before timing, each candidate is checked against the labkit definition
(:func:`~labkit.inference.decode.lowrank_decode_reference`; for the full cache
:func:`~labkit.inference.decode.projected_decode_attention` with the identity at r = d): largest
error over largest output < 2e-2 in 16-bit, 1e-4 in float32; ours also in float32 on the first
two requests and at most 4096 positions (< 1e-4). A failed check ends the script with status 1
before anything more is timed. Bandwidth counts the bytes the step must read (the cache, q, P_k)
and write, as a fraction of a device-to-device copy measured in the same run.

Goals of the issue at B = 32, T = 32k, printed as met or missed (``--strict`` turns a miss into
exit status 2): ours >= 1.0x SDPA on the projected cache, >= 0.8 d / r times SDPA on the full
cache, >= 60 % of the copy bandwidth. ``--sweep-splits`` also times ours at fixed split counts
(each checked first), to see what the automatic choice leaves.

    python benchmarks/inference_lowrank_decode.py [--batch 1 32 --context 4096 32768 --ranks 32 64]
        [--heads 32 --kv-heads 8 --head-dim 128 --dtype bf16 --seed 0 --sweep-splits 1 4 16 64]
        [--strict] [--markdown results.md] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from _common import Report, add_options, check_relative, copy_bandwidth, device, run

GOAL_PROJECTED, GOAL_FULL_PER_COMPRESSION, GOAL_COPY = 1.0, 0.8, 0.6
GOAL_CASE = (32, 32768)  # (B, T) where the goals apply
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BOUND = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-4}
QUERY_SCALE = 4.0  # queries 4x a unit normal: peaked attention (scores' std about 4 sqrt(r / d))
FULL = {"batch": [1, 32], "context": [4096, 32768], "ranks": [32, 64], "heads": 32, "kv_heads": 8,
        "head_dim": 128, "dtype": "bf16"}
QUICK = {"batch": [1, 32], "context": [32768], "ranks": [64], "heads": 32, "kv_heads": 8, "head_dim": 128,
         "dtype": "bf16"}
# the interpreter mishandles bfloat16
INTERPRET = {"batch": [2], "context": [37], "ranks": [5], "heads": 6, "kv_heads": 2, "head_dim": 16,
             "dtype": "fp32"}


def us(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e6:.1f}"


def sdpa_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA for one decode position: the G query heads of a key-value head as G query rows.

    Shapes: q (B, Hq, 1, e), k and v (B, Hkv, T, e) -> (B, Hq, 1, e).
    """
    batch, n_q, _, width = q.shape
    n_kv = k.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(batch, n_kv, n_q // n_kv, width), k, v, scale=scale)
    return out.reshape(batch, n_q, 1, v.shape[-1])


def project_queries(q: torch.Tensor, p_k: torch.Tensor) -> torch.Tensor:
    """``q~ = q P_k`` with each query head using its key-value head's projection: (B, Hq, 1, r)."""
    batch, n_q, _, d = q.shape
    n_kv, _, r = p_k.shape
    return (q.reshape(batch, n_kv, n_q // n_kv, d) @ p_k).reshape(batch, n_q, 1, r)


def validate(what: str, got: torch.Tensor, q: torch.Tensor, p_k: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> float:
    """``got`` against the labkit definition on (q, P_k, K, V); returns largest error / largest output.

    ``P_k`` square (r = d) is the full cache's case: :func:`projected_decode_attention`; else the
    kernel's reference :func:`lowrank_decode_reference`.
    """
    from labkit.inference.decode import lowrank_decode_reference, projected_decode_attention

    ref = projected_decode_attention if p_k.shape[1] == p_k.shape[2] else lowrank_decode_reference
    return check_relative(what, got, ref(q, p_k, k, v), bound=BOUND[q.dtype])


def make_case(dev: torch.device, batch: int, context: int, n_q: int, n_kv: int, d: int, dtype: torch.dtype,
              seed: int) -> dict:
    """Queries and the full cache, seeded."""
    g = torch.Generator(device=dev).manual_seed(seed)
    return dict(q=(QUERY_SCALE * torch.randn(batch, n_q, 1, d, generator=g, device=dev)).to(dtype),
                k=torch.randn(batch, n_kv, context, d, generator=g, device=dev, dtype=dtype),
                v=torch.randn(batch, n_kv, context, d, generator=g, device=dev, dtype=dtype), g=g)


def projections(n_kv: int, d: int, r: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """P_k and P_v (Hkv, d, r) in float32: the first r columns of random orthogonal matrices."""
    dev = g.device
    mats = torch.randn(2, n_kv, d, d, generator=g, device=dev)
    basis = torch.linalg.qr(mats.cpu()).Q.to(dev)  # (2, Hkv, d, d); QR on the CPU runs anywhere
    return basis[0, :, :, :r].contiguous(), basis[1, :, :, :r].contiguous()


def run_rank(case: dict, r: int, dtype: torch.dtype, sweep: list[int]) -> dict:
    """Check ours and both anchors for rank ``r``, then time them."""
    from labkit.inference._kernels import lowrank_decode_triton
    from labkit.runtime import cuda_median_seconds as bench

    q, k, v = case["q"], case["k"], case["v"]
    batch, n_kv, context, d = k.shape
    scale = 1.0 / math.sqrt(d)
    p_k32, p_v32 = projections(n_kv, d, r, case["g"])
    k_lr = (k @ p_k32.to(dtype)).contiguous()  # (B, Hkv, T, r)
    v_lr = (v @ p_v32.to(dtype)).contiguous()
    p_k = p_k32.to(dtype)
    eye = torch.eye(d, device=q.device, dtype=dtype).expand(n_kv, d, d)

    # correctness first: ours in float32 on a slice, then everything in the timed dtype
    few, near = min(batch, 2), min(context, 4096)
    sliced = [t.float() for t in (q[:few], p_k32, k_lr[:few, :, :near], v_lr[:few, :, :near])]
    sliced[2], sliced[3] = sliced[2].contiguous(), sliced[3].contiguous()
    err32 = validate("lowrank_decode_triton float32", lowrank_decode_triton(*sliced), *sliced)
    err = validate("lowrank_decode_triton", lowrank_decode_triton(q, p_k, k_lr, v_lr), q, p_k, k_lr, v_lr)
    err_proj = validate("SDPA on the projected cache",
                        sdpa_grouped(project_queries(q, p_k), k_lr, v_lr, scale), q, p_k, k_lr, v_lr)
    err_full = validate("SDPA on the full cache", sdpa_grouped(q, k, v, scale), q, eye, k, v)

    t_full = bench(lambda: sdpa_grouped(q, k, v, scale))
    t_proj = bench(lambda: sdpa_grouped(project_queries(q, p_k), k_lr, v_lr, scale))
    t_ours = bench(lambda: lowrank_decode_triton(q, p_k, k_lr, v_lr))
    swept = {}
    for splits in sweep:
        validate(f"lowrank_decode_triton splits={splits}", lowrank_decode_triton(q, p_k, k_lr, v_lr, splits=splits),
                 q, p_k, k_lr, v_lr)
        swept[splits] = bench(lambda: lowrank_decode_triton(q, p_k, k_lr, v_lr, splits=splits))

    size = q.element_size()
    n_q = q.shape[1]
    small = (q.numel() + batch * n_q * r) * size  # the queries read, the output written
    bytes_ours = 2 * k_lr.numel() * size + p_k.numel() * size + small
    bytes_full = 2 * k.numel() * size + batch * n_q * d * size + q.numel() * size
    return dict(r=r, full=t_full, projected=t_proj, ours=t_ours, swept=swept, err=err, err32=err32,
                err_projected=err_proj, err_full=err_full, bytes_ours=bytes_ours, bytes_full=bytes_full,
                bytes_projected=bytes_ours)


def goals(rows: list[dict], d: int) -> list[tuple[str, float, bool]]:
    """(goal, measured, met) for the rows at :data:`GOAL_CASE`."""
    out = []
    for row in rows:
        if (row["batch"], row["context"]) != GOAL_CASE:
            continue
        r = row["r"]
        got = row["projected"] / row["ours"]
        out.append((f"r={r}: ours >= {GOAL_PROJECTED}x SDPA on the projected cache", got, got >= GOAL_PROJECTED))
        want = GOAL_FULL_PER_COMPRESSION * d / r
        got = row["full"] / row["ours"]
        out.append((f"r={r}: ours >= {want:.1f}x SDPA on the full cache (0.8 d/r)", got, got >= want))
        got = row["of_copy_ours"]
        out.append((f"r={r}: ours >= {GOAL_COPY:.0%} of copy bandwidth", got, got >= GOAL_COPY))
    return out


def markdown(rows: list[dict], d: int) -> str:
    lines = ["| B | T | r | SDPA full (us) | SDPA projected (us) | ours (us) | ours vs projected | ours vs full "
             "| d/r | ours GB/s | ours of copy | projected of copy | full of copy | ours err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['context']} | {row['r']} | {us(row['full'])} | {us(row['projected'])} "
                     f"| {us(row['ours'])} | {row['projected'] / row['ours']:.2f}x | {row['full'] / row['ours']:.2f}x "
                     f"| {d / row['r']:.0f} | {row['bytes_ours'] / row['ours'] / 1e9:.0f} "
                     f"| {row['of_copy_ours']:.0%} | {row['of_copy_projected']:.0%} | {row['of_copy_full']:.0%} "
                     f"| {row['err']:.1e} |")
    found = goals(rows, d)
    if found:
        lines += ["", "| goal | measured | met |", "|---|---|---|"]
        for goal, got, met in found:
            shown = f"{got:.0%}" if "bandwidth" in goal else f"{got:.2f}x"
            lines.append(f"| {goal} | {shown} | {'yes' if met else 'MISSED'} |")
    return "\n".join(lines)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.heads % args.kv_heads:
        parser.error(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    if any(not 1 <= r < args.head_dim for r in args.ranks):
        parser.error(f"--ranks {args.ranks} must lie in [1, --head-dim) = [1, {args.head_dim})")
    if any(s < 1 for s in args.sweep_splits):
        parser.error(f"--sweep-splits {args.sweep_splits} must be >= 1")


def body(args: argparse.Namespace, report: Report) -> int:
    dev = device()
    dtype = DTYPES[args.dtype]
    copy_bw = copy_bandwidth()
    print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)")
    print(f"problem: Hq={args.heads}, Hkv={args.kv_heads}, d={args.head_dim}, B in {args.batch}, T in {args.context}, "
          f"r in {args.ranks}, {args.dtype}")
    rows = []
    for batch in args.batch:
        for context in args.context:
            case = make_case(dev, batch, context, args.heads, args.kv_heads, args.head_dim, dtype, args.seed)
            for r in args.ranks:
                row = dict(batch=batch, context=context, **run_rank(case, r, dtype, args.sweep_splits))
                for name in ("ours", "projected", "full"):
                    row[f"of_copy_{name}"] = row[f"bytes_{name}"] / row[name] / copy_bw
                rows.append(row)
                swept = ", ".join(f"{s}: {us(t)}" for s, t in row["swept"].items())
                print(f"\nB={batch} T={context} r={r}: checked (largest error / largest output): ours "
                      f"{row['err']:.1e} ({row['err32']:.1e} in float32), SDPA projected {row['err_projected']:.1e}, "
                      f"SDPA full {row['err_full']:.1e}")
                print(f"  SDPA full {us(row['full'])} us ({row['of_copy_full']:.0%} of copy), SDPA projected "
                      f"{us(row['projected'])} us ({row['of_copy_projected']:.0%}), ours {us(row['ours'])} us "
                      f"({row['of_copy_ours']:.0%}): {row['projected'] / row['ours']:.2f}x projected, "
                      f"{row['full'] / row['ours']:.2f}x full (d/r = {args.head_dim / r:.0f})"
                      + (f"; fixed splits (us) {swept}" if swept else ""), flush=True)
            del case
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    table = markdown(rows, args.head_dim)
    report.table(f"Low-rank decode attention, Hq={args.heads}, Hkv={args.kv_heads}, d={args.head_dim}, {args.dtype}; "
                 f"copy {copy_bw / 1e9:.0f} GB/s", table, rows)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n")
    missed = [goal for goal, _, met in goals(rows, args.head_dim) if not met]
    if missed:
        report.notes.append(f"goals missed: {missed}")
    return 2 if missed and args.strict else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help=f"requests B (full: {FULL['batch']}, quick: {QUICK['batch']})")
    p.add_argument("--context", type=int, nargs="+", default=None,
                   help=f"cached positions T (full: {FULL['context']}, quick: {QUICK['context']})")
    p.add_argument("--ranks", type=int, nargs="+", default=None,
                   help=f"kept ranks r < d (full: {FULL['ranks']}, quick: {QUICK['ranks']})")
    p.add_argument("--heads", type=int, default=None, help=f"query heads Hq ({FULL['heads']})")
    p.add_argument("--kv-heads", type=int, default=None, help=f"key-value heads Hkv ({FULL['kv_heads']})")
    p.add_argument("--head-dim", type=int, default=None, help=f"head width d ({FULL['head_dim']})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="operand dtype (bf16; fp32 when interpreted)")
    p.add_argument("--sweep-splits", type=int, nargs="*", default=[],
                   help="also time ours at these fixed split counts (each checked first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="exit with status 2 when a goal is missed")
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown table to PATH")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("inference_lowrank_decode", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET,
               check=check, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
