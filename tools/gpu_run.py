#!/usr/bin/env python3
"""Run the GPU side of the book on a CUDA machine: kernel tests natively, every notebook at the
``gpu`` tier (times published in book/_data/runtimes.json), and every benchmark.

    python tools/gpu_run.py [--out DIR] [--only-notebooks | --only-benchmarks] [--notebooks SUBSTRING ...]

Needs torch, triton, pytest, PyYAML, papermill, ipykernel, plotly and ipywidgets, and labkit
importable (``pip install -e . --no-deps`` or ``PYTHONPATH=.``). Logs and executed notebooks go
to ``--out`` (default ``_build/gpu``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import _book  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "gpu")
    parser.add_argument("--only-notebooks", action="store_true")
    parser.add_argument("--only-benchmarks", action="store_true")
    parser.add_argument("--notebooks", nargs="*", metavar="SUBSTRING",
                        help="run only the notebooks whose path contains one of these")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("tools/gpu_run.py needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PLOTLY_RENDERER="notebook_connected",
               LABKIT_RECORDS_DIR=str(args.out / "records"), PYTHONUNBUFFERED="1")
    failures = 0
    if not (args.only_notebooks or args.only_benchmarks):
        print("== kernel and unit tests, natively on the GPU", flush=True)
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-m", "not notebook and not book", "--ignore=tests/book", "--ignore=tests/dist",
                             "--ignore=tests/data", str(ROOT / "tests")],
                            cwd=ROOT, env=env).returncode
        failures += rc != 0
    if not args.only_benchmarks:
        import papermill as pm

        os.environ.update(env)
        for nb in _book.toc_notebooks():
            if args.notebooks and not any(part in _book.docname(nb) for part in args.notebooks):
                continue
            out = args.out / nb.relative_to(ROOT)
            out.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(str(nb), str(out), parameters={"tier": "gpu"}, kernel_name="python3",
                                    cwd=str(nb.parent), progress_bar=False)
            except Exception as exc:  # report and go on with the others
                print(f"FAILED {_book.docname(nb)}: {exc}", flush=True)
                failures += 1
                continue
            seconds = time.perf_counter() - t0
            _book.record_runtime(nb, "gpu", seconds)
            print(f"== {_book.docname(nb)}: {seconds:.1f} s at tier gpu", flush=True)
    if not args.only_notebooks:
        for script in sorted((ROOT / "benchmarks").glob("*.py")):
            print(f"== {script.relative_to(ROOT)}", flush=True)
            failures += subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
