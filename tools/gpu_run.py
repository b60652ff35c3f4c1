#!/usr/bin/env python3
"""Run the GPU side of the book on one CUDA machine, as a plan that fits a 15-minute GPU slot.

A slot gives about 15 minutes in all (start-up and copies included) and at most 10 minutes per
command, and only the end of the output comes back. So the run is a plan of items, each with an
estimate and a hard timeout, inside a time budget; every log and result is written under
``--out``, and a short summary is printed last (and written to ``OUT/summary.json``).

Plans (``--plan``):

  default  fits one slot: budget 8 minutes on one H100 (480 s), leaving the rest of the slot to
           start-up, the wheel install and copying ``--out`` back. In order:
           1. the kernel parity tests, natively on the GPU (``pytest -m gpu``);
           2. every benchmark in ``--quick`` mode (each checks its kernels against the labkit
              reference at size, then times them);
           3. the notebooks whose ``gpu`` tier times a Triton kernel (see DEFAULT_NOTEBOOKS).
  rest     every other notebook at the ``gpu`` tier and every benchmark at full size; more than
           one slot: run it in pieces with ``--notebooks``/``--benchmarks`` (budget 540 s each).
  all      the kernel tests, every notebook and every benchmark at full size (budget 540 s).

Parts: ``--kernels``, ``--notebooks PATTERN`` and ``--benchmarks PATTERN`` (regular expressions,
searched in the notebook's path such as ``chapters/01_message_passing/01_spmm`` or in the
benchmark's name such as ``quant_gemm``) keep only those parts of the plan; with any of them
and no ``--plan``, the plan is ``all``. ``--quick`` runs the benchmarks in quick mode.

Budget and timeouts. An item starts only when its estimate fits in what is left of ``--budget``
(seconds; 0: no budget), and is killed (its whole process group) at its hard timeout or when the
budget runs out; items left out are listed in the summary with the command that runs them.
Hard timeouts: kernel tests 300 s, a notebook 330 s (the ``gpu`` tier's 5 minutes and start-up),
a benchmark 150 s in quick mode and 600 s at full size. Estimates: a notebook's ``gpu`` time in
book/_data/runtimes.json, else its ``default``-tier time there (a 2-core CPU run at smaller
sizes: a rough proxy), else 60 s, plus 3 s to start papermill; a benchmark's or the kernel
tests' time in book/_data/gpu_benchmarks.json, else the stated defaults of this module.
``--dry-run`` prints the plan with its estimates and runs nothing (no GPU needed).

Written under ``--out`` (default ``_build/gpu``): ``summary.json``; ``environment.json`` (card,
versions, date); ``logs/kernels.log`` and ``kernels.xml`` (pytest's output and JUnit report);
``logs/benchmarks/NAME.log`` (a benchmark's stdout and stderr) and ``benchmarks/NAME.json`` (its
tables); ``notebooks/chapters/...ipynb`` (each executed notebook), ``logs/notebooks/...log`` and
``runtimes.json`` (each notebook's ``gpu`` time with the card, torch and Triton versions and the
date); ``records/`` (the notebooks' claims).

Afterwards, on any machine, ``python tools/gpu_run.py merge OUT_DIR`` merges a run's records
into the book: each notebook's ``gpu`` time into book/_data/runtimes.json (the run-time table)
and each benchmark's tables and the kernel tests' time into book/_data/gpu_benchmarks.json.

Needs on the GPU host: torch, Triton and pytest for the kernel tests and benchmarks (``import
labkit`` needs no plotly), and for the notebooks papermill, ipykernel, ipywidgets, plotly and
PyYAML, with labkit importable from the checkout; README.md, "On a GPU machine", has the
command line for an offline host.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ROOT / "book" / "_data" / "runtimes.json"
BENCHMARK_DATA = ROOT / "book" / "_data" / "gpu_benchmarks.json"
PLANS = ("default", "rest", "all")
BUDGET_S = {"default": 480.0, "rest": 540.0, "all": 540.0}
PARTS = ("kernels", "benchmark", "notebook")

#: Notebooks of the default plan: their ``gpu`` tier times a Triton kernel. The notebooks whose
#: ``gpu`` tier only calls a Triton path as a check (chapters 10 and 14, 11/05; chapter 09 through
#: the fused GroupNorm + SiLU of its UNet) are in ``rest``: the kernel tests and the quick
#: benchmarks already check those kernels natively in the default plan.
DEFAULT_NOTEBOOKS: dict[str, str] = {
    "chapters/00_how_this_book_runs/01_how_this_book_runs": "times the Triton scaled add against eager PyTorch",
    "chapters/01_message_passing/01_spmm": "times the Triton SpMM on a 1M-node graph against cuSPARSE",
    "chapters/05_routing/01_topk_routing": "times the Triton grouped GEMM against the per-expert loop",
}

# Stated estimates (seconds on one H100, start-up included) until a merged run provides measured ones.
KERNEL_TESTS_S = 75.0
BENCHMARK_QUICK_S = {"comm_onebit": 9.0, "comm_pack": 20.0, "diffusion_groupnorm_silu": 50.0, "graphs_spmm": 25.0,
                     "inference_lowrank_decode": 40.0, "intro_scaled_add": 12.0, "moe_grouped_gemm": 25.0,
                     "mpc_ring_gemm": 25.0, "quant_gemm": 80.0}
BENCHMARK_FULL_S = {"comm_onebit": 45.0, "comm_pack": 45.0, "diffusion_groupnorm_silu": 240.0, "graphs_spmm": 120.0,
                    "inference_lowrank_decode": 90.0, "intro_scaled_add": 25.0, "moe_grouped_gemm": 90.0,
                    "mpc_ring_gemm": 180.0, "quant_gemm": 150.0}
BENCHMARK_UNKNOWN_S = 60.0  # a benchmark added without a stated estimate
NOTEBOOK_UNKNOWN_S = 60.0
NOTEBOOK_START_S = 3.0  # a fresh Python importing papermill, on top of the recorded execution time
PROBE_S = 5.0  # the environment probe: a Python that imports torch and initialises CUDA
TIMEOUT_S = {"kernels": 300.0, "notebook": 330.0, "benchmark quick": 150.0, "benchmark full": 600.0}
TAIL_CHARS = 1500  # of a failed item's log, printed before the summary


@dataclasses.dataclass(frozen=True)
class Item:
    """One step of a plan: the kernel tests, a benchmark or a notebook."""

    part: str
    name: str
    estimate_s: float
    estimate_from: str
    timeout_s: float
    quick: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} --quick" if self.quick else self.name


@dataclasses.dataclass
class Result:
    """What happened to an item: passed, failed, timed out, or not run and why."""

    item: Item
    status: str
    seconds: float = 0.0
    detail: str = ""
    log: str = ""


# ---------------------------------------------------------------------------------------- what
def notebooks() -> list[str]:
    """Every chapter notebook, as its path without suffix (``chapters/NN_slug/MM_slug``), in order."""
    return [p.relative_to(ROOT).with_suffix("").as_posix() for p in sorted(ROOT.glob("chapters/*/*.ipynb"))]


def benchmarks() -> list[str]:
    """Every benchmark script of ``benchmarks/`` by name (helpers start with ``_``)."""
    return [p.stem for p in sorted((ROOT / "benchmarks").glob("*.py")) if not p.name.startswith("_")]


def kernel_test_files() -> list[str]:
    """Test files with a test marked ``gpu`` (a ``pytestmark`` or a decorator naming it)."""
    out = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        if any(isinstance(node, ast.Attribute) and node.attr == "gpu" and isinstance(node.value, ast.Attribute)
               and node.value.attr == "mark" for node in ast.walk(tree)):
            out.append(path.relative_to(ROOT).as_posix())
    return out


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def notebook_estimate(docname: str, runtimes: dict[str, Any]) -> tuple[float, str]:
    """Seconds and where they come from: the recorded ``gpu`` time, else the ``default`` one, else 60 s."""
    tiers = runtimes.get(docname, {})
    if "gpu" in tiers:
        return tiers["gpu"]["seconds"] + NOTEBOOK_START_S, f"gpu run {tiers['gpu'].get('date', '')}".strip()
    if "default" in tiers:
        return tiers["default"]["seconds"] + NOTEBOOK_START_S, "default tier on CPU (proxy)"
    return NOTEBOOK_UNKNOWN_S + NOTEBOOK_START_S, "stated default"


def benchmark_estimate(name: str, quick: bool, data: dict[str, Any]) -> tuple[float, str]:
    """Seconds and where they come from: the merged run's wall time, else the stated default."""
    record = data.get("benchmarks", {}).get(name, {}).get("quick" if quick else "full")
    if record and record.get("seconds"):
        return float(record["seconds"]), f"gpu run {record.get('date', '')}".strip()
    table = BENCHMARK_QUICK_S if quick else BENCHMARK_FULL_S
    return table.get(name, BENCHMARK_UNKNOWN_S), "stated default"


