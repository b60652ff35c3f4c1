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
- :func:`tokenize`, :class:`Vocab`, :func:`fim_tokens` and :class:`TokenCorpus` turn
  programs into training examples for a 2-block GPT (:class:`labkit.lm.GPT`) over C tokens,
  half of them in fill-in-the-middle order (``<PRE> prefix <SUF> suffix <MID> hole``);
  :func:`predict_hole` asks it left-only or fill-in-the-middle.
- :class:`NGram` is the left-only baseline: a longest-match n-gram over the same tokens.

What the miniature leaves out: HPCorpusMPI's real programs (Fortran too), calls masked all
at once, and MonoCoder (0.9 billion parameters) in place of a model of about 0.1 million.

Section: chapter 18, "MPI call completion: MPIrigen".
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycparser import c_ast, c_generator, c_parser

from labkit.lm.gpt import GPT
from labkit.validation import check_int, check_real

__all__ = ["BOILERPLATE", "FAMILIES", "SPECIALS", "CallSite", "MaskTask", "NGram", "RunResult", "Score",
           "TokenCorpus", "Vocab", "call_sites", "detokenize", "fim_tokens", "left_tokens", "make_program",
           "make_task", "parse_hole", "predict_hole", "run_program", "same_output", "score", "tokenize"]

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
    every = call_sites(program)
    sites = [s for s in every if s.function not in BOILERPLATE]
    if not sites:
        raise ValueError("program holds no MPI call to mask (only the boilerplate)")
    rng = random.Random(seed)
    site = rng.choice(sites)
    lines = program.split("\n")
    mpi_lines = {s.line for s in every}
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
    """A left-only longest-match n-gram over tokens (an n-gram of unbounded order with backoff).

    The next token is the most frequent one after the longest suffix of the context that
    occurs in the training programs (their bodies, as :func:`left_tokens` gives them);
    generation is greedy.
    """

    def __init__(self, vocab: Vocab, documents: Sequence[str]) -> None:
        if not isinstance(vocab, Vocab):
            raise TypeError(f"vocab must be a Vocab, got {type(vocab).__name__}")
        if isinstance(documents, str) or not documents:
            raise ValueError("documents must be a non-empty sequence of strings")
        self.vocab = vocab
        self.stream = np.array([i for d in documents for i in vocab.encode(left_tokens(d))])
        order = np.argsort(self.stream[:-1], kind="stable")  # positions p-1 grouped by token
        cuts = np.flatnonzero(np.diff(self.stream[:-1][order])) + 1
        #: token -> positions p whose previous token is it (the candidates after that token)
        self.after = {int(self.stream[g[0]]): g + 1 for g in np.split(order, cuts)}

    # show: start ngram
    def next_id(self, context: Sequence[int]) -> int:
        """The most frequent token after the longest match of ``context``'s end in training."""
        hits = self.after.get(context[-1]) if len(context) else None
        if hits is None:  # an unseen last token: the unigram votes
            return int(np.bincount(self.stream).argmax())
        for k in range(2, len(context) + 1):  # extend the match one token to the left
            keep = hits[hits - k >= 0]
            keep = keep[self.stream[keep - k] == context[-k]]
            if len(keep) == 0:
                break  # backoff: the longest match so far votes
            hits = keep
        return int(np.bincount(self.stream[hits]).argmax())
    # show: end ngram

    def predict_hole(self, task: MaskTask, max_new: int = 64) -> list[str]:
        """Greedy lines for ``task``'s hole, as many as it has, read from the left side only."""
        ids = self.vocab.encode(["<BOS>"] + tokenize(_body(task.prefix, "")[0]))
        newline, out = self.vocab.stoi.get("\n", -1), []
        for _ in range(max_new):
            nxt = self.next_id(ids)
            if nxt == self.vocab.stoi["<EOT>"]:
                break
            out.append(nxt)
            ids.append(nxt)
            if out.count(newline) >= len(task.hole):
                break
        return detokenize(self.vocab.decode(out))


# ---------------------------------------------------------------------------------------------
# The code model of this section: a 2-block GPT over C tokens, trained on generated programs,
# half of them in fill-in-the-middle order.

#: Splits C text into tokens: a newline, a line's indentation, a name, a number, a string, a sign.
_TOKEN = re.compile(r'\n|^[ ]+|[A-Za-z_]\w*|\d+|"(?:\\.|[^"\\\n])*"'
                    r'|\+\+|--|[-+*/%=!<>]=|&&|\|\||->|\S', re.MULTILINE)
#: Special tokens: fill-in-the-middle sentinels, start and end of document, unknown.
SPECIALS = ("<PRE>", "<SUF>", "<MID>", "<BOS>", "<EOT>", "<UNK>")


