"""Benchmark: fused GroupNorm + SiLU (labkit.diffusion) against eager PyTorch and torch.compile.

The pair ``F.silu(F.group_norm(x, G, weight, bias))`` that opens every residual block of a
diffusion UNet, on the activation shapes of

- a Stable-Diffusion-sized UNet: batch ``--batch`` (default 8), G = ``--groups`` (32), and
  (C, H = W) = (320, 64), (640, 32), (1280, 16), its three resolutions;
- our tiny UNet (labkit.diffusion.TinyUNet, default config) at a large batch ``--tiny-batch``
  (default 2048): every distinct (C, H, G) its forward pass normalises, found by running it once;

in bfloat16 and float16 (``--dtypes``). Before timing, ours is checked against the labkit
reference (``group_norm_silu_reference`` of the same inputs in float32) within labkit.testing's
Triton tolerance for the dtype; a disagreement stops the script with exit status 1. The
compiled candidate is checked the same way and left out of the timing if it disagrees. Compared:

- eager, ``F.silu(F.group_norm(...))`` (the anchor): GroupNorm's statistics and normalisation
  passes, then SiLU, about three reads and two writes of the activation;
- ``torch.compile`` of the same function (Inductor fuses it; "n/a" and the reason if it fails),
  compiled once per dtype with dynamic shapes and reused for every shape of that dtype;
- ours, ``group_norm_silu_triton``: one read (group in one tile) or two, one write.

Two timings per candidate, both by :func:`labkit.runtime.cuda_median_seconds` (which flushes the
L2 cache before each timed run, so the activation comes from HBM, not from a warm L2):

- "call": one call as the caller sees it, host overhead (Python, dispatch, launch) included;
  for the small tiny-UNet tensors this is mostly the host;
- "GPU": ``--graph-calls`` calls captured in one CUDA graph and replayed, divided by the count:
  device time without the host (``--graph-calls 0`` skips it). Inside the graph the calls rotate
  through copies of x adding up to at least ``--cold-mib`` (default 256 MiB; an H100 has 50 MiB
  of L2), at least one call per copy. GB/s counts the
minimum traffic, x read once and y written once (``2 * numel * itemsize`` bytes), for every
candidate; "of copy" is that rate over a device-to-device copy measured in the same run, and
the nominal HBM bandwidth of the card is printed where the script knows it. The goal of the
issue: at least 1.3x eager.

    python benchmarks/diffusion_groupnorm_silu.py [--batch 8 --tiny-batch 2048 --groups 32]
        [--dtypes bf16 fp16 --graph-calls 20 --cold-mib 256] [--no-compile] [--markdown results.md]
        [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Callable

import torch
from torch.nn import functional as F

from _common import Mismatch, Report, add_options, check_close, copy_bandwidth, device, run

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SD_SHAPES = ((320, 64), (640, 32), (1280, 16))  # (C, H = W) at Stable Diffusion's three resolutions
FULL = {"batch": 8, "tiny_batch": 2048, "dtypes": ["bf16", "fp16"], "graph_calls": 20, "no_compile": False,
        "sd_shapes": SD_SHAPES}
QUICK = {"batch": 8, "tiny_batch": 0, "dtypes": ["bf16"], "graph_calls": 20, "no_compile": False,
         "sd_shapes": SD_SHAPES}
# the interpreter mishandles bfloat16; no CUDA graphs and no Inductor build on the CPU
INTERPRET = {"batch": 1, "tiny_batch": 1, "dtypes": ["fp16"], "graph_calls": 0, "no_compile": True,
             "sd_shapes": ((32, 4),)}
EPS = 1e-5

#: Nominal HBM bandwidth (bytes/s) from NVIDIA's data sheets, matched against the device name in order.
NOMINAL_BANDWIDTH = (("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                     ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12))


def nominal_bandwidth(name: str) -> float:
    return next((bw for key, bw in NOMINAL_BANDWIDTH if key in name), float("nan"))


def eager(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    return F.silu(F.group_norm(x, groups, weight, bias, eps))


_COMPILED: dict[torch.dtype, Callable[..., torch.Tensor]] = {}


def compiled_for(dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """The one ``torch.compile`` of :func:`eager` for ``dtype`` (dynamic shapes), made on first use
    and reused for every shape of that dtype: Inductor builds it once, not once per case."""
    if dtype not in _COMPILED:
        def fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                  eps: float) -> torch.Tensor:
            return F.silu(F.group_norm(x, groups, weight, bias, eps))

        _COMPILED[dtype] = torch.compile(fused, dynamic=True)
    return _COMPILED[dtype]


def validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, out: torch.Tensor, *,
             what: str = "group_norm_silu_triton") -> float:
    """``out`` against ``group_norm_silu_reference`` of the same inputs in float32, within the
    Triton tolerance of x's dtype; returns the largest error."""
    from labkit.diffusion.norm import group_norm_silu_reference
    from labkit.testing import tolerances

    expected = group_norm_silu_reference(x.float(), weight.float(), bias.float(), groups, EPS)
    rtol, atol = tolerances(x.dtype, backend="triton")
    return check_close(what, out, expected, rtol=rtol, atol=atol)