def kernel_estimate(data: dict[str, Any]) -> tuple[float, str]:
    """Seconds of the kernel tests and where they come from: the merged run, else the stated default."""
    record = data.get("kernel_tests")
    if record and record.get("seconds"):
        return float(record["seconds"]), f"gpu run {record.get('date', '')}".strip()
    return KERNEL_TESTS_S, "stated default"


def _matching(pattern: str | None, names: Iterable[str]) -> list[str]:
    names = list(names)
    return names if pattern is None else [n for n in names if re.search(pattern, n)]


def build_plan(plan: str, *, kernels: bool = False, notebooks_pattern: str | None = None,
               benchmarks_pattern: str | None = None, quick: bool = False,
               runtimes: dict[str, Any] | None = None, benchmark_data: dict[str, Any] | None = None) -> list[Item]:
    """The items of ``plan``, kept to the parts asked for (none asked: every part of the plan).

    Raises:
        ValueError: unknown plan, or a pattern that matches nothing in the plan.
    """
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    runtimes = _load_json(RUNTIMES) if runtimes is None else runtimes
    data = _load_json(BENCHMARK_DATA) if benchmark_data is None else benchmark_data
    every_part = not (kernels or notebooks_pattern is not None or benchmarks_pattern is not None)
    all_notebooks = notebooks()
    unknown = sorted(set(DEFAULT_NOTEBOOKS) - set(all_notebooks))
    if unknown:
        raise ValueError(f"DEFAULT_NOTEBOOKS names notebooks that do not exist: {unknown}")
    plan_notebooks = {"default": [n for n in all_notebooks if n in DEFAULT_NOTEBOOKS],
                      "rest": [n for n in all_notebooks if n not in DEFAULT_NOTEBOOKS],
                      "all": all_notebooks}[plan]
    bench_quick = quick or plan == "default"
    items: list[Item] = []
    if plan != "rest" and (every_part or kernels):
        items.append(Item("kernels", "kernel tests", *kernel_estimate(data), TIMEOUT_S["kernels"]))
    if kernels and plan == "rest":
        raise ValueError("--kernels: the kernel tests are in the default and all plans, not in rest")
    if every_part or benchmarks_pattern is not None:
        chosen = _matching(benchmarks_pattern, benchmarks())
        if not chosen:
            raise ValueError(f"--benchmarks {benchmarks_pattern!r} matches no benchmark of {benchmarks()}")
        timeout = TIMEOUT_S["benchmark quick" if bench_quick else "benchmark full"]
        items += [Item("benchmark", b, *benchmark_estimate(b, bench_quick, data), timeout, bench_quick)
                  for b in chosen]
    if every_part or notebooks_pattern is not None:
        chosen = _matching(notebooks_pattern, plan_notebooks)
        if not chosen:
            raise ValueError(f"--notebooks {notebooks_pattern!r} matches no notebook of plan {plan!r}")
        items += [Item("notebook", n, *notebook_estimate(n, runtimes), TIMEOUT_S["notebook"]) for n in chosen]
    return items


