"""benchmarks/*.py: the options tools/gpu_run.py relies on, one timer, the reference checks before
any timing (statically, on CPU tensors, and end to end on the CPU with --interpret)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from tests import _book

BENCH = _book.ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
NAMES = [p.stem for p in SCRIPTS]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """Import a benchmark script (or ``_common``) as a module, as its own folder would."""
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    return load


def cpu_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(_book.ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")
    env.pop("TRITON_INTERPRET", None)
    return env


def test_the_benchmarks_are_found() -> None:
    assert NAMES == ["comm_onebit", "comm_pack", "diffusion_groupnorm_silu", "graphs_spmm", "inference_lowrank_decode",
                     "intro_scaled_add", "moe_grouped_gemm", "mpc_ring_gemm", "quant_gemm"]


HELP = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
for script in sys.argv[2:]:
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        print(f"== exit {exc.code}", flush=True)
"""


def test_help_offers_quick_and_json_without_cuda() -> None:
    """Each script's --help (argparse) on a machine without CUDA, all in one Python process."""
    done = subprocess.run([sys.executable, "-c", HELP, str(BENCH), *map(str, SCRIPTS)], cwd=_book.ROOT,
                          env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    helps = done.stdout.split("== exit ")[:-1]
    assert len(helps) == len(SCRIPTS), done.stdout[-2000:]
    for script, text in zip(SCRIPTS, done.stdout.split("usage: ")[1:]):
        assert text.startswith(script.name) and "\n== exit 0" in text, text[:300]
        for option in ("--quick", "--json PATH", "--interpret"):
            assert option in text, (script.name, option)


# ------------------------------------------------------------------------------- static checks
def _timer_names(tree: ast.AST) -> set[str]:
    """Names under which a module imports labkit.runtime.cuda_median_seconds."""
    return {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module == "labkit.runtime" for alias in node.names if alias.name == "cuda_median_seconds"}


def _calls(fn: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            out.append((node.lineno, name))
    return sorted(out)


@pytest.mark.parametrize("script", SCRIPTS, ids=NAMES)
def test_one_timer_and_the_check_before_it(script: Path) -> None:
    tree = ast.parse(script.read_text())
    timers = _timer_names(tree)
    assert timers, "imports labkit.runtime.cuda_median_seconds"
    for node in ast.walk(tree):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        assert name not in ("do_bench", "Event", "elapsed_time", "perf_counter", "monotonic"), \
            f"a private timer ({name}, line {node.lineno}): use labkit.runtime.cuda_median_seconds"
    for node in ast.walk(tree):  # time_fn only for a CPU anchor
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "time_fn":
            device = [k.value for k in node.keywords if k.arg == "device"]
            assert device and isinstance(device[0], ast.Constant) and device[0].value == "cpu", ast.unparse(node)
    assert any(isinstance(n, ast.FunctionDef) and n.name.startswith("validate") for n in tree.body)
    timed = 0
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        calls = _calls(fn)
        timer_lines = [line for line, name in calls if name in timers]
        if not timer_lines:
            continue
        timed += 1
        checks = [line for line, name in calls if name.startswith("validate")]
        assert checks and min(checks) < min(timer_lines), f"{fn.name} times before it checks against the reference"
    assert timed, "times something"


# ----------------------------------------------------------------------- checks on CPU tensors
def test_common_checks(bench) -> None:
    common = bench("_common")
    a = torch.tensor([1.0, 2.0, 3.0])
    assert common.check_close("x", a, a.clone(), rtol=0, atol=0) == 0.0
    with pytest.raises(common.Mismatch, match=r"x: 1 of 3 elements differ, first at \(1,\)"):
        common.check_close("x", torch.tensor([1.0, 2.1, 3.0]), a, rtol=1e-3, atol=0)
    with pytest.raises(common.Mismatch, match="1 of 3"):
        common.check_close("x", torch.tensor([1.0, float("nan"), 3.0]), a, rtol=1, atol=1)
    with pytest.raises(common.Mismatch, match="shape"):
        common.check_close("x", a[:2], a, rtol=1, atol=1)
    assert common.check_relative("s", torch.tensor([100.0, 1.0]), torch.tensor([100.0, 1.001]), bound=1e-4) == \
        pytest.approx(1e-5, rel=1e-3)
    with pytest.raises(common.Mismatch, match="bound 1e-06"):
        common.check_relative("s", torch.tensor([100.0, 1.0]), torch.tensor([100.0, 1.001]), bound=1e-6)
    common.check_equal("i", torch.arange(4), torch.arange(4))
    with pytest.raises(common.Mismatch, match="dtype"):
        common.check_equal("i", torch.arange(4), torch.arange(4).int())
    with pytest.raises(common.Mismatch, match=r"first at \(3,\)"):
        common.check_equal("i", torch.tensor([0, 1, 2, 4]), torch.arange(4))
    with pytest.raises(TypeError, match="tensors"):
        common.check_equal("i", [0, 1], torch.arange(2))


def test_case_sets(bench) -> None:
    common = bench("_common")
    full, quick, interp = {"n": 10, "m": [1, 2]}, {"n": 5, "m": [1]}, {"n": 2, "m": [1]}
    args = SimpleNamespace(n=None, m=[7], quick=True, interpret=False)
    common.apply_case_set(args, full, quick, interp)
    assert (args.n, args.m) == (5, [7])  # given on the command line: kept
    args = SimpleNamespace(n=None, m=None, quick=False, interpret=True)
    common.apply_case_set(args, full, quick, interp)
    assert (args.n, args.m) == (2, [1])
    with pytest.raises(ValueError, match="differ in"):
        common.apply_case_set(args, full, {"n": 1}, interp)
    assert common.jsonable({"a": float("nan"), "b": (torch.float16, Path("p")), "c": torch.tensor(2.5)}) == \
        {"a": None, "b": ["torch.float16", "p"], "c": 2.5}


def test_intro_validate(bench) -> None:
    mod, common = bench("intro_scaled_add"), bench("_common")
    x, y = torch.randn(100), torch.randn(100)
    assert mod.validate(x, y, 0.5, 0.5 * x + y) < 1e-6
    with pytest.raises(common.Mismatch):
        mod.validate(x, y, 0.5, 0.5 * x + y + 1e-3)
    assert mod.parse_size("2**10") == 1024 and mod.parse_size("77") == 77


def test_comm_validate(bench) -> None:
    mod, common = bench("comm_pack"), bench("_common")
    from labkit.comm.datatypes import layout_of

    grid = torch.randn(6, 6, 6)
    for cut in mod.CUTS.values():
        view = cut(grid)
        lay = layout_of(view, grid)
        mod.validate(grid, view, lay, view.reshape(-1).clone())
        wrong = view.reshape(-1).clone()
        wrong[-1] += 1
        with pytest.raises(common.Mismatch):
            mod.validate(grid, view, lay, wrong)


def test_comm_onebit_validate(bench) -> None:
    mod, common = bench("comm_onebit"), bench("_common")
    from labkit.comm.onebit import compress

    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(37 * 53, generator=g), 0.1 * torch.randn(37 * 53, generator=g)
    packed, scale, new_e = compress(x + e)
    errors = mod.validate(x, e, packed, scale, new_e)
    assert errors == {"scale_rel_err": 0.0, "error_max_abs_err": 0.0}
    wrong = packed.clone()
    wrong[5] ^= 4  # one sign flipped
    with pytest.raises(common.Mismatch, match="packed signs"):
        mod.validate(x, e, wrong, scale, new_e)
    with pytest.raises(common.Mismatch, match="scale"):
        mod.validate(x, e, packed, scale * (1 + 1e-4), new_e)
    with pytest.raises(common.Mismatch, match="new error"):
        mod.validate(x, e, packed, scale, x + e)  # the error left as c: nothing subtracted
    rows = {"vs_eager": 3.0, "of_copy": 0.5}
    assert [met for _, _, met in mod.goals(rows)] == [True, False]


def test_graphs_validate(bench) -> None:
    mod, common = bench("graphs_spmm"), bench("_common")
    g = torch.Generator().manual_seed(0)
    adj, _ = mod.csr_from_lengths(mod.power_law_lengths(50, 400, 50, 1.0, g), 50, g)
    x = torch.randn(50, 70, generator=g)  # two chunks of 64 features
    out = torch.sparse.mm(adj, x)
    assert mod.validate(adj, x, out) < mod.ERROR_BOUND
    wrong = out.clone()
    wrong[3, 66] += 0.05 * out.abs().max()
    with pytest.raises(common.Mismatch, match="bound"):
        mod.validate(adj, x, wrong)
    with pytest.raises(ValueError, match="do not fit"):
        mod.power_law_lengths(4, 20, 4, 1.0, g)


def test_inference_validate(bench) -> None:
    mod, common = bench("inference_lowrank_decode"), bench("_common")
    g = torch.Generator().manual_seed(0)
    q = 4 * torch.randn(2, 6, 1, 16, generator=g)
    k, v = torch.randn(2, 2, 37, 16, generator=g), torch.randn(2, 2, 37, 16, generator=g)
    p_k, p_v = mod.projections(2, 16, 5, g)
    assert torch.allclose(p_k.transpose(1, 2) @ p_k, torch.eye(5).expand(2, 5, 5), atol=1e-5)
    k_lr, v_lr = k @ p_k, v @ p_v
    projected = mod.sdpa_grouped(mod.project_queries(q, p_k), k_lr, v_lr, 0.25)
    assert mod.validate("projected", projected, q, p_k, k_lr, v_lr) < 1e-5
    eye = torch.eye(16).expand(2, 16, 16)
    assert mod.validate("full", mod.sdpa_grouped(q, k, v, 0.25), q, eye, k, v) < 1e-5
    with pytest.raises(common.Mismatch, match="projected"):  # scaled by 1 / sqrt(r), not 1 / sqrt(d)
        mod.validate("projected", mod.sdpa_grouped(mod.project_queries(q, p_k), k_lr, v_lr, 5**-0.5),
                     q, p_k, k_lr, v_lr)
    with pytest.raises(common.Mismatch, match="heads"):  # query heads paired with the other key-value head
        mod.validate("heads", projected.roll(3, dims=1), q, p_k, k_lr, v_lr)
    row = dict(batch=32, context=32768, r=64, full=2.0, projected=1.0, ours=0.9, of_copy_ours=0.5)
    assert [met for _, _, met in mod.goals([row, dict(row, batch=1)], 128)] == [True, True, False]


def test_moe_validate(bench) -> None:
    mod, common = bench("moe_grouped_gemm"), bench("_common")
    from labkit.moe.gating import permute_tokens_reference, topk_gating_reference
    from labkit.moe.grouped_gemm import grouped_mm_reference

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(12, 8, generator=g), torch.randn(3, 8, 5, generator=g)
    offsets = torch.tensor([0, 4, 4, 12])
    out = grouped_mm_reference(x, w, offsets)
    mod.validate_grouped("ours", out, x, w, offsets)
    with pytest.raises(common.Mismatch):
        mod.validate_grouped("ours", out.roll(1, 0), x, w, offsets)
    logits = torch.randn(10, 4, generator=g)
    gating = topk_gating_reference(logits, 2)
    perm = permute_tokens_reference(gating[2], 4)
    assert mod.validate_routing(logits, 2, 4, gating, perm)[1] == 0
    with pytest.raises(common.Mismatch, match="experts"):  # the second choice first
        mod.validate_routing(logits, 2, 4, (gating[0], gating[1], gating[2].flip(1)), perm)
    with pytest.raises(common.Mismatch, match="experts"):
        mod.validate_routing(logits, 2, 4, (gating[0], gating[1], gating[2].clone().fill_(4)), perm)
    tied = torch.zeros(3, 4)  # every expert equally likely: any pick of two is right
    tied_gating = topk_gating_reference(tied, 2)
    other = (tied_gating[0], tied_gating[1], torch.tensor([[3, 2]] * 3))
    assert mod.validate_routing(tied, 2, 4, other, permute_tokens_reference(tied_gating[2], 4))[1] == 3
    with pytest.raises(common.Mismatch, match="order"):
        mod.validate_routing(logits, 2, 4, gating, (perm[0].flip(0), perm[1]))


def test_mpc_validate(bench) -> None:
    mod, common = bench("mpc_ring_gemm"), bench("_common")
    g = torch.Generator().manual_seed(0)
    a, b = mod.ring_rand((5, 7), g), mod.ring_rand((7, 3), g)
    exact = a @ b  # the CPU's int64 product wraps modulo 2^64
    mod.validate(a, b, exact.clone(), exact)
    wrong = exact.clone()
    wrong[2, 1] += 1
    with pytest.raises(common.Mismatch, match="ring_matmul_reference"):
        mod.validate(a, b, wrong)


def test_quant_validate(bench) -> None:
    mod, common = bench("quant_gemm"), bench("_common")
    from labkit.quant.gemm import w4a4_gemm_reference, w8a8_gemm_reference

    lay = mod.make_layer(torch.device("cpu"), 5, 16, 128, 64, 4, torch.float16, seed=0)
    ref8 = w8a8_gemm_reference(lay["xq"], lay["x_scale"], lay["wq"], lay["w_scale"])
    ref4 = w4a4_gemm_reference(lay["x4"], lay["x4_scale"], lay["w4"], lay["w4_scale"], group_size=64,
                               lora_down_out=lay["down"], lora_up=lay["up"])
    errors = mod.validate(lay, 64, {"w8a8 fp32": ref8, "w8a8": ref8.half(), "w4a4 + lora fp32": ref4})
    assert errors["w8a8 fp32"] < 2e-5 and errors["w8a8"] < 1e-2
    with pytest.raises(common.Mismatch, match="w8a8 fp32"):
        mod.validate(lay, 64, {"w8a8 fp32": ref8 * 1.001})
    with pytest.raises(common.Mismatch, match="w4a4 fp32"):  # the low-rank branch left out
        mod.validate(lay, 64, {"w4a4 fp32": ref4})
    with pytest.raises(ValueError, match="unknown candidates"):
        mod.validate(lay, 64, {"w2a2": ref8})


def test_diffusion_validate_and_one_compile_per_dtype(bench) -> None:
    mod, common = bench("diffusion_groupnorm_silu"), bench("_common")
    from torch.nn import functional as F

    x, w, b = torch.randn(2, 8, 4, 4).half(), torch.randn(8).half(), torch.randn(8).half()
    out = F.silu(F.group_norm(x.float(), 4, w.float(), b.float(), mod.EPS)).half()
    assert mod.validate(x, w, b, 4, out) < 1e-2
    with pytest.raises(common.Mismatch):
        mod.validate(x, w, b, 2, out)  # the wrong groups
    assert mod.compiled_for(torch.float16) is mod.compiled_for(torch.float16)
    assert mod.compiled_for(torch.float16) is not mod.compiled_for(torch.bfloat16)


# --------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("script", SCRIPTS, ids=NAMES)
def test_runs_end_to_end_interpreted(script: Path, tmp_path: Path) -> None:
    """--interpret: tiny sizes on the CPU, the kernels in Triton's interpreter, through every
    check, table and the JSON."""
    table = tmp_path / "table.json"
    done = subprocess.run([sys.executable, str(script), "--interpret", "--json", str(table)], cwd=_book.ROOT,
                          env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(table.read_text())
    assert data["benchmark"] == script.stem and data["ok"] and data["interpret"] and data["error"] is None
    assert data["tables"] and all(t["markdown"].startswith("|") for t in data["tables"])
    assert data["tables"][0]["title"] in done.stdout


def test_a_wrong_kernel_stops_the_benchmark(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    mod = bench("intro_scaled_add")
    import labkit.runtime

    timer = labkit.runtime.cuda_median_seconds
    timed = []
    fake = SimpleNamespace(scaled_add_triton=lambda x, y, alpha: alpha * x + y + 1.0)
    monkeypatch.setitem(sys.modules, "labkit.intro._kernels", fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(bench("_common"), "_host_seconds", lambda fn: timed.append(fn) or 1.0)
    table = tmp_path / "t.json"
    assert mod.main(["--interpret", "--json", str(table)]) == 1
    assert timed == [] and "Mismatch: scaled_add_triton" in capsys.readouterr().err
    data = json.loads(table.read_text())
    assert not data["ok"] and data["error"].startswith("Mismatch") and data["status"] == 1
    assert labkit.runtime.cuda_median_seconds is timer  # restored after the run


def test_without_cuda_the_benchmark_says_so(bench, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    table = tmp_path / "t.json"
    assert bench("comm_pack").main(["--quick", "--json", str(table)]) == 1
    assert "needs a CUDA device" in capsys.readouterr().err
    data = json.loads(table.read_text())
    assert data["error"].startswith("NoDevice") and data["args"]["grid"] == 256  # the quick case set
