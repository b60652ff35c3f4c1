"""Benchmark: Triton pack of canonical strided layouts (labkit.comm) against PyTorch's copies.

For a few halo-like layouts of a float32 grid (default 512^3, 512 MiB) it times, with
``triton.testing.do_bench`` (median after warm-up):

- ``view.contiguous()`` of the layout as a strided view (PyTorch's strided copy), the anchor;
- ``flat.index_select(0, offsets)`` with the source offsets precomputed (a gather);
- ours, ``pack_triton(base, layout)``: one launch computing offsets from the canonical levels.

Bandwidth: packed bytes read + written per second, and its fraction of a device-to-device copy
measured in the same run (goal: >= 60%).

    python benchmarks/comm_pack.py [--grid 512]
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch


def bench(fn) -> float:
    """Median seconds of ``fn`` (``do_bench`` returns ms)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("comm_pack.py needs a CUDA device (the Triton kernel's CPU path is the interpreter, "
              "which is far too slow to time).", file=sys.stderr)
        return 1
    import triton

    from labkit.comm._kernels import pack_triton
    from labkit.comm.datatypes import layout_of, source_offsets

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}; triton {triton.__version__}; "
          f"{datetime.date.today()}")
    buf = torch.empty(2**28, device=dev)
    dst = torch.empty_like(buf)
    copy_bw = 2 * buf.numel() * 4 / bench(lambda: dst.copy_(buf))
    del buf, dst
    print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)")

    n = args.grid
    grid = torch.randn(n, n, n, device=dev)
    flat = grid.reshape(-1)
    cuts = {"face axis 1 (n blocks of n)": lambda g: g[:, 1],
            "face axis 2 (n^2 blocks of 1)": lambda g: g[:, :, 1],
            "halo axis 1, width 8": lambda g: g[:, 4:12],
            "every other column": lambda g: g[:, :, ::2],
            "interior sub-block": lambda g: g[1:-1, 1:-1, 1:-1]}
    rows = []
    for name, cut in cuts.items():
        view = cut(grid)
        lay = layout_of(view, grid)
        offsets = source_offsets(lay, device=dev)
        ours = pack_triton(grid, lay)
        assert torch.equal(ours, view.reshape(-1)), name
        t_contig = bench(lambda: view.contiguous())
        t_index = bench(lambda: flat.index_select(0, offsets))
        t_ours = bench(lambda: pack_triton(grid, lay))
        moved = 2 * lay.numel * 4
        rows.append((name, lay, t_contig, t_index, t_ours, moved / t_ours, moved / t_ours / copy_bw))
        print(f"{name}: levels {lay.levels}, block {lay.block}: .contiguous() {t_contig * 1e6:.1f} us, "
              f"index_select {t_index * 1e6:.1f} us, ours {t_ours * 1e6:.1f} us "
              f"({moved / t_ours / 1e9:.0f} GB/s, {moved / t_ours / copy_bw:.0%} of copy)")
    print("\n| layout | canonical levels | block | .contiguous() (us) | index_select (us) | ours (us) "
          "| ours vs .contiguous() | GB/s | of copy BW |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, lay, tc, ti, to, bw, frac in rows:
        print(f"| {name} | {lay.levels} | {lay.block} | {tc * 1e6:.1f} | {ti * 1e6:.1f} | {to * 1e6:.1f} "
              f"| {tc / to:.2f}x | {bw / 1e9:.0f} | {frac:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