# ------------------------------------------------------------------------------------------ how
def _fmt_s(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s" if seconds >= 60 else f"{seconds:.1f}s"


def describe_plan(plan: str, items: Sequence[Item], budget: float) -> str:
    """The plan as a table: part, item, estimate and its source, timeout; then the total."""
    lines = [f"plan {plan!r}: {len(items)} items, run in this order (estimate, its source; hard timeout)"]
    for i, it in enumerate(items, 1):
        reason = f"  [{DEFAULT_NOTEBOOKS[it.name]}]" if it.part == "notebook" and it.name in DEFAULT_NOTEBOOKS else ""
        lines.append(f"{i:3d}. {it.part:9s} {it.label:58s} {it.estimate_s:6.1f} s ({it.estimate_from}; "
                     f"timeout {it.timeout_s:.0f} s){reason}")
    total = PROBE_S + sum(it.estimate_s for it in items)
    fits = "no budget" if budget <= 0 else (f"fits the budget of {_fmt_s(budget)}" if total <= budget
                                             else f"OVER the budget of {_fmt_s(budget)}: the last items will be "
                                                  "left out")
    lines.append(f"estimated total {_fmt_s(total)} with the {PROBE_S:.0f} s environment probe; {fits}")
    if budget > 0 and total > budget:
        pieces = split_plan(items, budget)
        lines.append(f"in {len(pieces)} runs that fit the budget each:")
        lines += [f"  {piece_command(plan, piece, Path(f'_build/gpu-{plan}-{i}'))}  # ~{_fmt_s(plan_estimate(piece))}"
                  for i, piece in enumerate(pieces, 1)]
    return "\n".join(lines)


def plan_estimate(items: Sequence[Item]) -> float:
    """Seconds the plan is expected to take, the environment probe included."""
    return PROBE_S + sum(it.estimate_s for it in items)


PROBE = r"""
import importlib, importlib.util, json, sys
info = {"python": sys.version.split()[0]}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.cuda.is_available()
    info["card"] = torch.cuda.get_device_name(0) if info["cuda"] else None
except Exception as exc:
    info["torch"], info["cuda"], info["card"], info["error"] = None, False, None, repr(exc)
try:
    import triton
    info["triton"] = triton.__version__
except Exception as exc:
    info["triton"] = None
try:
    importlib.import_module("labkit")
    info["labkit"] = None
except Exception as exc:
    info["labkit"] = f"{type(exc).__name__}: {exc}"
info["missing"] = [m for m in ("pytest", "papermill", "ipykernel", "ipywidgets", "plotly", "yaml")
                   if importlib.util.find_spec(m) is None]
print(json.dumps(info))
"""

NOTEBOOK_RUNNER = r"""
import json, sys, time
import papermill as pm
source, output, cwd, record = sys.argv[1:5]
t0 = time.perf_counter()
pm.execute_notebook(source, output, parameters={"tier": "gpu"}, kernel_name="python3", cwd=cwd,
                    progress_bar=False, log_output=True)
with open(record, "w") as fh:
    json.dump({"seconds": time.perf_counter() - t0}, fh)
"""


def child_env(out: Path) -> dict[str, str]:
    """The environment of every item: labkit from this checkout, claims under ``out``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PLOTLY_RENDERER="notebook_connected", TQDM_DISABLE="1",
                LABKIT_RECORDS_DIR=str(out / "records"), PYTHONUNBUFFERED="1")


def run_logged(cmd: Sequence[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> int | None:
    """Run ``cmd`` from the repository root with stdout and stderr into ``log``; kill its whole
    process group (papermill's kernel, compile workers) after ``timeout`` seconds. Returns the
    exit status, or None when it timed out."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 0.1))
        except BaseException:  # the timeout, or this script interrupted: no orphan may keep the GPU
            _kill_group(proc)
            if sys.exc_info()[0] is subprocess.TimeoutExpired:
                fh.write(f"\n[gpu_run: killed after its timeout of {timeout:.0f} s]\n")
                return None
            raise


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def _machine(env: dict[str, Any]) -> str:
    """The machine string of book/_data/runtimes.json (as tests/_book.py writes it on a GPU)."""
    return f"{env.get('card')}, torch {env.get('torch')}, triton {env.get('triton')}"


class Runner:
    """Runs items on this machine, writing their logs and results under ``out``."""

    def __init__(self, out: Path, env_info: dict[str, Any]) -> None:
        self.out = out
        self.env_info = env_info
        self.env = child_env(out)

    def __call__(self, item: Item, timeout: float) -> Result:
        return getattr(self, f"_{item.part}")(item, timeout)

    def _kernels(self, item: Item, timeout: float) -> Result:
        log = self.out / "logs" / "kernels.log"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rfE",
               f"--junitxml={self.out / 'kernels.xml'}", *kernel_test_files()]
        t0 = time.perf_counter()
        rc = run_logged(cmd, log, timeout, self.env)
        seconds = time.perf_counter() - t0
        counts = re.findall(r"^=*\s*(\d+ (?:passed|failed|errors?|deselected|skipped).*?) in [\d.]+s", _tail(log),
                            re.M)
        detail = counts[-1] if counts else ""
        status = "timed out" if rc is None else "passed" if rc == 0 else "failed"
        return Result(item, status, seconds, detail, str(log.relative_to(self.out)))

    def _benchmark(self, item: Item, timeout: float) -> Result:
        log = self.out / "logs" / "benchmarks" / f"{item.name}.log"
        table = self.out / "benchmarks" / f"{item.name}.json"
        table.unlink(missing_ok=True)
        cmd = [sys.executable, str(ROOT / "benchmarks" / f"{item.name}.py"), "--json", str(table)]
        cmd += ["--quick"] if item.quick else []
        t0 = time.perf_counter()
        rc = run_logged(cmd, log, timeout, self.env)
        seconds = time.perf_counter() - t0
        detail = ""
        if table.exists():
            data = json.loads(table.read_text())
            data["wall_seconds"] = round(seconds, 1)  # what an estimate needs: start-up included
            table.write_text(json.dumps(data, indent=1) + "\n")
            detail = data.get("error") or "; ".join(data.get("notes", []))[:200]
        status = "timed out" if rc is None else "passed" if rc == 0 else "failed"
        return Result(item, status, seconds, detail, str(log.relative_to(self.out)))

    def _notebook(self, item: Item, timeout: float) -> Result:
        source = ROOT / f"{item.name}.ipynb"
        executed = self.out / "notebooks" / f"{item.name}.ipynb"
        executed.parent.mkdir(parents=True, exist_ok=True)
        log = self.out / "logs" / "notebooks" / f"{item.name}.log"
        record = self.out / "logs" / "notebooks" / f"{item.name}.seconds.json"
        record.unlink(missing_ok=True)
        cmd = [sys.executable, "-c", NOTEBOOK_RUNNER, str(source), str(executed), str(source.parent), str(record)]
        t0 = time.perf_counter()
        rc = run_logged(cmd, log, timeout, self.env)
        wall = time.perf_counter() - t0
        if rc is None:
            return Result(item, "timed out", wall, "", str(log.relative_to(self.out)))
        if rc != 0 or not record.exists():
            errors = re.findall(r"^\w*(?:Error|Exception)\b.*$", _tail(log, 20000), re.M)
            return Result(item, "failed", wall, errors[-1][:200] if errors else f"exit status {rc}",
                          str(log.relative_to(self.out)))
        seconds = json.loads(record.read_text())["seconds"]
        self._record_runtime(item.name, seconds)
        return Result(item, "passed", seconds, "", str(log.relative_to(self.out)))

    def _record_runtime(self, docname: str, seconds: float) -> None:
        """Add a notebook's gpu time to ``out/runtimes.json`` at once (a later kill loses nothing)."""
        path = self.out / "runtimes.json"
        data = _load_json(path)
        info = self.env_info
        data.setdefault(docname, {})["gpu"] = {
            "seconds": round(seconds, 1), "machine": _machine(info), "card": info.get("card"),
            "torch": info.get("torch"), "triton": info.get("triton"), "date": dt.date.today().isoformat()}
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def execute(items: Sequence[Item], runner: Callable[[Item, float], Result], budget: float, *, started: float,
            clock: Callable[[], float] = time.monotonic, echo: Callable[[str], None] = print,
            results: list[Result] | None = None) -> list[Result]:
    """Run the items in order within ``budget`` seconds counted from ``started`` (0: no budget).

    An item starts only if its estimate fits in what is left; it runs with the smaller of its
    timeout and what is left. The others are reported as "left out (budget)". Results are
    appended to ``results`` (a new list if None) as they come, and returned.
    """
    results = [] if results is None else results
    for item in items:
        left = float("inf") if budget <= 0 else budget - (clock() - started)
        if item.estimate_s > left:
            results.append(Result(item, "left out (budget)", 0.0, f"estimate {item.estimate_s:.0f} s, "
                                                                  f"{max(left, 0):.0f} s left"))
            echo(f"-- {item.part} {item.label}: left out, estimate {item.estimate_s:.0f} s > {max(left, 0):.0f} s left")
            continue
        echo(f"-- {item.part} {item.label} (estimate {item.estimate_s:.0f} s) ...")
        result = runner(item, min(item.timeout_s, left))
        results.append(result)
        echo(f"   {result.status} in {result.seconds:.1f} s" + (f": {result.detail}" if result.detail else ""))
    return results


def split_plan(items: Sequence[Item], budget: float) -> list[list[Item]]:
    """The items in order, cut into pieces whose estimates (with the probe) fit ``budget`` each; an
    item that alone exceeds it makes a piece of its own. No budget (0): one piece."""
    pieces: list[list[Item]] = []
    for item in items:
        if pieces and (budget <= 0 or plan_estimate(pieces[-1]) + item.estimate_s <= budget):
            pieces[-1].append(item)
        else:
            pieces.append([item])
    return pieces


def piece_command(plan: str, items: Sequence[Item], out: Path) -> str:
    """The command line that runs exactly ``items`` of ``plan`` (with its budget)."""
    args = ["python", "tools/gpu_run.py", "--plan", plan]
    if any(it.part == "kernels" for it in items):
        args.append("--kernels")
    names = sorted({it.name for it in items if it.part == "benchmark"})
    if names:
        args += ["--benchmarks", "^(" + "|".join(map(re.escape, names)) + ")$"]
        if all(it.quick for it in items if it.part == "benchmark"):
            args.append("--quick")
    names = [it.name for it in items if it.part == "notebook"]
    if names:
        args += ["--notebooks", "^(" + "|".join(map(re.escape, names)) + ")$"]
    if plan_estimate(items) > BUDGET_S[plan]:
        args += ["--budget", "0"]
    return shlex.join(args + ["--out", str(out)])


def next_commands(results: Sequence[Result], plan: str, out: Path) -> list[str]:
    """Commands, each fitting a slot, that run the items not passed (left out, failed, timed out)."""
    todo = [r.item for r in results if r.status != "passed"]
    plan = "all" if plan == "default" else plan  # --kernels is not a part of rest
    return [piece_command(plan, piece, Path(f"{out}-{i}"))
            for i, piece in enumerate(split_plan(todo, BUDGET_S[plan]), 1)]


def summary(results: Sequence[Result], *, plan: str, budget: float, elapsed: float, env_info: dict[str, Any],
            out: Path) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"plan": plan, "budget_s": budget, "elapsed_s": round(elapsed, 1), "date": dt.date.today().isoformat(),
            "environment": env_info, "counts": counts, "next": next_commands(results, plan, out),
            "items": [dict(dataclasses.asdict(r.item), status=r.status, seconds=round(r.seconds, 1), detail=r.detail,
                           log=r.log) for r in results]}


