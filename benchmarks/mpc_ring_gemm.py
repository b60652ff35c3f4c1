"""Benchmark: Triton ring matmul mod 2^64 (labkit.mpc) against CrypTen's float64 limbs and the CPU's int64 GEMM.

The local work of a secret-shared linear layer: ``a @ b`` of full-range int64 matrices modulo
2^64 (square n x n x n, ``--sizes`` 256 ... 4096). cuBLAS has no int64 GEMM, so the anchors are:

- the limb split on the GPU, ``ring_matmul_limbs(a, b, limb_bits=16)``: CrypTen's approach, four
  16-bit limbs as float64, one float64 GEMM per limb pair below bit 64 (10 of 16, which makes
  this anchor a little faster than CrypTen's own), recombined mod 2^64 in int64;
- the CPU's int64 ``a @ b`` (all of the host's threads), timed (:func:`labkit.runtime.time_fn`,
  up to 5 calls) only while one call stays under ``--cpu-budget`` seconds (10), predicted from
  the previous size by n^3; '-' beyond, nothing extrapolated;
- ours, ``ring_matmul_triton``: eight balanced 8-bit digits, 36 int8 tensor-core dots per tile;
  its time includes the digit split (a small second Triton kernel), also timed on its own.

Before timing, each size checks ours bit for bit against the labkit reference
(``ring_matmul_reference``: the limb split on the GPU) and against the CPU's int64 product where
the CPU ran; a mismatch stops the script with exit status 1. GPU times come from
:func:`labkit.runtime.cuda_median_seconds`. GOPS counts 2 n^3 ring operations
(multiply and add). The hardware limit: the int8 GEMM rate of ``torch._int_mm`` (cuBLASLt) at
the same n, against which ours is charged 36 int8 GEMMs.

Goals: ours >= 1x the limb split at every size, and >= 20x the CPU at the largest
size the CPU ran. ``--sweep`` also times a few other tile configurations at the largest size
(to pick :data:`labkit.mpc._kernels.RING_MM_CONFIG`), each checked first; ``--strict`` turns a
missed goal into exit status 2.

    python benchmarks/mpc_ring_gemm.py [--sizes 256 512 1024 2048 4096] [--cpu-budget 10] [--sweep]
                                       [--strict] [--markdown results.md] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import Report, add_options, check_equal, device, run

N_DIGIT_GEMMS = 36  # digit pairs (i, j) with i + j < 8
GOAL_VS_LIMBS, GOAL_VS_CPU = 1.0, 20.0
FULL = {"sizes": [256, 512, 1024, 2048, 4096], "cpu_budget": 10.0}
QUICK = {"sizes": [512, 2048], "cpu_budget": 3.0}
INTERPRET = {"sizes": [8, 24], "cpu_budget": 1.0}
SWEEP = [  # block_m, block_n, block_k, group_m, num_warps, num_stages (block_k <= 128: one TMA row)
    (128, 128, 128, 8, 8, 3), (128, 128, 128, 8, 8, 4), (128, 128, 64, 8, 8, 4), (128, 64, 128, 8, 8, 4),
    (64, 128, 128, 8, 4, 4), (128, 128, 128, 8, 16, 3), (256, 128, 128, 8, 16, 3), (128, 128, 128, 4, 8, 3),
]


def validate(a: torch.Tensor, b: torch.Tensor, ours: torch.Tensor, cpu_product: torch.Tensor | None = None,
             *, what: str = "ring_matmul_triton") -> None:
    """Ours against ``ring_matmul_reference`` on its device (the limb split on a GPU) and, when
    given, the CPU's int64 product: bit for bit."""
    from labkit.mpc.ringmm import ring_matmul_reference

    check_equal(f"{what} vs ring_matmul_reference", ours, ring_matmul_reference(a, b))
    if cpu_product is not None:
        check_equal(f"{what} vs the CPU's int64 product", ours.cpu(), cpu_product)


def ring_rand(shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """Uniform full-range int64 on the generator's device, INT64_MIN and INT64_MAX planted."""
    x = torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64, generator=g, device=g.device)
    x[0, 0], x[-1, -1] = -(2**63), 2**63 - 1
    return x


