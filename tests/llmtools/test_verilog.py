"""The spec-to-RTL harness: problems, testbenches, failure classes and mutants (real iverilog)."""

from __future__ import annotations

import pytest

from labkit.llmtools import verilog
from labkit.llmtools.verilog import (CLASSES, MUTANT_KINDS, PROBLEMS, classify, make_mutants, problem,
                                     run_candidate, run_many)


def test_twelve_problems_with_unique_names_and_every_reference_passes():
    assert len(PROBLEMS) == 12 and len({p.name for p in PROBLEMS}) == 12
    results = run_many([(p, p.source) for p in PROBLEMS])
    assert [r.cls for r in results] == ["pass"] * 12
    assert all(r.samples > 0 and r.mismatches == 0 for r in results)


def test_exhaustive_and_seeded_stimuli():
    assert run_candidate(problem("mux2"), problem("mux2").source).samples == 2 ** 9
    assert run_candidate(problem("adder8"), problem("adder8").source).samples == 256
    assert run_candidate(problem("adder8"), problem("adder8").source, oracle=True).samples == 2 ** 16
    assert "$random(seed)" in verilog.testbench(problem("counter"))


def test_hand_written_candidates_get_their_class():
    p = problem("and_or")
    header = p.header + "\n"
    assert run_candidate(p, header + "  assign y = a & b | c;\nendmodule\n").cls == "pass"
    wrong = run_candidate(p, header + "  assign y = a | b | c;\nendmodule\n")
    assert wrong.cls == "mismatch" and wrong.mismatches > 0
    assert run_candidate(p, header + "  assign y = (a & b) | c\nendmodule\n").cls == "syntax"
    assert run_candidate(p, header + "  assign y = (a & q) | c;\nendmodule\n").cls == "elaboration"
    assert run_candidate(p, "module other(input a);\nendmodule\n").cls == "elaboration"
    assert run_candidate(p, "").cls == "elaboration"


def test_classify_reads_the_tools_output():
    assert classify(1, "x.v:2: syntax error\nI give up.", False, "").cls == "syntax"
    assert classify(1, "error: port ``y'' is not a port of dut.", False, "").cls == "elaboration"
    assert classify(0, "", True, "").cls == "timeout"
    assert classify(0, "", False, "Mismatches: 0 in 16 samples").cls == "pass"
    r = classify(0, "", False, "Mismatches: 3 in 16 samples")
    assert (r.cls, r.mismatches, r.samples) == ("mismatch", 3, 16)
    assert classify(0, "", False, "segfault").cls == "mismatch"
    assert set(CLASSES) == {"syntax", "elaboration", "timeout", "mismatch", "pass"}


def test_mutants_of_deterministic_kinds_get_their_planted_class():
    p = problem("counter")
    muts = make_mutants(p, per_kind=1, seed=3)
    assert {m.kind for m in muts} == set(MUTANT_KINDS)
    results = run_many([(p, m.source) for m in muts], timeout=1.5)
    for m, r in zip(muts, results):
        if m.planted is not None:
            assert r.cls == m.planted, (m.kind, r.log)
        if m.kind == "missing_reset":
            assert r.cls == "mismatch"


def test_mutants_are_seeded_and_capped():
    p = problem("adder8")
    a = make_mutants(p, per_kind=1, seed=0)
    assert a == make_mutants(p, per_kind=1, seed=0)
    assert all(m.source != p.source for m in a)
    assert len(make_mutants(p, kinds=["width_off_by_one"])) == 6  # three ranges, two directions each
    assert make_mutants(problem("mux2"), kinds=["missing_reset"]) == []  # nothing to remove


def test_bad_inputs_and_missing_iverilog(monkeypatch):
    with pytest.raises(ValueError, match="unknown problem"):
        problem("alu")
    with pytest.raises(ValueError, match="unknown mutant kind"):
        make_mutants(problem("mux2"), kinds=["typo"])
    with pytest.raises(ValueError, match="per_kind"):
        make_mutants(problem("mux2"), per_kind=0)
    with pytest.raises(TypeError, match="source"):
        run_candidate(problem("mux2"), None)
    with pytest.raises(ValueError, match="timeout"):
        run_candidate(problem("mux2"), "", timeout=0)
    with pytest.raises(TypeError, match="Problem"):
        run_candidate("mux2", "")
    monkeypatch.setattr(verilog.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Debian package 'iverilog'"):
        run_candidate(problem("mux2"), problem("mux2").source)


def test_widened_siblings_keep_the_body_and_still_pass():
    p = problem("mux2")
    doc = verilog.widen(p, 2)
    assert doc.startswith("// 6-bit 2-to-1 mux") and "input [5:0] a" in doc
    assert "assign y = s ? b : a;" in doc and "[3:0]" not in doc
    assert verilog.widen(p, 0) == "// " + p.spec + "\n" + p.source
    with pytest.raises(ValueError, match="delta"):
        verilog.widen(problem("seq101"), -1)  # [1:0] cannot shrink
    # the sibling of a clocked problem is itself a correct circuit of the wider kind
    shift = problem("shift8")
    wide = verilog.widen(shift, 1).split("\n", 1)[1]
    assert "{q[7:0], d}" in wide and "output reg [8:0] q" in wide


def test_training_documents_hold_out_families_and_pair_siblings():
    docs = verilog.training_documents(200, held_out=("gates", "coding"), seed=1)
    assert len(docs) == 200 and docs == verilog.training_documents(200, held_out=("gates", "coding"), seed=1)
    text = "\n".join(docs)
    assert "parity" not in text and "decoder" not in text and "priority" not in text
    pairs = sum(d.count("module top_module") == 2 for d in docs)
    assert 60 <= pairs <= 140
    with pytest.raises(ValueError, match="unknown families"):
        verilog.training_documents(5, held_out=("alu",))
    everything = tuple({p.family for p in PROBLEMS})
    with pytest.raises(ValueError, match="no problem"):
        verilog.training_documents(5, held_out=everything)


def test_prompts_and_candidates():
    p = problem("decoder")
    assert verilog.code_prompt(p, example=False) == p.prompt
    with_example = verilog.code_prompt(p, example=True)
    assert with_example.endswith(p.prompt) and "input [4:0] a" in with_example
    body = "  assign y = en ? 8'b1 << a : 8'b0;\nendmodule\nmodule junk;"
    cand = verilog.candidate_from_completion(p, body)
    assert cand == p.source and run_candidate(p, cand).cls == "pass"
    assert verilog.candidate_from_completion(p, "").endswith("endmodule\n")
