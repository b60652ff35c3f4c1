"""Benchmark: Triton grouped GEMM and fused routing (labkit.moe) against a per-expert loop and torch._grouped_mm.

The expert layer of a mixture of experts after routing: ``--tokens`` tokens (default 16k), each
sent to ``--top-k`` (2) of E experts (``--experts``, default 8 and 64), multiply their rows,
sorted by expert, by the expert's (D, F) weight (default 2048 -> 4096), in bfloat16. Timed with
:func:`labkit.runtime.cuda_median_seconds`:

- the loop: ``grouped_mm_reference``, one ``x[rows_e] @ weight[e]`` per expert (the anchor);
- ``torch._grouped_mm`` (PyTorch's grouped GEMM, CUTLASS on Hopper) where this torch has it
  and it accepts the problem, with ``weight`` as a transposed view of an (E, F, D) tensor;
  else "n/a" and the reason;
- ours, ``grouped_mm_triton`` (one launch, fixed tiles, no autotuning);
- the ceiling: one dense ``torch.mm`` of (A, D) @ (D, F), the same FLOPs in one GEMM.

Two routings per E: "balanced", the top-k of standard normal logits (every expert gets about
A / E rows), and "skewed", where expert e's logits are shifted by ``-skew * log(e + 1)``, so a
few experts take most rows (the table reports the largest expert's share). Before timing, ours
is checked against the labkit reference, the loop (within labkit.testing's Triton tolerance for
the dtype): a disagreement stops the script with exit status 1. ``torch._grouped_mm`` is checked
the same way and, if it disagrees, reported and left out of the timing.

Then the routing itself for N tokens and the largest E: ``topk_gating`` + ``permute_tokens``,
the Triton kernels against the PyTorch references (softmax, topk, division; nonzero, stable
argsort, bincount, cumsum), after checking that ours picks the same experts, the same gate
weights (float32 tolerance) and the same permutation.

    python benchmarks/moe_grouped_gemm.py [--tokens 16384 --top-k 2 --experts 8 64 --d-in 2048 --d-out 4096]
                                          [--skew 1.5 --markdown results.md] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from _common import Mismatch, Report, add_options, check_close, check_equal, device, run

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FULL = {"tokens": 16384, "experts": [8, 64], "d_in": 2048, "d_out": 4096, "dtype": "bf16"}
QUICK = {"tokens": 4096, "experts": [8], "d_in": 2048, "d_out": 4096, "dtype": "bf16"}
INTERPRET = {"tokens": 24, "experts": [4], "d_in": 32, "d_out": 16, "dtype": "fp16"}


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.3f}"


def ratio(num: float, den: float) -> str:
    return "n/a" if math.isnan(num) or math.isnan(den) else f"{num / den:.2f}x"


def validate_grouped(what: str, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     offsets: torch.Tensor) -> float:
    """A grouped GEMM's result against ``grouped_mm_reference``; returns the largest error."""
    from labkit.moe.grouped_gemm import grouped_mm_reference
    from labkit.testing import tolerances

    rtol, atol = tolerances(x.dtype, backend="triton")
    return check_close(what, out, grouped_mm_reference(x, weight, offsets), rtol=rtol, atol=atol)


def validate_routing(logits: torch.Tensor, top_k: int, n_experts: int,
                     gating: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     permutation: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, int]:
    """Ours (gating of ``logits``, permutation of the reference's experts) against the references,
    within float32's Triton tolerance: the same softmax and gate weights; experts whose reference
    probabilities equal the top-k probabilities (a different pick is allowed only between
    near-equal probabilities, which two softmax implementations may order differently); the
    same permutation, exactly. Returns the largest gate-weight error and the rows whose experts
    differ (near-ties)."""
    from labkit.moe.gating import permute_tokens_reference, topk_gating_reference
    from labkit.testing import tolerances

    probs, weights, experts = topk_gating_reference(logits, top_k)
    rtol, atol = tolerances(torch.float32, backend="triton")
    check_close("topk_gating_triton probs", gating[0], probs, rtol=rtol, atol=atol)
    err = check_close("topk_gating_triton weights", gating[1], weights, rtol=rtol, atol=atol)
    picked = gating[2]
    if (picked.shape != experts.shape or picked.dtype != experts.dtype
            or bool(((picked < 0) | (picked >= n_experts)).any())):
        check_equal("topk_gating_triton experts", picked, experts)  # names the shape, dtype or entry
    check_close("topk_gating_triton experts (their reference probabilities)", probs.gather(1, picked),
                probs.gather(1, experts), rtol=rtol, atol=atol)
    differ = int((picked != experts).any(dim=1).sum())
    order, offsets = permute_tokens_reference(experts, n_experts)
    check_equal("permute_tokens_triton order", permutation[0], order)
    check_equal("permute_tokens_triton offsets", permutation[1], offsets)
    return err, differ