def cpu_product(a: torch.Tensor, b: torch.Tensor, budget: float) -> tuple[torch.Tensor, float]:
    """The CPU's int64 product (for the check) and the median seconds of up to 5 calls in ``budget``."""
    from labkit.runtime import time_fn

    a_cpu, b_cpu = a.cpu(), b.cpu()
    out: list[torch.Tensor] = []
    first = time_fn(lambda: out.append(a_cpu @ b_cpu), repeats=1, warmup=0, device="cpu")
    more = max(0, min(4, int(budget / max(first.median, 1e-9)) - 1))
    times = list(first.times)
    if more:
        times += time_fn(lambda: a_cpu @ b_cpu, repeats=more, warmup=0, device="cpu").times
    return out[0], sorted(times)[len(times) // 2]


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def fmt_x(num: float | None, den: float) -> str:
    return "-" if num is None else f"{num / den:.1f}x"


def run_size(n: int, dev: torch.device, cpu_budget: float, cpu_allowed: bool, seed: int) -> dict:
    """Check ours bit for bit, then time ours, the limb split, the CPU (if allowed) and torch._int_mm."""
    from labkit.mpc._kernels import digit_planes, ring_matmul_triton
    from labkit.mpc.ringmm import ring_matmul_limbs
    from labkit.runtime import cuda_median_seconds as bench

    g = torch.Generator(device=dev).manual_seed(seed + n)
    a, b = ring_rand((n, n), g), ring_rand((n, n), g)
    ref, t_cpu = cpu_product(a, b, cpu_budget) if cpu_allowed else (None, None)
    validate(a, b, ring_matmul_triton(a, b), ref)
    del ref
    r = dict(n=n, exact_cpu=t_cpu is not None, cpu=t_cpu, ops=2.0 * n**3)
    r["ours"] = bench(lambda: ring_matmul_triton(a, b))
    r["split"] = bench(lambda: (digit_planes(a), digit_planes(b.t(), reverse=True)))
    r["limbs"] = bench(lambda: ring_matmul_limbs(a, b))
    a8 = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=dev, generator=g)
    b8 = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=dev, generator=g).t().contiguous().t()
    try:
        r["int_mm"] = bench(lambda: torch._int_mm(a8, b8))
    except Exception as exc:  # noqa: BLE001 (absent or unsupported here: report, go on)
        r["int_mm"], r["int_mm_note"] = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return r


