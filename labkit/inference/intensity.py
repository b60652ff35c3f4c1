"""Arithmetic intensity of decode-time layers: dense GEMMs, mixture-of-experts and GQA attention.

A decode step feeds one token per running request through the model. Its *arithmetic
intensity*, FLOPs per byte moved (Op/B), decides whether a layer is limited by compute or by
memory bandwidth: below a device's ridge point (peak FLOP/s over peak bytes/s) the layer waits
on memory, and batching is what raises the intensity. Batching raises it unevenly:

- a dense decode GEMM over ``B`` requests reads each weight once and uses it ``B`` times: in
  BF16 its Op/B is about ``B``;
- in a mixture-of-experts layer (``E`` experts, each token routed to ``k``) each expert sees about
  ``B k / E`` tokens, so each expert's Op/B is about ``B k / E``;
- decode attention reads every request's own KV cache once for one query token per query head;
  with grouped-query attention (``Hq`` query heads sharing ``Hkv`` key/value heads) its Op/B is
  about ``Hq / Hkv`` at *every* batch size.

This is the observation behind *Efficient and Economic Large Language Model Inference with
Attention Offloading* (Chen et al., 2024, arXiv:2405.01814: run attention on cheap
memory-optimised devices, the rest on compute-optimised ones, and ship each token's query, key,
value and attention output across the link) and *Duplex* (Yun et al., 2024, arXiv:2409.01141:
one device with an xPU for high-Op/B layers and a Logic-PIM for low-Op/B ones, chosen per layer).

This module counts FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` and bytes from the
operands of every matrix product, gives the closed forms they must equal, builds synthetic
layers for timing on a CPU, and models placement and link bandwidth on datasheet devices
(:class:`~labkit.inference.costs.Device`).

What the miniature leaves out: no PIM and no memory-optimised device is measured (they are
modelled); bytes are those of unfused matrix products (a fused attention kernel never writes its
scores); softmax, routing and gathering FLOPs are not counted; throughput per dollar is not
modelled.

Shapes: B batch (requests, one new token each), d model width, n output width, E experts,
k experts per token, Hq query heads, Hkv key/value heads, T cached tokens per request,
s bytes per value.
Section: chapter 07, "Arithmetic intensity: attention offloading and Duplex".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from labkit.inference.costs import Device, ModelShape
from labkit.runtime import Timing, interleaved_times, paired_speedup
from labkit.validation import check_int, check_real

__all__ = ["OpCount", "attention_ops", "batching_factor", "count_ops", "decode_attention", "dense_ops",
           "gemm_intensity", "layer_ops", "make_layers", "moe_forward", "moe_ops", "offload_link_bandwidth",
           "place_layers", "roofline_time", "round_robin_experts", "synthetic_ops", "time_layers"]

_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default}


@dataclass(frozen=True)
class OpCount:
    """FLOPs and bytes of some work; ``intensity`` is their ratio (Op/B)."""

    flops: float
    nbytes: float

    def __post_init__(self) -> None:
        check_real("flops", self.flops, 0.0)
        check_real("nbytes", self.nbytes, 0.0, strict=True)

    @property
    def intensity(self) -> float:
        """FLOPs per byte."""
        return self.flops / self.nbytes

    def __add__(self, other: OpCount) -> OpCount:
        return OpCount(self.flops + other.flops, self.nbytes + other.nbytes)


class _MatmulBytes(TorchDispatchMode):
    """Adds up the bytes of the operands and result of every matrix product dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func in _MATMULS:
            for t in (*args, out):
                if isinstance(t, torch.Tensor):
                    self.nbytes += t.numel() * t.element_size()
        return out


