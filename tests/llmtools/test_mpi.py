"""MPI call completion: program generator, call sites, masking, scoring, the MPICH runner."""

from __future__ import annotations

import shutil

import pytest

from labkit.llmtools import mpi


@pytest.mark.parametrize("family", mpi.FAMILIES)
def test_programs_are_seeded_and_parse_with_their_calls(family):
    a, b = mpi.make_program(family, 3), mpi.make_program(family, 3)
    assert a == b
    assert len({mpi.make_program(family, s) for s in range(10)}) > 3
    sites = mpi.call_sites(a)
    names = [s.function for s in sites]
    assert names[:3] == ["MPI_Init", "MPI_Comm_rank", "MPI_Comm_size"] and names[-1] == "MPI_Finalize"
    lines = a.split("\n")
    for s in sites:  # line numbers point at the call's source line
        assert s.function + "(" in lines[s.line - 1]


def test_call_sites_arguments_are_normalised_text():
    src = "#include <mpi.h>\nint main(void) {\n  MPI_Bcast(buf,  4,MPI_INT, 0, MPI_COMM_WORLD);\n}\n"
    (site,) = mpi.call_sites(src)
    assert site == mpi.CallSite(3, "MPI_Bcast", ("buf", "4", "MPI_INT", "0", "MPI_COMM_WORLD"))


def test_clear_errors():
    with pytest.raises(ValueError, match="no MPI call"):
        mpi.call_sites("int main(void) { return 0; }\n")
    with pytest.raises(ValueError, match="does not parse"):
        mpi.call_sites("int main( {\n")
    with pytest.raises(TypeError, match="source"):
        mpi.call_sites(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="family"):
        mpi.make_program("stencil", 0)
    boiler = "#include <mpi.h>\nint main(int c, char **v) {\n  MPI_Init(&c, &v);\n  MPI_Finalize();\n}\n"
    with pytest.raises(ValueError, match="no MPI call to mask"):
        mpi.make_task(boiler, 0)


def test_missing_mpicc_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(mpi.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="libmpich-dev"):
        mpi.run_program(mpi.make_program("ring", 0))


@pytest.mark.parametrize("family", mpi.FAMILIES)
def test_tasks_hold_one_call_and_the_reference_scores_full(family):
    for seed in range(6):
        program = mpi.make_program(family, seed)
        task = mpi.make_task(program, seed)
        assert task.program == program and 1 <= len(task.hole) <= 3
        assert task.target.function not in mpi.BOILERPLATE
        assert sum("MPI_" in line for line in task.hole) == 1
        assert task.target.function in task.hole[task.target.line]
        assert mpi.score(task, task.hole) == mpi.Score(True, True, True)


def test_score_fields():
    task = mpi.make_task(mpi.make_program("reduce", 1), 0)
    hole = list(task.hole)
    wrong_args = [line.replace("MPI_INT", "MPI_DOUBLE") for line in hole]
    assert mpi.score(task, wrong_args) == mpi.Score(True, True, False)
    other = [line.replace(task.target.function + "(", "MPI_Foo(") for line in hole]
    assert mpi.score(task, other) == mpi.Score(True, False, False)
    assert mpi.score(task, ["garbage (("] * len(hole)) == mpi.Score(False, False, False)
    moved = [""] + hole if task.target.line == 0 else hole[1:] + [""]
    assert not mpi.score(task, moved).location


def test_ngram_continues_a_seen_context():
    docs = ["abc\ndef\n", "abc\ndeg\n"] * 3 + ["abc\ndef\n"]
    model = mpi.NGram(docs, order=4)
    assert model.complete("abc\n", 1) == ["def"]
    with pytest.raises(ValueError, match="order"):
        mpi.NGram(docs, order=0)


def test_runner_runs_references_and_catches_broken_programs():
    program = mpi.make_program("reduce", 1)
    ref = mpi.run_program(program)
    assert ref.status == "ok" and ref.stdout.strip()
    assert mpi.same_output(ref, mpi.run_program(program))
    assert mpi.run_program(program.replace("MPI_INT", "MPI_NOPE")).status == "compile"
    changed = program.replace("* rank +", "* rank + 1 +", 1)
    assert not mpi.same_output(ref, mpi.run_program(changed))
