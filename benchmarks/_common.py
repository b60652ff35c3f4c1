"""What every GPU benchmark in this folder shares: the options, the reference checks, the report.

Each ``benchmarks/<topic>_<op>.py`` script

- takes ``--quick`` (a small case set that runs in well under a minute on one H100) and
  ``--json PATH`` (its tables, rows and environment as JSON, written even when it fails);
- checks every candidate against the labkit reference with :func:`check_close`,
  :func:`check_relative` or :func:`check_equal` *before* timing it: a disagreement raises
  :class:`Mismatch`, nothing more is timed and the script exits with status 1;
- times with one timer, :func:`labkit.runtime.cuda_median_seconds` (``triton.testing.do_bench``:
  medians of CUDA-event-timed runs, L2 cache flushed before each run);
- prints ``--help`` on any machine (torch is imported, CUDA and Triton are not needed);
- with ``--interpret``, runs on the CPU at tiny sizes, its Triton kernels in Triton's interpreter
  and each timing one host-clocked call: a check that the script works end to end (the test
  suite runs it), whose numbers mean nothing.

The scripts import this module as ``_common`` (Python puts the script's folder first on
``sys.path``); ``tools/gpu_run.py`` runs every script here whose name does not start with ``_``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Mismatch", "NoDevice", "Report", "add_options", "apply_case_set", "check_close", "check_equal",
           "check_relative", "copy_bandwidth", "device", "environment", "interpreting", "jsonable", "run"]

_INTERPRET = False  # set by run() for --interpret


class Mismatch(Exception):
    """A candidate disagrees with the labkit reference: the benchmark stops before timing it."""


class NoDevice(Exception):
    """No CUDA device: the Triton kernels' CPU path is the interpreter, far too slow to time."""


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--quick`` and ``--json PATH`` (the options ``tools/gpu_run.py`` relies on) and ``--interpret``."""
    parser.add_argument("--quick", action="store_true",
                        help="the small case set (sizes not given on the command line come from it)")
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="also write the tables, rows and environment as JSON to PATH")
    parser.add_argument("--interpret", action="store_true",
                        help="run on the CPU at tiny sizes, the Triton kernels interpreted and each timing one "
                             "host-clocked call: checks that the script works; its numbers mean nothing")


def apply_case_set(args: argparse.Namespace, full: Mapping[str, Any], quick: Mapping[str, Any],
                   interpret: Mapping[str, Any]) -> None:
    """Fill every option left at ``None`` from the case set that ``args`` asks for: ``interpret``
    under ``--interpret``, else ``quick`` under ``--quick``, else ``full``.

    Sizes given on the command line win over every case set.

    Raises:
        ValueError: the case sets do not name the same options.
    """
    for name, other in (("quick", quick), ("interpret", interpret)):
        if set(full) != set(other):
            raise ValueError(f"full and {name} case sets must name the same options; differ in "
                             f"{sorted(set(full) ^ set(other))}")
    chosen = interpret if getattr(args, "interpret", False) else quick if args.quick else full
    for name, value in chosen.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def _worst(what: str, bad: torch.Tensor, got: torch.Tensor, expected: torch.Tensor) -> str:
    idx = tuple(int(i) for i in torch.nonzero(bad)[0].tolist()) if bad.dim() else ()
    return (f"{what}: {int(bad.sum())} of {bad.numel()} elements differ, first at {idx}: "
            f"got {got[idx].item()!r}, reference {expected[idx].item()!r}")


def _same_shape(what: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise TypeError(f"{what}: expected tensors, got {type(got).__name__} and {type(expected).__name__}")
    if got.shape != expected.shape:
        raise Mismatch(f"{what}: shape {tuple(got.shape)}, reference {tuple(expected.shape)}")


def check_close(what: str, got: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float) -> float:
    """Elementwise ``|got - expected| <= atol + rtol * |expected|`` (in float64, on their device).

    Returns the largest absolute error. Raises :class:`Mismatch` naming the first element out of
    bounds (NaN or infinity where the reference is finite counts as out of bounds).
    """
    _same_shape(what, got, expected)
    if got.numel() == 0:
        return 0.0
    g, e = got.detach().double(), expected.detach().to(got.device).double()
    err = (g - e).abs()
    bad = ~(err <= atol + rtol * e.abs())  # NaN compares False: counted as bad
    if bool(bad.any()):
        raise Mismatch(_worst(what, bad, g, e) + f" (rtol {rtol:g}, atol {atol:g})")
    return float(err.max())


def check_relative(what: str, got: torch.Tensor, expected: torch.Tensor, *, bound: float) -> float:
    """``max |got - expected| / max |expected| < bound``, for sums whose small entries carry large
    relative rounding errors (long dot products, sparse rows). Returns that ratio."""
    _same_shape(what, got, expected)
    if got.numel() == 0:
        return 0.0
    g, e = got.detach().double(), expected.detach().to(got.device).double()
    ratio = float((g - e).abs().max() / e.abs().max().clamp_min(1e-300))
    if not ratio < bound:  # NaN fails too
        raise Mismatch(f"{what}: largest error / largest reference value = {ratio:.3g}, bound {bound:g}")
    return ratio


def check_equal(what: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-for-bit equality (integer results, permutations, copies)."""
    _same_shape(what, got, expected)
    if got.dtype != expected.dtype:
        raise Mismatch(f"{what}: dtype {got.dtype}, reference {expected.dtype}")
    e = expected.to(got.device)
    if not torch.equal(got, e):
        raise Mismatch(_worst(what, got != e, got, e))


