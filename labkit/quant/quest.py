"""Selective finetuning of a low-bit diffusion model: train only the layers that matter.

QuEST: Low-bit Diffusion Model Quantization via Efficient Selective Finetuning (Wang et al.,
2024, arXiv:2402.03666).

At 4-bit weights *and* 4-bit activations, post-training calibration alone leaves a diffusion
model's samples badly damaged, while finetuning the whole quantized model is the cost PTQ is
meant to avoid. QuEST observes that the damage is concentrated: in the layers that carry the
*temporal information* (the time-embedding path, whose output every block adds to its features,
so an imprecise embedding tells every block the wrong step), and in a few layers that are simply
more *sensitive* to reduced bit-width than the others. It finetunes those layers alone, with the
rest of the network frozen and quantized, by distilling the float model's outputs through the
straight-through estimator.

Here:

- :func:`time_embedding_layers`: the quantized layers that read the step embedding
  (``time_mlp.*`` and each residual block's ``emb_proj`` in :class:`labkit.diffusion.TinyUNet`).
- :func:`layer_sensitivity`: the error of the predicted noise when *only* one layer is quantized
  (the others float), relative to the float prediction's energy, on calibration inputs.
- :func:`select_layers`: the time-embedding layers plus the ``top_k`` most sensitive others.
- :func:`selective_finetune`: a copy of the quantized model in which only the chosen layers'
  float weights and biases are trained, to minimise ``|| eps_q(x_t, t, y) - eps(x_t, t, y) ||^2``
  on calibration inputs; weights are re-quantized at every step, gradients pass the rounding by
  STE, activation ranges stay as calibrated.
- :func:`random_layers`: a same-size random choice (same layer count or same parameter count),
  the control.
- :func:`prediction_error`: the noise prediction's error against the float model, overall and
  per step, on held-out trajectories.

What the miniature leaves out: the paper's attention-specific choices (the tiny UNet has no
attention), its channel-wise activation quantization at 4 bits, the rest of its training recipe
(we finetune weights and biases only, activation ranges stay as calibrated), and the paper's
scale: thousands of calibration samples and many more finetuning steps.

Shapes: N calibration samples, B batch, C/H/W image, L quantized layers.
Section: chapter 10, "Quantizing a diffusion model".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..validation import check_int
from .fakequant import quant_layers
from .ptq4dm import CalibrationSet

__all__ = ["FinetuneResult", "PredictionError", "Sensitivity", "layer_sensitivity", "prediction_error",
           "random_layers", "select_layers", "selective_finetune", "time_embedding_layers"]


def _wrappers(qmodel: nn.Module) -> dict:
    layers = quant_layers(qmodel)
    if not layers:
        raise ValueError("the model has no QuantWrapper: build it with quantize_model (or ptq_model) first")
    return layers


def time_embedding_layers(qmodel: nn.Module) -> list[str]:
    """Names of the quantized layers on the step-embedding path: ``time_mlp.*`` and ``*.emb_proj``."""
    return [name for name in _wrappers(qmodel)
            if name.startswith("time_mlp.") or name.rsplit(".", 1)[-1] == "emb_proj"]


@dataclass(frozen=True)
class Sensitivity:
    """Per-layer sensitivity, most sensitive first.

    Attributes:
        layers: L names.
        error: (L,) relative squared error of the predicted noise with only that layer quantized,
            ``sum (eps_q - eps)^2 / sum eps^2`` over the calibration inputs.
    """

    layers: tuple[str, ...]
    error: tuple[float, ...]

    def top(self, k: int, *, exclude: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The ``k`` most sensitive layers not in ``exclude``."""
        check_int("k", k, 0)
        return [n for n in self.layers if n not in set(exclude)][:k]


@torch.no_grad()
def _outputs(model: nn.Module, calib: CalibrationSet, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(x, t, y) for x, t, y in calib.batches(batch_size, device=device)])


@torch.no_grad()
def layer_sensitivity(qmodel: nn.Module, calib: CalibrationSet, *, batch_size: int = 256) -> Sensitivity:
    """Quantize one layer at a time (the rest float) and measure the noise prediction's error.

    Args:
        qmodel: a calibrated quantized model (:func:`labkit.quant.ptq4dm.ptq_model`); its
            wrappers' modes are restored on return.
        calib: inputs to measure on.
        batch_size: evaluation batch.

    Returns:
        :class:`Sensitivity`, sorted by decreasing error.
    """
    layers = _wrappers(qmodel)
    if len(calib) == 0:
        raise ValueError("the calibration set is empty")
    qmodel.eval()
    modes = {name: w.mode for name, w in layers.items()}
    try:
        for w in layers.values():
            w.mode = "float"
        ref = _outputs(qmodel, calib, batch_size)  # (N, C, H, W) float prediction
        energy = float(ref.double().pow(2).sum())
        errors = {}
        for name, w in layers.items():
            w.mode = "quant"
            errors[name] = float((_outputs(qmodel, calib, batch_size) - ref).double().pow(2).sum()) / energy
            w.mode = "float"
    finally:
        for name, w in layers.items():
            w.mode = modes[name]
    order = sorted(errors, key=errors.get, reverse=True)
    return Sensitivity(layers=tuple(order), error=tuple(errors[n] for n in order))


@dataclass(frozen=True)
class PredictionError:
    """Relative squared error of a model's noise prediction against a teacher's, overall and per step.

    Attributes:
        total: ``sum (eps - eps_teacher)^2 / sum eps_teacher^2`` over all inputs.
        t: (K,) the distinct steps of the inputs, descending.
        per_step: (K,) the same ratio over the inputs of each step.
    """

    total: float
    t: torch.Tensor
    per_step: torch.Tensor


