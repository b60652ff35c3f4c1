"""Benchmark: fused GroupNorm + SiLU (labkit.diffusion) against eager PyTorch and torch.compile.

The pair ``F.silu(F.group_norm(x, G, weight, bias))`` that opens every residual block of a
diffusion UNet, on the activation shapes of

- a Stable-Diffusion-sized UNet: batch ``--batch`` (default 8), G = ``--groups`` (32), and
  (C, H = W) = (320, 64), (640, 32), (1280, 16), its three resolutions;
- our tiny UNet (labkit.diffusion.TinyUNet, default config) at a large batch ``--tiny-batch``
  (default 2048): every distinct (C, H, G) its forward pass normalises, found by running it once;

in bfloat16 and float16 (``--dtypes``). Compared, after checking each against a float32
reference (max abs error; ours must pass labkit.testing's Triton tolerance):

- eager, ``F.silu(F.group_norm(...))`` (the anchor): GroupNorm's statistics and normalisation
  passes, then SiLU, about three reads and two writes of the activation;
- ``torch.compile`` of the same function (Inductor fuses it; "n/a" and the reason if it fails);
- ours, ``group_norm_silu_triton``: one read (group in one tile) or two, one write.

Two timings per candidate, medians of ``--repeats`` CUDA-event-timed measurements after
``--warmup`` (:func:`labkit.runtime.time_fn`):

- "call": one call as the caller sees it, host overhead (Python, dispatch, launch) included;
  for the small tiny-UNet tensors this is mostly the host;
- "GPU": ``--graph-calls`` calls (at least one per input copy, below) captured in one CUDA graph
  and replayed, divided by the count: device time without the host (``--graph-calls 0`` skips it).

Inputs rotate through copies of x adding up to at least ``--cold-mib`` (default 256 MiB), so the
activation comes from HBM and not from a warm L2 (an H100 has 50 MiB of L2). GB/s counts the
minimum traffic, x read once and y written once (``2 * numel * itemsize`` bytes), for every
candidate; "of copy" is that rate over a device-to-device copy measured in the same run, and
the nominal HBM bandwidth of the card is printed where the script knows it. The goal of the
issue: at least 1.3x eager.

    python benchmarks/diffusion_groupnorm_silu.py [--batch 8 --tiny-batch 2048 --groups 32]
        [--dtypes bf16 fp16 --repeats 30 --warmup 5 --graph-calls 20 --cold-mib 256]
        [--no-compile] [--markdown results.md]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import sys
from collections.abc import Callable

import torch
from torch.nn import functional as F

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SD_SHAPES = ((320, 64), (640, 32), (1280, 16))  # (C, H = W) at Stable Diffusion's three resolutions

#: Nominal HBM bandwidth (bytes/s) from NVIDIA's data sheets, matched against the device name in order.
NOMINAL_BANDWIDTH = (("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                     ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12))


def nominal_bandwidth(name: str) -> float:
    return next((bw for key, bw in NOMINAL_BANDWIDTH if key in name), float("nan"))


def eager(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    return F.silu(F.group_norm(x, groups, weight, bias, eps))


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median seconds of one ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    from labkit.runtime import time_fn

    return time_fn(fn, repeats=repeats, warmup=warmup, device=device).median


def graph_seconds(fn: Callable[[], object], calls: int, repeats: int, warmup: int, device: torch.device) -> float:
    """Median device seconds of one ``fn()``: ``calls`` calls captured in a CUDA graph, replayed."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm up (and let lazy initialisation happen) outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    seconds = median_seconds(graph.replay, repeats, warmup, device) / calls
    del graph
    return seconds


def tiny_unet_shapes(batch: int) -> list[tuple[int, int, int]]:
    """Distinct (C, H, G) that the default TinyUNet's forward normalises (GroupNorm + SiLU), CPU run."""
    from labkit.diffusion import TinyUNet, UNetConfig
    from labkit.diffusion import unet as unet_module

    seen: list[tuple[int, int, int]] = []
    original = unet_module._norm_silu

    def record(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[1], x.shape[2], norm.num_groups)
        if key not in seen:
            seen.append(key)
        return original(norm, x)

    cfg = UNetConfig()
    model = TinyUNet(cfg, init_seed=0)
    unet_module._norm_silu = record
    try:
        with torch.no_grad():
            model(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size), torch.zeros(1, dtype=torch.long),
                  torch.zeros(1, dtype=torch.long) if cfg.n_classes else None)
    finally:
        unet_module._norm_silu = original
    return seen


