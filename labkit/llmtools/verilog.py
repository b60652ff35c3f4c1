"""A miniature spec-to-RTL benchmark: problems, testbenches, a runner and seeded mutants.

After *Revisiting VerilogEval* (Pinckney et al., 2024). Each :class:`Problem` has a short
specification, a reference module and a port list. :func:`testbench` writes a Verilog
testbench that drives the candidate (``top_module``) and the reference (``ref_module``) with
the same stimuli (every input vector when there are few input bits, seeded random vectors or
cycles otherwise) and prints ``Mismatches: m in n samples``. :func:`run_candidate` compiles
with Icarus Verilog (``iverilog``), simulates with ``vvp`` and sorts the outcome into the
revised benchmark's failure classes, coarsened to five:

* ``syntax``: the compiler's parser rejects the source;
* ``elaboration``: it parses but does not elaborate (a port the testbench cannot bind, an
  undeclared name, a width error);
* ``timeout``: the simulation does not finish within its time limit;
* ``mismatch``: it simulates, and some output differs from the reference's;
* ``pass``: it simulates with zero mismatches.

:func:`make_mutants` derives candidates of known class from a reference by seeded edits:
syntax slips, port renames, operator swaps, off-by-one widths, missing resets and a loop
that never yields. ``run_candidate(..., oracle=True)`` re-runs a candidate exhaustively
(combinational problems) or for many more cycles (clocked ones) to tell mutants that change
behaviour from equivalent ones.

What the miniature leaves out: 12 problems instead of 156, Icarus instead of the benchmark's
simulator flags, no SystemVerilog, no waveform-level checks, no synthesis.

Section: chapter 18, "VerilogEval: spec-to-RTL evaluation".
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from labkit.validation import check_int, check_real

__all__ = ["CLASSES", "MUTANT_KINDS", "PROBLEMS", "Mutant", "Problem", "RunResult", "classify",
           "candidate_from_completion", "code_prompt", "make_mutants", "problem", "require_iverilog",
           "run_candidate", "run_many", "testbench", "training_documents", "widen"]

#: Failure classes, from the first stage that fails to the clean pass.
CLASSES: tuple[str, ...] = ("syntax", "elaboration", "timeout", "mismatch", "pass")
#: Mutant kinds and the class each plants (``None``: depends on the edit, maybe equivalent).
MUTANT_KINDS: dict[str, str | None] = {
    "syntax_slip": "syntax", "port_rename": "elaboration", "endless_loop": "timeout",
    "operator_swap": None, "width_off_by_one": None, "missing_reset": None,
}
_EXHAUSTIVE_BITS = 12
_ORACLE_BITS = 16


@dataclass(frozen=True)
class Problem:
    """One spec-to-RTL task.

    Attributes:
        name: short identifier.
        family: the kind of circuit (``mux``, ``gates``, ``arith``, ``coding``, ``sequential``,
            ``fsm``); the code model holds whole families out of its training.
        spec: the natural-language specification (one or two lines).
        header: the module declaration of ``top_module`` with its ANSI port list.
        body: the reference body, up to ``endmodule``.
        inputs, outputs: ``(name, width)`` of the data ports (``clk`` and ``reset`` excluded).
        clocked: whether the module has ``clk`` and a synchronous active-high ``reset``.
        swaps: operator swaps ``(old, new)`` applied to the body by :func:`make_mutants`.
        reset_text: the text whose removal drops the reset (clocked problems).
    """

    name: str
    family: str
    spec: str
    header: str
    body: str
    inputs: tuple[tuple[str, int], ...]
    outputs: tuple[tuple[str, int], ...]
    clocked: bool = False
    swaps: tuple[tuple[str, str], ...] = ()
    reset_text: str | None = None

    @property
    def source(self) -> str:
        """The reference as a candidate would write it (module ``top_module``)."""
        return self.header + "\n" + self.body

    @property
    def prompt(self) -> str:
        """What a model is given: the spec as a comment and the module header."""
        return f"// {self.spec}\n{self.header}\n"

    @property
    def input_bits(self) -> int:
        """Total width of the data inputs."""
        return sum(w for _, w in self.inputs)


def _p(name: str, family: str, spec: str, ports: str, body: str, inputs: tuple, outputs: tuple,
       swaps: tuple = (), clocked: bool = False, reset_text: str | None = None) -> Problem:
    return Problem(name=name, family=family, spec=spec, header=f"module top_module({ports});", body=body,
                   inputs=inputs, outputs=outputs, clocked=clocked, swaps=swaps, reset_text=reset_text)


PROBLEMS: tuple[Problem, ...] = (
    _p("mux2", "mux", "4-bit 2-to-1 mux: y is b when s is 1, else a.",
       "input [3:0] a, input [3:0] b, input s, output [3:0] y",
       "  assign y = s ? b : a;\nendmodule\n", (("a", 4), ("b", 4), ("s", 1)), (("y", 4),),
       swaps=(("s ? b : a", "s ? a : b"), ("s ? b : a", "s ? b : b"))),
    _p("mux4", "mux", "2-bit 4-to-1 mux: y is a, b, c or d for sel 0, 1, 2 or 3.",
       "input [1:0] sel, input [1:0] a, input [1:0] b, input [1:0] c, input [1:0] d, output [1:0] y",
       "  assign y = sel[1] ? (sel[0] ? d : c) : (sel[0] ? b : a);\nendmodule\n",
       (("sel", 2), ("a", 2), ("b", 2), ("c", 2), ("d", 2)), (("y", 2),),
       swaps=(("sel[0] ? d : c", "sel[0] ? c : d"), ("sel[1] ?", "sel[0] ?"))),
    _p("and_or", "gates", "4-bit: y is (a AND b) OR c, bitwise.",
       "input [3:0] a, input [3:0] b, input [3:0] c, output [3:0] y",
       "  assign y = (a & b) | c;\nendmodule\n", (("a", 4), ("b", 4), ("c", 4)), (("y", 4),),
       swaps=(("(a & b)", "(a | b)"), ("| c", "^ c"))),
    _p("parity", "gates", "p is the XOR of the 8 bits of a (odd parity).",
       "input [7:0] a, output p",
       "  assign p = ^a;\nendmodule\n", (("a", 8),), (("p", 1),),
       swaps=(("^a", "|a"), ("^a", "&a"))),
    _p("adder8", "arith", "8-bit adder: s is a + b with the carry in bit 8.",
       "input [7:0] a, input [7:0] b, output [8:0] s",
       "  assign s = a + b;\nendmodule\n", (("a", 8), ("b", 8)), (("s", 9),),
       swaps=(("a + b", "a - b"), ("a + b", "a | b"))),
    _p("compare", "arith", "6-bit compare: gt is 1 when a > b, eq when a == b.",
       "input [5:0] a, input [5:0] b, output gt, output eq",
       "  assign gt = a > b;\n  assign eq = a == b;\nendmodule\n", (("a", 6), ("b", 6)),
       (("gt", 1), ("eq", 1)), swaps=(("a > b", "a >= b"), ("a == b", "a != b"))),
    _p("decoder", "coding", "3-to-8 decoder with enable: y has bit a set when en is 1, else 0.",
       "input [2:0] a, input en, output [7:0] y",
       "  assign y = en ? 8'b1 << a : 8'b0;\nendmodule\n", (("a", 3), ("en", 1)), (("y", 8),),
       swaps=(("<<", ">>"), ("en ?", "!en ?"))),
    _p("priority", "coding", "4-bit priority encoder: g is the index of the highest 1 in r, v is 1 if any.",
       "input [3:0] r, output reg [1:0] g, output v",
       "  assign v = |r;\n  always @(*)\n    if (r[3]) g = 2'd3;\n    else if (r[2]) g = 2'd2;\n"
       "    else if (r[1]) g = 2'd1;\n    else g = 2'd0;\nendmodule\n", (("r", 4),), (("g", 2), ("v", 1)),
       swaps=(("if (r[2]) g", "if (r[1]) g"), ("|r", "&r"))),
    _p("counter", "sequential", "4-bit counter: synchronous reset to 0, counts up when en is 1.",
       "input clk, input reset, input en, output reg [3:0] q",
       "  always @(posedge clk)\n    if (reset) q <= 4'd0;\n    else if (en) q <= q + 4'd1;\nendmodule\n",
       (("en", 1),), (("q", 4),), clocked=True, reset_text="if (reset) q <= 4'd0;\n    else ",
       swaps=(("q + 4'd1", "q - 4'd1"), ("if (en)", "if (!en)"))),
    _p("shift8", "sequential", "8-bit shift register: synchronous reset to 0, shifts d in at bit 0.",
       "input clk, input reset, input d, output reg [7:0] q",
       "  always @(posedge clk)\n    if (reset) q <= 8'd0;\n    else q <= {q[6:0], d};\nendmodule\n",
       (("d", 1),), (("q", 8),), clocked=True, reset_text="if (reset) q <= 8'd0;\n    else ",
       swaps=(("{q[6:0], d}", "{d, q[7:1]}"), ("{q[6:0], d}", "{q[6:0], 1'b0}"))),
    _p("edge", "fsm", "Rising-edge detector: y is 1 when x is 1 and was 0 at the last clock edge.",
       "input clk, input reset, input x, output y",
       "  reg prev;\n  always @(posedge clk)\n    if (reset) prev <= 1'b0;\n    else prev <= x;\n"
       "  assign y = x & ~prev;\nendmodule\n", (("x", 1),), (("y", 1),), clocked=True,
       reset_text="if (reset) prev <= 1'b0;\n    else ",
       swaps=(("x & ~prev", "~x & prev"), ("x & ~prev", "x ^ prev"))),
    _p("seq101", "fsm", "Moore detector of the bit pattern 101 on x (overlapping): y is 1 after it.",
       "input clk, input reset, input x, output y",
       "  reg [1:0] s;\n  always @(posedge clk)\n    if (reset) s <= 2'd0;\n    else case (s)\n"
       "      2'd0: s <= x ? 2'd1 : 2'd0;\n      2'd1: s <= x ? 2'd1 : 2'd2;\n"
       "      2'd2: s <= x ? 2'd3 : 2'd0;\n      default: s <= x ? 2'd1 : 2'd2;\n    endcase\n"
       "  assign y = (s == 2'd3);\nendmodule\n", (("x", 1),), (("y", 1),), clocked=True,
       reset_text="if (reset) s <= 2'd0;\n    else ",
       swaps=(("2'd2: s <= x ? 2'd3 : 2'd0", "2'd2: s <= x ? 2'd3 : 2'd1"), ("(s == 2'd3)", "(s != 2'd3)"))),
)


def problem(name: str) -> Problem:
    """The problem called ``name``."""
    for p in PROBLEMS:
        if p.name == name:
            return p
    raise ValueError(f"unknown problem {name!r}; expected one of {[p.name for p in PROBLEMS]}")


def require_iverilog() -> tuple[str, str]:
    """Paths of ``iverilog`` and ``vvp``; a clear error when Icarus Verilog is not installed."""
    iverilog, vvp = shutil.which("iverilog"), shutil.which("vvp")
    if iverilog is None or vvp is None:
        raise RuntimeError(
            "Icarus Verilog (iverilog and vvp) is not on PATH; install the Debian package 'iverilog' "
            "(sudo apt-get install -y iverilog) or run `python3 tools/lab.py test`, which installs it."
        )
    return iverilog, vvp


def _decl(kind: str, name: str, width: int) -> str:
    return f"  {kind} {'[%d:0] ' % (width - 1) if width > 1 else ''}{name};"


def testbench(p: Problem, *, vectors: int = 256, cycles: int = 80, oracle_cycles: int = 4000,
              seed: int = 1) -> str:
    """Verilog testbench driving ``top_module`` and ``ref_module`` with the same stimuli.

    Combinational: every input vector when there are at most 12 input bits, else ``vectors``
    seeded random ones. Clocked: ``cycles`` clock cycles of seeded random inputs, reset held
    for two cycles, then raised at random one cycle in 16. Run with ``+oracle`` it drives every
    vector (up to 16 input bits) or ``oracle_cycles`` cycles. Outputs are compared with ``!==``,
    so an unknown (x) where the reference has a value counts as a mismatch.
    """
    ins = ", ".join(n for n, _ in p.inputs)
    dut = ", ".join(f"{n}_dut" for n, _ in p.outputs)
    ref = ", ".join(f"{n}_ref" for n, _ in p.outputs)
    ports = [("clk", "clk"), ("reset", "reset")] if p.clocked else []
    ports += [(n, n) for n, _ in p.inputs]
    conn = ", ".join(f".{a}({b})" for a, b in ports)
    lines = ["`timescale 1ns/1ps", "module tb;"]
    lines += [_decl("reg", n, w) for n, w in p.inputs]
    lines += [_decl("wire", f"{n}_{s}", w) for n, w in p.outputs for s in ("dut", "ref")]
    lines += ["  integer i, total, errors, seed, oracle;"]
    # show: start testbench
    if p.clocked:
        lines += ["  reg clk = 0, reset = 1;", "  always #5 clk = ~clk;"]
    lines += [f"  top_module dut({conn}, " + ", ".join(f".{n}({n}_dut)" for n, _ in p.outputs) + ");",
              f"  ref_module ref0({conn}, " + ", ".join(f".{n}({n}_ref)" for n, _ in p.outputs) + ");",
              "  initial begin",
              f"    errors = 0; seed = {seed}; oracle = $test$plusargs(\"oracle\");"]
    if p.clocked:
        lines += [f"    total = oracle ? {oracle_cycles} : {cycles};",
                  f"    {{{ins}}} = 0;",
                  "    for (i = 0; i < total; i = i + 1) begin",
                  "      @(negedge clk);",
                  "      reset = (i < 2) || (($random(seed) & 15) == 0);",
                  f"      {{{ins}}} = $random(seed);"]
    else:
        every = p.input_bits <= _EXHAUSTIVE_BITS
        lines += [f"    total = oracle || {int(every)} ? {2 ** min(p.input_bits, _ORACLE_BITS)} : {vectors};",
                  "    for (i = 0; i < total; i = i + 1) begin",
                  f"      if (oracle || {int(every)}) {{{ins}}} = i; else {{{ins}}} = $random(seed);"]
    lines += ["      #1;",
              f"      if ({{{dut}}} !== {{{ref}}}) errors = errors + 1;",
              "    end",
              '    $display("Mismatches: %0d in %0d samples", errors, total);',
              "    $finish;", "  end", "endmodule", ""]
    # show: end testbench
    return "\n".join(lines)


@dataclass(frozen=True)
class RunResult:
    """The outcome of one candidate: its class, mismatches over samples, and the tool log."""

    cls: str
    mismatches: int = 0
    samples: int = 0
    log: str = ""


_MISMATCH = re.compile(r"Mismatches: (\d+) in (\d+) samples")


def classify(compile_rc: int, compile_log: str, sim_timed_out: bool, sim_log: str) -> RunResult:
    """Sort one compile and simulation into a failure class (see :data:`CLASSES`).

    The parser's "syntax error" makes ``syntax``; any other compile failure (a port the
    testbench cannot bind, an undeclared name) is ``elaboration``; a simulation killed at its
    time limit is ``timeout``; otherwise the testbench's mismatch count decides, and a run that
    never prints it (a runtime error) counts as a ``mismatch``.
    """
    # show: start classify
    if compile_rc != 0:
        return RunResult("syntax" if "syntax error" in compile_log else "elaboration", log=compile_log)
    if sim_timed_out:
        return RunResult("timeout", log=sim_log)
    found = _MISMATCH.search(sim_log)
    if found is None:
        return RunResult("mismatch", log=sim_log)
    errors, samples = int(found.group(1)), int(found.group(2))
    return RunResult("pass" if errors == 0 else "mismatch", errors, samples, sim_log)
    # show: end classify


def _check_source(source: object) -> str:
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    return source


def run_candidate(p: Problem, source: str, *, timeout: float = 2.0, oracle: bool = False,
                  seed: int = 1) -> RunResult:
    """Compile ``source`` (a ``top_module``) with the reference and testbench; simulate; classify.

    Args:
        p: the problem.
        source: the candidate's Verilog text.
        timeout: seconds allowed to the simulation (the compile gets 30 s).
        oracle: run the long (exhaustive or many-cycle) stimuli instead of the testbench's.
        seed: the testbench's random seed.
    """
    if not isinstance(p, Problem):
        raise TypeError(f"p must be a Problem, got {type(p).__name__}")
    _check_source(source)
    check_real("timeout", timeout, 0.0, strict=True)
    check_int("seed", seed, 0)
    iverilog, vvp = require_iverilog()
    reference = p.source.replace("module top_module", "module ref_module", 1)
    with tempfile.TemporaryDirectory(prefix="verilog-") as tmp:
        d = Path(tmp)
        (d / "candidate.v").write_text(source)
        (d / "reference.v").write_text(reference)
        (d / "tb.v").write_text(testbench(p, seed=seed))
        try:
            comp = subprocess.run([iverilog, "-g2005", "-s", "tb", "-o", str(d / "sim"), str(d / "tb.v"),
                                   str(d / "reference.v"), str(d / "candidate.v")],
                                  capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return RunResult("timeout", log="compile timed out")
        if comp.returncode != 0:
            return classify(comp.returncode, comp.stdout + comp.stderr, False, "")
        args = [vvp, "-n", str(d / "sim")] + (["+oracle"] if oracle else [])
        try:
            sim = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return classify(0, "", True, "")
        return classify(0, "", False, sim.stdout + sim.stderr)


def run_many(jobs: Sequence[tuple[Problem, str]], *, timeout: float = 2.0, oracle: bool = False,
             workers: int = 4) -> list[RunResult]:
    """:func:`run_candidate` over ``(problem, source)`` pairs, a few subprocesses at a time."""
    check_int("workers", workers, 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_candidate(job[0], job[1], timeout=timeout, oracle=oracle), jobs))


@dataclass(frozen=True)
class Mutant:
    """A candidate derived from a reference by one edit of known kind.

    Attributes:
        problem: the problem's name.
        kind: one of :data:`MUTANT_KINDS`.
        planted: the class the edit plants when it is deterministic, else ``None``.
        source: the mutated Verilog.
        note: what was edited.
    """

    problem: str
    kind: str
    planted: str | None
    source: str
    note: str = ""


_WIDTH = re.compile(r"\[(\d+):0\]")


def _mutate(p: Problem, kind: str, rng: random.Random) -> list[tuple[str, str]]:
    """Every ``(source, note)`` of one kind for ``p``; :func:`make_mutants` samples among them."""
    # show: start mutants
    src = p.source
    if kind == "syntax_slip":  # drop a statement's semicolon, or misspell a keyword
        out = [(p.header + "\n" + p.body.replace(";\n", "\n", 1), "first semicolon of the body dropped")]
        return out + [(src.replace("endmodule", "endmodul"), "endmodule misspelled")]
    if kind == "port_rename":  # the testbench binds ports by name
        return [(re.sub(rf"\b{name}\b", f"{name}_o", src), f"{name} -> {name}_o") for name, _ in p.outputs]
    if kind == "endless_loop":  # a loop that never yields to the simulator
        loop = "  integer spin;\n  initial begin spin = 0; while (1) spin = spin + 1; end\n"
        return [(src.replace("endmodule", loop + "endmodule"), "while (1) without a delay")]
    if kind == "operator_swap":
        return [(p.header + "\n" + p.body.replace(old, new, 1), f"{old} -> {new}") for old, new in p.swaps]
    if kind == "width_off_by_one":  # one range [n:0] becomes [n-1:0] or [n+1:0]
        out = []
        for m in _WIDTH.finditer(src):
            hi = int(m.group(1))
            for new in (hi - 1, hi + 1) if hi > 1 else (hi + 1,):
                edit = src[:m.start()] + f"[{new}:0]" + src[m.end():]
                out.append((edit, f"[{hi}:0] -> [{new}:0] at byte {m.start()}"))
        return out
    if kind == "missing_reset":
        return [(src.replace(p.reset_text, "", 1), "reset branch removed")] if p.reset_text else []
    raise ValueError(f"unknown mutant kind {kind!r}; expected one of {tuple(MUTANT_KINDS)}")
    # show: end mutants


def make_mutants(p: Problem, *, per_kind: int | None = None, seed: int = 0,
                 kinds: Sequence[str] | None = None) -> list[Mutant]:
    """Seeded mutants of ``p``'s reference, at most ``per_kind`` of each kind (``None``: all)."""
    if not isinstance(p, Problem):
        raise TypeError(f"p must be a Problem, got {type(p).__name__}")
    if per_kind is not None:
        check_int("per_kind", per_kind, 1)
    check_int("seed", seed, 0)
    rng = random.Random(f"{seed}-{p.name}")
    out: list[Mutant] = []
    for kind in (tuple(MUTANT_KINDS) if kinds is None else kinds):
        options = _mutate(p, kind, rng)
        options = [o for o in options if o[0] != p.source]
        if per_kind is not None and len(options) > per_kind:
            options = rng.sample(options, per_kind)
        out += [Mutant(p.name, kind, MUTANT_KINDS[kind], src, note) for src, note in options]
    return out