def sweep(n: int, dev: torch.device, seed: int) -> list[tuple[tuple[int, ...], float | None, str]]:
    """Time ``ring_matmul_triton`` at each config of :data:`SWEEP` at size n, each checked first."""
    from labkit.mpc import _kernels
    from labkit.runtime import cuda_median_seconds as bench

    g = torch.Generator(device=dev).manual_seed(seed)
    a, b = ring_rand((n, n), g), ring_rand((n, n), g)
    saved = dict(_kernels.RING_MM_CONFIG)
    results = []
    try:
        for cfg in SWEEP:
            _kernels.RING_MM_CONFIG.update(zip(("block_m", "block_n", "block_k", "group_m", "num_warps",
                                                "num_stages"), cfg))
            try:
                out = _kernels.ring_matmul_triton(a, b)
            except Exception as exc:  # noqa: BLE001 (out of resources etc.: report, go on)
                results.append((cfg, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"))
                continue
            validate(a, b, out, what=f"ring_matmul_triton at {cfg}")
            results.append((cfg, bench(lambda: _kernels.ring_matmul_triton(a, b)), ""))
    finally:
        _kernels.RING_MM_CONFIG.clear()
        _kernels.RING_MM_CONFIG.update(saved)
    return results


def markdown(rows: list[dict]) -> str:
    lines = ["| n | CPU int64 (ms) | limb split fp64 (ms) | ours (ms) | of which split (ms) | CPU GOPS | limbs GOPS "
             "| ours GOPS | ours vs limbs | ours vs CPU | torch._int_mm TOPS | ours of int8 rate | exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gops = {k: r["ops"] / r[k] / 1e9 for k in ("ours", "limbs")}
        cpu_gops = "-" if r["cpu"] is None else f"{r['ops'] / r['cpu'] / 1e9:.1f}"
        if r["int_mm"] is None:
            int8, frac = "n/a", "n/a"
        else:
            int8 = f"{r['ops'] / r['int_mm'] / 1e12:.0f}"
            frac = f"{N_DIGIT_GEMMS * r['int_mm'] / r['ours']:.0%}"
        exact = "yes (reference" + (", CPU)" if r["exact_cpu"] else ")")
        lines.append(f"| {r['n']} | {fmt_ms(r['cpu'])} | {fmt_ms(r['limbs'])} | {fmt_ms(r['ours'])} "
                     f"| {fmt_ms(r['split'])} | {cpu_gops} | {gops['limbs']:.0f} | {gops['ours']:.0f} "
                     f"| {r['limbs'] / r['ours']:.2f}x | {fmt_x(r['cpu'], r['ours'])} | {int8} | {frac} | {exact} |")
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    """The goals missed, as sentences (empty: all met)."""
    missed = []
    for r in rows:
        if r["limbs"] / r["ours"] < GOAL_VS_LIMBS:
            missed.append(f"n={r['n']}: ours {r['limbs'] / r['ours']:.2f}x the limb split < {GOAL_VS_LIMBS:g}x")
    cpu_rows = [r for r in rows if r["cpu"] is not None]
    if cpu_rows and cpu_rows[-1]["cpu"] / cpu_rows[-1]["ours"] < GOAL_VS_CPU:
        r = cpu_rows[-1]
        missed.append(f"n={r['n']}: ours {r['cpu'] / r['ours']:.1f}x the CPU < {GOAL_VS_CPU:g}x")
    return missed


def body(args: argparse.Namespace, report: Report) -> int:
    from labkit.mpc._kernels import RING_MM_CONFIG

    dev = device()
    print(f"ours: RING_MM_CONFIG {RING_MM_CONFIG}; GOPS = 2 n^3 ring ops / time; CPU anchor on "
          f"{torch.get_num_threads()} threads")
    rows, t_cpu_last, n_last, cpu_open = [], None, 1, True
    for n in sorted(args.sizes):
        if t_cpu_last is not None and t_cpu_last * (n / n_last) ** 3 >= args.cpu_budget:
            cpu_open = False  # predicted past the budget: this size and every larger one get '-'
        r = run_size(n, dev, args.cpu_budget, cpu_open, args.seed)
        if r["cpu"] is not None:
            t_cpu_last, n_last = r["cpu"], n
        rows.append(r)
        torch.cuda.empty_cache()
        print(f"n={n}: exact vs the reference{' and the CPU int64 product' if r['exact_cpu'] else ''}; "
              f"ours {fmt_ms(r['ours'])} ms (split {fmt_ms(r['split'])}), limbs {fmt_ms(r['limbs'])} ms, "
              f"CPU {fmt_ms(r['cpu'])} ms, torch._int_mm {fmt_ms(r['int_mm'])} ms"
              + (f" [{r['int_mm_note']}]" if r.get("int_mm_note") else ""), flush=True)

    table = markdown(rows)
    missed = goals(rows)
    report.table(f"Ring matmul mod 2^64, RING_MM_CONFIG {RING_MM_CONFIG}", table, rows)
    report.notes.append(f"goals: >= {GOAL_VS_LIMBS:g}x the limb split at every n, >= {GOAL_VS_CPU:g}x the CPU at "
                        f"the largest n it ran: " + ("met" if not missed else "MISSED: " + "; ".join(missed)))
    if args.sweep:
        n = max(args.sizes)
        print(f"\nsweep at n={n} (block_m, block_n, block_k, group_m, num_warps, num_stages; chunk "
              f"{RING_MM_CONFIG['chunk']})")
        for cfg, seconds, note in sweep(n, dev, args.seed):
            print(f"  {cfg}: " + (f"{seconds * 1e3:.3f} ms, {2.0 * n**3 / seconds / 1e9:.0f} GOPS" if seconds
                                  else note))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n")
    return 2 if missed and args.strict else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help=f"n values (full: {FULL['sizes']}, quick: {QUICK['sizes']})")
    p.add_argument("--cpu-budget", type=float, default=None,
                   help="seconds one CPU int64 matmul may take, predicted by n^3 from the last size "
                        f"(full: {FULL['cpu_budget']:g}, quick: {QUICK['cpu_budget']:g})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="also time other tile configs at the largest size")
    p.add_argument("--strict", action="store_true", help="exit with status 2 when a goal is missed")
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown table to PATH")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("mpc_ring_gemm", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
