"""Benchmark: W8A8 and W4A4 (+ low-rank branch) Triton GEMMs (labkit.quant) against torch._int_mm and bf16 torch.mm.

One linear layer, N = ``--n`` (4096) outputs, K = ``--k`` (4096) inputs, for M = ``--m`` tokens
(1 and 16: decoding, memory-bound; 4096: prefill, compute-bound). Every candidate writes the
(M, N) output in ``--out-dtype`` (bfloat16). Compared:

- bf16 ``torch.mm`` of the unquantized layer (``x @ W.T``, W an (N, K) tensor): the anchor a
  quantized kernel must beat to be worth it;
- ``torch._int_mm`` (cuBLASLt int8) with B passed as a transposed view of the contiguous (N, K)
  weight (a contiguous (K, N) B runs ~8x slower on Hopper), alone and followed by the scales
  applied in eager PyTorch (``acc * x_scale[:, None] * w_scale[None, :]``, then the cast): the
  same result as ours. ``_int_mm`` needs M > 16; for smaller M it runs on the rows padded with
  zeros to 32 (padding outside the timing), and the table says so;
- ours, ``w8a8_gemm_triton``: the int8 GEMM with the scales fused into its epilogue;
- ours, ``w4a4_gemm_triton`` with group size ``--group-size`` (64): without the low-rank branch,
  with the rank-``--rank`` (32) branch fused (``lora_down_out`` and ``lora_up`` in ``--lora-dtype``,
  bfloat16), and
  with the branch as a separate ``torch.addmm`` after the kernel (what fusion saves).

Before timing, each candidate is checked against the float64 references of labkit.quant.gemm
(largest error over the largest output, float32 output: must be < 2e-5; 16-bit: < 1e-2); a
failed check ends the script with status 1 before any timing. Times come from
:func:`labkit.runtime.cuda_median_seconds` (``triton.testing.do_bench`` medians; it flushes the
L2 cache before each run, so the M = 1 and M = 16 weight reads come from HBM). TOPS counts ``2 M N K`` integer or float
operations (the low-rank branch's ``2 M N r`` not counted). On the first call the Triton kernels
autotune over their few tile configurations (:data:`labkit.quant._kernels.W8A8_TILES`,
``W4A4_TILES``) for each M; the chosen ones are printed.

Goals of the issue, printed as met or missed (``--strict`` turns a miss into exit status 2):
at M = 4096, W8A8 >= 0.9x ``_int_mm`` + scales and >= 1.5x bf16 ``torch.mm``; at every M, the
fused low-rank branch costs <= 15% over the same W4A4 kernel without it.

    python benchmarks/quant_gemm.py [--m 1 16 4096 --n 4096 --k 4096 --group-size 64 --rank 32]
                                    [--out-dtype bf16 --lora-dtype bf16 --seed 0 --strict --markdown results.md]
                                    [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from _common import Report, add_options, check_relative, device, run

GOAL_INT_MM, GOAL_BF16, GOAL_LORA = 0.9, 1.5, 0.15
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FULL = {"m": [1, 16, 4096], "n": 4096, "k": 4096, "out_dtype": "bf16", "lora_dtype": "bf16"}
QUICK = {"m": [16, 4096], "n": 4096, "k": 4096, "out_dtype": "bf16", "lora_dtype": "bf16"}
# the interpreter mishandles bfloat16
INTERPRET = {"m": [3, 20], "n": 32, "k": 128, "out_dtype": "fp16", "lora_dtype": "fp16"}

#: candidate -> the reference it must reproduce
REFERENCE_OF = {"w8a8 fp32": "w8a8", "w8a8": "w8a8", "_int_mm + scales": "w8a8", "w4a4 fp32": "w4a4",
                "w4a4": "w4a4", "w4a4 + lora fp32": "w4a4 + lora", "w4a4 + lora": "w4a4 + lora",
                "w4a4 + separate addmm": "w4a4 + lora"}


def us(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e6:.1f}"


def ratio(num: float, den: float) -> str:
    return "n/a" if math.isnan(num) or math.isnan(den) else f"{num / den:.2f}x"


def validate(layer: dict[str, torch.Tensor], group_size: int, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each output (named as in :data:`REFERENCE_OF`) against the float64 references of
    labkit.quant.gemm: largest error / largest output < 2e-5 for float32 outputs, < 1e-2 for
    16-bit ones. ``layer`` holds xq, x_scale, wq, w_scale, x4, x4_scale, w4, w4_scale, down, up.
    Returns the errors; raises ``Mismatch`` at the first one out of bounds."""
    from labkit.quant.gemm import w4a4_gemm_reference, w8a8_gemm_reference

    unknown = set(outputs) - set(REFERENCE_OF)
    if unknown:
        raise ValueError(f"outputs: unknown candidates {sorted(unknown)}; expected names of {sorted(REFERENCE_OF)}")
    lay = layer
    refs = {"w8a8": w8a8_gemm_reference(lay["xq"], lay["x_scale"], lay["wq"], lay["w_scale"], out_dtype=torch.float64)}
    refs["w4a4"] = w4a4_gemm_reference(lay["x4"], lay["x4_scale"], lay["w4"], lay["w4_scale"], group_size=group_size,
                                       out_dtype=torch.float64)
    refs["w4a4 + lora"] = refs["w4a4"] + lay["down"].double() @ lay["up"].double()
    return {name: check_relative(f"{name} vs the float64 reference", out, refs[REFERENCE_OF[name]],
                                 bound=2e-5 if out.dtype == torch.float32 else 1e-2)
            for name, out in outputs.items()}