# show: start count
def count_ops(fn: Callable[[], object]) -> OpCount:
    """Run ``fn`` once; count its FLOPs with ``FlopCounterMode`` (2 per multiply-add of every
    matrix product) and its bytes as the operands read and results written by those products.

    A weight read by one product counts once per product: batching B tokens into one product
    shares that read among them, which is where intensity comes from.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    flops = FlopCounterMode(display=False)
    nbytes = _MatmulBytes()
    with torch.no_grad(), flops, nbytes:
        fn()
    if nbytes.nbytes == 0:
        raise ValueError("fn ran no matrix product: nothing to count")
    return OpCount(float(flops.get_total_flops()), float(nbytes.nbytes))
# show: end count


def gemm_intensity(rows: float, d_in: int, d_out: int, *, bytes_per_value: int = 2) -> float:
    """Op/B of ``(rows, d_in) @ (d_in, d_out)``: ``2 m d n / (s (d n + m d + m n))``.

    ``rows`` may be fractional (the mean load of an expert, ``B k / E``). In BF16 and for
    ``rows`` much smaller than ``d_in`` and ``d_out`` this is about ``rows``.
    """
    check_real("rows", rows, 0.0, strict=True)
    d_in, d_out = check_int("d_in", d_in, 1), check_int("d_out", d_out, 1)
    s = check_int("bytes_per_value", bytes_per_value, 1)
    return 2 * rows * d_in * d_out / (s * (d_in * d_out + rows * (d_in + d_out)))


# show: start closed
def dense_ops(batch: int, d_in: int, d_out: int, *, bytes_per_value: int = 2) -> OpCount:
    """One decode GEMM over B requests: 2 B d n FLOPs; the weight once, B inputs and outputs."""
    b = check_int("batch", batch, 1)
    d, n = check_int("d_in", d_in, 1), check_int("d_out", d_out, 1)
    s = check_int("bytes_per_value", bytes_per_value, 1)
    return OpCount(2 * b * d * n, s * (d * n + b * d + b * n))


def moe_ops(batch: int, d_in: int, d_out: int, *, n_experts: int, top_k: int,
            bytes_per_value: int = 2, loads: Sequence[int] | None = None) -> OpCount:
    """A mixture-of-experts GEMM: the router (d x E) for every token, then each expert with
    tokens (``loads[e]`` of them, balanced round-robin by default) reads its weight once."""
    b, e = check_int("batch", batch, 1), check_int("n_experts", n_experts, 1)
    k = check_int("top_k", top_k, 1)
    if k > e:
        raise ValueError(f"top_k must be <= n_experts={e}, got {k}")
    d, n = check_int("d_in", d_in, 1), check_int("d_out", d_out, 1)
    s = check_int("bytes_per_value", bytes_per_value, 1)
    if loads is None:  # token i goes to experts (i k + j) mod E: loads differ by at most one
        loads = [b * k // e + (i < b * k % e) for i in range(e)]
    if len(loads) != e or sum(loads) != b * k or min(loads) < 0:
        raise ValueError(f"loads must be {e} counts >= 0 summing to batch * top_k = {b * k}")
    total = OpCount(2 * b * d * e, s * (b * d + d * e + b * e))  # router logits
    for m in loads:
        if m:
            total = total + dense_ops(m, d, n, bytes_per_value=s)
    return total


def attention_ops(batch: int, context: int, *, n_head: int, n_kv_head: int, head_dim: int,
                  bytes_per_value: int = 2) -> OpCount:
    """Decode attention, one query token per request over T cached tokens, as two products:
    scores ``q K^T`` then ``P V``. FLOPs 4 B Hq T dh; bytes: each request's K and V once, its
    query and output, and its scores written and read back."""
    b, t = check_int("batch", batch, 1), check_int("context", context, 1)
    hq, hkv = check_int("n_head", n_head, 1), check_int("n_kv_head", n_kv_head, 1)
    dh, s = check_int("head_dim", head_dim, 1), check_int("bytes_per_value", bytes_per_value, 1)
    if hq % hkv:
        raise ValueError(f"n_head={hq} must be divisible by n_kv_head={hkv}")
    return OpCount(4 * b * hq * t * dh, s * b * (2 * hkv * t * dh + 2 * hq * dh + 2 * hq * t))
# show: end closed


def round_robin_experts(batch: int, n_experts: int, top_k: int) -> torch.Tensor:
    """(B, k) expert indices: token i goes to experts ``(i k + j) mod E`` (balanced loads)."""
    b, e, k = check_int("batch", batch, 1), check_int("n_experts", n_experts, 1), check_int("top_k", top_k, 1)
    if k > e:
        raise ValueError(f"top_k must be <= n_experts={e}, got {k}")
    return (torch.arange(b)[:, None] * k + torch.arange(k)[None, :]) % e


def moe_forward(x: torch.Tensor, router: torch.Tensor, experts: torch.Tensor, top_k: int, *,
                assignment: torch.Tensor | None = None) -> torch.Tensor:
    """Top-k mixture of linear experts: ``y_i = sum_j g_ij x_i W_{e_ij}``.

    Args:
        x: (B, d) tokens. router: (d, E). experts: (E, d, n).
        top_k: experts per token.
        assignment: optional (B, k) expert indices replacing the router's top-k choice (the
            router still runs, and its softmax weights the chosen experts).

    Returns:
        (B, n).
    """
    if x.dim() != 2 or router.dim() != 2 or experts.dim() != 3:
        raise ValueError("x must be (B, d), router (d, E) and experts (E, d, n)")
    e = experts.shape[0]
    if router.shape != (x.shape[1], e) or experts.shape[1] != x.shape[1]:
        raise ValueError(f"router must be ({x.shape[1]}, {e}) and experts ({e}, {x.shape[1]}, n)")
    k = check_int("top_k", top_k, 1, e)
    probs = torch.softmax(x @ router, dim=-1)  # (B, E)
    chosen = probs.topk(k, dim=-1).indices if assignment is None else assignment  # (B, k)
    gate = probs.gather(1, chosen)  # (B, k)
    out = x.new_zeros(x.shape[0], experts.shape[2])
    for j in range(e):
        rows, slot = (chosen == j).nonzero(as_tuple=True)
        if rows.numel():  # an expert without tokens reads nothing
            out.index_add_(0, rows, (x[rows] @ experts[j]) * gate[rows, slot, None])
    return out


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query token per request against its cache, grouped-query: (B, Hq, dh) queries,
    (B, Hkv, T, dh) keys and values; the Hq / Hkv query heads of a group share one K/V read.

    Returns:
        (B, Hq, dh).
    """
    if q.dim() != 3 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError("q must be (B, Hq, dh), k and v the same (B, Hkv, T, dh)")
    b, hq, dh = q.shape
    hkv = k.shape[1]
    if k.shape[0] != b or k.shape[3] != dh:
        raise ValueError(f"k and v must be ({b}, Hkv, T, {dh}), got {tuple(k.shape)}")
    if hq % hkv:
        raise ValueError(f"the query heads ({hq}) must be divisible by the key/value heads ({hkv})")
    qg = q.view(b, hkv, hq // hkv, dh)  # (B, Hkv, g, dh): a group's queries side by side
    scores = torch.softmax(qg @ k.transpose(-1, -2) / dh**0.5, dim=-1)  # (B, Hkv, g, T)
    return (scores @ v).reshape(b, hq, dh)


def make_layers(*, d_model: int, n_experts: int, top_k: int, n_head: int, n_kv_head: int, context: int,
                max_batch: int, seed: int = 0, dtype: torch.dtype = torch.float32
                ) -> dict[str, Callable[[int], Callable[[], torch.Tensor]]]:
    """Synthetic decode layers of width ``d_model``, random weights: ``"dense"`` (one d x d GEMM),
    ``"moe"`` (E experts of d x d behind a router; tokens spread round-robin over the experts,
    ``B k / E`` each, as a perfectly balanced router would) and ``"attention"`` (GQA over T cached
    tokens per request, head_dim d / Hq). :func:`synthetic_ops` gives their closed forms.

    Returns:
        name -> ``batch -> zero-argument callable`` running that layer on ``batch`` new tokens
        (batch <= ``max_batch``; inputs drawn once per batch size).
    """
    d = check_int("d_model", d_model, 1)
    e, hq = check_int("n_experts", n_experts, 1), check_int("n_head", n_head, 1)
    hkv = check_int("n_kv_head", n_kv_head, 1)
    k, t, bmax = check_int("top_k", top_k, 1, e), check_int("context", context, 1), check_int("max_batch", max_batch, 1)
    if d % hq or hq % hkv:
        raise ValueError(f"d_model={d} must be divisible by n_head={hq}, and n_head by n_kv_head={hkv}")
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) / shape[-2 if len(shape) > 1 else -1] ** 0.5).to(dtype)

    w, router, experts = rand(d, d), rand(d, e), rand(e, d, d)
    dh = d // hq
    cache_k, cache_v = rand(bmax, hkv, t, dh), rand(bmax, hkv, t, dh)
    x, q = rand(bmax, d), rand(bmax, hq, dh)

    def check(b: int) -> int:
        return check_int("batch", b, 1, bmax)

    return {
        "dense": lambda b: (lambda xb=x[:check(b)]: xb @ w),
        "moe": lambda b: (lambda xb=x[:check(b)], a=round_robin_experts(b, e, k):
                          moe_forward(xb, router, experts, k, assignment=a)),
        "attention": lambda b: (lambda qb=q[:check(b)], kb=cache_k[:b], vb=cache_v[:b]:
                                decode_attention(qb, kb, vb)),
    }