def summary_text(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [f"== summary ({data['elapsed_s']:.0f} s of a {data['budget_s']:.0f} s budget; plan {data['plan']}; "
             f"{env.get('card')}; torch {env.get('torch')}; triton {env.get('triton')}; {data['date']})"]
    for it in data["items"]:
        name = f"{it['name']} --quick" if it["quick"] else it["name"]
        lines.append(f"{it['status']:18s} {it['seconds']:6.1f} s (est. {it['estimate_s']:5.0f}) {it['part']:9s} "
                     f"{name}" + (f": {it['detail'][:120]}" if it["detail"] else ""))
    lines.append("result: " + ", ".join(f"{n} {s}" for s, n in sorted(data["counts"].items())))
    lines += [f"next ({i} of {len(data['next'])}): {cmd}" for i, cmd in enumerate(data["next"], 1)]
    return "\n".join(lines)


def probe(env: dict[str, str]) -> dict[str, Any]:
    """Card, versions and missing modules, from a fresh Python (this script never imports torch)."""
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        info = {"cuda": False, "error": (proc.stderr or proc.stdout)[-500:]}
    info["date"] = dt.date.today().isoformat()
    return info


# ---------------------------------------------------------------------------------------- merge
def merge(out: Path, runtimes_path: Path = RUNTIMES, benchmark_path: Path = BENCHMARK_DATA) -> list[str]:
    """Merge a run's records under ``out`` into the book's data files; returns what was merged.

    - ``out/runtimes.json`` (each passed notebook's ``gpu`` time) into ``runtimes_path``, in the
      form of tests/_book.py's ``record_runtime``: ``{"seconds", "machine", "date"}`` per tier;
    - ``out/benchmarks/*.json`` (each benchmark that passed its checks, not ``--interpret`` runs)
      into ``benchmark_path`` under ``benchmarks.NAME.quick`` or ``.full``, with the wall time;
    - the kernel tests' time (if they passed, from ``out/summary.json``) under ``kernel_tests``.

    Raises:
        FileNotFoundError: ``out`` is not a folder.
        ValueError: ``out`` holds no record of a run.
    """
    if not out.is_dir():
        raise FileNotFoundError(f"{out} is not a folder (the --out of a gpu_run.py run)")
    merged: list[str] = []
    times = _load_json(out / "runtimes.json")
    if times:
        data = _load_json(runtimes_path)
        for docname, tiers in sorted(times.items()):
            gpu = tiers["gpu"]
            data.setdefault(docname, {})["gpu"] = {"seconds": round(float(gpu["seconds"]), 1),
                                                   "machine": gpu["machine"], "date": gpu["date"]}
            merged.append(f"{docname}: gpu {gpu['seconds']:.1f} s ({gpu['machine']}, {gpu['date']})")
        runtimes_path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    bench = _load_json(benchmark_path)
    changed = False
    for path in sorted((out / "benchmarks").glob("*.json")):
        record = json.loads(path.read_text())
        if not record.get("ok") or record.get("interpret"):
            merged.append(f"{path.stem}: not merged ({record.get('error') or 'an --interpret run'})")
            continue
        env = record["environment"]
        mode = "quick" if record["quick"] else "full"
        bench.setdefault("benchmarks", {}).setdefault(record["benchmark"], {})[mode] = {
            "seconds": record.get("wall_seconds", record["seconds"]),
            "machine": f"{env['device']}, torch {env['torch']}, triton {env['triton']}", "date": env["date"],
            "args": record["args"], "tables": record["tables"], "notes": record["notes"]}
        changed = True
        merged.append(f"{record['benchmark']} ({mode}): {len(record['tables'])} table(s)")
    run = _load_json(out / "summary.json")
    for it in run.get("items", []):
        if it["part"] == "kernels" and it["status"] == "passed":
            env = run["environment"]
            bench["kernel_tests"] = {"seconds": it["seconds"], "result": it["detail"], "machine": _machine(env),
                                     "date": run["date"]}
            changed = True
            merged.append(f"kernel tests: {it['detail']} in {it['seconds']:.1f} s")
    if changed:
        benchmark_path.write_text(json.dumps(bench, indent=1, sort_keys=True) + "\n")
    if not (times or changed):
        raise ValueError(f"{out} holds no notebook time, benchmark table or passed kernel tests to merge")
    return merged


def merge_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gpu_run.py merge",
        description="Merge the records of a gpu_run.py --out folder into book/_data/runtimes.json (each "
                    "notebook's gpu time) and book/_data/gpu_benchmarks.json (benchmark tables, kernel tests' time).")
    parser.add_argument("out", type=Path, help="the --out folder of a run (copied back from the GPU host)")
    parser.add_argument("--runtimes", type=Path, default=RUNTIMES, help="run-time table to update (%(default)s)")
    parser.add_argument("--benchmark-data", type=Path, default=BENCHMARK_DATA,
                        help="benchmark data file to update (%(default)s)")
    args = parser.parse_args(argv)
    try:
        merged = merge(args.out, args.runtimes, args.benchmark_data)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    for line in merged:
        print(line)
    print(f"merged into {args.runtimes} and {args.benchmark_data}")
    return 0


