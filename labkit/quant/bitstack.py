"""BitStack: a weight stack of ~1-bit residual blocks whose every prefix is a working model.

The paper: *BitStack: Fine-Grained Size Control for Compressed Large Language Models in Variable
Memory Environments*.

Intuition. Quantization fixes the size of a model when it is compressed: a 3-bit model is a
3-bit model. BitStack instead writes each weight matrix as a sum of residual blocks. Take the
residual ``R`` (at first the weight itself), keep its signs as one bit per weight and
approximate its magnitudes ``|R|`` by a rank-r product ``u v^T``; subtract that block
``sign(R) * (u v^T)`` and repeat. A nonnegative matrix has a nonnegative top singular pair, so
with r = 1 every block pushes each entry towards zero, but not always by the right amount: where
``u_i v_j > 2 |R_ij|`` the entry overshoots and comes out larger in magnitude, with the other
sign. What always falls is the Frobenius norm of the residual (up to the fp16 rounding of the
vectors): ``||R - B|| = || |R| - u v^T ||``, and the best rank-1 approximation of ``|R|`` removes
``sigma_1^2`` from its squared norm. Each block costs about one bit per weight plus ``r (m + n)``
half-precision numbers. The blocks of *all* matrices are then
sorted into one stack by importance; a device loads as many blocks from the top as its memory
allows, and more blocks later when memory frees up, without ever recompressing.

The decomposition is *activation-aware*, as in the paper: each matrix is first scaled
column-wise, here by ``s_j = rms(x_j)^alpha`` of its calibration inputs, so that the error
lands on input channels that carry little signal, and the reconstruction divides the scale
back out. The stack starts with one block of every matrix (the smallest model that runs) and
then grows greedily, in loose rounds: the next block of every matrix is tried on a calibration
batch, and the one that lowers the loss most per byte goes on the stack.

:func:`rtn_quantize` is a plain round-to-nearest baseline (asymmetric, per group of
``group_size`` input channels, fp16 scale and zero point), so the stack can be compared with
quantization at equal bytes.

What the miniature leaves out: the paper's exact sorting procedure and its scale (ranks of 16
on matrices of thousands of columns, where the vectors cost almost nothing; here rank 1 on
matrices of 64 to 256 columns costs 0.3 to 0.5 bit per weight), any kernel that computes with packed
signs (blocks are expanded to dense weights before use), and the embeddings, biases and
LayerNorms (kept as they are, outside the stack).

Shapes: m output and n input features of a matrix, r rank of a block's magnitude, K blocks per
matrix, S blocks in the stack, B batch, T tokens.
Section: chapter 10, "BitStack and FoldGPT: size control by residual stacks and folded blocks".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from labkit.validation import check_int

__all__ = ["BitStack", "MatrixStack", "ResidualBlock", "bitstack_compress", "decompose_matrix", "input_rms",
           "pack_signs", "rtn_quantize", "unpack_signs"]

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_signs(negative: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor (True where the sign is negative) into bytes, 8 entries per byte.

    Returns:
        uint8 of ``ceil(numel / 8)`` bytes (little-endian bit order inside a byte).
    """
    if not isinstance(negative, torch.Tensor) or negative.dtype != torch.bool:
        raise TypeError("pack_signs expects a bool tensor")
    flat = negative.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)  # (bytes, 8)
    return (flat * _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: the float tensor of signs (+1 / -1) of ``shape``."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError("unpack_signs expects a uint8 tensor")
    numel = math.prod(shape)
    if packed.numel() != math.ceil(numel / 8):
        raise ValueError(f"{packed.numel()} bytes cannot hold {numel} signs")
    bits = (packed[:, None] & _BITS.to(packed.device)) > 0  # (bytes, 8)
    return 1.0 - 2.0 * bits.reshape(-1)[:numel].reshape(shape).float()


@dataclass(frozen=True)
class ResidualBlock:
    """One ~1-bit block: ``sign * (u @ v.T)``, signs packed, ``u`` (m, r) and ``v`` (n, r) in fp16."""

    signs: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Exact storage: packed sign bytes plus the fp16 vectors."""
        return self.signs.numel() + 2 * (self.u.numel() + self.v.numel())

    def dense(self) -> torch.Tensor:
        """The block as an (m, n) float matrix (in the scaled space of its matrix)."""
        return unpack_signs(self.signs, self.shape) * (self.u.float() @ self.v.float().T)


@dataclass(frozen=True)
class MatrixStack:
    """The K residual blocks of one weight matrix and its activation-aware column scale (fp16, (n,))."""

    blocks: tuple[ResidualBlock, ...]
    scale: torch.Tensor

    @property
    def scale_bytes(self) -> int:
        return 2 * self.scale.numel()

    def reconstruct(self, k: int) -> torch.Tensor:
        """The weight from the first ``k`` blocks, (m, n); zero for ``k = 0``."""
        check_int("k", k, 0, len(self.blocks))
        w = torch.zeros(self.blocks[0].shape)
        for block in self.blocks[:k]:
            w += block.dense()
        return w / self.scale.float()  # undo the column scaling W' = W diag(s)


def decompose_matrix(w: torch.Tensor, *, n_blocks: int, rank: int = 1,
                     scale: torch.Tensor | None = None) -> MatrixStack:
    """Iteratively split ``w`` (m, n) into ``n_blocks`` sign-and-low-rank-magnitude residual blocks.

    Each iteration (the paper's decomposition step): ``B = sign(R) * SVD_r(|R|)``, ``R <- R - B``,
    starting from ``R = w diag(scale)``. The vectors are rounded to fp16 *before* the residual is
    updated, so later blocks correct the rounding of earlier ones.

    Args:
        w: the weight, (m, n).
        n_blocks: K.
        rank: r of each block's magnitude.
        scale: positive column scale (n,), or None for ones.

    Returns:
        :class:`MatrixStack`.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError("w must be a 2-D tensor (m, n)")
    check_int("n_blocks", n_blocks, 1)
    check_int("rank", rank, 1, min(w.shape))
    m, n = w.shape
    scale = torch.ones(n) if scale is None else scale
    if scale.shape != (n,) or not bool((scale > 0).all()):
        raise ValueError(f"scale must be positive with shape ({n},)")
    scale = scale.to(torch.float16)
    residual = w.detach().float().cpu() * scale.float()  # (m, n), W' = W diag(s)
    blocks = []
    # show: start decompose
    for _ in range(n_blocks):
        mag = residual.abs()  # |R|
        U, S, Vh = torch.linalg.svd(mag, full_matrices=False)
        root = S[:rank].sqrt()
        u, v = U[:, :rank] * root, Vh[:rank].T * root  # (m, r), (n, r): u v^T ~ |R|
        flip = torch.where(u.sum(0) < 0, -1.0, 1.0)  # the top pair of |R| is nonnegative up to a joint sign
        u, v = (u * flip).to(torch.float16), (v * flip).to(torch.float16)
        block = ResidualBlock(signs=pack_signs(residual < 0), u=u, v=v, shape=(m, n))  # sign(R) as bits
        residual = residual - block.dense()  # R <- R - sign(R) * (u v^T)
        blocks.append(block)
    # show: end decompose
    return MatrixStack(blocks=tuple(blocks), scale=scale)


@torch.no_grad()
def input_rms(model: nn.Module, idx: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Root-mean-square of each input feature of the named ``nn.Linear`` layers on ``idx`` (B, T)."""
    mods = dict(model.named_modules())
    missing = [n for n in names if not isinstance(mods.get(n), nn.Linear)]
    if missing:
        raise ValueError(f"not nn.Linear layers of the model: {missing}")
    sums: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda mod, args, out, n=n: sums.__setitem__(
        n, args[0].reshape(-1, args[0].shape[-1]).float().pow(2).mean(0).sqrt())) for n in names]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    return sums


@dataclass(frozen=True)
class BitStack:
    """All matrices' blocks and their global load order.

    Attributes:
        stacks: matrix name -> :class:`MatrixStack`.
        order: the stack, top first: ``(matrix name, block index)`` of S blocks.
        block_bytes: bytes each stacked block adds (its first block also carries the column scale).
        base_blocks: how many blocks the smallest loadable model has (one per matrix).
    """

    stacks: dict[str, MatrixStack]
    order: tuple[tuple[str, int], ...]
    block_bytes: tuple[int, ...]
    base_blocks: int

    @property
    def total_bytes(self) -> int:
        return sum(self.block_bytes)

    def bytes_at(self, n_loaded: int) -> int:
        """Bytes of the first ``n_loaded`` blocks of the stack."""
        check_int("n_loaded", n_loaded, 0, len(self.order))
        return sum(self.block_bytes[:n_loaded])

    def blocks_within(self, budget_bytes: int) -> int:
        """The longest prefix of the stack whose bytes fit ``budget_bytes``."""
        check_int("budget_bytes", budget_bytes, 0)
        used, n = 0, 0
        for b in self.block_bytes:
            if used + b > budget_bytes:
                break
            used, n = used + b, n + 1
        return n

    def counts(self, n_loaded: int) -> dict[str, int]:
        """Blocks per matrix in the first ``n_loaded`` blocks of the stack."""
        check_int("n_loaded", n_loaded, 0, len(self.order))
        k = {name: 0 for name in self.stacks}
        for name, _ in self.order[:n_loaded]:
            k[name] += 1
        return k

    @torch.no_grad()
    def load(self, model: nn.Module, n_loaded: int, *, since: int | None = None) -> nn.Module:
        """Write the first ``n_loaded`` blocks into ``model``'s matrices in place (a matrix with none is zero).

        Args:
            model: the model the stack was built from (or a copy of it).
            n_loaded: blocks from the top of the stack.
            since: if ``model`` already holds the first ``since`` blocks, only the matrices
                whose block count changed are rewritten (a sweep over the stack stays cheap).

        Returns:
            ``model``.
        """
        mods = dict(model.named_modules())
        old = self.counts(since) if since is not None else {}
        for name, k in self.counts(n_loaded).items():
            if old.get(name) == k:
                continue
            weight = mods[name].weight
            weight.copy_(self.stacks[name].reconstruct(k).to(weight.device, weight.dtype))
        return model


def _block_cost(stacks: dict[str, MatrixStack], name: str, j: int) -> int:
    return stacks[name].blocks[j].nbytes + (stacks[name].scale_bytes if j == 0 else 0)


@torch.no_grad()
def bitstack_compress(model: nn.Module, names: list[str], calib_idx: torch.Tensor, calib_targets: torch.Tensor, *,
                      n_blocks: int = 8, rank: int = 1, alpha: float = 0.5, max_lead: int | None = 2) -> BitStack:
    """Decompose the named matrices of ``model`` and sort all their blocks into one stack.

    Sorting: the stack starts with the first block of every matrix, the smallest model that runs
    (the paper's released code starts from the same base). After that it is greedy: the next
    block of every matrix is a candidate, and the one that lowers the calibration loss most per
    byte goes on the stack. A matrix may run at most ``max_lead`` blocks ahead of the least
    loaded one, which keeps the stack in rounds as the paper's sort does (``max_lead=1``: strict
    rounds, one block per matrix each) while letting a block that hurts *now* wait for the blocks
    of other matrices that make it useful. Scores are re-evaluated lazily (the stale best
    candidate is re-scored and pushed if it is still the best), so most steps cost a couple of
    forward passes rather than one per matrix. ``model`` is left as it was.

    Args:
        model: a module whose ``forward(idx, targets)`` returns an object with ``lm_loss``
            (the tiny GPT).
        names: the ``nn.Linear`` layers to compress.
        calib_idx, calib_targets: a calibration batch (B, T) from the *training* split.
        n_blocks: K blocks per matrix.
        rank: r of each block.
        alpha: exponent of the activation-aware column scale (0 turns it off).
        max_lead: how far a matrix may run ahead of the least loaded one, in blocks (None: no limit).

    Returns:
        :class:`BitStack` whose first ``len(names)`` blocks are the base.
    """
    if not names or len(set(names)) != len(names):
        raise ValueError("names must list distinct nn.Linear layers, at least one")
    if calib_idx.dim() != 2 or calib_idx.shape != calib_targets.shape:
        raise ValueError("calib_idx and calib_targets must both be (B, T)")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    check_int("n_blocks", n_blocks, 1)
    if max_lead is not None:
        check_int("max_lead", max_lead, 1)
    rms = input_rms(model, calib_idx, names)
    mods = dict(model.named_modules())
    stacks = {}
    for name in names:
        s = rms[name].clamp_min(1e-6) ** alpha
        s = s / s.log().mean().exp()  # geometric mean 1, so fp16 keeps it exact enough
        stacks[name] = decompose_matrix(mods[name].weight, n_blocks=n_blocks, rank=rank, scale=s.cpu())
    # every reconstruction once, (K + 1) per matrix, so trying a block is a weight copy
    recon = {n: [stacks[n].reconstruct(k).to(mods[n].weight.device) for k in range(n_blocks + 1)] for n in names}
    saved = {n: mods[n].weight.detach().clone() for n in names}
    loaded = {n: 1 for n in names}
    was_training = model.training
    model.eval()

    def set_blocks(name: str, k: int) -> None:
        mods[name].weight.copy_(recon[name][k])

    def gain(name: str) -> float:
        """Calibration-loss drop per byte if ``name``'s next block loads now."""
        set_blocks(name, loaded[name] + 1)
        loss = model(calib_idx, calib_targets).lm_loss.item()
        set_blocks(name, loaded[name])
        return (current - loss) / _block_cost(stacks, name, loaded[name])

    order = [(n, 0) for n in names]
    try:
        for n in names:
            set_blocks(n, 1)
        current = model(calib_idx, calib_targets).lm_loss.item()
        stale = {n: gain(n) for n in names if n_blocks > 1}  # last known gain of each matrix's next block
        while stale:
            floor = min(loaded[n] for n in stale)
            allowed = [n for n in stale if max_lead is None or loaded[n] < floor + max_lead]
            best = max(allowed, key=stale.__getitem__)
            fresh = gain(best)
            if any(stale[n] > fresh for n in allowed if n != best):
                stale[best] = fresh  # no longer the best: re-queue with its fresh score
                continue
            current -= fresh * _block_cost(stacks, best, loaded[best])
            order.append((best, loaded[best]))
            loaded[best] += 1
            set_blocks(best, loaded[best])
            del stale[best]
            if loaded[best] < n_blocks:
                stale[best] = gain(best)
    finally:
        for n in names:
            mods[n].weight.copy_(saved[n])
        model.train(was_training)
    return BitStack(stacks=stacks, order=tuple(order), block_bytes=tuple(_block_cost(stacks, n, j) for n, j in order),
                    base_blocks=len(names))


def rtn_quantize(w: torch.Tensor, *, bits: int, group_size: int) -> tuple[torch.Tensor, int]:
    """Round-to-nearest asymmetric quantization per group of ``group_size`` input features (the baseline).

    Each group of a row gets an fp16 scale ``(max - min) / (2^bits - 1)`` and an fp16 zero point
    (its minimum); codes are ``round((w - min) / scale)``.

    Args:
        w: (m, n) weight; ``n`` divisible by ``group_size``.
        bits: bits per code (1-8).
        group_size: input features per group.

    Returns:
        ``(dequantized weight (m, n), bytes)``: ``ceil(m n bits / 8)`` for the codes plus two fp16
        numbers per group. The byte count is that of an ideal bit-packed format: the codes are
        not kept (only the dequantized weight is returned), so nothing is packed here.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError("w must be a 2-D tensor (m, n)")
    check_int("bits", bits, 1, 8)
    check_int("group_size", group_size, 1)
    m, n = w.shape
    if n % group_size:
        raise ValueError(f"group_size={group_size} must divide the {n} input features")
    g = w.detach().float().reshape(m, n // group_size, group_size)  # (m, G, group)
    lo = g.amin(-1, keepdim=True).half().float()
    scale = ((g.amax(-1, keepdim=True) - lo) / (2**bits - 1)).clamp_min(2**-14).half().float()  # fp16-normal
    codes = ((g - lo) / scale).round().clamp(0, 2**bits - 1)
    nbytes = math.ceil(m * n * bits / 8) + 2 * 2 * m * (n // group_size)
    return (codes * scale + lo).reshape(m, n), nbytes