def run_case(dev: torch.device, label: str, batch: int, channels: int, size: int, groups: int, dtype: torch.dtype,
             args: argparse.Namespace) -> dict:
    """Check eager, compiled and ours against a float32 reference, then time them."""
    from labkit.diffusion._kernels import group_norm_silu_tiles, group_norm_silu_triton
    from labkit.testing import tolerances

    eps = 1e-5
    g = torch.Generator(device=dev).manual_seed(channels * 1000 + size)
    x = (torch.randn(batch, channels, size, size, generator=g, device=dev) * 2 + 0.5).to(dtype)
    weight = (1 + 0.2 * torch.randn(channels, generator=g, device=dev)).to(dtype)
    bias = (0.2 * torch.randn(channels, generator=g, device=dev)).to(dtype)
    nbytes = x.numel() * x.element_size()
    copies = max(1, min(64, math.ceil(args.cold_mib * 2**20 / nbytes)))
    xs = [x] + [x.clone() for _ in range(copies - 1)]
    block_c, block_s, one_pass, num_warps = group_norm_silu_tiles(channels // groups, size * size)

    expected = eager(x.float(), weight.float(), bias.float(), groups, eps)
    rtol, atol = tolerances(dtype, backend="triton")

    def error(out: torch.Tensor) -> float:
        return float((out.float() - expected).abs().max())

    ours_out = group_norm_silu_triton(x, weight, bias, groups, eps)
    ok = bool(torch.allclose(ours_out.float(), expected, rtol=rtol, atol=atol))
    row = dict(label=label, batch=batch, channels=channels, size=size, groups=groups, dtype=dtype, nbytes=nbytes,
               tile=f"{block_c}x{block_s}{' one pass' if one_pass else ''}", ok=ok, err_ours=error(ours_out),
               err_eager=error(eager(x, weight, bias, groups, eps)), err_compile=float("nan"), compile_note="")
    del ours_out
    candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "eager": lambda xi: eager(xi, weight, bias, groups, eps),
        "ours": lambda xi: group_norm_silu_triton(xi, weight, bias, groups, eps),
    }
    if args.no_compile:
        row["compile_note"] = "skipped (--no-compile)"
    else:
        try:
            torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no dynamic-shape switch
            compiled = torch.compile(eager, dynamic=False)
            row["err_compile"] = error(compiled(x, weight, bias, groups, eps))
            candidates["compile"] = lambda xi: compiled(xi, weight, bias, groups, eps)
        except Exception as exc:  # noqa: BLE001 (no compiler, unsupported dtype, ...: report, go on)
            row["compile_note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if not ok:  # do not time a wrong kernel
        return row

    for name, fn in candidates.items():
        rotation = itertools.cycle(xs)
        row[f"call_{name}"] = median_seconds(lambda: fn(next(rotation)), args.repeats, args.warmup, dev)
        if args.graph_calls > 0:
            try:
                rotation = itertools.cycle(xs)
                calls = max(args.graph_calls, len(xs))  # every copy once per replay
                row[f"gpu_{name}"] = graph_seconds(lambda: fn(next(rotation)), calls, args.repeats, args.warmup, dev)
            except Exception as exc:  # noqa: BLE001 (a candidate that cannot be captured: report it)
                row[f"gpu_{name}_note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    del xs, x
    return row


def ms(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.4f}"


def ratio(num: float, den: float) -> str:
    return "n/a" if math.isnan(num) or math.isnan(den) else f"{num / den:.2f}x"


def gbps(row: dict, key: str) -> str:
    t = row.get(key, float("nan"))
    return "n/a" if math.isnan(t) else f"{2 * row['nbytes'] / t / 1e9:.0f}"


def markdown(rows: list[dict], copy_bw: float, timing: str) -> str:
    name = {"call": "per call, host included", "gpu": "in a CUDA graph, device time"}[timing]
    lines = [f"GroupNorm + SiLU, {name}; GB/s = (read x + write y) / time; copy = {copy_bw / 1e9:.0f} GB/s",
             "", "| shape | dtype | tile | eager (ms) | compile (ms) | ours (ms) | ours GB/s | of copy "
             "| vs eager | vs compile | max abs err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = {k: r.get(f"{timing}_{k}", float("nan")) for k in ("eager", "compile", "ours")}
        frac = "n/a" if math.isnan(t["ours"]) else f"{2 * r['nbytes'] / t['ours'] / copy_bw:.0%}"
        lines.append(f"| {r['label']} | {str(r['dtype']).removeprefix('torch.')} | {r['tile']} | {ms(t['eager'])} "
                     f"| {ms(t['compile'])} | {ms(t['ours'])} | {gbps(r, f'{timing}_ours')} | {frac} "
                     f"| {ratio(t['eager'], t['ours'])} | {ratio(t['compile'], t['ours'])} "
                     f"| {r['err_ours']:.1e}{'' if r['ok'] else ' FAIL'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="batch of the Stable-Diffusion-sized shapes")
    parser.add_argument("--tiny-batch", type=int, default=2048, help="batch of the tiny UNet's shapes (0: skip)")
    parser.add_argument("--groups", type=int, default=32, help="GroupNorm groups of the Stable-Diffusion shapes")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=30, help="timed measurements (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--graph-calls", type=int, default=20, help="calls per CUDA graph for the device timing")
    parser.add_argument("--cold-mib", type=float, default=256.0, help="rotate inputs adding up to this many MiB")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--markdown", metavar="PATH", help="also write the markdown tables to PATH")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("diffusion_groupnorm_silu.py needs a CUDA device: the Triton kernel's CPU path is the interpreter, "
              "which is far too slow to time (the parity tests run it: tests/diffusion/test_norm_kernels.py).",
              file=sys.stderr)
        return 1
    import triton

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    print(f"device: {name}; torch {torch.__version__}; triton {triton.__version__}; {datetime.date.today()}")
    buf = torch.empty(2**27, device=dev)  # 512 MiB
    dst = torch.empty_like(buf)
    copy_bw = 2 * buf.numel() * 4 / median_seconds(lambda: dst.copy_(buf), args.repeats, args.warmup, dev)
    del buf, dst
    nominal = nominal_bandwidth(name)
    print(f"device-to-device copy: {copy_bw / 1e9:.0f} GB/s (read + write)"
          + ("" if math.isnan(nominal) else f", {copy_bw / nominal:.0%} of the nominal {nominal / 1e9:.0f} GB/s"))
    print(f"timing: median of {args.repeats} after {args.warmup} warm-up; "
          f"inputs rotate over >= {args.cold_mib:.0f} MiB")

    cases = [(f"{args.batch}x{c}x{h}x{h} G={args.groups}", args.batch, c, h, args.groups) for c, h in SD_SHAPES]
    if args.tiny_batch > 0:
        cases += [(f"tiny {args.tiny_batch}x{c}x{h}x{h} G={g}", args.tiny_batch, c, h, g)
                  for c, h, g in tiny_unet_shapes(args.tiny_batch)]
    rows = []
    for dtype_name in args.dtypes:
        for label, batch, channels, size, groups in cases:
            r = run_case(dev, label, batch, channels, size, groups, DTYPES[dtype_name], args)
            rows.append(r)
            torch.cuda.empty_cache()
            print(f"\n{label} {dtype_name} ({r['nbytes'] / 2**20:.1f} MiB, tile {r['tile']}): max abs err vs float32 "
                  f"ours {r['err_ours']:.1e}{'' if r['ok'] else ' FAIL: not timed'}, eager {r['err_eager']:.1e}, "
                  f"compile {'n/a' if math.isnan(r['err_compile']) else format(r['err_compile'], '.1e')}"
                  + (f" [{r['compile_note']}]" if r["compile_note"] else ""))
            if not r["ok"]:
                continue
            for timing, what in (("call", "per call"), ("gpu", "GPU")):
                if f"{timing}_ours" not in r:
                    if f"{timing}_ours_note" in r:
                        print(f"  {what}: ours n/a [{r[f'{timing}_ours_note']}]")
                    continue
                parts = [f"{k} {ms(r.get(f'{timing}_{k}', float('nan')))} ms ({gbps(r, f'{timing}_{k}')} GB/s)"
                         + (f" [{r[f'{timing}_{k}_note']}]" if f"{timing}_{k}_note" in r else "")
                         for k in ("eager", "compile", "ours")]
                t = {k: r.get(f"{timing}_{k}", float("nan")) for k in ("eager", "compile", "ours")}
                print(f"  {what}: " + ", ".join(parts) + f"; ours {ratio(t['eager'], t['ours'])} eager, "
                      f"{ratio(t['compile'], t['ours'])} compile, {2 * r['nbytes'] / t['ours'] / copy_bw:.0%} of copy")

    tables = [markdown(rows, copy_bw, "call")] + ([markdown(rows, copy_bw, "gpu")] if args.graph_calls > 0 else [])
    print("\n" + "\n\n".join(tables))
    sd = [r for r in rows if r["ok"] and not r["label"].startswith("tiny")]
    for timing in ("call", "gpu"):
        met = [r for r in sd if r.get(f"{timing}_eager", 0) >= 1.3 * r.get(f"{timing}_ours", math.inf)]
        if any(f"{timing}_ours" in r for r in sd):
            print(f"goal >= 1.3x eager ({timing} timing, Stable-Diffusion shapes): met on {len(met)} of {len(sd)}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n\n".join(tables) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