def synthetic_ops(name: str, batch: int, *, d_model: int, n_experts: int, top_k: int, n_head: int,
                  n_kv_head: int, context: int, bytes_per_value: int = 4) -> OpCount:
    """Closed-form FLOPs and bytes of the layer ``name`` of :func:`make_layers` (fp32 by default)."""
    s, d = bytes_per_value, d_model
    if name == "dense":
        return dense_ops(batch, d, d, bytes_per_value=s)
    if name == "moe":
        return moe_ops(batch, d, d, n_experts=n_experts, top_k=top_k, bytes_per_value=s)
    if name == "attention":
        return attention_ops(batch, context, n_head=n_head, n_kv_head=n_kv_head, head_dim=d // n_head,
                             bytes_per_value=s)
    raise ValueError(f"name must be 'dense', 'moe' or 'attention', got {name!r}")


def batching_factor(single: Timing, batched: Timing, batch: int) -> float:
    """How much batching cuts the time per token: ``batch * median_r(t1_r / tB_r)`` over paired
    rounds of :func:`~labkit.runtime.interleaved_times` (1: no gain, ``batch``: free tokens)."""
    return check_int("batch", batch, 1) * paired_speedup(single, batched)


def roofline_time(ops: OpCount, device: Device) -> float:
    """Seconds of ``ops`` on ``device`` at peak: the longer of compute and memory time."""
    if not isinstance(ops, OpCount) or not isinstance(device, Device):
        raise TypeError("ops must be an OpCount and device a Device")
    return max(ops.flops / device.flops, ops.nbytes / device.bandwidth)


