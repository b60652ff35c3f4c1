"""Benchmark: 1-bit Adam's compressor with error feedback (labkit.comm), Triton against eager PyTorch.

For each size ``d``, a float32 momentum ``x`` and error ``e`` are compressed once by the labkit
reference (``compress_with_feedback_reference``: ``c = x + e``, its norm, the signs packed by
``pack_signs``, ``e <- c - s sign(c)``, each step its own kernel) and once by ours
(``compress_with_feedback_triton``: two launches), on copies of the same ``e``. Ours must give
the same packed bytes bit for bit, the scale within float32 rounding and the new error within
the tolerance that difference allows; a disagreement stops the script (exit status 1) before
anything is timed. Then it times both with :func:`labkit.runtime.cuda_median_seconds` (each call
updates its own ``e`` in place, as the optimiser does).

Bandwidth: the fused kernel moves 20.125 bytes per element (``x`` and ``e`` read twice, ``e``
written, 1/8 byte of signs); that traffic per second is compared with a device-to-device copy
measured in the same run. Goals on an H100: >= 2.5x eager and >= 60 % of the copy bandwidth,
printed as met or missed (``--strict`` turns a miss into exit status 2).

    python benchmarks/comm_onebit.py [--sizes 2**24 2**26 2**28] [--strict] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from _common import Report, add_options, check_close, check_equal, copy_bandwidth, device, run

FULL = {"sizes": [2**24, 2**26, 2**28]}
QUICK = {"sizes": [2**24]}
INTERPRET = {"sizes": [37 * 53, 5000]}

#: Bytes each element costs the fused kernel: 4 + 4 read in pass 1, 4 + 4 read and 4 written in
#: pass 2, one eighth of a byte of packed signs.
BYTES_PER_ELEMENT = 20.125
#: (name, threshold) of the goals; each is printed as met or missed.
GOALS = (("speed-up over eager", 2.5), ("share of copy bandwidth", 0.60))
SCALE_RTOL = 1e-5  # the sum of squares in another order (float32 partial sums against PyTorch's)


def parse_size(text: str) -> int:
    """A positive element count written as ``N`` or ``B**E`` (e.g. ``2**24``)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:\*\*\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must be N or B**E, got {text!r}")
    n = int(match.group(1)) ** int(match.group(2) or 1)
    if n < 1:
        raise argparse.ArgumentTypeError(f"size must be >= 1, got {text!r}")
    return n


def validate(x: torch.Tensor, e: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
             new_e: torch.Tensor) -> dict[str, float]:
    """Ours (``packed``, ``scale``, ``new_e`` from ``x`` and ``e``) against the reference.

    Packed bytes bit for bit; the scale within :data:`SCALE_RTOL`; the new error within what a
    scale that far off allows. Returns the largest errors; raises ``Mismatch``.
    """
    from labkit.comm.onebit import compress_with_feedback_reference

    ref_e = e.clone()
    ref_packed, ref_scale = compress_with_feedback_reference(x, ref_e)
    check_equal("compress_with_feedback_triton: packed signs", packed, ref_packed)
    scale_err = check_close("compress_with_feedback_triton: scale", scale, ref_scale, rtol=SCALE_RTOL, atol=0.0)
    bound = SCALE_RTOL * abs(ref_scale.item())  # e = c -+ s: an error in s moves every entry by it
    e_err = check_close("compress_with_feedback_triton: new error", new_e, ref_e, rtol=1e-6, atol=bound)
    return {"scale_rel_err": scale_err / abs(ref_scale.item()), "error_max_abs_err": e_err}


def goals(row: dict) -> list[tuple[str, float, bool]]:
    """(goal, measured, met) for one row of the table."""
    measured = {"speed-up over eager": row["vs_eager"], "share of copy bandwidth": row["of_copy"]}
    return [(name, measured[name], measured[name] >= threshold) for name, threshold in GOALS]


def body(args: argparse.Namespace, report: Report) -> int:
    from labkit.comm._onebit_kernels import compress_with_feedback_triton
    from labkit.comm.onebit import compress_with_feedback_reference
    from labkit.runtime import cuda_median_seconds

    dev = device()
    copy_bw = copy_bandwidth()
    print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)", flush=True)
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for n in args.sizes:
        x = torch.randn(n, device=dev, generator=gen)
        e = 0.1 * torch.randn(n, device=dev, generator=gen)
        ours_e = e.clone()
        errors = validate(x, e, *compress_with_feedback_triton(x, ours_e), ours_e)
        ref_e = e.clone()
        del e
        t_eager = cuda_median_seconds(lambda: compress_with_feedback_reference(x, ref_e))
        t_ours = cuda_median_seconds(lambda: compress_with_feedback_triton(x, ours_e))
        bw = BYTES_PER_ELEMENT * n / t_ours
        row = dict(elements=n, eager_ms=t_eager * 1e3, ours_ms=t_ours * 1e3, vs_eager=t_eager / t_ours,
                   gbps=bw / 1e9, of_copy=bw / copy_bw, **errors)
        rows.append(row)
        print(f"{n:,} elements: packed bytes exact, scale rel. err {errors['scale_rel_err']:.1e}, new error max abs "
              f"err {errors['error_max_abs_err']:.1e}; eager {t_eager * 1e3:.3f} ms, ours {t_ours * 1e3:.3f} ms "
              f"({t_eager / t_ours:.2f}x eager, {bw / 1e9:.0f} GB/s, {bw / copy_bw:.0%} of copy)", flush=True)
        del x, ref_e, ours_e
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    lines = ["| elements | eager (ms) | ours (ms) | vs eager | GB/s at 20.125 B/element | of copy BW |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['elements']:,} | {r['eager_ms']:.3f} | {r['ours_ms']:.3f} | {r['vs_eager']:.2f}x "
              f"| {r['gbps']:.0f} | {r['of_copy']:.0%} |" for r in rows]
    lines += ["", "| elements | goal | measured | met |", "|---|---|---|---|"]
    missed = []
    for r in rows:
        for name, got, met in goals(r):
            share = "bandwidth" in name
            goal = f"{dict(GOALS)[name]:.0%}" if share else f"{dict(GOALS)[name]:g}x"
            shown = f"{got:.0%}" if share else f"{got:.2f}x"
            lines.append(f"| {r['elements']:,} | {name} >= {goal} | {shown} | {'yes' if met else 'MISSED'} |")
            if not met:
                missed.append(f"{name} at {r['elements']:,}")
    report.table(f"1-bit compression with error feedback, float32; copy {copy_bw / 1e9:.0f} GB/s",
                 "\n".join(lines), rows)
    if missed:
        report.notes.append(f"goals missed: {', '.join(missed)}")
    return 2 if missed and args.strict else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                   help=f"element counts, N or B**E (full: {FULL['sizes']}, quick: {QUICK['sizes']})")
    p.add_argument("--strict", action="store_true", help="exit with status 2 when a goal is missed")
    add_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run("comm_onebit", parser(), body, full=FULL, quick=QUICK, interpret=INTERPRET, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
