"""Fake quantization of a model: wrappers that round weights and activations of Linear/Conv2d.

Fake quantization computes in float but rounds every quantized tensor to the values its integer
format can represent, so the model's outputs carry exactly the error a real integer kernel would
make (up to float summation order) while staying differentiable through the straight-through
estimator. That is how quantization is studied before any integer kernel runs:

1. :func:`quantize_model` copies a model and wraps every chosen ``nn.Linear`` / ``nn.Conv2d`` in a
   :class:`QuantWrapper` with a weight format and an activation (input) format;
2. inside ``with calibrating(model):`` a few batches run in float while each wrapper's observer
   records its input range; leaving the block freezes the ranges;
3. the model then runs quantized ("W8A8" = 8-bit weights and 8-bit inputs to every wrapped layer).

Weights are re-quantized at every call from the current float weights, so finetuning the float
weights through the rounding (QuEST) works unchanged.

What the miniature leaves out: quantized residual streams, attention matmuls (Q K^T, P V) and
normalisation layers, which a deployment would also quantize or keep in 16 bits explicitly.

Section: chapter 10, "Quantization from first principles".
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .observers import make_observer
from .quantizers import QSpec, _fake_quantize

__all__ = ["MODES", "QuantWrapper", "calibrating", "quant_layers", "quantize_model", "set_mode"]

MODES: tuple[str, ...] = ("float", "calibrate", "quant")


class QuantWrapper(nn.Module):
    """A ``nn.Linear`` or ``nn.Conv2d`` whose weight and input are fake-quantized.

    Args:
        module: the layer to wrap (kept as ``self.inner``; its weight stays float).
        w_spec: weight format (``None``: float weights). Per-channel specs use ``axis=0``, the
            output channels.
        a_spec: input format (``None``: float inputs); per tensor, range from calibration.
        observer: ``"minmax"``, ``"percentile"`` or ``"mse"``.
        observer_kwargs: passed to the observer.
    """

    def __init__(self, module: nn.Module, *, w_spec: QSpec | None, a_spec: QSpec | None,
                 observer: str = "minmax", observer_kwargs: dict | None = None) -> None:
        super().__init__()
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"QuantWrapper wraps nn.Linear or nn.Conv2d, got {type(module).__name__}")
        self.inner = module
        self.w_spec, self.a_spec = w_spec, a_spec
        self.observer_name, self.observer_kwargs = observer, dict(observer_kwargs or {})
        self.observer = make_observer(observer, a_spec, **self.observer_kwargs) if a_spec is not None else None
        self.register_buffer("a_lo", torch.full((1,), float("nan")))
        self.register_buffer("a_hi", torch.full((1,), float("nan")))
        self.mode = "float"
        self._cache: torch.Tensor | None = None  # fake-quantized weight, reused while the weight is unchanged
        self._cache_key: tuple | None = None

    def reset_observer(self) -> None:
        """Forget every range seen so far (for a new calibration)."""
        if self.a_spec is not None:
            self.observer = make_observer(self.observer_name, self.a_spec, **self.observer_kwargs)

    def freeze(self) -> None:
        """Fix the input range from the observer's data."""
        if self.observer is not None:
            lo, hi = self.observer.range()
            self.a_lo.copy_(lo)
            self.a_hi.copy_(hi)

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the integer format represents it (float weight if ``w_spec`` is None).

        Without autograd the result is cached until the weight changes (its version counter,
        bumped by every in-place update such as an optimizer step, or a new tensor); while
        autograd records it is recomputed, so gradients flow through the rounding.

        Raises:
            ValueError: the weight holds NaN or inf (the message names the layer and counts them).
        """
        w = self.inner.weight
        if self.w_spec is None:
            return w
        if torch.is_grad_enabled() and w.requires_grad:
            return _fake_quantize(w, self.w_spec, None, None, name="weight", op=self._label())
        key = (id(w), w._version, w.device, w.dtype)
        if self._cache_key != key:
            self._cache = _fake_quantize(w.detach(), self.w_spec, None, None, name="weight", op=self._label())
            self._cache_key = key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "calibrate" and self.observer is not None:
            self.observer.update(x)
        if self.mode != "quant":
            return self.inner(x)
        if self.a_spec is not None:
            if torch.isnan(self.a_lo).any():
                raise RuntimeError("input range not calibrated: run batches inside `with calibrating(model):` first")
            x = _fake_quantize(x, self.a_spec, self.a_lo, self.a_hi, name="input", op=self._label())
        w = self.quantized_weight()
        if isinstance(self.inner, nn.Linear):
            return nn.functional.linear(x, w, self.inner.bias)
        return self.inner._conv_forward(x, w, self.inner.bias)

    def _label(self) -> str:
        """How errors name this layer: ``QuantWrapper(Linear)``."""
        return f"QuantWrapper({type(self.inner).__name__})"

    def extra_repr(self) -> str:
        def fmt(spec: QSpec | None) -> str:
            return "float" if spec is None else f"int{spec.bits}/{spec.granularity}"
        return f"w={fmt(self.w_spec)}, a={fmt(self.a_spec)}, observer={self.observer_name}, mode={self.mode}"


def quantize_model(model: nn.Module, *, w_spec: QSpec | None, a_spec: QSpec | None, observer: str = "minmax",
                   observer_kwargs: dict | None = None,
                   include: Callable[[str, nn.Module], bool] | None = None) -> nn.Module:
    """A copy of ``model`` with every chosen Linear/Conv2d wrapped in a :class:`QuantWrapper`.

    Args:
        model: left untouched.
        w_spec, a_spec, observer, observer_kwargs: as for :class:`QuantWrapper`.
        include: ``include(name, module)`` picks the layers to wrap; default all.

    Returns:
        The copy, in ``"float"`` mode until calibrated (see :func:`calibrating`).
    """
    if w_spec is None and a_spec is None:
        raise ValueError("nothing to quantize: both w_spec and a_spec are None")
    qmodel = copy.deepcopy(model)
    targets = [(name, m) for name, m in qmodel.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)) and (include is None or include(name, m))]
    if not targets:
        raise ValueError("no nn.Linear or nn.Conv2d layer was selected")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        setattr(parent, child, QuantWrapper(module, w_spec=w_spec, a_spec=a_spec, observer=observer,
                                            observer_kwargs=observer_kwargs))
    return qmodel


def quant_layers(model: nn.Module) -> dict[str, QuantWrapper]:
    """The wrappers of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantWrapper)}


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Put every wrapper in ``"float"``, ``"calibrate"`` or ``"quant"`` mode; returns ``model``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    layers = quant_layers(model)
    if not layers:
        raise ValueError("the model has no QuantWrapper: build it with quantize_model first")
    for layer in layers.values():
        layer.mode = mode
    return model


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[nn.Module]:
    """Observe input ranges while the block runs; on exit freeze them and switch to ``"quant"``."""
    layers = quant_layers(model)
    for layer in layers.values():
        layer.reset_observer()
    set_mode(model, "calibrate")
    try:
        with torch.no_grad():
            yield model
    except BaseException:
        set_mode(model, "float")
        raise
    for layer in layers.values():
        layer.freeze()
    set_mode(model, "quant")
