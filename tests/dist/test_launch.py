"""Tests of labkit.dist.launch with real spawned processes joined by gloo.

Each launch costs a few seconds (every child imports torch), so the file keeps to one
launch per behaviour, and every launch carries its own timeout besides pytest's.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import types
from pathlib import Path

import nbformat
import papermill
import pytest
import torch

import labkit
from labkit.dist import LaunchError, LaunchTimeout, launch
from labkit.comm._workers import wrong_shape_on_rank
from labkit.dist import _demo_workers as workers

launch_module = importlib.import_module("labkit.dist.launcher")


def _pids(pid_dir: Path, world_size: int) -> list[int]:
    return [int((pid_dir / f"rank{rank}.pid").read_text()) for rank in range(world_size)]


def _assert_gone(pids: list[int]) -> None:
    """Each pid is neither running nor a zombie (a zombie still answers signal 0)."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [2, 4])
def test_all_reduce_equals_exact_sum(world_size: int) -> None:
    gen = torch.Generator().manual_seed(world_size)
    values = [torch.randint(-1000, 1000, (3, 5), generator=gen) for _ in range(world_size)]
    expected = torch.stack(values).sum(dim=0)

    out = launch(workers.all_reduce_sum, world_size, args=(values,), timeout=60.0)

    assert len(out) == world_size
    for tensor in out:
        assert torch.equal(tensor, expected)


@pytest.mark.timeout(120)
def test_results_ordered_by_rank_and_children_reaped() -> None:
    infos = launch(workers.rank_info, 3, timeout=60.0, threads_per_rank=1)

    assert [info["rank"] for info in infos] == [0, 1, 2]
    assert [info["group_rank"] for info in infos] == [0, 1, 2]
    assert {info["group_size"] for info in infos} == {3}
    assert {info["backend"] for info in infos} == {"gloo"}
    assert {info["torch_threads"] for info in infos} == {1}
    assert {info["omp_num_threads"] for info in infos} == {"1"}
    pids = [info["pid"] for info in infos]
    assert len(set(pids)) == 3 and os.getpid() not in pids
    _assert_gone(pids)


@pytest.mark.timeout(120)
def test_rank_that_raises_is_reported_at_once(tmp_path: Path) -> None:
    timeout = 60.0
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(workers.raise_on_rank, 2, args=(1,), kwargs={"pid_dir": str(tmp_path)}, timeout=timeout)
    elapsed = time.monotonic() - start

    err = info.value
    assert not isinstance(err, LaunchTimeout)
    assert err.rank == 1
    assert "rank 1" in str(err)
    assert "Traceback" in err.child_traceback and "failed on purpose" in err.child_traceback
    assert "failed on purpose" in str(err)
    # rank 0 is blocked in a barrier; the parent must not wait for it to time out
    assert elapsed < timeout / 3, f"took {elapsed:.1f} s"
    _assert_gone(_pids(tmp_path, 2))


@pytest.mark.timeout(120)
def test_rank_that_hangs_times_out_and_all_children_are_gone(tmp_path: Path) -> None:
    timeout = 12.0  # start-up (~2-3 s for 2 ranks on 2 idle cores, more under load) must fit inside it
    start = time.monotonic()
    with pytest.raises(LaunchTimeout) as info:
        launch(
            workers.hang_on_rank, 2, args=(1, 300.0), kwargs={"pid_dir": str(tmp_path)}, timeout=timeout
        )
    elapsed = time.monotonic() - start

    err = info.value
    assert isinstance(err, LaunchError) and isinstance(err, TimeoutError)
    assert 1 in err.ranks
    assert str(err.ranks) in str(err)
    assert timeout <= elapsed < timeout + 10.0
    _assert_gone(_pids(tmp_path, 2))


@pytest.mark.timeout(120)
def test_rank_that_dies_silently_is_reported(tmp_path: Path) -> None:
    with pytest.raises(LaunchError) as info:
        launch(workers.exit_on_rank, 2, args=(1,), kwargs={"code": 3, "pid_dir": str(tmp_path)}, timeout=60.0)

    assert info.value.rank == 1
    assert "rank 1" in str(info.value) and "exit code 3" in str(info.value)
    _assert_gone(_pids(tmp_path, 2))


def _defined_locally() -> types.FunctionType:
    def worker(rank: int, world_size: int) -> int:
        return rank

    return worker


_BAD_CALLS = {
    "world_size=0": (ValueError, "world_size", dict(fn=workers.rank_info, world_size=0)),
    "world_size='2'": (TypeError, "world_size", dict(fn=workers.rank_info, world_size="2")),
    "world_size=True": (TypeError, "world_size", dict(fn=workers.rank_info, world_size=True)),
    "backend=mpi": (ValueError, "backend", dict(fn=workers.rank_info, world_size=2, backend="mpi")),
    "nccl-without-gpus": (
        ValueError,
        "nccl",
        dict(fn=workers.rank_info, world_size=torch.cuda.device_count() + 1, backend="nccl"),
    ),
    "timeout=0": (ValueError, "timeout", dict(fn=workers.rank_info, world_size=2, timeout=0)),
    "threads=0": (ValueError, "threads_per_rank", dict(fn=workers.rank_info, world_size=2, threads_per_rank=0)),
    "args-not-tuple": (TypeError, "args", dict(fn=workers.all_reduce_sum, world_size=2, args=5)),
    "unpicklable-args": (TypeError, "picklable", dict(fn=workers.rank_info, world_size=2, args=(threading.Lock(),))),
    "not-callable": (TypeError, "fn", dict(fn=3, world_size=2)),
    "lambda": (ValueError, "importable", dict(fn=lambda rank, world_size: rank, world_size=2)),
    "local-function": (ValueError, "importable", dict(fn=_defined_locally(), world_size=2)),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(_BAD_CALLS))
