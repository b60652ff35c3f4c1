"""1-bit Adam: error-compensated sign compression of Adam's momentum.

After Tang et al., "1-bit Adam: Communication Efficient Large-Scale Training with Adam's
Convergence Speed" (2021), sections 3 and 4. Adam's variance ``v`` changes little once training
has warmed up, so after ``w * T`` steps of ordinary Adam it is frozen, and what the ranks
exchange is the momentum, compressed to one bit per entry plus a scale:

    c = m + e,   s = ||c||_2 / sqrt(d),   C(c) = s * sign(c),   e <- c - C(c)

(``sign(0) = +1``; ``e`` is the error feedback, the part of ``c`` not yet sent). Signs cannot be
summed on the way round a ring, so the average is taken in two hops: each rank compresses its
whole momentum, sends packed chunk ``j`` with its scale to rank ``j`` (``all_to_all``), rank
``j`` averages the ``n`` decompressed chunks, adds its own *server* error, compresses the chunk
again and every rank gathers the ``n`` compressed chunks (``ring_all_gather``).

Both hops run on real ranks (:func:`compressed_all_reduce`, under ``torch.distributed``) and in
one process for ``n`` simulated ranks (:func:`simulate_compressed_all_reduce`); they share the
arithmetic, so their results are equal bit for bit. :class:`OneBitAdam` is the optimiser on a
flat parameter vector, with its reduction passed in (real or simulated).

Bytes per rank and step: ``2 (n - 1) / n * d_pad / 8`` of signs, where ``d_pad`` rounds ``d``
up to a multiple of ``8 n`` so chunks are whole bytes, plus ``2 (n - 1)`` float32 scales.

Section: chapter 12, "1-bit Adam".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from labkit.backend import Op
from labkit.comm.collectives import ByteCounter, all_to_all, ring_all_gather
from labkit.quant.bitstack import pack_signs, unpack_signs
from labkit.validation import check_int, check_real, describe

__all__ = [
    "ErrorFeedback", "OneBitAdam", "check_feedback_args", "compress", "compress_with_feedback",
    "compress_with_feedback_reference", "compressed_all_reduce", "compressed_bytes", "padded_size",
    "simulate_compressed_all_reduce", "volume_ratio",
]


def padded_size(numel: int, world_size: int) -> int:
    """``numel`` rounded up to a multiple of ``8 * world_size`` (whole bytes per chunk)."""
    check_int("numel", numel, 1)
    check_int("world_size", world_size, 2)
    block = 8 * world_size
    return -(-numel // block) * block


def compressed_bytes(numel: int, world_size: int) -> int:
    """Bytes one rank sends per :func:`compressed_all_reduce` of ``numel`` floats.

    ``2 (n - 1) / n * d_pad / 8`` bytes of packed signs and ``2 (n - 1)`` float32 scales.
    """
    n = world_size
    d_pad = padded_size(numel, n)
    return 2 * (n - 1) * d_pad // (8 * n) + 2 * (n - 1) * 4


def volume_ratio(warmup: float, *, numel: int, world_size: int) -> float:
    """Overall reduction in bytes of 1-bit Adam against fp32 ring all-reduce.

    A fraction ``warmup`` of the steps send ``2 (n - 1) / n * 4 d`` bytes, the rest
    :func:`compressed_bytes`: ``1 / (w + (1 - w) (1/32 + scales + padding))``.
    """
    w = check_real("warmup", warmup, 0.0)
    if not w < 1.0:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    full = 2 * (world_size - 1) / world_size * 4 * numel
    ratio = compressed_bytes(numel, world_size) / full
    return 1.0 / (w + (1.0 - w) * ratio)


# show: start compress
def compress(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-bit compression of a flat float32 tensor.

    Returns:
        ``(packed, scale, error)``: the signs packed 8 per byte (bit set where
        ``c < 0``, so sign(0) = +1), ``s = ||c||_2 / sqrt(d)`` as a one-element
        float32 tensor, and ``error = c - s * sign(c)``.
    """
    negative = c < 0
    scale = (c.norm() / math.sqrt(c.numel())).reshape(1)
    sign = 1.0 - 2.0 * negative.to(c.dtype)
    return pack_signs(negative), scale, c - scale * sign
