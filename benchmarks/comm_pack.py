"""Benchmark: Triton pack of canonical strided layouts (labkit.comm) against PyTorch's copies.

For a few halo-like layouts of a float32 grid (``--grid`` n, default 512: n^3 floats, 512 MiB),
ours is first checked bit for bit against the labkit reference (``pack_reference``, one gather)
and the strided view itself; then it times, with :func:`labkit.runtime.cuda_median_seconds`:

- ``view.contiguous()`` of the layout as a strided view (PyTorch's strided copy), the anchor;
- ``flat.index_select(0, offsets)`` with the source offsets precomputed (a gather);
- ours, ``pack_triton(base, layout)``: one launch computing offsets from the canonical levels.

Bandwidth: packed bytes read + written per second, and its fraction of a device-to-device copy
measured in the same run (goal: >= 60%).

    python benchmarks/comm_pack.py [--grid 512] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from _common import Report, add_options, check_equal, copy_bandwidth, device, run

FULL = {"grid": 512}
QUICK = {"grid": 256}
INTERPRET = {"grid": 12}

#: name -> the strided view of an (n, n, n) grid that gets packed
CUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "face axis 1 (n blocks of n)": lambda g: g[:, 1],
    "face axis 2 (n^2 blocks of 1)": lambda g: g[:, :, 1],
    "halo axis 1, width 8": lambda g: g[:, 4:12],
    "every other column": lambda g: g[:, :, ::2],
    "interior sub-block": lambda g: g[1:-1, 1:-1, 1:-1],
}


def validate(grid: torch.Tensor, view: torch.Tensor, layout: object, packed: torch.Tensor) -> None:
    """Ours against ``pack_reference`` and against the view's own elements: bit for bit."""
    from labkit.comm.datatypes import pack_reference

    check_equal("pack_triton vs pack_reference", packed, pack_reference(grid, layout))
    check_equal("pack_triton vs view.reshape(-1)", packed, view.reshape(-1))


def body(args: argparse.Namespace, report: Report) -> int:
    from labkit.comm._kernels import pack_triton
    from labkit.comm.datatypes import layout_of, source_offsets
    from labkit.runtime import cuda_median_seconds

    dev = device()
    copy_bw = copy_bandwidth()
    print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)")
    n = args.grid
    grid = torch.randn(n, n, n, device=dev)
    flat = grid.reshape(-1)
    rows = []
    for name, cut in CUTS.items():
        view = cut(grid)
        lay = layout_of(view, grid)
        validate(grid, view, lay, pack_triton(grid, lay))
        offsets = source_offsets(lay, device=dev)
        t_contig = cuda_median_seconds(lambda: view.contiguous())
        t_index = cuda_median_seconds(lambda: flat.index_select(0, offsets))
        t_ours = cuda_median_seconds(lambda: pack_triton(grid, lay))
        moved = 2 * lay.numel * 4
        rows.append(dict(layout=name, levels=str(lay.levels), block=lay.block, contiguous_us=t_contig * 1e6,
                         index_select_us=t_index * 1e6, ours_us=t_ours * 1e6, vs_contiguous=t_contig / t_ours,
                         gbps=moved / t_ours / 1e9, of_copy=moved / t_ours / copy_bw))
        print(f"{name}: levels {lay.levels}, block {lay.block}: exact; .contiguous() {t_contig * 1e6:.1f} us, "
              f"index_select {t_index * 1e6:.1f} us, ours {t_ours * 1e6:.1f} us "
              f"({moved / t_ours / 1e9:.0f} GB/s, {moved / t_ours / copy_bw:.0%} of copy)", flush=True)
    lines = ["| layout | canonical levels | block | .contiguous() (us) | index_select (us) | ours (us) "
             "| ours vs .contiguous() | GB/s | of copy BW |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layout']} | {r['levels']} | {r['block']} | {r['contiguous_us']:.1f} | {r['index_select_us']:.1f} "
              f"| {r['ours_us']:.1f} | {r['vs_contiguous']:.2f}x | {r['gbps']:.0f} | {r['of_copy']:.0%} |"
              for r in rows]
    report.table(f"Pack of a float32 {n}^3 grid; copy {copy_bw / 1e9:.0f} GB/s", "\n".join(lines), rows)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=None,
                   help=f"edge n of the n^3 float32 grid (full: {FULL['grid']}, quick: {QUICK['grid']})")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("comm_pack", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