def interpreting() -> bool:
    """Whether this run is an ``--interpret`` run (CPU, tiny sizes, numbers meaningless)."""
    return _INTERPRET


def device() -> torch.device:
    """Where the benchmark's tensors live: the GPU, or the CPU under ``--interpret``."""
    return torch.device("cpu" if _INTERPRET else "cuda")


def _host_seconds(fn: Callable[[], object]) -> float:
    """``--interpret``'s stand-in for ``cuda_median_seconds``: one call, host clock."""
    t0 = time.perf_counter()
    fn()
    return max(time.perf_counter() - t0, 1e-9)


def environment() -> dict[str, str]:
    """The card, the versions and the date, as every table's header reports them."""
    env = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__, "cuda": str(torch.version.cuda), "date": datetime.date.today().isoformat()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "absent"
    return env


def copy_bandwidth(n_floats: int = 2**28) -> float:
    """Bytes per second (read + write) of a device-to-device copy of ``n_floats`` float32 values."""
    from labkit.runtime import cuda_median_seconds

    if _INTERPRET:
        n_floats = min(n_floats, 2**16)
    src = torch.empty(n_floats, device=device())
    dst = torch.empty_like(src)
    seconds = cuda_median_seconds(lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n_floats * 4 / seconds


def jsonable(value: Any) -> Any:
    """``value`` with dtypes, devices and paths as strings, tuples as lists and NaN/inf as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return jsonable(value.item())
    return str(value)


@dataclass
class Report:
    """What one benchmark run found: its tables (title, markdown, rows) and notes."""

    benchmark: str
    args: argparse.Namespace
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, title: str, markdown: str, rows: list[Mapping[str, Any]]) -> None:
        """Record a table (printed later by :func:`run`, after everything was measured)."""
        self.tables.append({"title": title, "markdown": markdown, "rows": [dict(r) for r in rows]})

    def to_json(self, *, ok: bool, status: int, error: str | None, seconds: float,
                env: Mapping[str, str]) -> dict[str, Any]:
        """The JSON document: ``ok`` when every check passed and the run completed; ``status`` is the
        exit status (2: a goal missed under ``--strict``)."""
        args = {k: v for k, v in vars(self.args).items() if k != "json"}
        return jsonable({"benchmark": self.benchmark, "quick": bool(self.args.quick),
                         "interpret": bool(self.args.interpret), "ok": ok, "status": status,
                         "error": error,
                         "seconds": round(seconds, 2), "environment": env, "args": args, "tables": self.tables,
                         "notes": self.notes})


def run(benchmark: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace, Report], int], *,
        full: Mapping[str, Any], quick: Mapping[str, Any], interpret: Mapping[str, Any],
        check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
        argv: list[str] | None = None) -> int:
    """Parse the options, fill the sizes from the case sets (:func:`apply_case_set`), let
    ``check(parser, args)`` reject bad combinations (with ``parser.error``), run
    ``body(args, report)`` on a CUDA device and report.

    Prints the device line first and the tables last; writes ``--json`` in every case. Exit
    status: ``body``'s (0, or 2 for a missed goal under ``--strict``), 1 when a result disagreed
    with the reference or there is no CUDA device.
    """
    global _INTERPRET
    import labkit.runtime

    args = parser.parse_args(argv)
    apply_case_set(args, full, quick, interpret)
    if check is not None:
        check(parser, args)
    timer = labkit.runtime.cuda_median_seconds
    if args.interpret:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--interpret: Triton was imported before TRITON_INTERPRET=1 could be set")
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined, i.e. first imported
        labkit.runtime.cuda_median_seconds = _host_seconds  # the scripts import the timer when they run
    _INTERPRET = bool(args.interpret)
    report = Report(benchmark, args)
    env = environment()
    t0 = time.perf_counter()
    error: str | None = None
    status = 1
    try:
        if not (_INTERPRET or torch.cuda.is_available()):
            raise NoDevice(f"{benchmark}.py needs a CUDA device: the Triton kernels' CPU path is the interpreter, "
                           "far too slow to time (the parity tests run it: pytest -m gpu).")
        print(f"device: {env['device']}; torch {env['torch']}; triton {env['triton']}; CUDA {env['cuda']}; "
              f"{env['date']}; {'interpret' if _INTERPRET else 'quick' if args.quick else 'full'} case set"
              + ("; CPU, Triton interpreted, one host-clocked call per timing: the numbers mean nothing"
                 if _INTERPRET else ""), flush=True)
        status = body(args, report)
    except (Mismatch, NoDevice) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"{benchmark}: {error}" + ("; nothing after this was timed" if isinstance(exc, Mismatch) else ""),
              file=sys.stderr, flush=True)
        status = 1
    except BaseException as exc:  # a crash (out of memory, ...): recorded in the JSON, then raised
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        raise
    finally:
        for t in report.tables:
            print(f"\n{t['title']}\n\n{t['markdown']}")
        for note in report.notes:
            print(note)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            data = report.to_json(ok=error is None, status=status, error=error,
                                  seconds=time.perf_counter() - t0, env=env)
            args.json.write_text(json.dumps(data, indent=1) + "\n")
        sys.stdout.flush()
        labkit.runtime.cuda_median_seconds = timer  # as it was (main() may be called in-process)
        _INTERPRET = False
    return status
