"""Dense matching with anchor points: a sparse graph gives ambiguous local descriptors context.

After *DenseGAP: Graph-Structured Dense Correspondence Learning with Anchor Points* (Kuang et
al., 2021, arXiv:2112.06910). On a repeated texture every copy of a patch looks the same, so a
local descriptor alone cannot say which copy a pixel matches. DenseGAP first finds a few
reliable matches, *anchors* (mutual nearest neighbours that pass a ratio test and return to
where they started on the way A -> B -> A), and connects every anchor to the pixels around it by
a directed anchor -> pixel edge that carries their relative position. Message passing along
those edges tells each pixel *where it is relative to the anchors*; two pixels that match should
sit in the same place relative to corresponding anchors, which separates the copies. The
miniature: seeded textures with a few unique landmarks, a seeded affine warp with photometric
noise (so the true correspondence is known), a small fixed random CNN as descriptor, one round
of non-learned message passing (Gaussian weights of the anchor-to-pixel distance, summed with
:func:`labkit.graphs.message_passing`) and matching by the sum of descriptor and context
similarity. It leaves out the learned graph transformer, the learned coarse-to-fine decoder and
the real indoor and outdoor datasets.

Shapes: H x W images, P pixels (H * W), Q query pixels, A anchors, D descriptor channels.
Section: chapter 03, "DenseGAP: anchors for repeated textures"
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from labkit.data.synthetic import make_generator
from labkit.graphs.edges import message_passing
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["Anchors", "CoarseToFine", "ImagePair", "anchor_context", "describe", "find_anchors", "image_pair",
           "match", "match_coarse_to_fine", "mutual_nearest", "pck", "queries_inside", "repeated_texture"]


def repeated_texture(size: int, period: int, *, n_landmarks: int = 4, radius: int = 5,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random tile of ``period`` x ``period`` pixels repeated over a square image, with
    ``n_landmarks`` unique discs of random content pasted on top.

    Returns:
        ``(image, unique)``: (H, W) float32 intensities and an (H, W) bool mask of the landmarks.
    """
    size = check_int("size", size, 8)
    period = check_int("period", period, 2)
    radius = check_int("radius", radius, 1)
    gen = make_generator(seed)
    tile = torch.rand(1, 1, period, period, generator=gen)
    tile = F.avg_pool2d(F.pad(tile, (1, 1, 1, 1), mode="circular"), 3, stride=1)[0, 0]  # smooth, periodic
    reps = math.ceil(size / period)
    image = tile.repeat(reps, reps)[:size, :size].clone()
    unique = torch.zeros(size, size, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(check_int("n_landmarks", n_landmarks, 0)):
        cy, cx = (torch.randint(radius, size - radius, (2,), generator=gen)).tolist()
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[disc] = torch.rand(int(disc.sum()), generator=gen)
        unique |= disc
    return image, unique


@dataclass(frozen=True)
class ImagePair:
    """Two views of one texture and the true correspondence.

    Attributes:
        a, b: (H, W) images; ``b`` is ``a`` warped by ``affine`` plus photometric noise.
        affine: (2, 3) float64 map of pixel coordinates ``(x, y)`` of ``a`` to ``b``.
        unique: (H, W) bool, the landmark pixels of ``a``.
    """

    a: torch.Tensor
    b: torch.Tensor
    affine: torch.Tensor
    unique: torch.Tensor

    def warp_points(self, xy: torch.Tensor) -> torch.Tensor:
        """Where points (Q, 2) of ``a`` land in ``b``: (Q, 2)."""
        aff = self.affine.to(xy.dtype)
        return xy @ aff[:, :2].T + aff[:, 2]


def image_pair(size: int = 64, period: int = 8, *, n_landmarks: int = 4, max_angle: float = 15.0,
               max_shift: float = 4.0, scale: tuple[float, float] = (0.9, 1.1), noise: float = 0.05,
               seed: int = 0) -> ImagePair:
    """A texture (:func:`repeated_texture`) and its seeded affine warp about the image centre
    (rotation up to ``max_angle`` degrees, scale in ``scale``, shift up to ``max_shift`` pixels),
    with a random gain and bias and Gaussian noise of standard deviation ``noise``."""
    a, unique = repeated_texture(size, period, n_landmarks=n_landmarks, seed=seed)
    gen = make_generator(seed + 1)
    u = torch.rand(6, generator=gen, dtype=torch.float64) * 2 - 1  # six draws in [-1, 1]
    angle = math.radians(check_real("max_angle", max_angle, 0.0)) * float(u[0])
    s = scale[0] + (scale[1] - scale[0]) * (float(u[1]) + 1) / 2
    shift = check_real("max_shift", max_shift, 0.0) * u[2:4]
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                       dtype=torch.float64) * s
    c = torch.full((2,), (size - 1) / 2, dtype=torch.float64)
    affine = torch.cat([rot, (c - rot @ c + shift)[:, None]], dim=1)  # b = R a + t
    # sample a at the inverse-mapped coordinates of every pixel of b
    inv = torch.linalg.inv(rot)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    xy_b = torch.stack([xx, yy], dim=-1).reshape(-1, 2)
    xy_a = (xy_b - affine[:, 2]) @ inv.T
    grid = (xy_a / (size - 1) * 2 - 1).reshape(1, size, size, 2).float()
    b = F.grid_sample(a[None, None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0, 0]
    gain, bias = 1 + 0.2 * float(u[4]), 0.1 * float(u[5])
    b = gain * b + bias + check_real("noise", noise, 0.0) * torch.randn(size, size, generator=gen)
    return ImagePair(a, b, affine, unique)


def describe(image: torch.Tensor, *, channels: int = 16, seed: int = 0) -> torch.Tensor:
    """Local descriptors (P, D) from a small fixed random CNN (two 3x3 layers, 5x5 window),
    normalised per image and per pixel so that a dot product is a cosine similarity."""
    check_tensor("image", image, dims=2, dtype="float", shape="(H, W)")
    gen = make_generator(seed)
    w1 = torch.randn(channels, 1, 3, 3, generator=gen) / 3
    w2 = torch.randn(channels, channels, 3, 3, generator=gen) / (3 * math.sqrt(channels))
    x = (image - image.mean()) / image.std().clamp(min=1e-6)  # undo gain and bias
    h = F.relu(F.conv2d(x[None, None], w1, padding=1))
    h = F.conv2d(h, w2, padding=1)[0]  # (D, H, W)
    return F.normalize(h.flatten(1).T, dim=1)  # (P, D)


def mutual_nearest(desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
    """Pairs (i, j) where j is i's nearest neighbour in ``b`` and i is j's in ``a``: (2, M).

    Descriptors are unit vectors, so the nearest neighbour by Euclidean distance is the one of
    highest dot product.
    """
    sim = desc_a @ desc_b.T  # (Pa, Pb)
    ab, ba = sim.argmax(dim=1), sim.argmax(dim=0)
    i = torch.arange(desc_a.shape[0])
    keep = ba[ab] == i
    return torch.stack([i[keep], ab[keep]])


@dataclass(frozen=True)
class Anchors:
    """Anchor matches: pixel coordinates ``xy_a`` (A, 2) in image a and ``xy_b`` (A, 2) in b."""

    xy_a: torch.Tensor
    xy_b: torch.Tensor

    def __len__(self) -> int:
        return self.xy_a.shape[0]


def _xy(index: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([index % width, index // width], dim=-1).to(torch.float32)  # (., 2) as (x, y)


def find_anchors(desc_a: torch.Tensor, desc_b: torch.Tensor, *, width: int, stride: int = 4,
                 ratio: float = 0.9, cycle: float | None = 2.0, max_anchors: int = 32) -> Anchors:
    """Anchors: mutual nearest neighbours on a coarse grid, ratio test, cycle-consistent.

    Candidates are the pixels of ``a`` on a grid of step ``stride``. A candidate i and its
    nearest neighbour j among all pixels of ``b`` are kept when i is also j's nearest neighbour
    among the grid's pixels (mutual), and j is clearly better than the best candidate more than
    2 pixels from it (distance below ``ratio`` times the second's). The cycle check (r =
    ``cycle`` pixels; None to skip) searches back from j over *all* pixels of ``a``: a repeated
    texture can make i and j mutual on the coarse grid while j's true twin in ``a`` lies
    elsewhere, off the grid. The ``max_anchors`` clearest survivors (largest margin) are kept.
    """
    ratio = check_real("ratio", ratio, 0.0, strict=True)
    width = check_int("width", width, 1)
    stride = check_int("stride", stride, 1)
    max_anchors = check_int("max_anchors", max_anchors, 1)
    xy_a_all, xy_b_all = _xy(torch.arange(desc_a.shape[0]), width), _xy(torch.arange(desc_b.shape[0]), width)
    on_grid = ((xy_a_all[:, 0] % stride == 0) & (xy_a_all[:, 1] % stride == 0)).nonzero()[:, 0]
    pairs = mutual_nearest(desc_a[on_grid], desc_b)  # (2, M), first row indexes the grid
    i, j = on_grid[pairs[0]], pairs[1]
    sim_b = desc_a[i] @ desc_b.T  # (M, Pb)
    best = sim_b.gather(1, j[:, None])[:, 0]
    far = (xy_b_all[None] - xy_b_all[j][:, None]).norm(dim=-1) > 2  # (M, Pb)
    second = sim_b.masked_fill(~far, -2.0).max(dim=1).values
    dist = lambda s: (2 - 2 * s).clamp(min=0).sqrt()  # noqa: E731  (unit vectors)
    keep = dist(best) < ratio * dist(second)
    if cycle is not None:
        r = check_real("cycle", cycle, 0.0, strict=True)
        back = (desc_b[j] @ desc_a.T).argmax(dim=1)  # B -> A over every pixel of a
        keep &= (xy_a_all[back] - xy_a_all[i]).norm(dim=-1) <= r
    order = (best - second)[keep].argsort(descending=True)[:max_anchors]
    i, j = i[keep][order], j[keep][order]
    return Anchors(xy_a_all[i], xy_b_all[j])


def anchor_context(xy: torch.Tensor, anchor_xy: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """Context of pixels (Q, 2) from anchors (A, 2): one round of anchor -> pixel messages.

    Nodes are the A anchors (features: their one-hot ids) followed by the Q pixels. Every
    anchor sends to every pixel along a directed edge weighted by ``exp(-|x - a_k|^2 / 2
    sigma^2)``, a function of the relative position the edge carries. Each pixel sums what
    arrives: a soft code of where it sits among the anchors, (Q, A), normalised to unit length.
    """
    n_a, n_q = anchor_xy.shape[0], xy.shape[0]
    x = torch.cat([torch.eye(n_a), torch.zeros(n_q, n_a)])  # (A + Q, A)
    src = torch.arange(n_a).repeat(n_q)  # anchor k ...
    dst = n_a + torch.arange(n_q).repeat_interleave(n_a)  # ... -> pixel q
    rel = xy[dst - n_a] - anchor_xy[src]  # (A * Q, 2): the edge's relative position
    weight = torch.exp(-(rel**2).sum(-1) / (2 * sigma**2))
    out = message_passing(x, torch.stack([src, dst]), weight)[n_a:]  # (Q, A)
    return F.normalize(out, dim=1)


def match(desc_a: torch.Tensor, desc_b: torch.Tensor, queries: torch.Tensor, *, width: int,
          anchors: Anchors | None = None, sigma: float = 8.0, weight: float = 1.0) -> torch.Tensor:
    """Matches in ``b`` of the query pixels (Q,) of ``a`` by argmax of similarity, as (Q, 2) xy.

    Without anchors the similarity is the descriptors' cosine; with anchors it adds ``weight``
    times the cosine of the pixels' anchor contexts, ``sigma`` in a's pixels (scaled in b by the
    ratio of the anchors' spreads, which absorbs the warp's scale).
    """
    check_tensor("queries", queries, dims=1, dtype="integer", shape="(Q,)")
    sim = desc_a[queries] @ desc_b.T  # (Q, Pb): the dense correlation
    if anchors is not None and len(anchors) >= 2:
        spread = lambda p: (p - p.mean(0)).norm(dim=1).mean().clamp(min=1e-6)  # noqa: E731
        s = float(spread(anchors.xy_b) / spread(anchors.xy_a))
        ctx_a = anchor_context(_xy(queries, width), anchors.xy_a, sigma=sigma)
        ctx_b = anchor_context(_xy(torch.arange(desc_b.shape[0]), width), anchors.xy_b, sigma=sigma * s)
        sim = sim + weight * ctx_a @ ctx_b.T
    return _xy(sim.argmax(dim=1), width)


def pck(pred: torch.Tensor, truth: torch.Tensor, r: float) -> float:
    """Percentage of correct keypoints: the fraction of predictions within ``r`` pixels."""
    r = check_real("r", r, 0.0, strict=True)
    check_tensor("pred", pred, dims=2, dtype="float", shape="(Q, 2)")
    check_tensor("truth", truth, dims=2, dtype="float", shape="(Q, 2)")
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have one shape, got {tuple(pred.shape)} and {tuple(truth.shape)}")
    if pred.shape[0] == 0:
        raise ValueError("pck needs at least one prediction")
    return float(((pred - truth.to(pred.dtype)).norm(dim=1) <= r).float().mean())


def queries_inside(pair: ImagePair, *, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Query pixels of ``a`` on a grid of step ``stride`` whose true match lies inside ``b``.

    Returns:
        ``(queries, truth)``: (Q,) int64 pixel indices of ``a`` and (Q, 2) float32 true xy in b.
    """
    stride = check_int("stride", stride, 1)
    h, w = pair.a.shape
    idx = torch.arange(h * w)
    xy = _xy(idx, w)
    on_grid = (xy[:, 0] % stride == 0) & (xy[:, 1] % stride == 0)
    truth = pair.warp_points(xy.double()).float()
    inside = on_grid & (truth[:, 0] >= 0) & (truth[:, 0] <= w - 1) & (truth[:, 1] >= 0) & (truth[:, 1] <= h - 1)
    return idx[inside], truth[inside]


@dataclass(frozen=True)
class CoarseToFine:
    """Matches from :func:`match_coarse_to_fine` and the number of similarity scores computed.

    Attributes:
        xy: (Q, 2) predicted positions in b.
        coarse_scores: Q x (P / factor^2), the correlation at the coarse level.
        fine_scores: Q x (2 * window * factor + 1)^2 at most, the local search.
    """

    xy: torch.Tensor
    coarse_scores: int
    fine_scores: int


def match_coarse_to_fine(image_a: torch.Tensor, image_b: torch.Tensor, queries: torch.Tensor, *,
                         anchors: Anchors | None, factor: int = 2, window: int = 1, sigma: float = 8.0,
                         weight: float = 1.0, seed: int = 0) -> CoarseToFine:
    """Match at a coarse level, then refine in a small window at full resolution.

    Both images are average-pooled by ``factor``, described and matched densely (anchors and
    ``sigma`` scaled down with them); each coarse match is then refined over the full-resolution
    pixels within ``window * factor`` of it, by the same score (descriptor plus anchor context).
    The dense correlation shrinks by ``factor^2``; the refinement costs a fixed window per query.
    """
    factor = check_int("factor", factor, 1)
    window = check_int("window", window, 0)
    check_tensor("image_a", image_a, dims=2, dtype="float", shape="(H, W)")
    check_tensor("image_b", image_b, dims=2, dtype="float", shape="(H, W)")
    h, w = image_a.shape
    if image_b.shape != image_a.shape or h % factor or w % factor:
        raise ValueError(f"image_a and image_b must have one shape divisible by factor={factor}, got "
                         f"{tuple(image_a.shape)} and {tuple(image_b.shape)}")
    wc = w // factor
    small = lambda im: F.avg_pool2d(im[None, None], factor)[0, 0]  # noqa: E731
    da_c, db_c = describe(small(image_a), seed=seed), describe(small(image_b), seed=seed)
    xy_q = _xy(queries, w)
    q_c = (xy_q[:, 1] // factor * wc + xy_q[:, 0] // factor).long()
    coarse_anchors = None
    if anchors is not None:
        coarse_anchors = Anchors(anchors.xy_a / factor, anchors.xy_b / factor)
    coarse = match(da_c, db_c, q_c, width=wc, anchors=coarse_anchors, sigma=sigma / factor, weight=weight)
    centre = coarse * factor + (factor - 1) / 2  # (Q, 2) in full-resolution pixels
    # refine: every query scores the full-resolution pixels in its window
    da, db = describe(image_a, seed=seed), describe(image_b, seed=seed)
    reach = window * factor
    offsets = torch.stack(torch.meshgrid(torch.arange(-reach, reach + 1), torch.arange(-reach, reach + 1),
                                         indexing="xy"), dim=-1).reshape(-1, 2)  # (S, 2)
    cand = (centre.round()[:, None, :] + offsets[None]).long()  # (Q, S, 2)
    cand[..., 0].clamp_(0, w - 1)
    cand[..., 1].clamp_(0, h - 1)
    idx = cand[..., 1] * w + cand[..., 0]  # (Q, S)
    score = (da[queries][:, None, :] * db[idx]).sum(-1)  # (Q, S)
    if anchors is not None and len(anchors) >= 2:
        spread = lambda p: (p - p.mean(0)).norm(dim=1).mean().clamp(min=1e-6)  # noqa: E731
        s = float(spread(anchors.xy_b) / spread(anchors.xy_a))
        ctx_a = anchor_context(xy_q, anchors.xy_a, sigma=sigma)  # (Q, A)
        ctx_b = anchor_context(_xy(idx.flatten(), w), anchors.xy_b, sigma=sigma * s).reshape(*idx.shape, -1)
        score = score + weight * (ctx_a[:, None, :] * ctx_b).sum(-1)
    best = score.argmax(dim=1)
    xy = cand[torch.arange(len(queries)), best].float()
    return CoarseToFine(xy, len(queries) * da_c.shape[0], len(queries) * offsets.shape[0])