# ----------------------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] + " Also: gpu_run.py merge OUT_DIR (see below).",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=PLANS, default=None,
                   help="default (fits one slot), rest or all; with a part option and no plan: all")
    p.add_argument("--kernels", action="store_true", help="run the kernel tests (pytest -m gpu)")
    p.add_argument("--notebooks", metavar="PATTERN", help="run the plan's notebooks whose path matches (regex)")
    p.add_argument("--benchmarks", metavar="PATTERN", help="run the benchmarks whose name matches (regex)")
    p.add_argument("--quick", action="store_true", help="benchmarks in quick mode (always so in the default plan)")
    p.add_argument("--out", type=Path, default=ROOT / "_build" / "gpu", help="where everything is written "
                                                                            "(%(default)s)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 480 for the default plan, else 540; 0: none)")
    p.add_argument("--dry-run", action="store_true", help="print the plan with its estimates, run nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    started = time.monotonic()
    p = parser()
    args = p.parse_args(argv)
    for option in ("notebooks", "benchmarks"):
        pattern = getattr(args, option)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                p.error(f"--{option} {pattern!r} is not a regular expression: {exc}")
    parts = args.kernels or args.notebooks is not None or args.benchmarks is not None
    plan = args.plan or ("all" if parts else "default")
    budget = BUDGET_S[plan] if args.budget is None else args.budget
    if budget < 0:
        p.error(f"--budget must be >= 0 seconds (0: no budget), got {budget:g}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a folder")
    try:
        items = build_plan(plan, kernels=args.kernels, notebooks_pattern=args.notebooks,
                           benchmarks_pattern=args.benchmarks, quick=args.quick)
    except ValueError as exc:
        p.error(str(exc))
    print(describe_plan(plan, items, budget), flush=True)
    if args.dry_run:
        return 0

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env_info = probe(child_env(out))
    (out / "environment.json").write_text(json.dumps(env_info, indent=1) + "\n")
    if not env_info.get("cuda"):
        print(f"gpu_run.py needs a CUDA device; none is visible here ({env_info.get('error', 'torch sees no GPU')})",
              file=sys.stderr)
        return 2
    if env_info.get("labkit"):
        print(f"labkit does not import here: {env_info['labkit']} (see README.md, 'On a GPU machine')",
              file=sys.stderr)
        return 2
    missing = set(env_info.get("missing", []))
    if "pytest" in missing:
        items = [it for it in items if it.part != "kernels"]
        print("pytest is missing: the kernel tests are left out", file=sys.stderr)
    if missing & {"papermill", "ipykernel"}:
        print(f"{sorted(missing & {'papermill', 'ipykernel'})} missing: the notebooks cannot run "
              "(see README.md, 'On a GPU machine')", file=sys.stderr)
    print(f"card: {env_info.get('card')}; torch {env_info.get('torch')}; triton {env_info.get('triton')}; "
          f"out: {out}", flush=True)

    def stop(signum: int, frame: object) -> None:  # a kill from outside: still write the summary
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    runner = Runner(out, env_info)
    results: list[Result] = []

    def collect(item: Item, timeout: float) -> Result:
        if item.part == "notebook" and missing & {"papermill", "ipykernel"}:
            return Result(item, "failed", 0.0, f"{sorted(missing & {'papermill', 'ipykernel'})} missing")
        return runner(item, timeout)

    try:
        execute(items, collect, budget, started=started, echo=lambda s: print(s, flush=True), results=results)
    except KeyboardInterrupt:
        done = {id(r.item) for r in results}
        results += [Result(it, "interrupted") for it in items if id(it) not in done]
        print("interrupted: writing the summary", flush=True)
    data = summary(results, plan=plan, budget=budget, elapsed=time.monotonic() - started, env_info=env_info,
                   out=args.out)
    (out / "summary.json").write_text(json.dumps(data, indent=1) + "\n")
    for r in results:
        if r.status in ("failed", "timed out") and r.log:
            print(f"\n-- end of {r.log} ({r.status}):\n{_tail(out / r.log)}")
    print("\n" + summary_text(data) + f"\nwritten under {out}; then: python tools/gpu_run.py merge {args.out}",
          flush=True)
    return 0 if all(r.status == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
