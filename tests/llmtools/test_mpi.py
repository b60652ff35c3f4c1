"""MPI call completion: program generator, call sites, masking, scoring, the MPICH runner."""

from __future__ import annotations

import shutil

import pytest
import torch

from labkit.llmtools import mpi
from labkit.lm.gpt import GPT, GPTConfig


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


def test_tokens_round_trip_to_the_same_calls():
    program = mpi.make_program("halo", 2)
    tokens = mpi.tokenize(program)
    assert "\n" in tokens and "MPI_Sendrecv" in tokens and " " not in tokens
    lines = mpi.detokenize(tokens)
    assert [s.function for s in mpi.call_sites("\n".join(lines))] == [
        s.function for s in mpi.call_sites(program)]
    assert lines[5].startswith("  MPI_Comm_rank (")  # indentation kept
    assert mpi.tokenize("i++; a == b;") == ["i", "++", ";", "a", "==", "b", ";"]


def test_fim_tokens_put_the_hole_last_and_drop_the_shared_head():
    task = mpi.make_task(mpi.make_program("scatter", 4), 1)
    tokens = mpi.fim_tokens(task)
    assert tokens[0] == "<PRE>" and tokens[-1] == "<EOT>"
    mid = tokens.index("<MID>")
    assert tokens[mid + 1:-1] == mpi.tokenize("".join(line + "\n" for line in task.hole))
    assert "MPI_Init" not in tokens and "MPI_Finalize" not in tokens
    left = mpi.left_tokens(task.program)
    assert left[0] == "<BOS>" and left[-1] == "<EOT>" and "include" not in left


def test_vocab_and_corpus_windows():
    docs = [mpi.make_program(f, s) for f in mpi.FAMILIES for s in range(5)]
    vocab = mpi.Vocab(docs)
    ids = vocab.encode(["MPI_Send", "never_seen"])
    assert vocab.decode(ids) == ["MPI_Send", "<UNK>"]
    corpus = mpi.TokenCorpus(vocab, 5, fim_rate=1.0, seed=0)
    x, y = corpus.get_batch("train", batch_size=3, block_size=32, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert set(x[:, 0].tolist()) == {vocab.stoi["<PRE>"]}  # windows start at an example
    with pytest.raises(ValueError, match="fim_rate"):
        mpi.TokenCorpus(vocab, 5, fim_rate=1.5)
    with pytest.raises(ValueError, match="split"):
        corpus.get_batch("test", batch_size=1, block_size=8, generator=torch.Generator())


def test_predict_hole_modes_and_errors():
    docs = [mpi.make_program(f, s) for f in mpi.FAMILIES for s in range(3)]
    vocab = mpi.Vocab(docs)
    model = GPT(GPTConfig(vocab_size=len(vocab), block_size=176, n_layer=1, n_head=2, d_model=16, d_ff=32)).eval()
    task = mpi.make_task(docs[0], 0)
    left = mpi.predict_hole(model, vocab, task, "left", max_new=8)
    fim = mpi.predict_hole(model, vocab, task, "fim", max_new=8)
    assert isinstance(left, list) and isinstance(fim, list)
    assert sum(len(mpi.tokenize(line)) for line in left) <= 8
    with pytest.raises(ValueError, match="mode"):
        mpi.predict_hole(model, vocab, task, "right")
    with pytest.raises(TypeError, match="model"):
        mpi.predict_hole(object(), vocab, task, "fim")  # type: ignore[arg-type]


def test_ngram_follows_the_longest_match():
    docs = [mpi.make_program("reduce", s) for s in range(20)]
    vocab = mpi.Vocab(docs)
    ngram = mpi.NGram(vocab, docs)
    for doc in docs[:3]:  # a training program is reproduced from its own prefix
        task = mpi.make_task(doc, 0)
        assert mpi.score(task, ngram.predict_hole(task)).function
    stream = list(ngram.stream)
    context = vocab.encode(mpi.left_tokens(docs[0])[:10])
    assert ngram.next_id(context) == vocab.encode(mpi.left_tokens(docs[0]))[10]
    with pytest.raises(TypeError, match="vocab"):
        mpi.NGram(docs, docs)  # type: ignore[arg-type]
    assert len(stream) == sum(len(mpi.left_tokens(d)) for d in docs)


def test_runner_runs_references_and_catches_broken_programs():
    program = mpi.make_program("reduce", 1)
    ref = mpi.run_program(program)
    assert ref.status == "ok" and ref.stdout.strip()
    assert mpi.same_output(ref, mpi.run_program(program))
    assert mpi.run_program(program.replace("MPI_INT", "MPI_NOPE")).status == "compile"
    changed = program.replace("* rank +", "* rank + 1 +", 1)
    assert not mpi.same_output(ref, mpi.run_program(changed))