def widen(p: Problem, delta: int) -> str:
    """``p``'s spec and reference as one document, every range ``[n:0]`` widened by ``delta``.

    The body keeps its structure, so a widened copy is a sibling of the problem: the same
    circuit at another width (the spec's ``"N-bit"`` follows; other numbers in it do not).
    """
    if not isinstance(p, Problem):
        raise TypeError(f"p must be a Problem, got {type(p).__name__}")
    check_int("delta", delta, -64)
    smallest = min([int(m.group(1)) for m in _WIDTH.finditer(p.source)] or [64])
    if smallest + delta < 1:
        raise ValueError(f"delta={delta} would shrink a range of {p.name} below [1:0]")
    src = _WIDTH.sub(lambda m: f"[{int(m.group(1)) + delta}:0]", p.source)
    spec = re.sub(r"\b(\d+)-bit", lambda m: f"{int(m.group(1)) + delta}-bit", p.spec)
    return f"// {spec}\n{src}"


def training_documents(n: int, *, held_out: Sequence[str] = (), seed: int = 0,
                       pair_rate: float = 0.5) -> list[str]:
    """``n`` templated Verilog documents from the problems whose family is not in ``held_out``.

    Each document is a widened sibling of a problem (:func:`widen`, ``delta`` in -1..3); a
    fraction ``pair_rate`` are two siblings of the same problem one after the other, which is
    what teaches a small model to use an example in its prompt.
    """
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    rate = check_real("pair_rate", pair_rate, 0.0)
    families = {p.family for p in PROBLEMS}
    unknown = set(held_out) - families
    if unknown:
        raise ValueError(f"held_out has unknown families {sorted(unknown)}; expected some of {sorted(families)}")
    pool = [p for p in PROBLEMS if p.family not in set(held_out)]
    if not pool:
        raise ValueError("held_out leaves no problem to train on")
    rng = random.Random(seed)

    def sibling(p: Problem, avoid: int | None = None) -> tuple[int, str]:
        deltas = [d for d in range(-1, 4) if d != avoid and _fits(p, d)]
        d = rng.choice(deltas)
        return d, widen(p, d)

    docs = []
    for _ in range(n):
        p = rng.choice(pool)
        d, doc = sibling(p)
        if rng.random() < rate:
            doc = doc + "\n" + sibling(p, avoid=d)[1]
        docs.append(doc)
    return docs


def _fits(p: Problem, delta: int) -> bool:
    return min([int(m.group(1)) for m in _WIDTH.finditer(p.source)] or [64]) + delta >= 1


def code_prompt(p: Problem, *, example: bool, delta: int = 2) -> str:
    """The prompt for ``p``: its spec and header, after a sibling at ``+delta`` bits if ``example``."""
    if not isinstance(p, Problem):
        raise TypeError(f"p must be a Problem, got {type(p).__name__}")
    return (widen(p, delta) + "\n" if example else "") + p.prompt


def candidate_from_completion(p: Problem, completion: str) -> str:
    """The candidate module: ``p``'s header and the model's body, cut after the first ``endmodule``."""
    body = completion.split("endmodule", 1)[0]
    return p.header + "\n" + body + "endmodule\n"
