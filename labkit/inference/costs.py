"""What one prefill and one decode step cost: measured on the lab GPT, or a roofline of a 7B model.

A serving simulator (:mod:`~labkit.inference.serving`) needs two numbers per engine step: the
time of a *prefill* over a batch of prompts (every prompt token goes through every layer once,
and its keys and values land in the cache) and the time of a *decode* step (one new token per
running request, which reads the whole cache of its request). This module gives them in two
ways, behind one interface (:class:`StepCost`):

- :class:`LinearCost`, a straight-line fit to times measured on a real model
  (:func:`measure_gpt_costs` times the lab GPT's prefill and one-token decode with
  :mod:`~labkit.inference.kvcache`): ``prefill = a + b * prompt tokens`` and
  ``decode = c + d * batch + e * cached tokens``;
- :class:`RooflineCost`, the roofline model of a transformer (:class:`ModelShape`, by default a
  7B model shaped like LLaMA-2-7B) on a device (:class:`Device`, datasheet figures): a step
  takes the longer of its FLOPs at peak compute and its bytes at peak memory bandwidth.

Prefill of hundreds of tokens is compute-bound (each weight is used by every token); a decode
step is memory-bound (every weight and every cached key and value is read for one token per
request). That asymmetry is what DistServe's disaggregation exploits (Zhong et al., 2024,
arXiv:2401.09670, section 2).

What the miniature leaves out: kernel launch and scheduling overheads on the roofline side,
tensor and pipeline parallelism, the paper's profiled latency model (its section 4.2 fits the
same kind of linear model per phase, on real GPUs).

Shapes: B batch (running requests), T prompt tokens, C cached tokens summed over the batch.
Section: chapter 07, "Goodput: DistServe".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from labkit.runtime import interleaved_times
from labkit.validation import check_int, check_real

__all__ = ["A100_80GB", "ConstantCost", "Device", "H100_SXM", "H200_SXM", "LLAMA_7B", "LinearCost", "ModelShape",
           "RooflineCost", "StepCost", "check_lengths", "fit_linear_cost", "measure_gpt_costs"]


def check_lengths(name: str, lengths: object, low: int = 0) -> list[int]:
    """Return ``lengths`` as a non-empty list of ints >= ``low`` (negative lengths are refused)."""
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or len(lengths) == 0:
        raise TypeError(f"{name} must be a non-empty sequence of ints, got {type(lengths).__name__}")
    return [check_int(f"{name} entry", n, low) for n in lengths]


@runtime_checkable
class StepCost(Protocol):
    """Seconds of one engine step, and the bytes of KV cache per token (for transfers)."""

    kv_bytes_per_token: float

    def prefill(self, lengths: Sequence[int]) -> float:
        """Time of one prefill over prompts of ``lengths`` tokens."""
        ...

    def decode(self, batch: int, context: int) -> float:
        """Time of one decode step for ``batch`` requests holding ``context`` cached tokens in all."""
        ...


@dataclass(frozen=True)
class ConstantCost:
    """Every prefill takes ``prefill_s`` and every decode step ``decode_s`` (the M/D/1 check)."""

    prefill_s: float
    decode_s: float
    kv_bytes_per_token: float = 0.0

    def __post_init__(self) -> None:
        check_real("prefill_s", self.prefill_s, 0.0, strict=True)
        check_real("decode_s", self.decode_s, 0.0, strict=True)
        check_real("kv_bytes_per_token", self.kv_bytes_per_token, 0.0)

    def prefill(self, lengths: Sequence[int]) -> float:
        check_lengths("lengths", lengths)
        return self.prefill_s

    def decode(self, batch: int, context: int) -> float:
        check_int("batch", batch, 1)
        check_int("context", context, 0)
        return self.decode_s


@dataclass(frozen=True)
class LinearCost:
    """``prefill = prefill_fixed + prefill_per_token * sum(lengths)``;
    ``decode = decode_fixed + decode_per_request * batch + decode_per_context * context``.

    All coefficients are seconds (per token or per request) and >= 0.
    """

    prefill_fixed: float
    prefill_per_token: float
    decode_fixed: float
    decode_per_request: float
    decode_per_context: float
    kv_bytes_per_token: float = 0.0

    def __post_init__(self) -> None:
        for name in ("prefill_fixed", "prefill_per_token", "decode_fixed", "decode_per_request",
                     "decode_per_context", "kv_bytes_per_token"):
            check_real(name, getattr(self, name), 0.0)
        if self.prefill_fixed + self.prefill_per_token <= 0 or self.decode_fixed + self.decode_per_request <= 0:
            raise ValueError("a prefill and a decode step must take some time (all coefficients are 0)")

    def prefill(self, lengths: Sequence[int]) -> float:
        return self.prefill_fixed + self.prefill_per_token * sum(check_lengths("lengths", lengths))

    def decode(self, batch: int, context: int) -> float:
        batch, context = check_int("batch", batch, 1), check_int("context", context, 0)
        return self.decode_fixed + self.decode_per_request * batch + self.decode_per_context * context


def fit_linear_cost(prefill_times: Sequence[tuple[int, float]], decode_times: Sequence[tuple[int, int, float]],
                    *, kv_bytes_per_token: float = 0.0) -> LinearCost:
    """Least-squares :class:`LinearCost` from measurements (negative coefficients clipped to 0).

    Args:
        prefill_times: ``(prompt tokens in the batch, seconds)`` pairs, at least 2 token counts.
        decode_times: ``(batch, cached tokens in all, seconds)`` triples, at least 3.
        kv_bytes_per_token: carried into the result.
    """
    if len(prefill_times) < 2 or len({int(n) for n, _ in prefill_times}) < 2:
        raise ValueError("prefill_times needs at least two different token counts")
    if len(decode_times) < 3:
        raise ValueError("decode_times needs at least three (batch, context, seconds) points")
    xp = np.array([[1.0, check_int("tokens", n, 1)] for n, _ in prefill_times])
    yp = np.array([check_real("seconds", s, 0.0, strict=True) for _, s in prefill_times])
    xd = np.array([[1.0, check_int("batch", b, 1), check_int("context", c, 0)] for b, c, _ in decode_times])
    yd = np.array([check_real("seconds", s, 0.0, strict=True) for _, _, s in decode_times])
    (pa, pb), (da, db, dc) = (np.linalg.lstsq(x, y, rcond=None)[0] for x, y in ((xp, yp), (xd, yd)))
    return LinearCost(max(pa, 0.0), max(pb, 0.0), max(da, 0.0), max(db, 0.0), max(dc, 0.0),
                      kv_bytes_per_token=kv_bytes_per_token)


@torch.no_grad()
def measure_gpt_costs(model: torch.nn.Module, *, prompt_lengths: Sequence[int], batches: Sequence[int],
                      contexts: Sequence[int], repeats: int = 9, seed: int = 0
                      ) -> tuple[LinearCost, list[tuple[int, float]], list[tuple[int, int, float]]]:
    """Time the lab GPT's prefill and one-token decode with its KV cache; fit a :class:`LinearCost`.

    Prefill: a batch of ``b`` prompts of ``T`` tokens for every ``b`` in ``batches`` and ``T`` in
    ``prompt_lengths``. Decode: one new token for ``b`` requests that already cache ``S`` tokens
    each, ``S`` in ``contexts`` (the cache is cropped back after every timed step). Times are the
    median of ``repeats`` interleaved rounds on the calling thread's CPU clock (set
    ``torch.set_num_threads(1)`` first).

    Returns:
        ``(fit, prefill points (tokens, s), decode points (batch, cached tokens, s))``.
    """
    from labkit.inference.kvcache import decode_step, prefill  # lazy: kvcache imports the lab GPT

    cfg = model.cfg
    lengths = check_lengths("prompt_lengths", prompt_lengths, 1)
    batch_sizes = check_lengths("batches", batches, 1)
    ctxs = check_lengths("contexts", contexts, 1)
    check_int("repeats", repeats, 1)
    if max(max(lengths), max(ctxs) + 1) > cfg.block_size:
        raise ValueError(f"prompt_lengths and contexts + 1 must fit block_size={cfg.block_size}")
    gen = torch.Generator().manual_seed(seed)
    fns, keys = {}, {}
    for b in batch_sizes:
        for t in lengths:
            idx = torch.randint(0, cfg.vocab_size, (b, t), generator=gen)
            fns[f"p{b}x{t}"] = (lambda idx=idx: prefill(model, idx))
            keys[f"p{b}x{t}"] = ("prefill", b * t)
        for s in ctxs:
            _, cache = prefill(model, torch.randint(0, cfg.vocab_size, (b, s), generator=gen))
            nxt = torch.randint(0, cfg.vocab_size, (b,), generator=gen)

            def step(cache=cache, nxt=nxt, s=s) -> None:
                decode_step(model, cache, nxt)
                cache.crop(s)

            fns[f"d{b}x{s}"] = step
            keys[f"d{b}x{s}"] = ("decode", b, b * s)
    times = interleaved_times(fns, repeats=repeats, clock="cpu")
    pre = [(k[1], times[name].median) for name, k in keys.items() if k[0] == "prefill"]
    dec = [(k[1], k[2], times[name].median) for name, k in keys.items() if k[0] == "decode"]
    kv = 2 * cfg.n_layer * cfg.d_model * next(model.parameters()).element_size()
    return fit_linear_cost(pre, dec, kv_bytes_per_token=kv), pre, dec


@dataclass(frozen=True)
class Device:
    """Datasheet figures of an accelerator.

    Sources: NVIDIA A100 Tensor Core GPU datasheet (80 GB SXM: 312 TFLOP/s dense BF16,
    2,039 GB/s HBM2e), NVIDIA H100 Tensor Core GPU datasheet (SXM: 989 TFLOP/s dense BF16,
    3.35 TB/s HBM3) and NVIDIA H200 Tensor Core GPU datasheet (SXM: the same 989 TFLOP/s dense
    BF16, 4.8 TB/s HBM3e, 141 GB); the datasheets quote BF16 with sparsity at twice the dense
    rate.

    Attributes:
        name: for tables.
        flops: peak dense FLOP/s at the model's precision.
        bandwidth: peak memory bandwidth, bytes/s.
        memory: bytes of device memory.
    """

    name: str
    flops: float
    bandwidth: float
    memory: float

    def __post_init__(self) -> None:
        for field in ("flops", "bandwidth", "memory"):
            check_real(field, getattr(self, field), 0.0, strict=True)

    @property
    def ridge(self) -> float:
        """FLOPs per byte at which compute and memory take equal time."""
        return self.flops / self.bandwidth


A100_80GB = Device("A100 80GB SXM", flops=312e12, bandwidth=2.039e12, memory=80e9)
H100_SXM = Device("H100 SXM", flops=989e12, bandwidth=3.35e12, memory=80e9)
H200_SXM = Device("H200 SXM", flops=989e12, bandwidth=4.8e12, memory=141e9)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer with SwiGLU feed-forward layers and grouped-query attention.

    Attributes:
        n_layer, d_model, n_head, n_kv_head, d_ff, vocab_size: the architecture.
        bytes_per_value: 2 for BF16 weights and cache.
    """

    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_ff: int
    vocab_size: int
    bytes_per_value: int = 2

    def __post_init__(self) -> None:
        for field in ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "vocab_size", "bytes_per_value"):
            check_int(field, getattr(self, field), 1)
        if self.d_model % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError("d_model must be divisible by n_head, and n_head by n_kv_head")

    @property
    def d_kv(self) -> int:
        """Width of the keys (and of the values) of one layer."""
        return self.d_model // self.n_head * self.n_kv_head

    @cached_property
    def n_params(self) -> int:
        """Weights: Q and O (d x d), K and V (d x d_kv), three FFN matrices, embedding and head."""
        d = self.d_model
        per_layer = 2 * d * d + 2 * d * self.d_kv + 3 * d * self.d_ff
        return self.n_layer * per_layer + 2 * self.vocab_size * d

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.n_layer * self.d_kv * self.bytes_per_value