def capture_graph(fn: Callable[[], object], calls: int, dev: torch.device) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``calls`` calls of ``fn`` (after three warm-up calls on a side stream)."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):  # warm up (and let lazy initialisation happen) outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def tiny_unet_shapes() -> list[tuple[int, int, int]]:
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
    """Check ours (and the compiled candidate) against the reference, then time every candidate."""
    from labkit.diffusion._kernels import group_norm_silu_tiles, group_norm_silu_triton
    from labkit.runtime import cuda_median_seconds

    g = torch.Generator(device=dev).manual_seed(channels * 1000 + size)
    x = (torch.randn(batch, channels, size, size, generator=g, device=dev) * 2 + 0.5).to(dtype)
    weight = (1 + 0.2 * torch.randn(channels, generator=g, device=dev)).to(dtype)
    bias = (0.2 * torch.randn(channels, generator=g, device=dev)).to(dtype)
    nbytes = x.numel() * x.element_size()
    block_c, block_s, one_pass, _ = group_norm_silu_tiles(channels // groups, size * size)

    err_ours = validate(x, weight, bias, groups, group_norm_silu_triton(x, weight, bias, groups, EPS))
    reference = eager(x.float(), weight.float(), bias.float(), groups, EPS)
    row = dict(label=label, batch=batch, channels=channels, size=size, groups=groups, dtype=str(dtype), nbytes=nbytes,
               tile=f"{block_c}x{block_s}{' one pass' if one_pass else ''}", err_ours=err_ours,
               err_eager=float((eager(x, weight, bias, groups, EPS).float() - reference).abs().max()),
               err_compile=float("nan"), compile_note="")
    del reference
    candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "eager": lambda xi: eager(xi, weight, bias, groups, EPS),
        "ours": lambda xi: group_norm_silu_triton(xi, weight, bias, groups, EPS),
    }
    if args.no_compile:
        row["compile_note"] = "skipped (--no-compile)"
    else:
        compiled = compiled_for(dtype)
        try:
            row["err_compile"] = validate(x, weight, bias, groups, compiled(x, weight, bias, groups, EPS),
                                          what="torch.compile")
            candidates["compile"] = lambda xi: compiled(xi, weight, bias, groups, EPS)
        except Mismatch as exc:  # the anchor is wrong here: say so, do not time it
            row["compile_note"] = f"disagrees with the reference, not timed: {exc}"
        except Exception as exc:  # noqa: BLE001 (no compiler, unsupported dtype, ...: report, go on)
            row["compile_note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"

    copies = max(1, min(64, math.ceil(args.cold_mib * 2**20 / nbytes)))
    xs = [x] + [x.clone() for _ in range(copies - 1)] if args.graph_calls > 0 else [x]
    for name, fn in candidates.items():
        row[f"call_{name}"] = cuda_median_seconds(lambda: fn(x))
        if args.graph_calls > 0:
            try:
                rotation = itertools.cycle(xs)
                calls = max(args.graph_calls, len(xs))  # every copy once per replay
                graph = capture_graph(lambda: fn(next(rotation)), calls, dev)
                row[f"gpu_{name}"] = cuda_median_seconds(graph.replay) / calls  # device time of one call
                del graph
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
    lines = ["| shape | dtype | tile | eager (ms) | compile (ms) | ours (ms) | ours GB/s | of copy "
             "| vs eager | vs compile | max abs err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = {k: r.get(f"{timing}_{k}", float("nan")) for k in ("eager", "compile", "ours")}
        frac = "n/a" if math.isnan(t["ours"]) else f"{2 * r['nbytes'] / t['ours'] / copy_bw:.0%}"
        lines.append(f"| {r['label']} | {r['dtype'].removeprefix('torch.')} | {r['tile']} | {ms(t['eager'])} "
                     f"| {ms(t['compile'])} | {ms(t['ours'])} | {gbps(r, f'{timing}_ours')} | {frac} "
                     f"| {ratio(t['eager'], t['ours'])} | {ratio(t['compile'], t['ours'])} "
                     f"| {r['err_ours']:.1e} |")
    return "\n".join(lines)


def body(args: argparse.Namespace, report: Report) -> int:
    dev = device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    copy_bw = copy_bandwidth()
    nominal = nominal_bandwidth(name)
    print(f"device-to-device copy: {copy_bw / 1e9:.0f} GB/s (read + write)"
          + ("" if math.isnan(nominal) else f", {copy_bw / nominal:.0%} of the nominal {nominal / 1e9:.0f} GB/s"))

    cases = [(f"{args.batch}x{c}x{h}x{h} G={args.groups}", args.batch, c, h, args.groups) for c, h in args.sd_shapes]
    if args.tiny_batch > 0:
        cases += [(f"tiny {args.tiny_batch}x{c}x{h}x{h} G={g}", args.tiny_batch, c, h, g)
                  for c, h, g in tiny_unet_shapes()]
    rows = []
    for dtype_name in args.dtypes:
        graphs_before = _compiled_graphs()
        for label, batch, channels, size, groups in cases:
            r = run_case(dev, label, batch, channels, size, groups, DTYPES[dtype_name], args)
            rows.append(r)
            torch.cuda.empty_cache()
            print(f"\n{label} {dtype_name} ({r['nbytes'] / 2**20:.1f} MiB, tile {r['tile']}): max abs err vs float32 "
                  f"ours {r['err_ours']:.1e}, eager {r['err_eager']:.1e}, "
                  f"compile {'n/a' if math.isnan(r['err_compile']) else format(r['err_compile'], '.1e')}"
                  + (f" [{r['compile_note']}]" if r["compile_note"] else ""))
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
                      f"{ratio(t['compile'], t['ours'])} compile, {2 * r['nbytes'] / t['ours'] / copy_bw:.0%} of copy",
                      flush=True)
        if not args.no_compile:
            report.notes.append(f"torch.compile, {dtype_name}: {_compiled_graphs() - graphs_before} graph(s) built "
                                f"for {len(cases)} shapes")

    titles = {"call": "per call, host included", "gpu": "in a CUDA graph, device time"}
    for timing in ("call", "gpu") if args.graph_calls > 0 else ("call",):
        report.table(f"GroupNorm + SiLU, {titles[timing]}; GB/s = (read x + write y) / time; "
                     f"copy = {copy_bw / 1e9:.0f} GB/s", markdown(rows, copy_bw, timing),
                     rows if timing == "call" else [])  # each row holds both timings: listed once
    sd = [r for r in rows if not r["label"].startswith("tiny")]
    for timing in ("call", "gpu"):
        met = [r for r in sd if r.get(f"{timing}_eager", 0) >= 1.3 * r.get(f"{timing}_ours", math.inf)]
        if any(f"{timing}_ours" in r for r in sd):
            report.notes.append(f"goal >= 1.3x eager ({timing} timing, Stable-Diffusion shapes): met on {len(met)} "
                                f"of {len(sd)}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n\n".join(t["markdown"] for t in report.tables) + "\n")
    return 0


def _compiled_graphs() -> int:
    """Graphs Dynamo has handed to Inductor so far in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch of the Stable-Diffusion-sized shapes (8)")
    p.add_argument("--tiny-batch", type=int, default=None,
                   help=f"batch of the tiny UNet's shapes, 0: skip (full: {FULL['tiny_batch']}, quick: skipped)")
    p.add_argument("--groups", type=int, default=32, help="GroupNorm groups of the Stable-Diffusion shapes")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None,
                   help=f"(full: {FULL['dtypes']}, quick: {QUICK['dtypes']})")
    p.add_argument("--graph-calls", type=int, default=None,
                   help="calls per CUDA graph for the device timing, 0: skip it (20)")
    p.add_argument("--cold-mib", type=float, default=256.0, help="inside a graph, rotate inputs adding up to this")
    p.add_argument("--no-compile", action="store_const", const=True, default=None, help="skip torch.compile")
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown tables to PATH")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("diffusion_groupnorm_silu", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
