"""Benchmark: fused Triton scaled add (labkit.intro) against eager PyTorch, on one GPU.

Prints the device, versions, the anchor's time (eager ``alpha * x + y``), ``torch.add(y, x,
alpha=...)`` (PyTorch's own fused axpy), ours, the ratios, and the fraction of the copy
bandwidth measured in the same run (a device-to-device copy moves 2 bytes per byte copied).

    python benchmarks/intro_scaled_add.py [--sizes 2**20 2**24 2**28]
"""

from __future__ import annotations

import argparse
import sys

import torch


def bench(fn, reps: int = 50) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=reps, return_mode="median") / 1e3  # ms -> s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["2**20", "2**24", "2**28"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 1
    import triton

    from labkit.intro._kernels import scaled_add_triton

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}; triton {triton.__version__}")
    print(f"{'elements':>12} {'eager ms':>9} {'torch.add ms':>12} {'triton ms':>9} {'vs eager':>8} "
          f"{'vs add':>7} {'GB/s':>7} {'of copy':>7}")
    for expr in args.sizes:
        n = int(eval(expr, {}))  # sizes like 2**24 from the command line
        x, y = torch.randn(n, device=dev), torch.randn(n, device=dev)
        buf = torch.empty_like(x)
        t_copy = bench(lambda: buf.copy_(x))
        copy_bw = 8 * n / t_copy  # read + write of 4-byte floats
        t_eager = bench(lambda: 0.5 * x + y)
        t_add = bench(lambda: torch.add(y, x, alpha=0.5))
        t_ours = bench(lambda: scaled_add_triton(x, y, alpha=0.5))
        ours_bw = 12 * n / t_ours
        print(f"{n:>12,} {t_eager * 1e3:>9.3f} {t_add * 1e3:>12.3f} {t_ours * 1e3:>9.3f} {t_eager / t_ours:>7.2f}x "
              f"{t_add / t_ours:>6.2f}x {ours_bw / 1e9:>7.0f} {ours_bw / copy_bw:>7.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
