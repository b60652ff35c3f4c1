"""Compile-only builds of every Triton kernel in labkit for two CUDA targets, without a GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, but never runs Triton's
compiler: a kernel that the interpreter accepts can still be refused by the code generator or by
a GPU's backend (a dot's operand types, a layout, a descriptor). So each kernel of
:data:`CASES` is compiled here for an H100 (``sm_90``: wgmma, TMA) and an A100 (``sm_80``: mma,
no TMA), all the way to a cubin: ``ptxas`` ships inside the triton wheel
(``triton/backends/nvidia/bin/``) and needs neither a GPU nor a CUDA driver.

How. ``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
options=...)``: the signature maps every argument name, in order, to its type (``"*fp32"`` for a
pointer, ``"i32"``, ``"fp32"``, ``"tensordesc<i8[128, 128]>"`` for a host tensor descriptor,
``"constexpr"`` for a ``tl.constexpr``), and ``constexprs`` gives the constexpr values by name.
That is the form of Triton 3.6 (the oldest supported release) and 3.9 (the pinned one) alike;
older releases spelled constants and argument attributes differently. No divisibility
attributes are passed: the builds are those of arbitrary (unaligned) pointers and sizes, the
most general code the JIT could produce.

Each kernel compiles for ``sm_80`` too, including the ring matmul, whose tiles come through
tensor descriptors: below ``sm_90`` Triton rewrites descriptor loads into pointer loads (and its
launcher passes the descriptor's base, shape and strides), so the same kernel and launcher serve
Ampere without TMA (compiled here, not run). The test asserts both halves: two TMA descriptors on ``sm_90``, none on
``sm_80``. Every kernel with a 16-bit or int8 ``tl.dot`` must reach the tensor cores (an ``mma``
instruction in the PTX) on both targets, and an IEEE float32 one must not (TF32 would).

Not covered. Autotuning needs a GPU to time the candidates: the autotuned GEMMs (W8A8, W4A4)
are built at some of their candidate tiles, unwrapped from ``triton.autotune`` /
``triton.heuristics``. ``sm_75`` (Turing, e.g. a T4) lies below the compute capability 8.0 that
Triton supports: there an integer ``tl.dot`` has no mma path and the int8 GEMMs (W8A8, W4A4, the
ring matmul) fail to compile, with Triton 3.6 and 3.9 alike; it is not a target here.

Compiling needs a process in which ``triton.language`` was imported without
``TRITON_INTERPRET`` (tests/conftest.py imports it under the interpreter on a machine without
CUDA, and jitted functions are then interpreted ones, which the compiler cannot take). So a
fresh Python process (``python -m tests.test_kernel_compile``, one per target, with an empty
Triton cache) compiles every case and reports JSON, and each parametrized test reads its result.
tests/test_triton_versions.py runs this module again under the oldest supported Triton.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The compile targets: (name, CUDA compute capability).
TARGETS: tuple[tuple[str, int], ...] = (("sm_90", 90), ("sm_80", 80))


@dataclass(frozen=True)
class Case:
    """One compile-only build: a kernel, its argument types and constexprs, its launch options."""

    name: str  # "<subpackage>.<kernel>" plus a variant after a colon, e.g. "quant._w4a4_kernel:g32"
    module: str
    kernel: str
    pointers: dict[str, str]  # every *_ptr argument's type
    constexprs: dict[str, object]
    num_warps: int = 4
    num_stages: int = 3
    scalars: dict[str, str] = field(default_factory=dict)  # non-pointer arguments other than i32
    # True: tl.dot on tensor cores (an mma instruction in the PTX); False: none may appear (IEEE
    # float32 products run on the CUDA cores, TF32 would use mma); None: the kernel has no tl.dot
    mma: bool | None = None
    descriptors: int = 0  # host tensor descriptors among its arguments

    def signature(self, arg_names: list[str]) -> dict[str, str]:
        """Every argument, in the kernel's order, mapped to its type."""
        sig = {}
        for name in arg_names:
            if name in self.constexprs:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = self.pointers[name]  # a KeyError names a pointer the table misses
            else:
                sig[name] = self.scalars.get(name, "i32")
        return sig


def _case(module: str, kernel: str, variant: str = "", **kw: object) -> Case:
    name = f"{module}.{kernel}" + (f":{variant}" if variant else "")
    return Case(name=name, module=f"labkit.{module}._kernels", kernel=kernel, **kw)  # type: ignore[arg-type]