def test_bad_arguments_fail_before_any_process_starts(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_processes(*_: object) -> None:
        raise AssertionError("launch started processes despite a bad argument")

    monkeypatch.setattr(launch_module, "multiprocessing", types.SimpleNamespace(get_context=no_processes))
    error, words, call = _BAD_CALLS[name]
    call = dict(call)
    with pytest.raises(error, match=words):
        launch(call.pop("fn"), call.pop("world_size"), **call)


def test_function_from_main_is_rejected() -> None:
    fn = _defined_locally()
    fn.__qualname__ = "worker"
    fn.__module__ = "__main__"  # as for a function defined in a notebook cell
    with pytest.raises(ValueError, match="Can't get attribute"):
        launch(fn, 2)


_NOTEBOOK_CELLS = [
    "import torch\n"
    "from labkit.dist import launch\n"
    "from labkit.dist._demo_workers import all_reduce_sum",
    "values = [torch.full((4,), float(rank + 1)) for rank in range(2)]\n"
    "out = launch(all_reduce_sum, 2, args=(values,), timeout=90.0)\n"
    "assert len(out) == 2 and all(torch.equal(t, torch.full((4,), 3.0)) for t in out), out",
    "def defined_in_notebook(rank, world_size):\n"
    "    return rank\n"
    "try:\n"
    "    launch(defined_in_notebook, 2)\n"
    "except ValueError as exc:\n"
    "    assert 'importable' in str(exc)\n"
    "else:\n"
    "    raise AssertionError('a notebook-defined worker was accepted')",
]


@pytest.mark.timeout(120)
def test_launch_inside_a_papermill_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in _NOTEBOOK_CELLS]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source, executed = tmp_path / "launch_check.ipynb", tmp_path / "launch_check.out.ipynb"
    nbformat.write(notebook, source)
    # the kernel runs in tmp_path: make the labkit under test importable there
    root = str(Path(labkit.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))

    papermill.execute_notebook(
        str(source), str(executed), kernel_name="python3", cwd=str(tmp_path), progress_bar=False
    )

    cells = nbformat.read(executed, as_version=4).cells
    assert all(not any(out.get("output_type") == "error" for out in cell.get("outputs", [])) for cell in cells)


@pytest.mark.timeout(90)
def test_a_collective_mismatch_surfaces_the_rank_that_detected_it(capfd: pytest.CaptureFixture[str]) -> None:
    # rank 1 sends one element too many; rank 0, receiving it, aborts with gloo's message on its stderr,
    # and rank 1 then raises "Connection reset by peer": the error must be rank 0's, in gloo's words
    with pytest.raises(LaunchError) as info:
        launch(wrong_shape_on_rank, 2, kwargs=dict(bad_rank=1, numel=5, check_shapes=False), timeout=30.0)

    err = info.value
    headline = str(err).split("Other ranks failed too")[0]
    assert err.rank == 0 and "rank 0 died without reporting" in headline
    assert "Received data size doesn't match expected size" in headline
    assert "Received data size doesn't match expected size" in err.child_stderr
    assert "Connection reset by peer" not in headline and err.child_traceback == ""
    # the children's stderr still reaches the parent's, copied once the launch is over
    assert "Received data size doesn't match expected size" in capfd.readouterr().err


def _failure(rank: int, at: float, text: str, *, raised: bool = True) -> object:
    return launch_module._Failure(rank=rank, at=at, raised=raised, text=text, exitcode=None if raised else -6)


RESET = "Traceback ...\nRuntimeError: [pair.cc:537] Read error [127.0.0.1]:53988: Connection reset by peer."
CLOSED = "Traceback ...\nRuntimeError: Connection closed by peer [127.0.0.1]:41577"
MISMATCH = "what():  [enforce fail at pair.cc:456] 12 vs 8. Received data size doesn't match expected size."


@pytest.mark.parametrize("failures, blamed", [
    ([_failure(0, 1.0, RESET), _failure(1, 1.2, MISMATCH, raised=False)], 1),  # a lost peer is a consequence
    ([_failure(1, 1.0, CLOSED), _failure(0, 2.0, "Traceback ...\nValueError: bad input")], 0),
    ([_failure(2, 3.0, "Traceback ...\nValueError: late"), _failure(1, 2.0, "Traceback ...\nKeyError: 'x'")], 1),
    ([_failure(1, 5.0, RESET), _failure(0, 4.0, CLOSED)], 0),  # only lost peers: the earliest
    ([_failure(1, 5.0, "", raised=False), _failure(0, 4.0, RESET)], 1),  # a silent death is a cause
])
def test_the_first_real_failure_is_blamed(failures: list, blamed: int) -> None:
    err = launch_module._launch_error({f.rank: f for f in failures})
    assert err.rank == blamed and str(err).startswith(f"launch: rank {blamed} ")
    others = str(err).split("Other ranks failed too")[1]
    for other in failures:
        if other.rank != blamed:
            assert f"rank {other.rank} " in others
    # a lost peer among the others is named as such, without quoting the transport's words
    assert "by peer" not in others
