"""LoRA add-ons for the tiny UNet: the low-rank patch, merged or on the fly, trained and stored.

Paper: *SwiftDiffusion: Efficient Diffusion Model Serving with Add-on Modules* (Li et al., 2024,
arXiv:2407.02031). Production text-to-image requests rarely use the bare base model: most carry
LoRAs, low-rank weight deltas that give a style, and each one has to be loaded, patched in and
computed. This module is the mechanism; :mod:`labkit.diffusion.serving` times requests with it.

A LoRA (Hu et al., 2021, arXiv:2106.09685) replaces a weight ``W`` of shape (O, I) by
``W + s * U D`` with ``D`` (r, I), ``U`` (O, r) and a small rank r; a convolution's kernel is
flattened to (O, I * k * k) first. A server can apply it in two ways:

- **merge** (:func:`merge_loras`, :func:`unmerge_loras`): add ``s U D`` into ``W`` once before
  sampling and restore ``W`` after, a cost per request that does not depend on the number of
  steps S;
- **on the fly** (:func:`lora_branches`): leave ``W`` alone and add the low-rank branch
  ``s U (D x)`` to the layer's output at every step, a cost per step.

Several LoRAs are stacked into one branch of rank ``sum r`` (or one merged delta). Merged weights
hold one patch at a time, but the branch can give each image of a batch its own LoRA (a mask over
the stacked rank). :func:`train_lora` fits a LoRA with the DDPM loss through the same branches;
:func:`save_lora` and :func:`load_lora` are the files a server reads.

What the miniature leaves out: attention-layer LoRAs and text conditioning, and multi-LoRA
kernels (Punica, S-LoRA).

Shapes: B batch, C channels, H x W image, O x I a weight (output x flattened input), r rank,
K LoRAs.
Section: chapter 09, "Serving: add-ons and patch parallelism".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from labkit.runtime import seed_everything
from labkit.validation import check_int

from .schedule import NoiseSchedule
from .unet import TinyUNet

__all__ = ["LoRA", "MergedWeights", "check_loras", "load_lora", "lora_branches", "lora_targets", "merge_loras",
           "random_lora", "save_lora", "train_lora", "unmerge_loras"]


@dataclass(frozen=True, eq=False)
class LoRA:
    """One low-rank add-on: per target layer a down factor D (r, I) and an up factor U (O, r).

    Attributes:
        name: a label (the "style").
        factors: layer name (as in ``named_modules``) -> ``(down, up)``.
        scale: s, multiplies ``U D``.
    """

    name: str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float = 1.0

    @property
    def rank(self) -> int:
        """r (the largest over layers)."""
        return max(d.shape[0] for d, _ in self.factors.values())

    @property
    def nbytes(self) -> int:
        """Bytes of all factors."""
        return sum(d.numel() * d.element_size() + u.numel() * u.element_size() for d, u in self.factors.values())


def lora_targets(model: nn.Module, *, suffixes: Sequence[str] | None = None) -> list[str]:
    """Names of the layers a LoRA may patch: the model's ``Conv2d`` and ``Linear`` layers.

    Args:
        model: the base model.
        suffixes: keep only names ending in one of these (``("conv1", "conv2")``: the residual
            blocks' 3 x 3 convolutions); default all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(suffixes, str):
        raise TypeError("suffixes must be a sequence of strings, e.g. ('conv1', 'conv2'), not one string")
    names = [name for name, mod in model.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    return names if suffixes is None else [n for n in names if n.endswith(tuple(suffixes))]


def _layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    unknown = [n for n in names if not isinstance(modules.get(n), (nn.Conv2d, nn.Linear))]
    if unknown:
        raise ValueError(f"not Conv2d/Linear layers of the model: {unknown[:3]}")
    return {n: modules[n] for n in names}


def check_loras(model: nn.Module, loras: Sequence[LoRA]) -> list[LoRA]:
    """``loras`` as a list, each checked to patch only ``Conv2d``/``Linear`` layers of ``model``
    with factors that fit their weights.

    Raises:
        TypeError: an entry is not a :class:`LoRA`.
        ValueError: an unknown layer, or factors whose shapes do not fit the weight.
    """
    loras = list(loras)
    for lora in loras:
        if not isinstance(lora, LoRA):
            raise TypeError(f"loras must hold LoRA objects, got {type(lora).__name__}")
        layers = _layers(model, list(lora.factors))
        for name, (down, up) in lora.factors.items():
            w = layers[name].weight
            if down.dim() != 2 or up.dim() != 2 or up.shape != (w.shape[0], down.shape[0]) \
                    or down.shape[1] != w[0].numel():
                raise ValueError(f"LoRA {lora.name!r} layer {name}: factors {tuple(down.shape)}, {tuple(up.shape)} "
                                 f"do not fit a weight {tuple(w.shape)}")
    return loras


def random_lora(model: nn.Module, *, rank: int, seed: int, scale: float = 1.0, std: float = 0.02,
                targets: Sequence[str] | None = None, name: str | None = None) -> LoRA:
    """A LoRA with random factors: what serving costs does not depend on what the LoRA learned.

    ``D`` is uniform in ``+-1/sqrt(I)`` and ``U`` normal with standard deviation ``std``.

    Args:
        model: the base model.
        rank: r.
        seed: seeds the factors (layer by layer, by name).
        scale: s.
        std: spread of U.
        targets: layers to patch (default :func:`lora_targets`).
        name: label (default ``f"random-{seed}"``).
    """
    r = check_int("rank", rank, 1)
    layers = _layers(model, lora_targets(model) if targets is None else list(targets))
    factors = {}
    for lname, mod in layers.items():
        digest = hashlib.blake2b(f"{seed}:{lname}".encode(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)
        O, I = mod.weight.shape[0], mod.weight[0].numel()
        down = (torch.rand(r, I, generator=g) * 2 - 1) / I**0.5
        factors[lname] = (down, torch.randn(O, r, generator=g) * std)
    return LoRA(name=name or f"random-{seed}", factors=factors, scale=float(scale))


def _stacked(loras: Sequence[LoRA]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer, the LoRAs' factors side by side: D (sum r, I), s-scaled U (O, sum r), owner (sum r,)."""
    out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor], list[int]]] = {}
    for k, lora in enumerate(loras):
        for name, (down, up) in lora.factors.items():
            downs, ups, owner = out.setdefault(name, ([], [], []))
            downs.append(down)
            ups.append(up if lora.scale == 1.0 else up * lora.scale)
            owner.extend([k] * down.shape[0])
    # a lone LoRA is used as it is (no copy), so train_lora's gradients reach its factors
    return {n: (d[0] if len(d) == 1 else torch.cat(d, 0), u[0] if len(u) == 1 else torch.cat(u, 1),
                torch.tensor(o)) for n, (d, u, o) in out.items()}


@dataclass
class MergedWeights:
    """What :func:`merge_loras` changed: the original weights, to restore them exactly."""

    backup: dict[str, torch.Tensor]


@torch.no_grad()
def merge_loras(model: nn.Module, loras: Sequence[LoRA]) -> MergedWeights:
    """Patch the LoRAs into the weights in place: ``W <- W + sum_k s_k U_k D_k`` (LoRA eq. 3).

    Args:
        model: the base model (changed in place).
        loras: K LoRAs, stacked into one product per layer.

    Returns:
        :class:`MergedWeights`, the backup :func:`unmerge_loras` restores.

    Shapes:
        per layer: D (K r, I) and U (O, K r) -> delta (O, I) viewed as the weight's shape.
    """
    loras = check_loras(model, loras)
    stacked = _stacked(loras)
    layers = _layers(model, list(stacked))
    backup = {}
    # show: start merge
    for name, (down, up, _) in stacked.items():
        w = layers[name].weight
        backup[name] = w.detach().clone()
        w.add_((up @ down).view_as(w))  # (O, Kr) @ (Kr, I) -> (O, I)
    # show: end merge
    return MergedWeights(backup=backup)


@torch.no_grad()
def unmerge_loras(model: nn.Module, merged: MergedWeights) -> None:
    """Restore the weights :func:`merge_loras` changed, bit for bit (a copy, not a subtraction).
    """
    if not isinstance(merged, MergedWeights):
        raise TypeError(f"merged must be what merge_loras returned, got {type(merged).__name__}")
    layers = _layers(model, list(merged.backup))
    for name, w in merged.backup.items():
        layers[name].weight.copy_(w)


def _branch(mod: nn.Module, down: torch.Tensor, up: torch.Tensor,
            x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The stacked low-rank branch ``s U (D x)`` of one layer (mask: per image)."""
    if isinstance(mod, nn.Linear):
        h = F.linear(x, down)  # (B, I) -> (B, Kr)
        return F.linear(h if mask is None else h * mask, up)  # (B, O)
    w = mod.weight
    # (Kr, I/groups, k, k): the same window as the layer
    d = down.view(down.shape[0], *w.shape[1:])
    # (B, Kr, H', W')
    h = F.conv2d(x, d, None, mod.stride, mod.padding, mod.dilation, mod.groups)
    if mask is not None:
        h = h * mask[:, :, None, None]  # keep each image's own LoRA
    return F.conv2d(h, up[:, :, None, None])  # 1 x 1: (B, O, H', W')


@contextmanager
def lora_branches(model: nn.Module, loras: Sequence[LoRA], *, assign: torch.Tensor | None = None) -> Iterator[None]:
    """Inside the block, every patched layer adds ``s U (D x)`` to its output: the LoRA on the fly.

    The weights are not touched; a forward hook per layer computes the stacked low-rank branch
    of all K LoRAs (rank ``sum r``) from the layer's input. With ``assign``, image b of the batch
    gets only LoRA ``assign[b]``: the branch still runs once for the whole batch, and a mask
    keeps each image's own LoRA channels, so requests with different LoRAs share one batch (what
    merged weights cannot do). Gradients flow to the factors, so :func:`train_lora` uses the same
    mechanism.

    Args:
        model: the base model.
        loras: K LoRAs.
        assign: (B,) int64 LoRA index per image, or None (every image gets all K).

    Shapes:
        per layer: branch activations (B, sum r, H', W'), mask (B, sum r).
    """
    loras = check_loras(model, loras)
    if assign is not None:
        if assign.dim() != 1 or assign.dtype.is_floating_point:
            raise ValueError(f"assign must be (B,) integer LoRA indices, got {tuple(assign.shape)} {assign.dtype}")
        if assign.numel() and (int(assign.min()) < 0 or int(assign.max()) >= len(loras)):
            raise ValueError(f"assign must hold indices in [0, {len(loras)}), got [{int(assign.min())}, "
                             f"{int(assign.max())}]")
    stacked = _stacked(loras)
    layers = _layers(model, list(stacked))
    handles = []
    for name, (down, up, owner) in stacked.items():
        mask = None if assign is None else (assign[:, None] == owner[None, :]).float()  # (B, sum r)

        def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor, down: torch.Tensor = down,
                 up: torch.Tensor = up, mask: torch.Tensor | None = mask) -> torch.Tensor:
            return out + _branch(mod, down, up, inputs[0], mask)
        handles.append(layers[name].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def train_lora(model: TinyUNet, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None, *,
               rank: int = 4, steps: int = 100, batch_size: int = 64, lr: float = 1e-2, seed: int = 0,
               targets: Sequence[str] | None = None, name: str = "lora") -> LoRA:
    """Fit a LoRA to new images with the DDPM loss (eq. 14), the base weights frozen.

    ``D`` starts uniform in ``+-1/sqrt(I)`` and ``U`` at zero (as in the LoRA paper), so the
    patched model starts as the base model.

    Args:
        model: the base model (left unchanged).
        schedule: its schedule.
        images: (N, C, H, W) in [-1, 1], the "style".
        labels: (N,) classes (for a class-conditional model).
        rank, steps, batch_size, lr, seed: the recipe (Adam).
        targets: layers to patch (default :func:`lora_targets`).
        name: label.

    Returns:
        :class:`LoRA` with scale 1.
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    gen = seed_everything(seed)
    init = random_lora(model, rank=rank, seed=seed, targets=targets, name=name)
    params = {n: (d.clone().requires_grad_(True), torch.zeros_like(u).requires_grad_(True))
              for n, (d, u) in init.factors.items()}
    opt = torch.optim.Adam([p for pair in params.values() for p in pair], lr=lr)
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False).eval()
    lora = LoRA(name=name, factors=params)
    try:
        with lora_branches(model, [lora]):
            for _ in range(steps):
                idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
                t = torch.randint(0, schedule.n_steps, (batch_size,), generator=gen)
                noise = torch.randn((batch_size, *images.shape[1:]), generator=gen)
                x_t = schedule.q_sample(images[idx], t, noise)
                loss = F.mse_loss(model(x_t, t, labels[idx] if labels is not None else None), noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    return LoRA(name=name, factors={n: (d.detach(), u.detach()) for n, (d, u) in params.items()})


def save_lora(lora: LoRA, path: str | Path) -> Path:
    """Write a LoRA with ``torch.save`` (factors, name, scale); returns the path.
    """
    if not isinstance(lora, LoRA):
        raise TypeError(f"lora must be a LoRA, got {type(lora).__name__}")
    path = Path(path)
    torch.save({"name": lora.name, "scale": lora.scale, "factors": lora.factors}, path)
    return path


def load_lora(path: str | Path) -> LoRA:
    """Read a LoRA written by :func:`save_lora`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no LoRA file at {path}")
    state = torch.load(path, weights_only=True)
    return LoRA(name=state["name"], factors={n: (d, u) for n, (d, u) in state["factors"].items()},
                scale=float(state["scale"]))