def layer_ops(shape: ModelShape, batch: int, context: int, *, n_experts: int = 1, top_k: int = 1
              ) -> dict[str, OpCount]:
    """One decoder layer of ``shape`` at a decode step, per kind: ``"projections"`` (Q, K, V, O),
    ``"attention"`` (every request holds ``context`` tokens) and ``"ffn"`` (the three SwiGLU
    matrices; with ``n_experts > 1``, each token runs ``top_k`` of them, loads balanced)."""
    b, s, d = check_int("batch", batch, 1), shape.bytes_per_value, shape.d_model
    proj = dense_ops(b, d, d + 2 * shape.d_kv, bytes_per_value=s) + dense_ops(b, d, d, bytes_per_value=s)
    att = attention_ops(b, context, n_head=shape.n_head, n_kv_head=shape.n_kv_head,
                        head_dim=d // shape.n_head, bytes_per_value=s)
    if check_int("n_experts", n_experts, 1) == 1:
        ffn = dense_ops(b, d, 2 * shape.d_ff, bytes_per_value=s) + dense_ops(b, shape.d_ff, d, bytes_per_value=s)
    else:
        ffn = moe_ops(b, d, 2 * shape.d_ff, n_experts=n_experts, top_k=top_k, bytes_per_value=s)
        ffn = ffn + moe_ops(b, shape.d_ff, d, n_experts=n_experts, top_k=top_k, bytes_per_value=s)
    return {"projections": proj, "attention": att, "ffn": ffn}


# show: start placement
def place_layers(ops: Mapping[str, OpCount], compute: Device, memory: Device) -> dict[str, str]:
    """Duplex's choice: each layer runs where its roofline time is shorter, on the
    compute-optimised ``compute`` device or the bandwidth-optimised ``memory`` one.

    A layer of intensity ``I`` takes ``max(I / F, 1 / W)`` seconds per byte on a device of peak
    ``F`` FLOP/s and ``W`` bytes/s. When ``memory`` reads faster (``W_m > W_c``) and computes
    slower (``F_m < F_c``), the layers it wins are those below one crossing intensity, and every
    one of them lies below the compute device's ridge point ``F_c / W_c``.

    Returns:
        layer name -> the chosen device's name.
    """
    if not isinstance(compute, Device) or not isinstance(memory, Device):
        raise TypeError("compute and memory must be Devices")
    return {name: (memory if roofline_time(o, memory) < roofline_time(o, compute)
                   else compute).name for name, o in ops.items()}

# show: end placement


# show: start link
def offload_link_bandwidth(shape: ModelShape, batch: int, compute: Device) -> float:
    """Bytes/s the link must carry when attention runs on other devices (attention offloading).

    Per decode step and layer, each request's query, key and value go out and its attention
    output comes back: ``s dh (2 Hq + 2 Hkv)`` bytes, times L layers and B requests, within the
    time of one step of the rest of the model on ``compute`` (every weight read once,
    2 FLOPs per weight per request, at the roofline).
    """
    b = check_int("batch", batch, 1)
    if not isinstance(shape, ModelShape) or not isinstance(compute, Device):
        raise TypeError("shape must be a ModelShape and compute a Device")
    dh = shape.d_model // shape.n_head
    heads = 2 * shape.n_head + 2 * shape.n_kv_head  # q and output; k and v
    per_token = shape.n_layer * shape.bytes_per_value * dh * heads
    weights = shape.n_params * shape.bytes_per_value
    step = roofline_time(OpCount(2 * shape.n_params * b, weights), compute)
    return b * per_token / step
# show: end link


def time_layers(layers: Mapping[str, Callable[[int], Callable[[], torch.Tensor]]], batches: Sequence[int], *,
                repeats: int, warmup: int = 2) -> dict[tuple[str, int], Timing]:
    """Interleaved CPU-clock timings of every layer at every batch (call with one thread).

    Rounds visit the largest batches of every layer between two visits of the same small one,
    so a small layer's weights are evicted from the caches before it runs again.
    """
    bs = sorted({check_int("batch", b, 1) for b in batches})
    fns = {(name, b): make(b) for b in bs for name, make in layers.items()}
    with torch.no_grad():
        times = interleaved_times({f"{n}@{b}": f for (n, b), f in fns.items()}, repeats=repeats,
                                  warmup=warmup, clock="cpu")
    return {(n, b): times[f"{n}@{b}"] for n, b in fns}