# show: end compress


def check_feedback_args(x: object, error: object, *, op: str) -> None:
    """The checks both paths of :data:`compress_with_feedback` make: two non-empty float tensors
    of one dtype, one shape and one device."""
    for name, t in (("x", x), ("error", error)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a float tensor, got {describe(t)}")
    assert isinstance(x, torch.Tensor) and isinstance(error, torch.Tensor)  # for the type checker
    if x.dtype != error.dtype:
        raise TypeError(f"{op}: x and error must have one dtype, got {x.dtype} and {error.dtype}")
    if x.shape != error.shape:
        raise ValueError(f"{op}: x and error must have one shape, got {tuple(x.shape)} and {tuple(error.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{op}: x must hold at least one entry (its scale divides by sqrt(numel))")
    if x.device != error.device:
        raise ValueError(f"{op}: x and error must be on one device, got {x.device} and {error.device}")


# show: start feedback
def compress_with_feedback_reference(
        x: torch.Tensor,
        error: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress ``c = x + error``; keep ``error <- c - s sign(c)``.

    Returns:
        ``(packed, scale)`` as :func:`compress` returns them; ``error`` is
        overwritten in place.
    """
    check_feedback_args(x, error, op="compress_with_feedback")
    packed, scale, err = compress(x + error)
    error.copy_(err)
    return packed, scale
# show: end feedback


#: The compressor with error feedback; Triton path (two passes) in ``labkit/comm/_onebit_kernels.py``.
compress_with_feedback = Op("compress_with_feedback", reference=compress_with_feedback_reference,
                            triton="labkit.comm._onebit_kernels:compress_with_feedback_triton")


@dataclass
class ErrorFeedback:
    """The error-feedback memory of one compressor (``e`` above), zero at first."""

    numel: int
    error: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        check_int("numel", self.numel, 1)
        self.error = torch.zeros(self.numel)

    def compress(self, x: torch.Tensor, *, enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress ``x + e``, keep the new error (or none if not ``enabled``)."""
        if x.shape != (self.numel,):
            raise ValueError(f"x must have shape ({self.numel},), got {tuple(x.shape)}")
        if enabled:
            return compress_with_feedback(x, self.error)
        packed, scale, _ = compress(x)
        self.error = torch.zeros_like(x)
        return packed, scale


def _check_flat(name: str, x: object, world_size: int) -> int:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 1:
        raise TypeError(f"{name} must be a 1-D float32 tensor")
    if x.numel() % (8 * world_size):
        raise ValueError(f"{name} has {x.numel()} entries, not a multiple of 8 * world_size = "
                         f"{8 * world_size}; pad it to padded_size(numel, world_size)")
    return x.numel()


# show: start server
def _server(packed: Sequence[torch.Tensor], scales: Sequence[torch.Tensor],
            server: ErrorFeedback, enabled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank j's hop: average the n received chunks j, recompress with its error."""
    chunk = server.numel
    total = torch.zeros(chunk)
    for p, s in zip(packed, scales):  # in rank order, the same on every path
        total += s * unpack_signs(p, (chunk,))
    return server.compress(total / len(packed), enabled=enabled)
# show: end server


def compressed_all_reduce(x: torch.Tensor, worker: ErrorFeedback, server: ErrorFeedback, *,
                          counter: ByteCounter | None = None, enabled: bool = True) -> torch.Tensor:
    """Average ``x`` over the ranks with two one-bit hops and error feedback.

    Args:
        x: this rank's flat float32 tensor, length a multiple of ``8 * world_size``.
        worker: this rank's worker error (length of ``x``).
        server: this rank's server error (length of ``x`` / world_size).
        counter: if given, incremented by the payload bytes sent and received.
        enabled: ``False`` drops the error feedback (the ablation).

    Returns:
        The compressed average, identical on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("compressed_all_reduce: no process group (run under labkit.dist.launch)")
    n = dist.get_world_size()
    if n < 2:
        raise ValueError(f"compressed_all_reduce: world_size must be >= 2, got {n}")
    d = _check_flat("x", x, n)
    if worker.numel != d or server.numel != d // n:
        raise ValueError("worker error must match x and server error one chunk of it")
    packed, scale = worker.compress(x, enabled=enabled)
    mine = all_to_all(packed, counter=counter, allow_uint8=True)  # chunk `rank` of each
    scales = all_to_all(scale.expand(n).contiguous(), counter=counter)
    chunk_bytes = d // (8 * n)
    got = [mine[i * chunk_bytes:(i + 1) * chunk_bytes] for i in range(n)]
    packed_j, scale_j = _server(got, list(scales.unbind(0)), server, enabled)
    all_packed = ring_all_gather(packed_j, counter=counter, allow_uint8=True)
    all_scales = ring_all_gather(scale_j, counter=counter)
    return _decompress(all_packed, all_scales, d // n)


def _decompress(all_packed: torch.Tensor, all_scales: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([s * unpack_signs(p, (chunk,))
                      for p, s in zip(all_packed, all_scales.reshape(-1))])


def simulate_compressed_all_reduce(xs: Sequence[torch.Tensor], workers: Sequence[ErrorFeedback],
                                   servers: Sequence[ErrorFeedback], *,
                                   enabled: bool = True) -> torch.Tensor:
    """:func:`compressed_all_reduce` for ``len(xs)`` simulated ranks in one process.

    Returns the average every rank would get, equal bit for bit to the real run's.
    """
    n = len(xs)
    if n < 2:
        raise ValueError(f"world_size must be >= 2, got {n}")
    d = _check_flat("xs[0]", xs[0], n)
    if len(workers) != n or len(servers) != n:
        raise ValueError("need one worker and one server error per rank")
    sent = [w.compress(x, enabled=enabled) for x, w in zip(xs, workers)]
    chunk_bytes = d // (8 * n)
    out = [_server([p[j * chunk_bytes:(j + 1) * chunk_bytes] for p, _ in sent],
                   [s.reshape(()) for _, s in sent], servers[j], enabled)
           for j in range(n)]
    return _decompress(torch.stack([p for p, _ in out]), torch.stack([s for _, s in out]), d // n)


Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class OneBitAdam:
    """1-bit Adam on a flat parameter vector (no weight decay, no bias correction after warm-up).

    During the first ``warmup_steps`` steps (at least 1: ``v`` must have seen a gradient) it is Adam on the exactly averaged gradient; then
    ``v`` is frozen and each rank's momentum ``beta1 m + (1 - beta1) g_r`` is averaged by the
    compressed reduction. Call :meth:`step` with this rank's gradient and two reductions.
    """

    numel: int
    lr: float
    warmup_steps: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    t: int = 0
    m: torch.Tensor = field(init=False)
    v: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        check_int("numel", self.numel, 1)
        check_int("warmup_steps", self.warmup_steps, 1)
        check_real("lr", self.lr, 0.0, strict=True)
        self.m, self.v = torch.zeros(self.numel), torch.zeros(self.numel)

    # show: start step
    def step(self, params: torch.Tensor, grad: torch.Tensor, *, average: Reduce,
             compressed_average: Reduce) -> None:
        """Update ``params`` in place from this rank's ``grad``."""
        b1, b2 = self.betas
        self.t += 1
        if self.t <= self.warmup_steps:  # Adam on the exact average
            g = average(grad)
            self.m = b1 * self.m + (1 - b1) * g
            self.v = b2 * self.v + (1 - b2) * g * g
            m_hat = self.m / (1 - b1 ** self.t)
            v_hat = self.v / (1 - b2 ** self.t)
        else:  # v frozen; the momentum travels in one bit
            self.m = compressed_average(b1 * self.m + (1 - b1) * grad)
            m_hat = self.m
            v_hat = self.v / (1 - b2 ** self.warmup_steps)
        params -= self.lr * m_hat / (v_hat.sqrt() + self.eps)
    # show: end step
