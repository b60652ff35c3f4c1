"""labkit.backend: the order of precedence, lazy Triton import and clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from labkit.backend import BackendUnavailable, Op, resolve_backend, triton_available, use_backend


def ref_impl(x: int, *, k: int = 1) -> str:
    return f"reference {x} {k}"


OP = Op("toy", reference=ref_impl, triton="tests._toy_kernels:toy_triton")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABKIT_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_auto_is_reference_without_cuda() -> None:
    expected = "triton" if torch.cuda.is_available() else "reference"
    assert resolve_backend() == expected
    assert resolve_backend("auto") == expected


def test_precedence_argument_over_context_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets 'triton' resolve on CPU
    assert resolve_backend() == "triton"                 # env
    with use_backend("reference"):
        assert resolve_backend() == "reference"          # context beats env
        assert resolve_backend("triton") == "triton"     # argument beats context
        with use_backend("triton"):
            assert resolve_backend() == "triton"         # innermost context wins
        assert resolve_backend() == "reference"          # restored on exit
    assert resolve_backend() == "triton"


def test_context_restored_after_exception() -> None:
    with pytest.raises(RuntimeError), use_backend("reference"):
        raise RuntimeError("boom")
    assert resolve_backend("reference") == "reference"
    with use_backend("auto"):
        assert resolve_backend() in ("reference", "triton")


def test_op_calls_reference_and_forwards_arguments() -> None:
    assert OP(3, k=2, backend="reference") == "reference 3 2"
    with use_backend("reference"):
        assert OP(4) == "reference 4 1"


@pytest.mark.parametrize("bad", ["cuda", "Triton", ""])
def test_unknown_backend_is_a_value_error(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend(bad)
    with pytest.raises(ValueError, match="unknown backend"), use_backend(bad):
        pass
    if bad:
        monkeypatch.setenv("LABKIT_BACKEND", bad)
        with pytest.raises(ValueError, match="LABKIT_BACKEND"):
            resolve_backend()


def test_backend_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="string"):
        resolve_backend(1)  # type: ignore[arg-type]


def test_triton_where_it_cannot_run_is_a_clear_error() -> None:
    if torch.cuda.is_available():  # a GPU host: Triton runs compiled
        assert triton_available() and resolve_backend("triton") == "triton"
        return
    assert not triton_available()
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        resolve_backend("triton")
    with pytest.raises(BackendUnavailable):
        OP(1, backend="triton")


def test_op_spec_needs_module_and_function() -> None:
    with pytest.raises(ValueError, match="pkg.module:function"):
        Op("bad", reference=ref_impl, triton="no_colon_here")


def test_import_labkit_does_not_import_triton() -> None:
    code = "import sys, labkit, labkit.intro; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_op_imports_triton_implementation_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    sys.modules.pop("tests._toy_kernels", None)
    assert OP(5, k=3, backend="triton") == "triton 5 3"
    assert "tests._toy_kernels" in sys.modules


def test_auto_keeps_cpu_tensors_on_the_reference_on_a_gpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    op = Op("toy_tensor", reference=lambda x: seen.append("reference") or x,
            triton="tests._toy_kernels:toy_triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    sys.modules.pop("tests._toy_kernels", None)
    op(torch.zeros(2))  # auto, CPU tensor: the reference
    assert seen == ["reference"]
    assert op(5) == "triton 5 1"  # auto, no CPU tensor: Triton
    assert op(torch.zeros(2), backend="triton") == f"triton {torch.zeros(2)} 1"  # explicit: obeyed
    with use_backend("reference"):
        op(torch.zeros(2))
    assert seen == ["reference", "reference"]


def test_auto_runs_the_reference_on_a_gpu_older_than_triton_supports(monkeypatch: pytest.MonkeyPatch) -> None:
    """A T4 (sm_75): ``auto`` keeps the references, and asking for Triton says why it cannot."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("LABKIT_BACKEND", raising=False)
    assert resolve_backend() == "reference"
    with pytest.raises(BackendUnavailable, match=r"8\.0 or newer \(this Tesla T4 is 7\.5\)"):
        resolve_backend("triton")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert resolve_backend() == "triton"


def test_import_labkit_does_not_import_plotly() -> None:
    """The kernels and benchmarks run on GPU hosts without plotly; ``labkit.styled`` still works."""
    packages = "labkit.intro, labkit.graphs, labkit.moe, labkit.diffusion, labkit.quant, " \
               "labkit.comm, labkit.mpc"  # every package with a kernel
    code = (f"import sys, labkit, {packages}; "
            "print('plotly' in sys.modules); labkit.styled; print('plotly' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
