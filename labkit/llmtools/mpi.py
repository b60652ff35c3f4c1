"""MPI call completion: generated MPI C programs, masked calls, call-site scoring and a runner.

MPIrigen (Schneider et al., 2024) fine-tunes a code model to put MPI calls back into a
program from which they were removed, and scores the prediction per field: the call's
location (line), its function and its arguments. This module builds the harness for a
miniature version of that task:

- :func:`make_program` writes a seeded MPI C program of about 20 lines from one of four
  families (a ring exchange, a reduction, scatter/gather, a halo exchange), with random
  names, constants and variants, so that the lines after a call often tell which call it was.
- :func:`call_sites` parses a program with ``pycparser`` (stub typedefs in place of
  ``mpi.h``) and lists its MPI calls with line, function and arguments.
- :func:`make_task` masks a hole of one to three lines holding exactly one MPI call;
  :func:`score` parses a predicted hole and scores line, function and arguments.
- :func:`run_program` compiles with ``mpicc`` and runs with ``mpiexec -n 2`` (MPICH), each
  with a timeout; :func:`same_output` compares outputs as sorted lines (ranks print in any
  order).
- :class:`NGram` is the left-only byte n-gram baseline.

What the miniature leaves out: HPCorpusMPI's real programs (Fortran too), calls masked all
at once, and a model of billions of parameters.

Section: chapter 18, "MPI call completion: MPIrigen".
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pycparser import c_ast, c_generator, c_parser

from labkit.validation import check_int, check_real

__all__ = ["FAMILIES", "CallSite", "MaskTask", "NGram", "RunResult", "Score", "call_sites", "make_program",
           "make_task", "parse_hole", "run_program", "same_output", "score"]

#: The four program families.
FAMILIES = ("ring", "reduce", "scatter", "halo")

#: Typedefs standing in for ``mpi.h`` (constants such as ``MPI_INT`` parse as plain identifiers).
STUBS = ("typedef int MPI_Comm; typedef int MPI_Datatype; typedef int MPI_Op; "
         "typedef struct { int source; } MPI_Status; int printf(const char *, ...);")

_HEAD = """#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
"""
_TAIL = """  MPI_Finalize();
  return 0;
}
"""
_W = "MPI_COMM_WORLD"
_NAMES = ("x", "val", "buf", "data", "a", "msg", "local", "part")


def _ring(rng: random.Random) -> list[str]:
    v, w = rng.sample(_NAMES, 2)
    tag = rng.randint(0, 9)
    lines = [f"  int {v} = {rng.randint(2, 9)} * rank + {rng.randint(0, 9)}, {w} = 0;",
             "  int next = (rank + 1) % size, prev = (rank + size - 1) % size;"]
    send = f"MPI_Send(&{v}, 1, MPI_INT, next, {tag}, {_W});"
    recv = f"MPI_Recv(&{w}, 1, MPI_INT, prev, {tag}, {_W}, MPI_STATUS_IGNORE);"
    if rng.random() < 0.5:
        lines.append(f"  MPI_Sendrecv(&{v}, 1, MPI_INT, next, {tag}, &{w}, 1, MPI_INT, prev, {tag},")
        lines[-1] += f" {_W}, MPI_STATUS_IGNORE);"
    else:
        lines += ["  if (rank % 2 == 0) {", f"    {send}", f"    {recv}", "  } else {",
                  f"    {recv}", f"    {send}", "  }"]
    if rng.random() < 0.5:
        lines.append(f"  {w} += {rng.randint(1, 5)};")
    lines.append(f'  printf("rank %d got %d\\n", rank, {w});')
    return lines


def _reduce(rng: random.Random) -> list[str]:
    v, r = rng.sample(_NAMES, 2)
    op = rng.choice(("MPI_SUM", "MPI_MAX", "MPI_PROD"))
    lines = [f"  int {v} = {rng.randint(2, 9)} * rank + {rng.randint(1, 9)}, {r} = 0;"]
    if rng.random() < 0.5:
        lines.append(f"  {v} = {v} * {v};")
    if rng.random() < 0.5:
        lines += [f"  MPI_Reduce(&{v}, &{r}, 1, MPI_INT, {op}, 0, {_W});",
                  f'  if (rank == 0) printf("result %d\\n", {r});']
    else:
        lines += [f"  MPI_Allreduce(&{v}, &{r}, 1, MPI_INT, {op}, {_W});",
                  f'  printf("rank %d result %d\\n", rank, {r});']
    return lines


def _scatter(rng: random.Random) -> list[str]:
    src, part = rng.sample(_NAMES, 2)
    n = rng.randint(2, 4)
    lines = [f"  int {src}[{2 * n}], {part}[{n}];",
             f"  for (int i = 0; i < {2 * n}; i++) {src}[i] = {rng.randint(2, 9)} * i;"]
    if rng.random() < 0.5:
        lines.append(f"  MPI_Bcast({src}, {2 * n}, MPI_INT, 0, {_W});")
    lines += [f"  MPI_Scatter({src}, {n}, MPI_INT, {part}, {n}, MPI_INT, 0, {_W});",
              f"  for (int i = 0; i < {n}; i++) {part}[i] += rank;"]
    if rng.random() < 0.5:
        lines += [f"  MPI_Gather({part}, {n}, MPI_INT, {src}, {n}, MPI_INT, 0, {_W});",
                  f'  if (rank == 0) printf("last %d\\n", {src}[{2 * n - 1}]);']
    else:
        lines += [f"  MPI_Allgather({part}, {n}, MPI_INT, {src}, {n}, MPI_INT, {_W});",
                  f'  printf("rank %d last %d\\n", rank, {src}[{2 * n - 1}]);']
    return lines


def _halo(rng: random.Random) -> list[str]:
    u = rng.choice(("u", "f", "grid", "row"))
    n = rng.randint(3, 6)
    lines = [f"  double {u}[{n + 2}];",
             f"  for (int i = 0; i < {n + 2}; i++) {u}[i] = rank * {n} + i;",
             "  int left = (rank + size - 1) % size, right = (rank + 1) % size;",
             f"  MPI_Sendrecv(&{u}[{n}], 1, MPI_DOUBLE, right, 0, &{u}[0], 1, MPI_DOUBLE, left, 0,",
             f"  MPI_Sendrecv(&{u}[1], 1, MPI_DOUBLE, left, 1, &{u}[{n + 1}], 1, MPI_DOUBLE, right, 1,"]
    lines[3] += f" {_W}, MPI_STATUS_IGNORE);"
    lines[4] += f" {_W}, MPI_STATUS_IGNORE);"
    if rng.random() < 0.5:
        lines.append(f"  MPI_Barrier({_W});")
    lines.append(f'  printf("rank %d halo %g %g\\n", rank, {u}[0], {u}[{n + 1}]);')
    return lines


_BODIES = {"ring": _ring, "reduce": _reduce, "scatter": _scatter, "halo": _halo}


def make_program(family: str, seed: int) -> str:
    """A seeded MPI C program of ``family`` (one of :data:`FAMILIES`), about 15-20 lines.

    Raises:
        ValueError: an unknown family or a negative seed.
    """
    if family not in _BODIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    check_int("seed", seed, 0)
    rng = random.Random(f"{family}-{seed}")
    return _HEAD + "\n".join(_BODIES[family](rng)) + "\n" + _TAIL


@dataclass(frozen=True)
class CallSite:
    """One MPI call: its 1-based line, the function and the arguments as normalised C text."""

    line: int
    function: str
    args: tuple[str, ...]


class _Calls(c_ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[CallSite] = []
        self.gen = c_generator.CGenerator()

    def visit_FuncCall(self, node: c_ast.FuncCall) -> None:  # noqa: N802 (pycparser's naming)
        name = getattr(node.name, "name", "")
        if isinstance(name, str) and name.startswith("MPI_"):
            args = tuple(self.gen.visit(a) for a in (node.args.exprs if node.args else []))
            self.found.append(CallSite(node.coord.line, name, args))
        self.generic_visit(node)


def _strip_includes(source: str) -> str:
    """Replace ``#include`` lines: the first by the stub typedefs, the others by blank lines."""
    out, stubbed = [], False
    for line in source.split("\n"):
        if line.lstrip().startswith("#"):
            out.append("" if stubbed else STUBS)
            stubbed = True
        else:
            out.append(line)
    text = "\n".join(out)
    return text if stubbed else STUBS + " " + text  # still one line: line numbers unchanged


