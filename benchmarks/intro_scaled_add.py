"""Benchmark: fused Triton scaled add (labkit.intro) against eager PyTorch, on one GPU.

For each size, ours (``scaled_add_triton``) is first checked against the labkit reference
(``scaled_add_reference``, within labkit.testing's Triton tolerance for float32); then it times,
with :func:`labkit.runtime.cuda_median_seconds`, eager ``alpha * x + y`` (the anchor),
``torch.add(y, x, alpha=...)`` (PyTorch's own fused axpy) and ours, and prints the ratios and
the fraction of the copy bandwidth measured in the same run (a device-to-device copy moves
2 bytes per byte copied; the axpy moves 3).

    python benchmarks/intro_scaled_add.py [--sizes 2**20 2**24 2**28] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from _common import Report, add_options, check_close, device, run

FULL = {"sizes": [2**20, 2**24, 2**28]}
QUICK = {"sizes": [2**24]}
INTERPRET = {"sizes": [1000]}
ALPHA = 0.5


def parse_size(text: str) -> int:
    """A positive element count written as ``N`` or ``B**E`` (e.g. ``2**24``)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:\*\*\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must be N or B**E, got {text!r}")
    n = int(match.group(1)) ** int(match.group(2) or 1)
    if n < 1:
        raise argparse.ArgumentTypeError(f"size must be >= 1, got {text!r}")
    return n


def validate(x: torch.Tensor, y: torch.Tensor, alpha: float, out: torch.Tensor) -> float:
    """Ours against ``scaled_add_reference``; returns the largest error, raises ``Mismatch``."""
    from labkit.intro.axpy import scaled_add_reference
    from labkit.testing import tolerances

    rtol, atol = tolerances(x.dtype, backend="triton")
    return check_close("scaled_add_triton", out, scaled_add_reference(x, y, alpha=alpha), rtol=rtol, atol=atol)


def body(args: argparse.Namespace, report: Report) -> int:
    from labkit.intro._kernels import scaled_add_triton
    from labkit.runtime import cuda_median_seconds

    dev = device()
    rows = []
    for n in args.sizes:
        x, y = torch.randn(n, device=dev), torch.randn(n, device=dev)
        err = validate(x, y, ALPHA, scaled_add_triton(x, y, alpha=ALPHA))
        buf = torch.empty_like(x)
        t_copy = cuda_median_seconds(lambda: buf.copy_(x))
        t_eager = cuda_median_seconds(lambda: ALPHA * x + y)
        t_add = cuda_median_seconds(lambda: torch.add(y, x, alpha=ALPHA))
        t_ours = cuda_median_seconds(lambda: scaled_add_triton(x, y, alpha=ALPHA))
        copy_bw, ours_bw = 8 * n / t_copy, 12 * n / t_ours  # bytes read + written per second
        rows.append(dict(elements=n, eager_ms=t_eager * 1e3, add_ms=t_add * 1e3, ours_ms=t_ours * 1e3,
                         vs_eager=t_eager / t_ours, vs_add=t_add / t_ours, gbps=ours_bw / 1e9,
                         of_copy=ours_bw / copy_bw, max_abs_err=err))
        print(f"{n:,} elements: max abs err {err:.1e}; eager {t_eager * 1e3:.3f} ms, torch.add {t_add * 1e3:.3f} ms, "
              f"ours {t_ours * 1e3:.3f} ms ({t_eager / t_ours:.2f}x eager, {ours_bw / copy_bw:.0%} of copy)",
              flush=True)
        del x, y, buf
    lines = ["| elements | eager (ms) | torch.add (ms) | ours (ms) | vs eager | vs torch.add | GB/s | of copy |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['elements']:,} | {r['eager_ms']:.3f} | {r['add_ms']:.3f} | {r['ours_ms']:.3f} "
              f"| {r['vs_eager']:.2f}x | {r['vs_add']:.2f}x | {r['gbps']:.0f} | {r['of_copy']:.0%} |"
              for r in rows]
    report.table(f"Scaled add alpha * x + y, float32, alpha = {ALPHA}", "\n".join(lines), rows)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                   help=f"element counts, N or B**E (full: {FULL['sizes']}, quick: {QUICK['sizes']})")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("intro_scaled_add", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
