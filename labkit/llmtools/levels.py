"""Levels as programs, scored in a physics engine (ChatGPT4PCG 2).

ChatGPT4PCG 2 (arXiv:2403.02610) asks a language model for a program of ``drop_block(kind, x)``
calls that builds a Science Birds structure shaped like a target character. Each call lets one
of three blocks fall, like a Tetris piece, into the columns starting at ``x``; ``b11`` is a
1 x 1 square, ``b13`` a 1-wide, 3-tall pillar and ``b31`` a 3-wide, 1-tall beam. A level is
scored three ways: *stability* (after the physics has run, the share of blocks that did not
move), *similarity* (a classifier reads the picture of the settled structure) and, new in the
second competition, *diversity*, the cosine distance between the classifier's softmax vectors
of a generator's levels for one target, summed over the pairs and divided by the number of
levels,

    D = (1 / n) * sum_{i < j} (1 - <p_i, p_j> / (|p_i| |p_j|)).

Here the characters are digits (the book's digit classifier reads 8 x 8 pictures), the engine
is pymunk (a 2-D rigid-body engine, one unit per grid cell, gravity 10 units/s^2) and the
generators are hand-written templates, random programs and a repetitive generator; no
language model writes the programs.

Shapes: N blocks, L levels, K classes (10).
Section: chapter 18, "Levels as programs: ChatGPT4PCG".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from labkit.validation import check_int, check_real

BLOCKS: dict[str, tuple[int, int]] = {"b11": (1, 1), "b13": (1, 3), "b31": (3, 1)}
"""Each block kind's (width, height) in grid units, as in the competition."""

WIDTH = 20
"""Columns of a level; a block's columns must lie in [0, WIDTH)."""


@dataclass
class Level:
    """A level as the program that builds it: the ``drop_block`` calls, in order.

    Blocks are placed as the competition places them: a block falls straight down into its
    columns ``x .. x + width - 1`` and stops on the highest block (or the ground) below any of
    them. An overhang is therefore possible, and holding it up is the physics engine's job.
    """

    width: int = WIDTH
    calls: list[tuple[str, int]] = field(default_factory=list)

    def drop_block(self, kind: str, x: int) -> "Level":
        """Append one call; ``kind`` is ``"b11"``, ``"b13"`` or ``"b31"``, ``x`` its left column."""
        if kind not in BLOCKS:
            raise ValueError(f"kind must be one of {sorted(BLOCKS)}, got {kind!r}")
        w = BLOCKS[kind][0]
        x = check_int("x", x, 0)
        if x + w > self.width:
            raise ValueError(f"x={x}: a {kind} block ({w} wide) would leave the level's "
                             f"{self.width} columns (x must be <= {self.width - w})")
        self.calls.append((kind, x))
        return self

    def boxes(self) -> np.ndarray:
        """The blocks where the drops put them: (N, 4) rows of (x_left, y_bottom, width, height)."""
        heights = np.zeros(self.width, dtype=np.int64)
        out = []
        for kind, x in self.calls:
            w, h = BLOCKS[kind]
            y = int(heights[x:x + w].max())
            heights[x:x + w] = y + h
            out.append((x, y, w, h))
        return np.array(out, dtype=np.float64).reshape(-1, 4)


def program(calls: list[tuple[str, int]], *, width: int = WIDTH) -> Level:
    """A :class:`Level` from a list of ``(kind, x)`` calls, each checked by ``drop_block``."""
    level = Level(width=check_int("width", width, 3))
    for kind, x in calls:
        level.drop_block(kind, x)
    return level