# show: start sites
def call_sites(source: str) -> list[CallSite]:
    """Every MPI call of a C program, in source order, found by parsing it.

    Raises:
        TypeError: ``source`` is not a str.
        ValueError: the program does not parse, or it holds no MPI call.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    try:
        ast = c_parser.CParser().parse(_strip_includes(source), filename="<program>")
    except Exception as err:  # pycparser raises its own ParseError subclasses
        raise ValueError(f"source does not parse as C: {err}") from err
    visitor = _Calls()
    visitor.visit(ast)  # walks the tree, collecting MPI_* FuncCall nodes with coordinates
    if not visitor.found:
        raise ValueError("source holds no MPI call")
    return sorted(visitor.found, key=lambda c: c.line)
# show: end sites


def parse_hole(lines: Sequence[str]) -> CallSite | None:
    """The first MPI call among predicted ``lines`` (``line`` is its 0-based index), or None.

    Each line is parsed on its own inside a function body; a line that does not parse
    (an unbalanced brace, generated garbage) holds no call.
    """
    for i, line in enumerate(lines):
        try:
            ast = c_parser.CParser().parse(f"{STUBS} void f(void) {{ {line} }}")
        except Exception:  # noqa: BLE001 (any parse failure means no call on this line)
            continue
        visitor = _Calls()
        visitor.visit(ast)
        if visitor.found:
            site = visitor.found[0]
            return CallSite(i, site.function, site.args)
    return None


#: Calls a task never masks: every program has them in the same place.
BOILERPLATE = ("MPI_Init", "MPI_Comm_rank", "MPI_Comm_size", "MPI_Finalize")


@dataclass(frozen=True)
class MaskTask:
    """A program with a hole of ``len(hole)`` lines holding exactly one MPI call.

    Attributes:
        prefix, suffix: the text before and after the hole (``prefix`` ends with a newline).
        hole: the masked lines; ``target`` is the masked call with ``line`` its index in ``hole``.
        family, seed: where the program came from.
    """

    prefix: str
    hole: tuple[str, ...]
    suffix: str
    target: CallSite
    family: str
    seed: int

    @property
    def program(self) -> str:
        """The reference program."""
        return self.fill(self.hole)

    def fill(self, lines: Sequence[str]) -> str:
        """The program with ``lines`` in the hole."""
        return self.prefix + "".join(line + "\n" for line in lines) + self.suffix


def make_task(program: str, seed: int, *, family: str = "", program_seed: int = -1) -> MaskTask:
    """Mask one non-boilerplate MPI call of ``program`` in a hole of 1-3 lines, chosen with ``seed``.

    The hole holds the call's line and up to two neighbouring lines without MPI calls, so the
    call's position inside the hole varies.

    Raises:
        ValueError: the program holds no MPI call outside the boilerplate.
    """
    check_int("seed", seed, 0)
    sites = [s for s in call_sites(program) if s.function not in BOILERPLATE]
    if not sites:
        raise ValueError("program holds no MPI call to mask (only the boilerplate)")
    rng = random.Random(seed)
    site = rng.choice(sites)
    lines = program.split("\n")
    mpi_lines = {s.line for s in call_sites(program)}
    idx = site.line - 1
    options = [(lo, hi) for lo in range(idx - 2, idx + 1) for hi in range(idx + 1, idx + 4)
               if hi - lo <= 3 and lo >= 0 and hi <= len(lines) - 1
               and not any(j + 1 in mpi_lines for j in range(lo, hi) if j != idx)]
    lo, hi = rng.choice(options)
    target = CallSite(idx - lo, site.function, site.args)
    return MaskTask(prefix="".join(line + "\n" for line in lines[:lo]), hole=tuple(lines[lo:hi]),
                    suffix="\n".join(lines[hi:]), target=target, family=family, seed=program_seed)


@dataclass(frozen=True)
class Score:
    """Per-field correctness of one prediction (``location``: the call on the masked line)."""

    location: bool
    function: bool
    arguments: bool


# show: start score
def score(task: MaskTask, predicted: Sequence[str]) -> Score:
    """Score predicted hole lines against the masked call: line, function, arguments.

    The prediction's first MPI call (found by parsing each line) is compared with the target:
    the same index in the hole, the same function, the same argument texts. Arguments
    count only when the function is right.
    """
    got = parse_hole(list(predicted)[:len(task.hole)])
    if got is None:
        return Score(False, False, False)
    want = task.target
    same_function = got.function == want.function
    return Score(location=got.line == want.line, function=same_function,
                 arguments=same_function and got.args == want.args)
# show: end score


@dataclass(frozen=True)
class RunResult:
    """``status``: ``"ok"``, ``"compile"`` (mpicc failed), ``"runtime"`` (non-zero exit) or ``"timeout"``."""

    status: str
    stdout: str


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install MPICH (Debian packages mpich and libmpich-dev, "
                           "e.g. apt-get install -y mpich libmpich-dev)")
    return path


# show: start run
def run_program(source: str, *, nprocs: int = 2, timeout: float = 10.0) -> RunResult:
    """Compile ``source`` with ``mpicc`` and run it with ``mpiexec -n nprocs``, each with ``timeout`` s.

    Raises:
        RuntimeError: ``mpicc`` or ``mpiexec`` is not installed (names the Debian packages).
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    check_int("nprocs", nprocs, 1, 8)
    timeout = check_real("timeout", timeout, 0.0, strict=True)
    mpicc, mpiexec = _tool("mpicc"), _tool("mpiexec")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "prog.c", Path(tmp) / "prog"
        src.write_text(source)
        try:
            built = subprocess.run([mpicc, "-O0", "-o", str(exe), str(src)], capture_output=True, text=True,
                                   timeout=timeout)
        except subprocess.TimeoutExpired:
            return RunResult("timeout", "")
        if built.returncode != 0:
            return RunResult("compile", built.stderr)
        try:
            ran = subprocess.run([mpiexec, "-n", str(nprocs), str(exe)], capture_output=True, text=True,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:  # e.g. a send that no rank receives
            return RunResult("timeout", "")
    return RunResult("ok" if ran.returncode == 0 else "runtime", ran.stdout)


def same_output(a: RunResult, b: RunResult) -> bool:
    """Both ran and printed the same lines (in any order: ranks print concurrently)."""
    return a.status == b.status == "ok" and sorted(a.stdout.splitlines()) == sorted(b.stdout.splitlines())
# show: end run


class NGram:
    """A left-only byte n-gram: the longest context seen in training (up to ``order`` bytes) votes.

    Generation is greedy: the most frequent next byte after the longest matching context.
    """

    def __init__(self, documents: Sequence[str], order: int = 8) -> None:
        check_int("order", order, 1, 32)
        if isinstance(documents, str) or not documents:
            raise ValueError("documents must be a non-empty sequence of strings")
        self.order = order
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        for doc in documents:
            for i in range(len(doc)):
                for k in range(min(order, i) + 1):
                    self.counts[doc[i - k:i]][doc[i]] += 1

    def next_char(self, context: str) -> str:
        """The most frequent byte after the longest suffix of ``context`` seen in training."""
        for k in range(min(self.order, len(context)), -1, -1):
            seen = self.counts.get(context[len(context) - k:])
            if seen:
                return seen.most_common(1)[0][0]
        return "\n"

    def complete(self, prompt: str, n_lines: int, max_chars: int = 400) -> list[str]:
        """Continue ``prompt`` greedily for ``n_lines`` lines (or ``max_chars`` bytes)."""
        check_int("n_lines", n_lines, 1)
        text = prompt
        for _ in range(max_chars):
            text += self.next_char(text)
            if text[len(prompt):].count("\n") >= n_lines:
                break
        return text[len(prompt):].split("\n")[:n_lines]