@torch.no_grad()
def prediction_error(model: nn.Module, teacher: nn.Module, data: CalibrationSet, *,
                     batch_size: int = 256) -> PredictionError:
    """How far ``model``'s predicted noise is from ``teacher``'s on ``data`` (e.g. held-out trajectories)."""
    if len(data) == 0:
        raise ValueError("the data set is empty")
    ref = _outputs(teacher.eval(), data, batch_size).double()  # (N, C, H, W)
    err = _outputs(model.eval(), data, batch_size).double() - ref
    num, den = err.pow(2).flatten(1).sum(1).cpu(), ref.pow(2).flatten(1).sum(1).cpu()  # (N,)
    steps = torch.unique(data.t).flip(0)  # (K,) descending
    per_step = torch.stack([num[data.t == s].sum() / den[data.t == s].sum() for s in steps]).float()
    return PredictionError(total=float(num.sum() / den.sum()), t=steps, per_step=per_step)


def select_layers(qmodel: nn.Module, sensitivity: Sensitivity, *, top_k: int) -> list[str]:
    """QuEST's two critical kinds: the time-embedding layers, plus the ``top_k`` most sensitive others."""
    check_int("top_k", top_k, 0)
    time_layers = time_embedding_layers(qmodel)
    return time_layers + sensitivity.top(top_k, exclude=time_layers)


def _n_params(wrapper: nn.Module) -> int:
    return sum(p.numel() for p in wrapper.inner.parameters())


def random_layers(qmodel: nn.Module, k: int | None = None, *, n_params: int | None = None,
                  exclude: list[str] | tuple[str, ...] = (), generator: torch.Generator | None = None) -> list[str]:
    """A random control for :func:`select_layers`: ``k`` random quantized layers, or random layers
    holding at most ``n_params`` parameters (pass exactly one), none of them in ``exclude``.

    With ``n_params`` the layers are visited in a random order and each is taken while it still
    fits in the budget, so the draw trains about as many weights as the selection it controls for.

    Returns:
        Names in model order.
    """
    if (k is None) == (n_params is None):
        raise ValueError("pass exactly one of k (a layer count) and n_params (a parameter budget)")
    wrappers = _wrappers(qmodel)
    pool = [n for n in wrappers if n not in set(exclude)]
    order = torch.randperm(len(pool), generator=generator).tolist()
    if k is not None:
        check_int("k", k, 1, len(pool))
        pick = order[:k]
    else:
        budget = check_int("n_params", n_params, min(_n_params(wrappers[n]) for n in pool))
        pick, used = [], 0
        for i in order:
            size = _n_params(wrappers[pool[i]])
            if used + size <= budget:
                pick.append(i)
                used += size
    return [pool[i] for i in sorted(pick)]


@dataclass(frozen=True)
class FinetuneResult:
    """A finetuned copy and what was trained.

    Attributes:
        model: the finetuned quantized model (eval mode).
        layers: the names trained.
        n_params: trained parameter count.
        losses: distillation loss (relative squared error on the batch) at every step.
    """

    model: nn.Module
    layers: tuple[str, ...]
    n_params: int
    losses: tuple[float, ...]


def selective_finetune(qmodel: nn.Module, teacher: nn.Module, calib: CalibrationSet, layers: list[str], *,
                       steps: int = 100, lr: float = 1e-3, batch_size: int = 64,
                       generator: torch.Generator | None = None) -> FinetuneResult:
    """Distil ``teacher``'s noise predictions into ``layers`` of a copy of ``qmodel`` (others frozen).

    The loss is ``sum (eps_q - eps_teacher)^2 / sum eps_teacher^2`` on a random batch of ``calib``
    per step, minimised with Adam over the chosen wrappers' float weights and biases; the forward
    pass stays quantized (weights re-quantized from the float weights each call, STE backward).

    Args:
        qmodel: calibrated quantized model (left untouched).
        teacher: the float model.
        calib: the inputs to distil on.
        layers: wrapper names to train (non-empty, each in ``qmodel``).
        steps: optimizer steps.
        lr: Adam learning rate (> 0).
        batch_size: samples per step.
        generator: for the batches.

    Returns:
        :class:`FinetuneResult`.
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if len(calib) == 0:
        raise ValueError("the calibration set is empty")
    known = _wrappers(qmodel)
    if not layers:
        raise ValueError("layers must name at least one quantized layer")
    unknown = [n for n in layers if n not in known]
    if unknown:
        raise ValueError(f"not quantized layers of the model: {unknown}")
    student = copy.deepcopy(qmodel)
    student.requires_grad_(False)
    wrappers = quant_layers(student)
    params = [p for n in layers for p in wrappers[n].inner.parameters()]
    for p in params:
        p.requires_grad_(True)
    teacher.eval()
    opt = torch.optim.Adam(params, lr=lr)
    student.eval()  # no dropout or batch statistics to train; the wrappers stay in "quant" mode
    device = next(student.parameters()).device
    losses = []
    # show: start distil
    for _ in range(steps):
        idx = torch.randint(0, len(calib), (min(batch_size, len(calib)),), generator=generator)  # (B,) on CPU
        y = None if calib.y is None else calib.y[idx].to(device)
        x, t = calib.x[idx].to(device), calib.t[idx].to(device)
        with torch.no_grad():
            target = teacher(x, t, y)  # (B, C, H, W), the float model's noise prediction
        out = student(x, t, y)
        loss = F.mse_loss(out, target, reduction="sum") / target.pow(2).sum()  # relative squared error
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # show: end distil
    student.requires_grad_(False)
    return FinetuneResult(model=student, layers=tuple(layers), n_params=sum(p.numel() for p in params),
                          losses=tuple(losses))