def route(n_tokens: int, n_experts: int, top_k: int, skew: float, g: torch.Generator) -> torch.Tensor:
    """Experts (N, k) from the top-k of normal logits shifted by ``-skew * log(e + 1)`` (0 = balanced)."""
    from labkit.moe.gating import topk_gating_reference

    dev = g.device
    logits = torch.randn(n_tokens, n_experts, generator=g, device=dev)
    logits -= skew * torch.log(torch.arange(1, n_experts + 1, device=dev, dtype=torch.float32))
    return topk_gating_reference(logits, top_k)[2]


def grouped_mm_torch(x: torch.Tensor, weight_t: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``torch._grouped_mm`` with int32 end offsets; ``weight_t`` is (E, D, F), column-major per expert."""
    return torch._grouped_mm(x, weight_t, offs=offsets[1:].to(torch.int32))


def run_case(dev: torch.device, n_tokens: int, top_k: int, n_experts: int, d_in: int, d_out: int,
             routing: str, skew: float, dtype: torch.dtype, seed: int) -> dict:
    """Build one routed problem, check ours (and torch._grouped_mm) against the loop, time all four."""
    from labkit.moe._kernels import grouped_mm_triton
    from labkit.moe.gating import permute_tokens_reference
    from labkit.moe.grouped_gemm import grouped_mm_reference
    from labkit.runtime import cuda_median_seconds as bench

    g = torch.Generator(device=dev).manual_seed(seed)
    experts = route(n_tokens, n_experts, top_k, skew if routing == "skewed" else 0.0, g)
    order, offsets = permute_tokens_reference(experts, n_experts)
    tokens = torch.randn(n_tokens, d_in, generator=g, device=dev).to(dtype)
    x = tokens[order // top_k].contiguous()  # (A, D) sorted by expert
    weight = (torch.randn(n_experts, d_in, d_out, generator=g, device=dev) / d_in**0.5).to(dtype)
    n_rows = x.shape[0]
    counts = offsets.diff()
    flops = 2.0 * n_rows * d_in * d_out

    err = validate_grouped("grouped_mm_triton", grouped_mm_triton(x, weight, offsets), x, weight, offsets)
    t_torch, torch_note, torch_err = float("nan"), "", float("nan")
    weight_t = weight.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (E, F, D) storage
    if not hasattr(torch, "_grouped_mm"):
        torch_note = "torch._grouped_mm absent in this torch"
    else:
        try:
            torch_err = validate_grouped("torch._grouped_mm", grouped_mm_torch(x, weight_t, offsets), x, weight,
                                         offsets)
        except Mismatch as exc:  # the anchor is wrong here: say so, do not time it
            torch_note = f"disagrees with the reference, not timed: {exc}"
        except Exception as exc:  # noqa: BLE001 (unsupported device, dtype or layout: report, go on)
            torch_note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"

    t_loop = bench(lambda: grouped_mm_reference(x, weight, offsets))
    t_ours = bench(lambda: grouped_mm_triton(x, weight, offsets))
    if not torch_note:
        t_torch = bench(lambda: grouped_mm_torch(x, weight_t, offsets))
    del weight_t
    a = torch.randn(n_rows, d_in, generator=g, device=dev).to(dtype)
    b = torch.randn(d_in, d_out, generator=g, device=dev).to(dtype)
    t_dense = bench(lambda: torch.mm(a, b))
    del a, b, x, weight, tokens
    return dict(experts=n_experts, routing=routing, rows=n_rows, largest=int(counts.max()) / n_rows,
                empty=int((counts == 0).sum()), loop=t_loop, torch=t_torch, ours=t_ours, dense=t_dense,
                err=err, torch_err=torch_err, torch_note=torch_note, flops=flops)


def run_routing(dev: torch.device, n_tokens: int, n_experts: int, top_k: int, seed: int) -> dict:
    """Time gating + permutation, Triton against the references, after checking they agree."""
    from labkit.moe._kernels import permute_tokens_triton, topk_gating_triton
    from labkit.moe.gating import permute_tokens_reference, topk_gating_reference
    from labkit.runtime import cuda_median_seconds as bench

    logits = torch.randn(n_tokens, n_experts, generator=torch.Generator(device=dev).manual_seed(seed), device=dev)
    experts = topk_gating_reference(logits, top_k)[2]
    weight_err, near_ties = validate_routing(logits, top_k, n_experts, topk_gating_triton(logits, top_k),
                                             permute_tokens_triton(experts, n_experts))
    t = {
        "gating_ref": bench(lambda: topk_gating_reference(logits, top_k)),
        "gating_ours": bench(lambda: topk_gating_triton(logits, top_k)),
        "permute_ref": bench(lambda: permute_tokens_reference(experts, n_experts)),
        "permute_ours": bench(lambda: permute_tokens_triton(experts, n_experts)),
        "both_ref": bench(lambda: permute_tokens_reference(topk_gating_reference(logits, top_k)[2], n_experts)),
        "both_ours": bench(lambda: permute_tokens_triton(topk_gating_triton(logits, top_k)[2], n_experts)),
    }
    return dict(t, weight_err=weight_err, near_ties=near_ties)


def markdown(rows: list[dict], routing: dict, args: argparse.Namespace) -> tuple[str, str]:
    lines = ["| E | routing | largest expert | loop (ms) | torch._grouped_mm (ms) | ours (ms) | dense mm (ms) "
             "| ours TFLOP/s | ours vs loop | ours vs _grouped_mm | of dense mm | max abs err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['experts']} | {r['routing']} | {r['largest']:.0%} | {ms(r['loop'])} | {ms(r['torch'])} "
                     f"| {ms(r['ours'])} | {ms(r['dense'])} | {r['flops'] / r['ours'] / 1e12:.0f} "
                     f"| {ratio(r['loop'], r['ours'])} | {ratio(r['torch'], r['ours'])} "
                     f"| {r['dense'] / r['ours']:.0%} | {r['err']:.1e} |")
    routing_lines = ["| step | reference (ms) | ours (ms) | speed-up |", "|---|---|---|---|"]
    for step, key in (("topk_gating", "gating"), ("permute_tokens", "permute"), ("both", "both")):
        routing_lines.append(f"| {step} | {ms(routing[key + '_ref'])} | {ms(routing[key + '_ours'])} "
                             f"| {ratio(routing[key + '_ref'], routing[key + '_ours'])} |")
    return "\n".join(lines), "\n".join(routing_lines)


def body(args: argparse.Namespace, report: Report) -> int:
    dev = device()
    dtype = DTYPES[args.dtype]
    print(f"problem: N={args.tokens:,} tokens, top-{args.top_k}, D={args.d_in} -> F={args.d_out}, {args.dtype}")
    rows = []
    for n_experts in args.experts:
        for routing in ("balanced", "skewed"):
            r = run_case(dev, args.tokens, args.top_k, n_experts, args.d_in, args.d_out, routing, args.skew,
                         dtype, args.seed)
            rows.append(r)
            torch.cuda.empty_cache()
            tflops = r["flops"] / r["ours"] / 1e12
            print(f"\nE={n_experts} {routing}: A={r['rows']:,} rows, largest expert {r['largest']:.1%}, "
                  f"{r['empty']} empty experts")
            print(f"  checked against the loop: ours max abs err {r['err']:.2e}, torch._grouped_mm "
                  f"{'n/a' if math.isnan(r['torch_err']) else format(r['torch_err'], '.2e')}")
            print(f"  loop {ms(r['loop'])} ms ({r['flops'] / r['loop'] / 1e12:.0f} TFLOP/s), "
                  f"torch._grouped_mm {ms(r['torch'])} ms"
                  + ("" if math.isnan(r["torch"]) else f" ({r['flops'] / r['torch'] / 1e12:.0f} TFLOP/s)")
                  + (f" [{r['torch_note']}]" if r["torch_note"] else "")
                  + f", ours {ms(r['ours'])} ms ({tflops:.0f} TFLOP/s), dense mm {ms(r['dense'])} ms "
                  f"({r['flops'] / r['dense'] / 1e12:.0f} TFLOP/s)", flush=True)

    n_experts = max(args.experts)
    routing = run_routing(dev, args.tokens, n_experts, args.top_k, args.seed)
    print(f"\nrouting N={args.tokens:,} E={n_experts} top-{args.top_k}: same permutation; same experts but in "
          f"{routing['near_ties']} rows (near-equal probabilities); gate weights max abs err {routing['weight_err']:.1e}")
    for step, key in (("topk_gating", "gating"), ("permute_tokens", "permute"), ("gating + permutation", "both")):
        print(f"  {step}: reference {ms(routing[key + '_ref'])} ms, ours {ms(routing[key + '_ours'])} ms "
              f"({ratio(routing[key + '_ref'], routing[key + '_ours'])})")

    gemm_table, routing_table = markdown(rows, routing, args)
    report.table(f"Grouped GEMM, N={args.tokens:,} tokens, top-{args.top_k}, D={args.d_in} -> F={args.d_out}, "
                 f"{args.dtype}", gemm_table, rows)
    report.table(f"Routing, N={args.tokens:,}, E={n_experts}, top-{args.top_k}", routing_table, [routing])
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(gemm_table + "\n\n" + routing_table + "\n")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=None, help=f"N (full: {FULL['tokens']}, quick: {QUICK['tokens']})")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--experts", type=int, nargs="+", default=None,
                   help=f"E values (full: {FULL['experts']}, quick: {QUICK['experts']})")
    p.add_argument("--d-in", type=int, default=None, help=f"D (full and quick: {FULL['d_in']})")
    p.add_argument("--d-out", type=int, default=None, help=f"F (full and quick: {FULL['d_out']})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="operand dtype (bf16; fp16 when interpreted)")
    p.add_argument("--skew", type=float, default=1.5, help="logit shift -skew * log(e + 1) of the skewed routing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown tables to PATH")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("moe_grouped_gemm", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