def int_mm_with_scales(xq: torch.Tensor, wq_t: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """The anchor: cuBLASLt int8 GEMM (int32 out), then the scales in eager PyTorch."""
    acc = torch._int_mm(xq, wq_t)
    return (acc.float() * x_scale[:, None] * w_scale[None, :]).to(out_dtype)


def make_layer(dev: torch.device, m: int, n: int, k: int, group_size: int, rank: int, lora_dtype: torch.dtype,
               seed: int) -> dict[str, torch.Tensor]:
    """Random int8 and packed int4 operands with their scales, and the low-rank branch's halves."""
    from labkit.quant.packing import pack_int4

    g = torch.Generator(device=dev).manual_seed(seed)
    n_groups = k // group_size
    return dict(
        xq=torch.randint(-127, 128, (m, k), generator=g, device=dev, dtype=torch.int8),
        wq=torch.randint(-127, 128, (n, k), generator=g, device=dev, dtype=torch.int8),  # contiguous (N, K)
        x_scale=torch.rand(m, generator=g, device=dev) / 127,
        w_scale=torch.rand(n, generator=g, device=dev) / 127,
        x4=pack_int4(torch.randint(-8, 8, (m, k), generator=g, device=dev, dtype=torch.int8)),
        w4=pack_int4(torch.randint(-8, 8, (n, k), generator=g, device=dev, dtype=torch.int8)),
        x4_scale=torch.rand(m, n_groups, generator=g, device=dev) / 7,
        w4_scale=torch.rand(n, n_groups, generator=g, device=dev) / 7,
        down=(torch.randn(m, rank, generator=g, device=dev) / 8).to(lora_dtype),  # x @ L1, made by the caller
        up=(torch.randn(rank, n, generator=g, device=dev) / 8).to(lora_dtype),  # L2
        a16=torch.randn(m, k, generator=g, device=dev).to(torch.bfloat16),
        w16=torch.randn(n, k, generator=g, device=dev).to(torch.bfloat16),
    )


def run_case(dev: torch.device, m: int, n: int, k: int, group_size: int, rank: int, out_dtype: torch.dtype,
             lora_dtype: torch.dtype, seed: int) -> dict:
    """Build one layer, check every candidate against the references, then time them all."""
    from labkit.quant import _kernels
    from labkit.runtime import cuda_median_seconds as bench

    lay = make_layer(dev, m, n, k, group_size, rank, lora_dtype, seed)
    xq, x_scale, wq, w_scale = lay["xq"], lay["x_scale"], lay["wq"], lay["w_scale"]
    x4, x4_scale, w4, w4_scale, down, up = (lay[key] for key in ("x4", "x4_scale", "w4", "w4_scale", "down", "up"))
    a16, w16 = lay["a16"], lay["w16"]

    # int_mm needs M > 16: pad the rows with zeros (outside the timing) where M is smaller
    pad_rows = 0 if m > 16 else 32 - m
    xq_mm = torch.cat([xq, xq.new_zeros(pad_rows, k)]) if pad_rows else xq
    xs_mm = torch.cat([x_scale, x_scale.new_ones(pad_rows)]) if pad_rows else x_scale
    wq_t = wq.t()  # (K, N) view of the (N, K) weight: the fast layout for cuBLASLt

    def w8a8() -> torch.Tensor:
        return _kernels.w8a8_gemm_triton(xq, x_scale, wq, w_scale, out_dtype=out_dtype)

    def w4a4(lora: bool) -> torch.Tensor:
        extra = dict(lora_down_out=down, lora_up=up) if lora else {}
        return _kernels.w4a4_gemm_triton(x4, x4_scale, w4, w4_scale, group_size=group_size, out_dtype=out_dtype,
                                         **extra)

    def w4a4_unfused() -> torch.Tensor:
        out = _kernels.w4a4_gemm_triton(x4, x4_scale, w4, w4_scale, group_size=group_size, out_dtype=out_dtype)
        return torch.addmm(out, down.to(out_dtype), up.to(out_dtype))

    # correctness first: float32 output strictly, then the timed dtype
    errors = validate(lay, group_size, {
        "w8a8 fp32": _kernels.w8a8_gemm_triton(xq, x_scale, wq, w_scale),
        "w8a8": w8a8(),
        "_int_mm + scales": int_mm_with_scales(xq_mm, wq_t, xs_mm, w_scale, torch.float32)[:m],
        "w4a4 fp32": _kernels.w4a4_gemm_triton(x4, x4_scale, w4, w4_scale, group_size=group_size),
        "w4a4": w4a4(False),
        "w4a4 + lora fp32": _kernels.w4a4_gemm_triton(x4, x4_scale, w4, w4_scale, group_size=group_size,
                                                      lora_down_out=down, lora_up=up),
        "w4a4 + lora": w4a4(True),
        "w4a4 + separate addmm": w4a4_unfused(),
    })

    times = {
        "bf16": bench(lambda: torch.mm(a16, w16.t())),
        "int_mm": bench(lambda: torch._int_mm(xq_mm, wq_t)),
        "int_mm_scaled": bench(lambda: int_mm_with_scales(xq_mm, wq_t, xs_mm, w_scale, out_dtype)),
        "w8a8": bench(w8a8),
        "w4a4": bench(lambda: w4a4(False)),
        "w4a4_lora": bench(lambda: w4a4(True)),
        "w4a4_unfused": bench(w4a4_unfused),
    }
    configs = {"w8a8": str(getattr(_kernels._w8a8_tuned, "best_config", None)),
               "w4a4": str(getattr(_kernels._w4a4_tuned, "best_config", None))}
    return dict(m=m, pad=pad_rows, ops=2.0 * m * n * k, errors=errors, configs=configs, **times)


def goals(rows: list[dict]) -> list[tuple[str, float, bool]]:
    """(goal, measured, met) for the goals of the issue."""
    out = []
    big = [r for r in rows if r["m"] == 4096]
    for r in big:
        got = r["int_mm_scaled"] / r["w8a8"]
        out.append((f"M=4096: W8A8 >= {GOAL_INT_MM}x _int_mm + scales", got, got >= GOAL_INT_MM))
        got = r["bf16"] / r["w8a8"]
        out.append((f"M=4096: W8A8 >= {GOAL_BF16}x bf16 torch.mm", got, got >= GOAL_BF16))
    for r in rows:
        got = r["w4a4_lora"] / r["w4a4"] - 1.0
        out.append((f"M={r['m']}: fused low-rank branch costs <= {GOAL_LORA:.0%}", got, got <= GOAL_LORA))
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| M | bf16 mm (us) | _int_mm (us) | _int_mm + scales (us) | W8A8 ours (us) | W8A8 TOPS "
             "| vs _int_mm | vs _int_mm + scales | vs bf16 | W4A4 (us) | W4A4 + low-rank (us) "
             "| W4A4 + separate addmm (us) | low-rank cost | W4A4 + low-rank vs bf16 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pad = f" (padded to {r['m'] + r['pad']} rows)" if r["pad"] else ""
        lines.append(
            f"| {r['m']} | {us(r['bf16'])} | {us(r['int_mm'])}{pad} | {us(r['int_mm_scaled'])} | {us(r['w8a8'])} "
            f"| {r['ops'] / r['w8a8'] / 1e12:.0f} | {ratio(r['int_mm'], r['w8a8'])} "
            f"| {ratio(r['int_mm_scaled'], r['w8a8'])} | {ratio(r['bf16'], r['w8a8'])} | {us(r['w4a4'])} "
            f"| {us(r['w4a4_lora'])} | {us(r['w4a4_unfused'])} | {r['w4a4_lora'] / r['w4a4'] - 1:+.1%} "
            f"| {ratio(r['bf16'], r['w4a4_lora'])} |")
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for goal, got, met in goals(rows):
        shown = f"{got:+.1%}" if "low-rank" in goal else f"{got:.2f}x"
        lines.append(f"| {goal} | {shown} | {'yes' if met else 'MISSED'} |")
    return "\n".join(lines)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.k % args.group_size:
        parser.error(f"--group-size {args.group_size} must divide --k {args.k}")


def body(args: argparse.Namespace, report: Report) -> int:
    out_dtype, lora_dtype = DTYPES[args.out_dtype], DTYPES[args.lora_dtype]
    print(f"problem: N={args.n}, K={args.k}, M in {args.m}; W4A4 G={args.group_size}, low-rank r={args.rank} "
          f"({args.lora_dtype}); output {args.out_dtype}")
    rows = []
    for m in args.m:
        r = run_case(device(), m, args.n, args.k, args.group_size, args.rank, out_dtype, lora_dtype, args.seed)
        rows.append(r)
        torch.cuda.empty_cache()
        errs = ", ".join(f"{name} {e:.1e}" for name, e in r["errors"].items())
        print(f"\nM={m}: checked against float64 references (max err / max |out|): {errs}")
        print(f"  autotuned tiles: W8A8 {r['configs']['w8a8']}; W4A4 (last M tuned) {r['configs']['w4a4']}")
        print(f"  bf16 mm {us(r['bf16'])} us; _int_mm {us(r['int_mm'])} us"
              + (f" (on {m + r['pad']} zero-padded rows)" if r["pad"] else "")
              + f", + scales {us(r['int_mm_scaled'])} us; W8A8 ours {us(r['w8a8'])} us "
              f"({r['ops'] / r['w8a8'] / 1e12:.0f} TOPS, {ratio(r['int_mm_scaled'], r['w8a8'])} _int_mm + scales, "
              f"{ratio(r['bf16'], r['w8a8'])} bf16)")
        print(f"  W4A4 {us(r['w4a4'])} us, + fused low-rank {us(r['w4a4_lora'])} us "
              f"({r['w4a4_lora'] / r['w4a4'] - 1:+.1%}), + separate addmm {us(r['w4a4_unfused'])} us; "
              f"W4A4 + low-rank {ratio(r['bf16'], r['w4a4_lora'])} bf16", flush=True)

    table = markdown(rows)
    report.table(f"Quantized GEMM, N={args.n}, K={args.k}, W4A4 group size {args.group_size}, low-rank "
                 f"r={args.rank}, output {args.out_dtype}", table, rows)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n")
    missed = [goal for goal, _, met in goals(rows) if not met]
    if missed:
        report.notes.append(f"goals missed: {missed}")
    return 2 if missed and args.strict else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, nargs="+", default=None,
                   help=f"token counts, rows of x (full: {FULL['m']}, quick: {QUICK['m']})")
    p.add_argument("--n", type=int, default=None, help=f"output channels ({FULL['n']})")
    p.add_argument("--k", type=int, default=None, help=f"input width ({FULL['k']})")
    p.add_argument("--group-size", type=int, default=64, help="W4A4 quantization group (SVDQuant uses 64)")
    p.add_argument("--rank", type=int, default=32, help="rank of the low-rank branch (SVDQuant uses 32)")
    p.add_argument("--out-dtype", choices=sorted(DTYPES), default=None, help="output dtype (bf16)")
    p.add_argument("--lora-dtype", choices=["bf16", "fp16"], default=None, help="low-rank operands (bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="exit with status 2 when a goal is missed")
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown table to PATH")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("quant_gemm", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET, check=check,
               argv=argv)


if __name__ == "__main__":
    sys.exit(main())