@dataclass(frozen=True)
class Settled:
    """What the physics made of a level: start and end boxes and how far each block moved."""

    start: np.ndarray  # (N, 4): x_left, y_bottom, width, height
    centres: np.ndarray  # (N, 2): block centres after settling
    angles: np.ndarray  # (N,): block angles after settling, radians
    moved: np.ndarray  # (N,): distance each centre travelled, grid units

    def stability(self, delta: float = 0.1) -> float:
        """The share of blocks whose centre moved at most ``delta`` units (1 for no blocks)."""
        delta = check_real("delta", delta, 0.0, strict=True)
        return float((self.moved <= delta).mean()) if len(self.moved) else 1.0

    def stable(self, delta: float = 0.1) -> bool:
        """True when no block moved more than ``delta`` units."""
        return self.stability(delta) == 1.0


def settle(level: Level, *, steps: int = 120, dt: float = 1 / 60, jolt: float = 0.5,
           friction: float = 0.8) -> Settled:
    """Run the level in pymunk and report how far each block moved.

    Every block starts where its drop put it, at rest except for ``jolt``: one sideways
    velocity (units/s) given to all blocks at once, as if the ground were knocked. A structure
    that only stands while nothing touches it then falls; a sound one slides a little and stops.

    Args:
        level: the program to run.
        steps: physics steps (``steps * dt`` seconds of simulated time).
        dt: the step, seconds.
        jolt: initial sideways velocity of every block, grid units per second.
        friction: friction coefficient of blocks and ground.
    """
    import pymunk  # lazy: only this section needs the physics engine

    if not isinstance(level, Level):
        raise TypeError(f"level must be a Level, got {type(level).__name__}")
    steps = check_int("steps", steps, 1)
    dt = check_real("dt", dt, 0.0, strict=True)
    jolt = check_real("jolt", jolt, 0.0)
    friction = check_real("friction", friction, 0.0)
    start = level.boxes()
    # show: start settle
    space = pymunk.Space()
    space.gravity = (0.0, -10.0)
    ground = pymunk.Segment(space.static_body, (-100.0, 0.0), (100.0, 0.0), 0.0)
    ground.friction = friction
    space.add(ground)
    bodies = []
    for x, y, w, h in start:
        body = pymunk.Body(w * h, pymunk.moment_for_box(w * h, (w, h)))
        body.position = (x + w / 2, y + h / 2)
        body.velocity = (jolt, 0.0)
        box = pymunk.Poly.create_box(body, (w, h), radius=0.0)
        box.friction, box.elasticity = friction, 0.0
        space.add(body, box)
        bodies.append(body)
    for _ in range(steps):
        space.step(dt)
    centres = np.array([tuple(b.position) for b in bodies]).reshape(-1, 2)
    moved = np.linalg.norm(centres - (start[:, :2] + start[:, 2:] / 2), axis=1)
    # show: end settle
    angles = np.array([b.angle for b in bodies], dtype=np.float64)
    return Settled(start=start, centres=centres, angles=angles, moved=moved)


