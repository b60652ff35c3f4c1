"""Benchmark: Triton grouped GEMM and fused routing (labkit.moe) against a per-expert loop and torch._grouped_mm.

The expert layer of a mixture of experts after routing: ``--tokens`` tokens (default 16k), each
sent to ``--top-k`` (2) of E experts (``--experts``, default 8 and 64), multiply their rows,
sorted by expert, by the expert's (D, F) weight (default 2048 -> 4096), in bfloat16. Timed, as
the median of ``--repeats`` CUDA-event-timed calls after ``--warmup`` calls
(:func:`labkit.runtime.time_fn`):

- the loop: ``grouped_mm_reference``, one ``x[rows_e] @ weight[e]`` per expert (the anchor);
- ``torch._grouped_mm`` (PyTorch's grouped GEMM, CUTLASS on Hopper) where this torch has it
  and it accepts the problem, with ``weight`` as a transposed view of an (E, F, D) tensor;
  else "n/a" and the reason;
- ours, ``grouped_mm_triton`` (one launch, fixed tiles, no autotuning);
- the ceiling: one dense ``torch.mm`` of (A, D) @ (D, F), the same FLOPs in one GEMM.

Two routings per E: "balanced", the top-k of standard normal logits (every expert gets about
A / E rows), and "skewed", where expert e's logits are shifted by ``-skew * log(e + 1)``, so a
few experts take most rows (the table reports the largest expert's share). Before timing,
ours and ``torch._grouped_mm`` are checked against the loop (max abs error, bfloat16 output).

Then the routing itself for N tokens and the largest E: ``topk_gating`` + ``permute_tokens``,
the Triton kernels against the PyTorch references (softmax, topk, division; nonzero, stable
argsort, bincount, cumsum).

    python benchmarks/moe_grouped_gemm.py [--tokens 16384 --top-k 2 --experts 8 64 --d-in 2048 --d-out 4096]
                                          [--repeats 30 --warmup 5 --skew 1.5 --markdown results.md]
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    from labkit.runtime import time_fn

    return time_fn(fn, repeats=repeats, warmup=warmup, device=device).median


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.3f}"


def ratio(num: float, den: float) -> str:
    return "n/a" if math.isnan(num) or math.isnan(den) else f"{num / den:.2f}x"


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
             routing: str, skew: float, repeats: int, warmup: int, dtype: torch.dtype, seed: int) -> dict:
    """Build one routed problem, check ours (and torch._grouped_mm) against the loop, time all four."""
    from labkit.moe._kernels import grouped_mm_triton
    from labkit.moe.gating import permute_tokens_reference
    from labkit.moe.grouped_gemm import grouped_mm_reference

    g = torch.Generator(device=dev).manual_seed(seed)
    experts = route(n_tokens, n_experts, top_k, skew if routing == "skewed" else 0.0, g)
    order, offsets = permute_tokens_reference(experts, n_experts)
    tokens = torch.randn(n_tokens, d_in, generator=g, device=dev).to(dtype)
    x = tokens[order // top_k].contiguous()  # (A, D) sorted by expert
    weight = (torch.randn(n_experts, d_in, d_out, generator=g, device=dev) / d_in**0.5).to(dtype)
    n_rows = x.shape[0]
    counts = offsets.diff()
    flops = 2.0 * n_rows * d_in * d_out

    ref = grouped_mm_reference(x, weight, offsets)
    err = float((grouped_mm_triton(x, weight, offsets).float() - ref.float()).abs().max())
    t_loop = median_seconds(lambda: grouped_mm_reference(x, weight, offsets), repeats, warmup, dev)
    t_ours = median_seconds(lambda: grouped_mm_triton(x, weight, offsets), repeats, warmup, dev)

    t_torch, torch_note, torch_err = float("nan"), "", float("nan")
    if not hasattr(torch, "_grouped_mm"):
        torch_note = "torch._grouped_mm absent in this torch"
    else:
        weight_t = weight.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (E, F, D) storage
        try:
            torch_err = float((grouped_mm_torch(x, weight_t, offsets).float() - ref.float()).abs().max())
            t_torch = median_seconds(lambda: grouped_mm_torch(x, weight_t, offsets), repeats, warmup, dev)
        except Exception as exc:  # noqa: BLE001 (unsupported device, dtype or layout: report, go on)
            torch_note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        del weight_t
    del ref

    a = torch.randn(n_rows, d_in, generator=g, device=dev).to(dtype)
    b = torch.randn(d_in, d_out, generator=g, device=dev).to(dtype)
    t_dense = median_seconds(lambda: torch.mm(a, b), repeats, warmup, dev)
    del a, b, x, weight, tokens
    return dict(experts=n_experts, routing=routing, rows=n_rows, largest=int(counts.max()) / n_rows,
                empty=int((counts == 0).sum()), loop=t_loop, torch=t_torch, ours=t_ours, dense=t_dense,
                err=err, torch_err=torch_err, torch_note=torch_note, flops=flops)


def run_routing(dev: torch.device, n_tokens: int, n_experts: int, top_k: int, repeats: int, warmup: int,
                seed: int) -> dict:
    """Time gating + permutation, Triton against the references, after checking they agree."""
    from labkit.moe._kernels import permute_tokens_triton, topk_gating_triton
    from labkit.moe.gating import permute_tokens_reference, topk_gating_reference

    logits = torch.randn(n_tokens, n_experts, generator=torch.Generator(device=dev).manual_seed(seed), device=dev)
    ref = topk_gating_reference(logits, top_k)
    ours = topk_gating_triton(logits, top_k)
    same_experts = bool(torch.equal(ours[2], ref[2]))
    weight_err = float((ours[1] - ref[1]).abs().max())
    same_perm = all(torch.equal(p, q) for p, q in zip(permute_tokens_triton(ref[2], n_experts),
                                                       permute_tokens_reference(ref[2], n_experts)))
    experts = ref[2]
    t = {
        "gating_ref": median_seconds(lambda: topk_gating_reference(logits, top_k), repeats, warmup, dev),
        "gating_ours": median_seconds(lambda: topk_gating_triton(logits, top_k), repeats, warmup, dev),
        "permute_ref": median_seconds(lambda: permute_tokens_reference(experts, n_experts), repeats, warmup, dev),
        "permute_ours": median_seconds(lambda: permute_tokens_triton(experts, n_experts), repeats, warmup, dev),
        "both_ref": median_seconds(lambda: permute_tokens_reference(topk_gating_reference(logits, top_k)[2],
                                                                    n_experts), repeats, warmup, dev),
        "both_ours": median_seconds(lambda: permute_tokens_triton(topk_gating_triton(logits, top_k)[2],
                                                                  n_experts), repeats, warmup, dev),
    }
    return dict(t, same_experts=same_experts, weight_err=weight_err, same_perm=same_perm)


def markdown(rows: list[dict], routing: dict, args: argparse.Namespace) -> str:
    lines = [f"Grouped GEMM, N={args.tokens:,} tokens, top-{args.top_k}, D={args.d_in} -> F={args.d_out}, bfloat16",
             "",
             "| E | routing | largest expert | loop (ms) | torch._grouped_mm (ms) | ours (ms) | dense mm (ms) "
             "| ours TFLOP/s | ours vs loop | ours vs _grouped_mm | of dense mm | max abs err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['experts']} | {r['routing']} | {r['largest']:.0%} | {ms(r['loop'])} | {ms(r['torch'])} "
                     f"| {ms(r['ours'])} | {ms(r['dense'])} | {r['flops'] / r['ours'] / 1e12:.0f} "
                     f"| {ratio(r['loop'], r['ours'])} | {ratio(r['torch'], r['ours'])} "
                     f"| {r['dense'] / r['ours']:.0%} | {r['err']:.1e} |")
    lines += ["", f"Routing, N={args.tokens:,}, E={max(args.experts)}, top-{args.top_k}", "",
              "| step | reference (ms) | ours (ms) | speed-up |", "|---|---|---|---|"]
    for step, key in (("topk_gating", "gating"), ("permute_tokens", "permute"), ("both", "both")):
        lines.append(f"| {step} | {ms(routing[key + '_ref'])} | {ms(routing[key + '_ours'])} "
                     f"| {ratio(routing[key + '_ref'], routing[key + '_ours'])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--d-in", type=int, default=2048)
    parser.add_argument("--d-out", type=int, default=4096)
    parser.add_argument("--skew", type=float, default=1.5, help="logit shift -skew * log(e + 1) of the skewed routing")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", metavar="PATH", help="also write the markdown table to PATH")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("moe_grouped_gemm.py needs a CUDA device: the Triton kernels' CPU path is the interpreter, "
              "which is far too slow to time.", file=sys.stderr)
        return 1
    import triton

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}; triton {triton.__version__}; "
          f"{datetime.date.today()}")
    print(f"problem: N={args.tokens:,} tokens, top-{args.top_k}, D={args.d_in} -> F={args.d_out}, bfloat16; "
          f"median of {args.repeats} CUDA-event-timed calls after {args.warmup} warm-up calls")

    rows = []
    for n_experts in args.experts:
        for routing in ("balanced", "skewed"):
            r = run_case(dev, args.tokens, args.top_k, n_experts, args.d_in, args.d_out, routing, args.skew,
                         args.repeats, args.warmup, torch.bfloat16, args.seed)
            rows.append(r)
            torch.cuda.empty_cache()
            tflops = r["flops"] / r["ours"] / 1e12
            print(f"\nE={n_experts} {routing}: A={r['rows']:,} rows, largest expert {r['largest']:.1%}, "
                  f"{r['empty']} empty experts")
            print(f"  check vs loop: ours max abs err {r['err']:.2e}, torch._grouped_mm "
                  f"{'n/a' if math.isnan(r['torch_err']) else format(r['torch_err'], '.2e')}")
            print(f"  loop {ms(r['loop'])} ms ({r['flops'] / r['loop'] / 1e12:.0f} TFLOP/s), "
                  f"torch._grouped_mm {ms(r['torch'])} ms"
                  + ("" if math.isnan(r["torch"]) else f" ({r['flops'] / r['torch'] / 1e12:.0f} TFLOP/s)")
                  + (f" [{r['torch_note']}]" if r["torch_note"] else "")
                  + f", ours {ms(r['ours'])} ms ({tflops:.0f} TFLOP/s), dense mm {ms(r['dense'])} ms "
                  f"({r['flops'] / r['dense'] / 1e12:.0f} TFLOP/s)")
            print(f"  ours: {ratio(r['loop'], r['ours'])} the loop, {ratio(r['torch'], r['ours'])} torch._grouped_mm, "
                  f"{r['dense'] / r['ours']:.0%} of the dense-mm rate")

    n_experts = max(args.experts)
    routing = run_routing(dev, args.tokens, n_experts, args.top_k, args.repeats, args.warmup, args.seed)
    print(f"\nrouting N={args.tokens:,} E={n_experts} top-{args.top_k}: same experts {routing['same_experts']}, "
          f"weights max abs err {routing['weight_err']:.1e}, same permutation {routing['same_perm']}")
    for step, key in (("topk_gating", "gating"), ("permute_tokens", "permute"), ("gating + permutation", "both")):
        print(f"  {step}: reference {ms(routing[key + '_ref'])} ms, ours {ms(routing[key + '_ours'])} ms "
              f"({ratio(routing[key + '_ref'], routing[key + '_ours'])})")

    table = markdown(rows, routing, args)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