def _cases() -> list[Case]:
    """The kernels at their GPU launch configurations (tile rules and tables of labkit itself).

    The kernel modules it reads them from are dropped from ``sys.modules`` again: kernel tests
    import them afresh (under the interpreter on CPU) and must not find these copies.
    """
    before = set(sys.modules)
    try:
        return _build_cases()
    finally:
        for name in set(sys.modules) - before:
            if name.startswith("labkit.") and name.endswith("_kernels"):
                del sys.modules[name]


def _build_cases() -> list[Case]:
    import torch

    from labkit.diffusion._kernels import group_norm_silu_tiles
    from labkit.inference._kernels import DECODE_CONFIGS
    from labkit.mpc._kernels import DIGIT_SPLIT_CONFIG, RING_MM_CONFIG
    from labkit.moe._kernels import GROUPED_MM_CONFIGS
    from labkit.quant._kernels import W4A4_TILES, W8A8_TILES

    cases = [
        _case("intro", "_scaled_add_kernel", pointers=dict.fromkeys(("x_ptr", "y_ptr", "out_ptr"), "*fp32"),
              scalars={"alpha": "fp32"}, constexprs=dict(BLOCK_SIZE=1024)),
    ]
    graph_ptrs = dict(x_ptr="*fp32", col_ptr="*i64", val_ptr="*fp32", rowptr_ptr="*i64", extra_row_ptr="*i32",
                      extra_start_ptr="*i64", out_ptr="*fp32")
    cases += [
        _case("graphs", "_row_chunk_kernel", "spmm", pointers=graph_ptrs, constexprs=dict(
            CHUNK=256, BLOCK_K=16, BLOCK_F=64, GATHER=True, WEIGHTED=True, MEAN=False), num_warps=2),
        _case("graphs", "_row_chunk_kernel", "segment_mean_fp16", pointers={**graph_ptrs, "x_ptr": "*fp16"},
              constexprs=dict(CHUNK=256, BLOCK_K=16, BLOCK_F=256, GATHER=False, WEIGHTED=False, MEAN=True)),
    ]
    cases += [
        _case("comm", "_strided_copy_kernel", "pack", pointers=dict(src_ptr="*fp32", dst_ptr="*fp32"),
              constexprs=dict(N_LEVELS=2, PACK=True, INDEX_64=False, BLOCK_SIZE=1024)),
        _case("comm", "_strided_copy_kernel", "unpack_int64", pointers=dict(src_ptr="*fp16", dst_ptr="*fp16"),
              scalars=dict.fromkeys(("n_elements", "offset", "block", "count_1", "stride_1", "count_2", "stride_2",
                                     "count_3", "stride_3", "count_4", "stride_4"), "i64"),
              constexprs=dict(N_LEVELS=4, PACK=False, INDEX_64=True, BLOCK_SIZE=1024)),
    ]
    from labkit.comm import _onebit_kernels as onebit

    onebit_ptrs = dict(x_ptr="*fp32", e_ptr="*fp32", partial_ptr="*fp32")
    cases += [
        Case("comm._sum_squares_kernel", onebit.__name__, "_sum_squares_kernel", onebit_ptrs,
             dict(INDEX_64=False, BLOCK_SIZE=onebit.BLOCK_SIZE), num_warps=onebit.NUM_WARPS),
        Case("comm._sign_pack_kernel", onebit.__name__, "_sign_pack_kernel",
             dict(onebit_ptrs, packed_ptr="*u8", scale_ptr="*fp32"), scalars={"sqrt_d": "fp32"},
             constexprs=dict(INDEX_64=False, BLOCK_SIZE=onebit.BLOCK_SIZE, PARTIALS=onebit.MAX_PROGRAMS),
             num_warps=onebit.NUM_WARPS),
    ]
    cases += [
        _case("moe", "_topk_gating_kernel", pointers=dict(
            logits_ptr="*fp16", probs_ptr="*fp32", weights_ptr="*fp32", experts_ptr="*i64"),
              constexprs=dict(TOP_K=2, RENORMALIZE=True, BLOCK_M=64, BLOCK_E=64, BLOCK_K=2)),
        _case("moe", "_count_experts_kernel", pointers=dict(experts_ptr="*i64", block_counts_ptr="*i32"),
              constexprs=dict(BLOCK_A=128, BLOCK_E=64)),
        _case("moe", "_scatter_ranks_kernel", pointers=dict(
            experts_ptr="*i64", block_start_ptr="*i64", order_ptr="*i64"), constexprs=dict(BLOCK_A=128, BLOCK_E=64)),
    ]
    for dtype, short in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        bm, bn, bk, warps, stages = GROUPED_MM_CONFIGS[dtype]
        cases.append(_case("moe", "_grouped_mm_kernel", short, pointers=dict(
            x_ptr=f"*{short}", w_ptr=f"*{short}", out_ptr=f"*{short}", offsets_ptr="*i64", tile_expert_ptr="*i64",
            tile_row_ptr="*i64"), constexprs=dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, EVEN_K=False,
                                                   IEEE=short == "fp32"),
            num_warps=warps, num_stages=stages, mma=short != "fp32"))
    norm_ptrs = dict(x_ptr="*fp16", w_ptr="*fp32", b_ptr="*fp32", y_ptr="*fp16")
    for variant, (channels, spatial) in (("one_pass", (4, 64)), ("looped", (20, 64 * 64))):
        block_c, block_s, one_pass, warps = group_norm_silu_tiles(channels, spatial)
        cases.append(_case("diffusion", "_group_norm_silu_kernel", variant, pointers=norm_ptrs,
                           scalars={"eps": "fp32"}, num_warps=warps,
                           constexprs=dict(BLOCK_C=block_c, BLOCK_S=block_s, ONE_PASS=one_pass)))
    for variant, w8 in (("largest_tile", W8A8_TILES[0]), ("decode_tile", W8A8_TILES[-1])):
        cases.append(_case("quant", "_w8a8_kernel", variant, pointers=dict(
            x_ptr="*i8", xs_ptr="*fp32", w_ptr="*i8", ws_ptr="*fp32", bias_ptr="*fp32", out_ptr="*fp16"),
            constexprs=dict(HAS_BIAS=True, EVEN_K=variant == "largest_tile", BLOCK_M=w8.block_m, BLOCK_N=w8.block_n,
                            BLOCK_K=w8.block_k, GROUP_M=w8.group_m),
            num_warps=w8.num_warps, num_stages=w8.num_stages, mma=True))
    w4 = W4A4_TILES[0]
    w4_tile = dict(BLOCK_M=w4.block_m, BLOCK_N=w4.block_n, GROUP_M=w4.group_m)
    for variant, step_bytes, lora in (("g64_lora_fp16", 32, "fp16"), ("g32_lora_fp32", 16, "fp32")):
        cases.append(_case("quant", "_w4a4_kernel", variant, pointers=dict(
            x_ptr="*u8", xs_ptr="*fp32", w_ptr="*u8", ws_ptr="*fp32", down_ptr=f"*{lora}", up_ptr=f"*{lora}",
            bias_ptr="*fp32", out_ptr="*fp16"),
            constexprs=dict(STEP_BYTES=step_bytes, STEPS=1, SPLIT=step_bytes >= 32, HAS_LORA=True,
                            LORA_IEEE=lora == "fp32", BLOCK_R=32, HAS_BIAS=True, **w4_tile),
            num_warps=w4.num_warps, num_stages=w4.num_stages, mma=True))
    cases.append(_case("mpc", "_digit_planes_kernel", pointers=dict(x_ptr="*i64", out_ptr="*i8"),
                       constexprs=dict(REVERSE=True, BLOCK_R=DIGIT_SPLIT_CONFIG["block_r"],
                                       BLOCK_K=DIGIT_SPLIT_CONFIG["block_k"]),
                       num_warps=DIGIT_SPLIT_CONFIG["num_warps"]))
    ring = RING_MM_CONFIG
    desc = f"tensordesc<i8[{ring['block_m']}, {ring['block_k']}]>"
    cases.append(_case("mpc", "_ring_mm_kernel", pointers=dict(out_ptr="*i64"),
                       scalars=dict(a_desc=desc, b_desc=f"tensordesc<i8[{ring['block_n']}, {ring['block_k']}]>"),
                       constexprs=dict(BLOCK_M=ring["block_m"], BLOCK_N=ring["block_n"], BLOCK_K=ring["block_k"],
                                       GROUP_M=ring["group_m"], CHUNK=ring["chunk"]),
                       num_warps=ring["num_warps"], num_stages=ring["num_stages"], mma=True, descriptors=2))
    # d = 128, r = 64, groups of 4; bfloat16 writes partials for the merge, float32 its output itself
    for dtype, short in ((torch.bfloat16, "bf16"), (torch.float32, "fp32_single")):
        block_t, warps, stages = DECODE_CONFIGS[dtype]
        ty = short[:4]
        cases.append(_case("inference", "_lowrank_decode_kernel", short, pointers=dict(
            q_ptr=f"*{ty}", pk_ptr=f"*{ty}", k_ptr=f"*{ty}", v_ptr=f"*{ty}", out_ptr=f"*{ty}",
            m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32"), scalars={"qk_scale": "fp32"},
            constexprs=dict(BLOCK_G=16, BLOCK_D=128, BLOCK_R=64, BLOCK_T=block_t, SINGLE=ty == "fp32",
                            IEEE=ty == "fp32"), num_warps=warps, num_stages=stages, mma=ty != "fp32"))
    cases.append(_case("inference", "_merge_splits_kernel", pointers=dict(
        m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32", out_ptr="*bf16"), constexprs=dict(BLOCK_S=64, BLOCK_R=64)))
    return cases


CASES: list[Case] = _cases()


def _jit_function(case: Case) -> object:
    """The kernel's JITFunction (unwrapped from triton.heuristics / triton.autotune)."""
    from triton.runtime.jit import JITFunction

    fn = getattr(importlib.import_module(case.module), case.kernel)
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def compile_all(arch: int) -> dict[str, object]:
    """Compile every case for ``sm_<arch>``; {triton version, per case: ok/error, stages, mma, ...}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    results: dict[str, dict[str, object]] = {}
    for case in CASES:
        start = time.perf_counter()
        try:
            fn = _jit_function(case)
            src = ASTSource(fn=fn, signature=case.signature(fn.arg_names), constexprs=case.constexprs)
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                      options=dict(num_warps=case.num_warps, num_stages=case.num_stages))
            ptx = compiled.asm["ptx"]
            record: dict[str, object] = {
                "ok": True, "stages": sorted(compiled.asm), "cubin_bytes": len(compiled.asm.get("cubin") or b""),
                "mma": "mma" in ptx, "descriptors": len(getattr(compiled.metadata, "tensordesc_meta", None) or []),
                "target": f".target sm_{arch}" in ptx,
            }
        except Exception as exc:  # noqa: BLE001  (reported to the test, which fails with it)
            record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        record["seconds"] = round(time.perf_counter() - start, 2)
        results[case.name] = record
    return {"triton": triton.__version__, "file": triton.__file__, "results": results}


@pytest.fixture(scope="module")
def builds() -> dict[str, dict[str, object]]:
    """Every case compiled for every target, in fresh processes (one per target, run together)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {}
    with tempfile.TemporaryDirectory(prefix="triton-compile-") as cache:
        for name, arch in TARGETS:
            env_t = dict(env, TRITON_CACHE_DIR=str(Path(cache) / name))  # nothing reused from earlier runs
            procs[name] = subprocess.Popen([sys.executable, "-m", "tests.test_kernel_compile", str(arch)], cwd=ROOT,
                                           env=env_t, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out = {}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=1200)
            assert proc.returncode == 0, f"compile worker for {name} failed:\n{stderr[-4000:]}"
            out[name] = json.loads(stdout.strip().splitlines()[-1])
    import triton

    for name, report in out.items():  # the worker compiled with the Triton this test runs with
        assert report["triton"] == triton.__version__, (name, report["triton"], triton.__version__)
        print(f"{name}: triton {report['triton']}, "
              f"{sum(r['seconds'] for r in report['results'].values()):.1f} s for {len(report['results'])} kernels")
    return out


@pytest.mark.parametrize("target", [name for name, _ in TARGETS])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_compiles_for_cuda(builds: dict[str, dict[str, object]], case: Case, target: str) -> None:
    record = builds[target]["results"][case.name]
    assert record["ok"], f"{case.name} does not compile for {target}: {record['error']}"
    assert {"ttir", "ttgir", "llir", "ptx", "cubin"} <= set(record["stages"]), record["stages"]
    assert record["cubin_bytes"] > 0 and record["target"], record
    if case.mma is not None:  # tl.dot on tensor cores, or IEEE float32 products off them
        assert record["mma"] == case.mma, f"{case.name} for {target}: mma in the PTX is {record['mma']}"
    # tensor descriptors: TMA on Hopper; below sm_90 Triton lowers them to pointer loads
    assert record["descriptors"] == (case.descriptors if target == "sm_90" else 0), record


def _jitted_functions(path: Path) -> tuple[set[str], set[str]]:
    """(names of the @triton.jit functions of a module, names used inside their bodies)."""
    tree = ast.parse(path.read_text())
    jitted, used = set(), set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
            jitted.add(node.name)
            used |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    return jitted, used


def test_cases_cover_every_kernel() -> None:
    """Every kernel (a jitted function no other jitted function uses) of labkit has a case."""
    kernels = set()
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        if "triton.jit" not in path.read_text():
            continue
        jitted, used = _jitted_functions(path)
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        kernels |= {f"{module}:{name}" for name in jitted - used}
    assert kernels, "no Triton kernels found in labkit"
    assert kernels == {f"{c.module}:{c.kernel}" for c in CASES}


if __name__ == "__main__":
    # the compile worker: python -m tests.test_kernel_compile ARCH  (prints one JSON line)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("the compile worker needs TRITON_INTERPRET unset")
    print(json.dumps(compile_all(int(sys.argv[1]))))