def _corners(centres: np.ndarray, sizes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(N, 4, 2) corners of rotated boxes."""
    half = sizes[:, None, :] / 2 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    rx = half[..., 0] * c - half[..., 1] * s
    ry = half[..., 0] * s + half[..., 1] * c
    return np.stack([rx, ry], -1) + centres[:, None, :]


def render(settled: Settled, *, size: int = 8, supersample: int = 4) -> torch.Tensor:
    """The settled structure as a ``size`` x ``size`` picture in [-1, 1], like the digits.

    The structure's bounding box is scaled, aspect kept, so that its longer side spans the
    picture, and centred; a pixel's value is the share of its ``supersample``^2 sample points
    that fall inside a block, mapped from [0, 1] to [-1, 1].

    Returns:
        (1, size, size) float32.
    """
    if not isinstance(settled, Settled):
        raise TypeError(f"settled must be a Settled, got {type(settled).__name__}")
    size = check_int("size", size, 2)
    supersample = check_int("supersample", supersample, 1)
    img = np.zeros((size, size))
    if len(settled.moved):
        sizes = settled.start[:, 2:]
        corners = _corners(settled.centres, sizes, settled.angles)  # (N, 4, 2)
        lo, hi = corners.reshape(-1, 2).min(0), corners.reshape(-1, 2).max(0)
        scale = size / max(hi - lo)
        mid = (lo + hi) / 2
        k = size * supersample
        u = (np.arange(k) + 0.5) / supersample  # picture coordinates
        px, py = np.meshgrid(u, u)  # row 0 is the top of the picture
        wx = mid[0] + (px - size / 2) / scale
        wy = mid[1] - (py - size / 2) / scale
        inside = np.zeros((k, k), dtype=bool)
        c, s = np.cos(settled.angles), np.sin(settled.angles)
        for (cx, cy), (w, h), ci, si in zip(settled.centres, sizes, c, s):
            dx, dy = wx - cx, wy - cy
            lx, ly = dx * ci + dy * si, -dx * si + dy * ci  # into the block's frame
            inside |= (np.abs(lx) <= w / 2) & (np.abs(ly) <= h / 2)
        img = inside.reshape(size, supersample, size, supersample).mean((1, 3))
    return torch.as_tensor(img * 2 - 1, dtype=torch.float32)[None]


@torch.no_grad()
def read_levels(images: torch.Tensor, classifier: torch.nn.Module) -> torch.Tensor:
    """The classifier's softmax over the digits for each picture: (L, 1, 8, 8) -> (L, K)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("images must be an (L, 1, 8, 8) tensor")
    classifier.eval()
    return torch.softmax(classifier(images.float()), dim=1)


def diversity(probs: torch.Tensor | np.ndarray) -> float:
    """The competition's diversity of one generator's levels for one target.

    Cosine distance between the levels' softmax vectors, summed over the pairs and divided by
    the number of levels (not of pairs), as the competition's checking script computes it.

    Args:
        probs: (L, K) softmax vectors, L >= 1.
    """
    p = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    if p.dim() != 2 or p.shape[0] < 1:
        raise ValueError(f"probs must be (L, K) with L >= 1, got shape {tuple(p.shape)}")
    # show: start diversity
    unit = p / p.norm(dim=1, keepdim=True)
    dist = 1.0 - unit @ unit.T  # (L, L) cosine distances
    i, j = torch.triu_indices(len(p), len(p), offset=1)
    return float(dist[i, j].sum() / len(p))
    # show: end diversity


_WALLS = [("b13", 0), ("b13", 1), ("b13", 3), ("b13", 4)]  # two 2-wide walls, a gap at 2
_BRIDGE = [("b31", 1), ("b11", 0), ("b11", 4)]  # a row across the gap
_FLOOR = [("b31", 0), ("b11", 3), ("b11", 4)]  # the bottom row, 5 wide

TEMPLATES: dict[int, list[list[tuple[str, int]]]] = {
    0: [_FLOOR + _WALLS + _WALLS + _BRIDGE],
    1: [[("b13", 2), ("b13", 3)] * 3,
        [("b31", 1)] + [("b13", 2), ("b13", 3)] * 2 + [("b11", 2), ("b11", 3)] * 2],
    4: [[("b13", 3), ("b13", 4), ("b11", 3), ("b11", 4), ("b31", 0), ("b11", 0)]],
    6: [_FLOOR + _WALLS + _BRIDGE + [("b13", 0), ("b13", 1), ("b13", 0)],
        _FLOOR + _WALLS + _BRIDGE + [("b13", 0), ("b13", 1)] * 2],
    8: [_FLOOR + _WALLS + _BRIDGE + _WALLS + _BRIDGE],
}
"""Hand-written programs, 5 columns wide from x = 0, for the digits they were made for."""

SPAN = 5
"""Columns a template (and a random program) occupies."""


def _offset(calls: list[tuple[str, int]], x0: int) -> list[tuple[str, int]]:
    return [(kind, x + x0) for kind, x in calls]


def template_level(digit: int, rng: np.random.Generator, *, extra: int = 2) -> Level:
    """A jittered template: a random variant at a random offset, with up to ``extra`` b11
    blocks dropped on random columns of its span afterwards."""
    if digit not in TEMPLATES:
        raise ValueError(f"digit must be one of {sorted(TEMPLATES)}, got {digit!r}")
    extra = check_int("extra", extra, 0)
    variants = TEMPLATES[digit]
    calls = variants[int(rng.integers(len(variants)))]
    x0 = int(rng.integers(WIDTH - SPAN + 1))
    n_extra = int(rng.integers(extra + 1))
    calls = calls + [("b11", int(c)) for c in rng.integers(SPAN, size=n_extra)]
    return program(_offset(calls, x0))


def random_level(rng: np.random.Generator, *, n_blocks: tuple[int, int] = (6, 16)) -> Level:
    """A random program: ``n_blocks`` (inclusive range) random kinds at random columns of a
    ``SPAN``-wide window at a random offset."""
    lo, hi = n_blocks
    n = int(rng.integers(check_int("n_blocks[0]", lo, 1), check_int("n_blocks[1]", hi, lo) + 1))
    x0 = int(rng.integers(WIDTH - SPAN + 1))
    calls = []
    for _ in range(n):
        kind = sorted(BLOCKS)[int(rng.integers(len(BLOCKS)))]
        calls.append((kind, x0 + int(rng.integers(SPAN - BLOCKS[kind][0] + 1))))
    return program(calls)


def repetitive_level(digit: int) -> Level:
    """The repetitive generator: the first template of ``digit``, unjittered, every time."""
    if digit not in TEMPLATES:
        raise ValueError(f"digit must be one of {sorted(TEMPLATES)}, got {digit!r}")
    return program(_offset(TEMPLATES[digit][0], (WIDTH - SPAN) // 2))


GENERATORS = ("templates", "random", "repetitive")


@dataclass(frozen=True)
class Scores:
    """Per generator and target digit: the levels' pictures and scores."""

    images: dict[tuple[str, int], torch.Tensor]  # (L, 1, 8, 8)
    probs: dict[tuple[str, int], torch.Tensor]  # (L, K)
    stability: dict[tuple[str, int], np.ndarray]  # (L,) share of unmoved blocks

    def table(self, digits: list[int]) -> dict[str, dict[str, float]]:
        """Means over the digits of stability, similarity (softmax probability of the target),
        reading accuracy (target is the top class) and the competition's diversity."""
        out = {}
        for g in GENERATORS:
            keys = [(g, d) for d in digits]
            out[g] = {
                "stability": float(np.mean([self.stability[k].mean() for k in keys])),
                "similarity": float(np.mean([self.probs[k][:, k[1]].mean() for k in keys])),
                "read": float(np.mean([(self.probs[k].argmax(1) == k[1]).float().mean()
                                       for k in keys])),
                "diversity": float(np.mean([diversity(self.probs[k]) for k in keys])),
            }
        return out


def score_generators(classifier: torch.nn.Module, *, n_levels: int, seed: int = 0,
                     delta: float = 0.25, **physics: float) -> Scores:
    """Build ``n_levels`` levels per generator and digit of :data:`TEMPLATES`, run, read them.

    ``physics`` goes to :func:`settle`; a random level is scored against every target digit.
    """
    n_levels = check_int("n_levels", n_levels, 2)
    delta = check_real("delta", delta, 0.0, strict=True)
    rng = np.random.default_rng(seed)
    images, probs, stab = {}, {}, {}
    for g in GENERATORS:
        for d in TEMPLATES:
            levels = [template_level(d, rng) if g == "templates" else random_level(rng)
                      if g == "random" else repetitive_level(d) for _ in range(n_levels)]
            runs = [settle(lv, **physics) for lv in levels]
            images[g, d] = torch.stack([render(r) for r in runs])
            probs[g, d] = read_levels(images[g, d], classifier)
            stab[g, d] = np.array([r.stability(delta) for r in runs])
    return Scores(images=images, probs=probs, stability=stab)