def tokenize(text: str) -> list[str]:
    """C ``text`` as tokens; spaces inside a line are dropped, a line's indentation is one token."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN.findall(text)


def detokenize(tokens: Sequence[str]) -> list[str]:
    """Tokens back to lines of C (tokens inside a line joined by single spaces)."""
    lines, line = [], []
    for tok in tokens:
        if tok == "\n":
            lines.append(_join(line))
            line = []
        else:
            line.append(tok)
    if line:
        lines.append(_join(line))
    return lines


def _join(line: list[str]) -> str:
    if line and line[0].strip() == "":
        return line[0] + " ".join(line[1:])
    return " ".join(line)


class Vocab:
    """Token ids: the special tokens first, then every token of ``documents`` in sorted order."""

    def __init__(self, documents: Sequence[str]) -> None:
        if isinstance(documents, str) or not documents:
            raise ValueError("documents must be a non-empty sequence of strings")
        seen = sorted({t for d in documents for t in tokenize(d)})
        self.itos = list(SPECIALS) + seen
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens`` (unseen ones map to ``<UNK>``)."""
        unk = self.stoi["<UNK>"]
        return [self.stoi.get(t, unk) for t in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Tokens of ``ids``."""
        return [self.itos[i] for i in ids]


# show: start fim
def _body(prefix: str, suffix: str) -> tuple[str, str]:
    """Drop the fixed head (includes, ``MPI_Init``, rank and size) and tail every program shares."""
    return prefix.removeprefix(_HEAD), suffix.removesuffix(_TAIL)


def fim_tokens(task: MaskTask) -> list[str]:
    """A masked program in fill-in-the-middle order: ``<PRE> prefix <SUF> suffix <MID> hole``."""
    prefix, suffix = _body(task.prefix, task.suffix)
    hole = "".join(line + "\n" for line in task.hole)
    return (["<PRE>"] + tokenize(prefix) + ["<SUF>"] + tokenize(suffix)
            + ["<MID>"] + tokenize(hole) + ["<EOT>"])


def left_tokens(program: str) -> list[str]:
    """A program's body in ordinary left-to-right order, between start and end of document."""
    return ["<BOS>"] + tokenize(_body(program, "")[0].removesuffix(_TAIL)) + ["<EOT>"]
# show: end fim


class TokenCorpus:
    """Training examples as one id stream; every window starts at an example's first token.

    Examples (programs, ``fim_rate`` of them as masked programs in fill-in-the-middle order)
    come from seeds ``0 .. n_programs - 1`` of every family; one in ten goes to validation.
    """

    def __init__(self, vocab: Vocab, n_programs: int, fim_rate: float = 0.5, seed: int = 0) -> None:
        check_int("n_programs", n_programs, 2)
        rate = check_real("fim_rate", fim_rate, 0.0)
        if rate > 1:
            raise ValueError(f"fim_rate must be in [0, 1], got {fim_rate}")
        rng = random.Random(seed)
        examples = []
        for s in range(n_programs):
            for family in FAMILIES:
                program = make_program(family, s)
                if rng.random() < rate:
                    examples.append(fim_tokens(make_task(program, rng.randrange(10**6), family=family)))
                else:
                    examples.append(left_tokens(program))
        rng.shuffle(examples)
        self.vocab, self.vocab_size = vocab, len(vocab)
        n_val = max(1, len(examples) // 10)
        self._streams = {"val": self._stream(examples[:n_val]), "train": self._stream(examples[n_val:])}

    def _stream(self, examples: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self.vocab.encode(e) for e in examples]
        lengths = torch.tensor([len(e) for e in ids])
        starts = torch.cumsum(lengths, 0) - lengths
        flat = torch.tensor([i for e in ids for i in e] + [self.vocab.stoi["<EOT>"]] * 512)
        return flat, starts

    def get_batch(self, split: str, *, batch_size: int, block_size: int, generator: torch.Generator,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` windows for next-token prediction, shapes (B, T) int64."""
        if split not in self._streams:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        data, starts = self._streams[split]
        offsets = starts[torch.randint(len(starts), (batch_size,), generator=generator)]
        offsets = offsets.clamp(max=len(data) - block_size - 1)
        window = data[offsets[:, None] + torch.arange(block_size + 1)[None, :]]
        return window[:, :-1].to(device or "cpu"), window[:, 1:].to(device or "cpu")


@torch.no_grad()
def _greedy(model: GPT, vocab: Vocab, prompt: list[str], *, max_new: int, stop_lines: int | None) -> list[str]:
    ids = torch.tensor([vocab.encode(prompt)])
    eot, newline = vocab.stoi["<EOT>"], vocab.stoi.get("\n", -1)
    out: list[int] = []
    for _ in range(max_new):
        nxt = int(model(ids[:, -model.cfg.block_size:]).logits[0, -1].argmax())
        if nxt == eot:
            break
        out.append(nxt)
        if stop_lines is not None and out.count(newline) >= stop_lines:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return detokenize(vocab.decode(out))


# show: start modes
def predict_hole(model: GPT, vocab: Vocab, task: MaskTask, mode: str, max_new: int = 48) -> list[str]:
    """The model's lines for ``task``'s hole, greedy; ``mode`` is ``"left"`` or ``"fim"``.

    ``left`` reads only the prefix, ``fim`` the prefix and the suffix; both write at most as
    many lines as the hole has (``fim`` stops earlier at the end-of-document token).
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a Vocab, got {type(vocab).__name__}")
    prefix, suffix = _body(task.prefix, task.suffix)
    if mode == "left":
        return _greedy(model, vocab, ["<BOS>"] + tokenize(prefix), max_new=max_new, stop_lines=len(task.hole))
    if mode == "fim":
        prompt = ["<PRE>"] + tokenize(prefix) + ["<SUF>"] + tokenize(suffix) + ["<MID>"]
        return _greedy(model, vocab, prompt, max_new=max_new, stop_lines=len(task.hole))
    raise ValueError(f"mode must be 'left' or 'fim', got {mode!r}")
# show: end modes
