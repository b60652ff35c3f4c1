"""tools/gpu_run.py: the slot-sized plan, its dry run and errors, the budget, the merge; the gpu marker."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import _book
from tests.conftest import unmarked_kernel_tests

ROOT = _book.ROOT
SCRIPT = ROOT / "tools" / "gpu_run.py"


@pytest.fixture(scope="module")
def gpu_run():
    spec = importlib.util.spec_from_file_location("gpu_run_tool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------- help, dry run
def test_help_documents_the_plan_and_the_slot() -> None:
    out = run_script("--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for needle in ("15-minute", "8 minutes", "--plan", "default", "rest", "--kernels", "--notebooks PATTERN",
                   "--benchmarks PATTERN", "--quick", "--out", "--dry-run", "--budget", "merge OUT_DIR",
                   "pytest -m gpu", "summary.json"):
        assert needle in text, needle


@pytest.mark.parametrize("plan", ["default", "rest", "all"])
def test_dry_run_prints_the_plan_and_runs_nothing(plan: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out = run_script("--plan", plan, "--dry-run", "--out", str(out_dir))
    assert out.returncode == 0, out.stderr
    assert f"plan {plan!r}" in out.stdout and "estimated total" in out.stdout
    assert not out_dir.exists()
    lines = [line for line in out.stdout.splitlines() if re.match(r"\s*\d+\. ", line)]
    assert ("kernel tests" in out.stdout) == (plan != "rest")
    assert sum("notebook" in line for line in lines) == {"default": 3, "rest": len(_book.toc_notebooks()) - 3,
                                                         "all": len(_book.toc_notebooks())}[plan]
    if plan != "default":  # more than a slot: it says how to split it
        assert "runs that fit the budget each" in out.stdout


def test_default_plan_fits_eight_minutes(gpu_run) -> None:
    items = gpu_run.build_plan("default")
    assert gpu_run.plan_estimate(items) < 8 * 60
    assert gpu_run.BUDGET_S["default"] == 8 * 60
    assert items[0].part == "kernels"
    benchmarks = [it for it in items if it.part == "benchmark"]
    assert [it.name for it in benchmarks] == gpu_run.benchmarks() and all(it.quick for it in benchmarks)
    assert [it.name for it in items if it.part == "notebook"] == list(gpu_run.DEFAULT_NOTEBOOKS)
    assert "fits the budget" in gpu_run.describe_plan("default", items, gpu_run.BUDGET_S["default"])


def test_default_notebooks_time_a_triton_kernel_at_the_gpu_tier(gpu_run) -> None:
    """Each notebook of the default plan has a code cell that times (a ``time_*`` call) a Triton
    path (a ``*_triton`` launcher or the "triton" backend) on CUDA."""
    for docname in gpu_run.DEFAULT_NOTEBOOKS:
        cells = json.loads((ROOT / f"{docname}.ipynb").read_text())["cells"]
        sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        assert any(re.search(r"\btime_\w*\(", src) and "cuda" in src and re.search(r'_triton\(|"triton"', src)
                   for src in sources), docname


def test_plans_split_the_notebooks(gpu_run) -> None:
    names = lambda items: [it.name for it in items if it.part == "notebook"]  # noqa: E731
    default, rest, every = (names(gpu_run.build_plan(p)) for p in ("default", "rest", "all"))
    assert sorted(default + rest) == sorted(every) and not set(default) & set(rest)
    assert every == [_book.docname(nb) for nb in _book.toc_notebooks()]  # the table of contents' order
    assert all(not it.quick for it in gpu_run.build_plan("rest") if it.part == "benchmark")
    assert all(it.quick for it in gpu_run.build_plan("rest", quick=True) if it.part == "benchmark")


def test_parts_select_from_the_plan(gpu_run) -> None:
    items = gpu_run.build_plan("all", notebooks_pattern="spmm|beaver", benchmarks_pattern="^quant")
    assert [(it.part, it.name) for it in items] == [
        ("benchmark", "quant_gemm"), ("notebook", "chapters/01_message_passing/01_spmm"),
        ("notebook", "chapters/14_secure_mpc/02_beaver")]
    assert [it.part for it in gpu_run.build_plan("default", kernels=True)] == ["kernels"]


def test_estimates_come_from_the_recorded_times(gpu_run) -> None:
    nb = "chapters/01_message_passing/02_ultragcn"
    runtimes = {nb: {"default": {"seconds": 60.1}}}
    data = {"benchmarks": {"quant_gemm": {"full": {"seconds": 111.0, "date": "2026-01-02"}}},
            "kernel_tests": {"seconds": 42.0, "date": "2026-01-02"}}
    items = {it.name: it for it in gpu_run.build_plan("all", runtimes=runtimes, benchmark_data=data)}
    assert (items["quant_gemm"].estimate_s, items["quant_gemm"].estimate_from) == (111.0, "gpu run 2026-01-02")
    assert items["kernel tests"].estimate_s == 42.0
    assert items[nb].estimate_s == pytest.approx(60.1 + gpu_run.NOTEBOOK_START_S)
    assert "proxy" in items[nb].estimate_from
    other = "chapters/14_secure_mpc/02_beaver"  # nothing recorded here: the stated default
    assert items[other].estimate_s == gpu_run.NOTEBOOK_UNKNOWN_S + gpu_run.NOTEBOOK_START_S
    assert items["comm_pack"].estimate_s == gpu_run.BENCHMARK_FULL_S["comm_pack"]


@pytest.mark.parametrize("args, message", [
    (["--plan", "fast"], "invalid choice"),
    (["--notebooks", "("], "is not a regular expression"),
    (["--notebooks", "no_such_notebook"], "matches no notebook"),
    (["--benchmarks", "no_such_benchmark"], "matches no benchmark"),
    (["--plan", "rest", "--kernels"], "not in rest"),
    (["--plan", "default", "--notebooks", "02_ultragcn"], "matches no notebook of plan 'default'"),
    (["--budget", "-1"], "--budget must be >= 0"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_argument_errors(gpu_run, args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        gpu_run.main([*args, "--dry-run"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_folder(gpu_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "a_file"
    target.write_text("")
    with pytest.raises(SystemExit):
        gpu_run.main(["--out", str(target), "--dry-run"])
    assert "not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------- running, the budget
def test_execute_keeps_to_the_budget(gpu_run) -> None:
    now = [0.0]
    calls = []

    def runner(item, timeout):
        calls.append((item.name, timeout))
        now[0] += item.estimate_s
        return gpu_run.Result(item, "passed", item.estimate_s)

    items = [gpu_run.Item("benchmark", name, est, "test", 100.0) for name, est in
             (("a", 30.0), ("b", 50.0), ("c", 10.0), ("d", 25.0))]
    results = gpu_run.execute(items, runner, 60.0, started=0.0, clock=lambda: now[0], echo=lambda s: None)
    # a runs (30 of 60 s), b does not fit (50 > 30 left), c fits (10), d does not (25 > 20 left)
    assert [r.status for r in results] == ["passed", "left out (budget)", "passed", "left out (budget)"]
    assert calls == [("a", 60.0), ("c", 30.0)]  # each run's timeout is cut to what is left
    free = gpu_run.execute(items, runner, 0.0, started=0.0, clock=lambda: now[0], echo=lambda s: None)
    assert [r.status for r in free] == ["passed"] * 4  # budget 0: none


def test_next_commands_run_what_was_not_passed(gpu_run, tmp_path: Path) -> None:
    items = gpu_run.build_plan("default")
    results = [gpu_run.Result(it, "passed" if i % 2 else "failed") for i, it in enumerate(items)]
    commands = gpu_run.next_commands(results, "default", tmp_path / "out")
    assert commands
    again = []
    for cmd in commands:
        argv = re.findall(r"'[^']*'|\S+", cmd)[2:]
        args = gpu_run.parser().parse_args([a.strip("'") for a in argv])
        again += gpu_run.build_plan(args.plan, kernels=args.kernels, notebooks_pattern=args.notebooks,
                                    benchmarks_pattern=args.benchmarks, quick=args.quick)
    assert sorted((it.part, it.name, it.quick) for it in again) == sorted(
        (r.item.part, r.item.name, r.item.quick) for r in results if r.status != "passed")


def test_summary_lists_every_item_and_the_counts(gpu_run, tmp_path: Path) -> None:
    items = gpu_run.build_plan("default")
    results = [gpu_run.Result(items[0], "passed", 12.0, "130 passed"),
               gpu_run.Result(items[1], "timed out", 150.0)] + [gpu_run.Result(it, "left out (budget)")
                                                                 for it in items[2:]]
    env = {"card": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0"}
    data = gpu_run.summary(results, plan="default", budget=480.0, elapsed=470.0, env_info=env, out=tmp_path)
    json.dumps(data)  # summary.json must be plain JSON
    text = gpu_run.summary_text(data)
    assert text.startswith("== summary") and "NVIDIA H100 80GB HBM3" in text
    assert len(text.splitlines()) == 1 + len(items) + 1 + len(data["next"])
    assert "1 passed" in text and "1 timed out" in text and f"{len(items) - 2} left out (budget)" in text
    assert len(text) < 4000  # the summary must survive in the last 12,000 characters of output


def test_run_logged_kills_the_whole_group_at_the_timeout(gpu_run, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
            "time.sleep(60)")
    log = tmp_path / "logs" / "x.log"
    t0 = time.monotonic()
    deadline = t0 + 30
    rc = gpu_run.run_logged([sys.executable, "-c", code], log, 3.0)
    assert rc is None and time.monotonic() - t0 < 30
    assert "started" in log.read_text() and "killed after its timeout" in log.read_text()
    pid = int(pid_file.read_text())
    while time.monotonic() < deadline:  # the grandchild went with its group
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild process survived the timeout")
    assert gpu_run.run_logged([sys.executable, "-c", "raise SystemExit(3)"], log, 30.0) == 3


def test_kernel_test_files_are_the_marked_ones(gpu_run) -> None:
    files = set(gpu_run.kernel_test_files())
    assert {f"tests/{p.parent.name}/{p.name}" for p in (ROOT / "tests").glob("*/test_*kernels*.py")} <= files
    assert "tests/intro/test_axpy.py" in files and "tests/test_gpu_run.py" not in files


# ------------------------------------------------------------------------------------- merge
def fake_out(out: Path) -> None:
    """What a run leaves under --out: one notebook time, two benchmark tables (one failed), a summary."""
    out.mkdir()
    (out / "runtimes.json").write_text(json.dumps({"chapters/01_message_passing/01_spmm": {"gpu": {
        "seconds": 14.26, "machine": "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, triton 3.6.0",
        "card": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "triton": "3.6.0", "date": "2026-12-01"}}}))
    (out / "benchmarks").mkdir()
    env = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0",
           "date": "2026-12-01"}
    table = {"title": "t", "markdown": "| a |\n|---|\n| 1 |", "rows": [{"a": 1}]}
    (out / "benchmarks" / "intro_scaled_add.json").write_text(json.dumps(dict(
        benchmark="intro_scaled_add", quick=True, interpret=False, ok=True, status=0, error=None, seconds=3.2,
        wall_seconds=9.5, environment=env, args={"sizes": [16777216], "quick": True}, tables=[table], notes=[])))
    (out / "benchmarks" / "quant_gemm.json").write_text(json.dumps(dict(
        benchmark="quant_gemm", quick=True, interpret=False, ok=False, status=1, error="Mismatch: w8a8", seconds=1.0,
        environment=env, args={}, tables=[], notes=[])))
    (out / "summary.json").write_text(json.dumps({
        "date": "2026-12-01", "environment": {"card": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130",
                                              "triton": "3.6.0"},
        "items": [{"part": "kernels", "name": "kernel tests", "status": "passed", "seconds": 48.3,
                   "detail": "130 passed, 12 deselected"}]}))


def test_merge_into_copies_of_the_data_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fake_out(out)
    runtimes = tmp_path / "runtimes.json"
    shutil.copy2(_book.RUNTIMES, runtimes)
    before = json.loads(runtimes.read_text())
    bench = tmp_path / "gpu_benchmarks.json"
    done = run_script("merge", str(out), "--runtimes", str(runtimes), "--benchmark-data", str(bench))
    assert done.returncode == 0, done.stderr
    after = json.loads(runtimes.read_text())
    spmm = "chapters/01_message_passing/01_spmm"
    assert after[spmm]["gpu"] == {"seconds": 14.3, "machine": "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, "
                                  "triton 3.6.0", "date": "2026-12-01"}
    assert after[spmm]["ci"] == before[spmm]["ci"]  # the other tiers stay
    assert {k: v for k, v in after.items() if k != spmm} == {k: v for k, v in before.items() if k != spmm}
    assert runtimes.read_text() == json.dumps(after, indent=1, sort_keys=True) + "\n"  # the file's own format
    data = json.loads(bench.read_text())
    quick = data["benchmarks"]["intro_scaled_add"]["quick"]
    assert quick["seconds"] == 9.5 and quick["tables"][0]["rows"] == [{"a": 1}]
    assert "quant_gemm" not in data["benchmarks"]  # failed its checks: not merged
    assert data["kernel_tests"]["seconds"] == 48.3
    assert "not merged (Mismatch: w8a8)" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("merged into")


def test_merged_runtime_has_the_form_record_runtime_writes(gpu_run, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "own.json"
    monkeypatch.setattr(_book, "RUNTIMES", own)
    _book.record_runtime(ROOT / "chapters/01_message_passing/01_spmm.ipynb", "gpu", 1.0)
    out = tmp_path / "out"
    fake_out(out)
    merged = tmp_path / "merged.json"
    gpu_run.merge(out, merged, tmp_path / "bench.json")
    spmm = "chapters/01_message_passing/01_spmm"
    assert set(json.loads(merged.read_text())[spmm]["gpu"]) == set(json.loads(own.read_text())[spmm]["gpu"])


def test_merge_errors(tmp_path: Path) -> None:
    missing = run_script("merge", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_script("merge", str(tmp_path / "empty"), "--runtimes", str(tmp_path / "r.json"),
                       "--benchmark-data", str(tmp_path / "b.json"))
    assert empty.returncode == 2 and "holds no notebook time" in empty.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "b.json").exists()


# --------------------------------------------------------------------------------- gpu marker
def test_collection_refuses_a_kernel_test_without_the_marker() -> None:
    def item(nodeid: str, fixtures: tuple[str, ...], gpu: bool) -> SimpleNamespace:
        return SimpleNamespace(nodeid=nodeid, fixturenames=fixtures,
                               get_closest_marker=lambda name: object() if gpu and name == "gpu" else None)

    items = [item("a", ("triton_kernels", "device"), True), item("b", ("triton_kernels",), False),
             item("c", ("device",), False)]
    assert unmarked_kernel_tests(items) == ["b"]


def _fixture_users() -> dict[str, set[str]]:
    """Test functions (by file) that take the triton_kernels fixture, found in the source."""
    users: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and any(
                    a.arg == "triton_kernels" for a in node.args.args + node.args.kwonlyargs):
                users.setdefault(path.relative_to(ROOT).as_posix(), set()).add(node.name)
    return users


def test_every_kernel_test_carries_the_gpu_marker() -> None:
    users = _fixture_users()
    kernel_files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*/test_*kernels*.py"))
    assert set(kernel_files) <= set(users), "every kernel test file uses the triton_kernels fixture"
    files = sorted(set(users) | set(kernel_files))

    def collect(marker: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "-m", marker, *files], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: every test deselected
        return [line for line in done.stdout.splitlines() if "::" in line]

    selected = collect("gpu")
    names = {(node.split("::")[0], node.split("::")[1].split("[")[0]) for node in selected}
    assert {(f, n) for f, ns in users.items() for n in ns} <= names
    assert {f for f, _ in names if f in kernel_files} == set(kernel_files)
    for node in collect("not gpu"):  # what stays out: no fixture user, nothing of a kernel test file
        file, name = node.split("::")[0], node.split("::")[1].split("[")[0]
        assert file not in kernel_files and name not in users.get(file, set()), node