# LLaMA-2-7B's shape (Touvron et al., 2023): 6.7e9 parameters, 0.5 MiB of KV cache per token.
LLAMA_7B = ModelShape(n_layer=32, d_model=4096, n_head=32, n_kv_head=32, d_ff=11008, vocab_size=32000)


@dataclass(frozen=True)
class RooflineCost:
    """Roofline step times of ``model`` on ``device``: ``max(FLOPs / flops, bytes / bandwidth)``.

    Attributes:
        model, device: what runs where.
        efficiency: fraction of both peaks that the kernels reach (1.0: the ideal roofline).
    """

    model: ModelShape
    device: Device
    efficiency: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelShape) or not isinstance(self.device, Device):
            raise TypeError("model must be a ModelShape and device a Device")
        check_real("efficiency", self.efficiency, 0.0, strict=True)
        if self.efficiency > 1:
            raise ValueError(f"efficiency must be <= 1, got {self.efficiency}")

    @property
    def kv_bytes_per_token(self) -> float:
        return float(self.model.kv_bytes_per_token)

    def _time(self, flops: float, nbytes: float) -> float:
        return max(flops / self.device.flops, nbytes / self.device.bandwidth) / self.efficiency

    # show: start roofline
    def prefill(self, lengths: Sequence[int]) -> float:
        """Every prompt token meets every weight once (2 FLOPs per weight); causal attention
        adds 2 L d T^2 FLOPs per prompt; the weights are read once and the new KV written."""
        m, lengths = self.model, check_lengths("lengths", lengths, 1)
        tokens = sum(lengths)
        flops = 2 * m.n_params * tokens + sum(2 * m.n_layer * m.d_model * t * t for t in lengths)
        nbytes = m.n_params * m.bytes_per_value + tokens * m.kv_bytes_per_token
        return self._time(flops, nbytes)

    def decode(self, batch: int, context: int) -> float:
        """One token per request: 2 FLOPs per weight per request, 4 L d FLOPs per cached token;
        every weight and every cached key and value is read once per step."""
        m = self.model
        batch, context = check_int("batch", batch, 1), check_int("context", context, 0)
        flops = 2 * m.n_params * batch + 4 * m.n_layer * m.d_model * context
        nbytes = m.n_params * m.bytes_per_value + context * m.kv_bytes_per_token
        return self._time(flops, nbytes)
    # show: end roofline
