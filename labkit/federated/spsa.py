"""Just One Byte: decentralised zeroth-order fine-tuning that sends one byte per peer and step.

After "Just One Byte (per gradient): A Note on Low-Bandwidth Decentralized Language Model
Finetuning Using Shared Randomness", which extends MeZO's memory-efficient SPSA to many
machines. At step ``t`` peer ``i`` seeds a generator with ``(i, t)`` and draws a Rademacher
direction ``z_i`` over all ``d`` parameters, estimates the directional derivative of its own
batch loss with two forward passes,

    g_i = (L_i(theta + eps z_i) - L_i(theta - eps z_i)) / (2 eps),

clips ``g_i`` to ``[-c, c]`` and codes it as one int8 (:func:`encode_byte`). The peers
all-gather their bytes; every peer regenerates every ``z_j`` from ``(j, t)`` and takes the same
step ``theta <- theta - (eta / n) sum_j g_j z_j`` (:func:`shared_step`). The directions never
travel, only their seeds are implied by who sent which byte at which step, so the parameters
stay identical on every peer without ever being exchanged.

:func:`spsa_peer` is the worker for :func:`labkit.dist.launch` (real gloo peers, the bytes
all-gathered with :func:`labkit.comm.ring_all_gather`); :func:`simulate_spsa` runs the same
loop for ``n`` peers in one process. Batches, directions and arithmetic are the same on both
paths, so the parameters they reach are equal bit for bit.

What the miniature leaves out: peers joining or leaving during training (the note's
motivation for seeding by peer and step), the note's sample-level seeds, and any network
slower than loopback TCP.

Section: chapter 13, "Shared randomness: Just One Byte and Ferret".
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from labkit.comm.collectives import ByteCounter, ring_all_gather
from labkit.lm.gpt import GPT, GPTConfig
from labkit.validation import check_int, check_real

__all__ = [
    "SpsaConfig", "batch_noise", "decode_byte", "encode_byte", "eval_windows", "params_sha256",
    "perturbation_seed", "rademacher", "shared_step", "simulate_spsa", "spsa_estimate",
    "spsa_peer",
]


def perturbation_seed(peer: int, step: int, *, seed: int = 0) -> int:
    """The generator seed of peer ``peer``'s direction at step ``step`` (a 63-bit hash)."""
    check_int("peer", peer, 0)
    check_int("step", step, 0)
    check_int("seed", seed, 0)
    digest = hashlib.blake2b(f"spsa:{seed}:{peer}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


def rademacher(numel: int, peer: int, step: int, *, seed: int = 0) -> torch.Tensor:
    """Peer ``peer``'s direction at ``step``: ``numel`` float32 entries, each +1 or -1.

    Any peer can call this for any other peer: the same arguments give the same tensor.
    """
    check_int("numel", numel, 1)
    gen = torch.Generator().manual_seed(perturbation_seed(peer, step, seed=seed))
    bits = torch.randint(0, 2, (numel,), generator=gen, dtype=torch.int8)
    return bits.to(torch.float32).mul_(2.0).sub_(1.0)


def encode_byte(g: float, clip: float) -> torch.Tensor:
    """``g`` clipped to ``[-clip, clip]``, rounded to one of 255 int8 levels."""
    c = check_real("clip", clip, 0.0, strict=True)
    g = check_real("g", g)
    level = round(max(-c, min(c, g)) / c * 127)
    return torch.tensor([level], dtype=torch.int8)


def decode_byte(code: torch.Tensor, clip: float) -> float:
    """The value a byte of :func:`encode_byte` stands for: ``code * clip / 127``."""
    c = check_real("clip", clip, 0.0, strict=True)
    if not isinstance(code, torch.Tensor) or code.dtype != torch.int8 or code.numel() != 1:
        raise TypeError("code must be a one-element int8 tensor")
    return int(code.item()) * c / 127


def spsa_estimate(loss_at: Callable[[torch.Tensor], float], theta: torch.Tensor,
                  z: torch.Tensor, eps: float) -> tuple[float, float, float]:
    """Two-point estimate of the derivative of ``loss_at`` along ``z``.

    ``theta`` is never modified: each side is a new tensor, so no rounding
    from perturbing and restoring in place leaks into the parameters.

    Returns:
        ``(g, loss_plus, loss_minus)``.
    """
    e = check_real("eps", eps, 0.0, strict=True)
    plus = loss_at(theta + e * z)
    minus = loss_at(theta - e * z)
    return (plus - minus) / (2 * e), plus, minus


# show: start step
def shared_step(theta: torch.Tensor, codes: Sequence[torch.Tensor],
                step: int, *, lr: float, clip: float,
                seed: int = 0) -> torch.Tensor:
    """The update every peer applies once the bytes of ``step`` are gathered.

    Peer ``j``'s direction is regenerated from ``(j, step)``; the bytes are
    added in peer order, so every peer does the same float operations and
    gets the same result.
    """
    update = torch.zeros_like(theta)
    for j, code in enumerate(codes):
        z_j = rademacher(theta.numel(), j, step, seed=seed)
        update.add_(z_j, alpha=decode_byte(code, clip))
    return theta - (lr / len(codes)) * update
# show: end step


def params_sha256(theta: torch.Tensor) -> str:
    """SHA-256 of a float32 tensor's bytes (equal digests: equal bit for bit)."""
    if not isinstance(theta, torch.Tensor) or theta.dtype != torch.float32:
        raise TypeError("theta must be a float32 tensor")
    return hashlib.sha256(theta.detach().contiguous().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class SpsaConfig:
    """One Just One Byte run.

    Attributes:
        steps: steps (one byte per peer each).
        lr: eta.
        eps: the perturbation size epsilon.
        clip: c; the byte codes [-c, c] in 255 levels.
        batch_size: windows per peer and step.
        eval_every: held-out loss every this many steps (and at 0 and the end).
        eval_windows: held-out windows (fixed) per evaluation.
        seed: seeds the directions and the peers' batches.
    """

    steps: int = 200
    lr: float = 1e-4
    eps: float = 1e-3
    clip: float = 8.0
    batch_size: int = 8
    eval_every: int = 50
    eval_windows: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_real("lr", self.lr, 0.0, strict=True)
        check_real("eps", self.eps, 0.0, strict=True)
        check_real("clip", self.clip, 0.0, strict=True)
        check_int("batch_size", self.batch_size, 1)
        check_int("eval_every", self.eval_every, 1)
        check_int("eval_windows", self.eval_windows, 1)
        check_int("seed", self.seed, 0)


def eval_windows(tokens: torch.Tensor, count: int, block_size: int, *,
                 seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` fixed windows of ``tokens`` (uint8) and their next bytes: two (count, T) int64."""
    check_int("count", count, 1)
    check_int("block_size", block_size, 1)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.numel() <= block_size + 1:
        raise ValueError(f"tokens must be a 1-D tensor longer than block_size + 1 = {block_size + 1}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - block_size - 1, (count,), generator=gen)
    rows = torch.arange(block_size + 1) + starts[:, None]
    windows = tokens[rows].long()
    return windows[:, :-1], windows[:, 1:]


class _Objective:
    """The model as a function of its flat parameter vector."""

    def __init__(self, model: dict) -> None:
        self.net = GPT(GPTConfig(**model["config"]), init_seed=0)
        self.net.load_state_dict(model["state"])
        self.net.eval()
        self.params = list(self.net.parameters())
        self.theta0 = torch.nn.utils.parameters_to_vector(self.params).detach().clone()

    @torch.no_grad()
    def losses(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of each window (count,)."""
        torch.nn.utils.vector_to_parameters(theta, self.params)
        logits = self.net(x).logits
        per_token = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return per_token.reshape(y.shape).mean(dim=1)

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(self.losses(theta, x, y).mean())


def _batch(tokens: torch.Tensor, gen: torch.Generator, batch_size: int,
           block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, tokens.numel() - block_size - 1, (batch_size,), generator=gen)
    windows = tokens[torch.arange(block_size + 1) + starts[:, None]].long()
    return windows[:, :-1], windows[:, 1:]


def _check_run(world_size: int, model: Any, train: Any, held_out: Any, cfg: Any,
               hash_at: Sequence[int]) -> None:
    check_int("world_size", world_size, 2)
    if not isinstance(cfg, SpsaConfig):
        raise TypeError(f"cfg must be an SpsaConfig, got {type(cfg).__name__}")
    if not isinstance(model, dict) or set(model) != {"config", "state"}:
        raise TypeError("model must be a dict with keys 'config' (GPTConfig fields) and 'state'")
    block = model["config"]["block_size"]
    for name, tokens in (("train", train), ("held_out", held_out)):
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.numel() <= block + 1:
            raise ValueError(f"{name} must be a 1-D token tensor longer than block_size + 1")
    for t in hash_at:
        check_int("hash_at", t, 0, cfg.steps)


def _loop(n: int, ranks: Sequence[int], rank: int | None, *, model: dict, train: torch.Tensor,
          held_out: torch.Tensor, cfg: SpsaConfig, hash_at: Sequence[int],
          die_at: tuple[int, int] | None = None) -> dict:
    """One run; ``rank`` is None in the simulator (every peer of ``ranks`` in this process)."""
    obj = _Objective(model)
    theta = obj.theta0
    d, block = theta.numel(), obj.net.cfg.block_size
    gens = {r: torch.Generator().manual_seed(1_000_003 * cfg.seed + r) for r in ranks}
    hx, hy = eval_windows(held_out, cfg.eval_windows, block)
    evaluates = rank in (None, 0)
    counter = ByteCounter()
    log: list[dict] = []
    held: list[tuple[int, float]] = []
    first_windows = obj.losses(theta, hx, hy) if evaluates else None
    if evaluates:
        held.append((0, float(first_windows.mean())))
    hashes = {0: params_sha256(theta)} if 0 in hash_at else {}
    for t in range(1, cfg.steps + 1):
        codes, losses = {}, []
        for r in ranks:
            x, y = _batch(train, gens[r], cfg.batch_size, block)
            z = rademacher(d, r, t, seed=cfg.seed)
            g, plus, minus = spsa_estimate(lambda v: obj.loss(v, x, y), theta, z, cfg.eps)
            codes[r] = encode_byte(g, cfg.clip)
            losses.append((plus + minus) / 2)
        if rank is None:
            gathered = [codes[j] for j in range(n)]
            sent = 1
        else:
            if die_at == (rank, t):
                os._exit(3)  # a crash: no traceback, no result, the socket closes
            before = counter.sent
            out = ring_all_gather(codes[rank].view(torch.uint8), counter=counter,
                                  check_shapes=False, allow_uint8=True)
            gathered = [out[j].view(torch.int8) for j in range(n)]
            sent = counter.sent - before
        theta = shared_step(theta, gathered, t, lr=cfg.lr, clip=cfg.clip, seed=cfg.seed)
        log.append(dict(step=t, message_bytes=int(codes[ranks[0]].numel()
                                                 * codes[ranks[0]].element_size()),
                        sent=int(sent), loss=sum(losses) / len(losses),
                        codes=[int(c.item()) for c in gathered]))
        if t in hash_at:
            hashes[t] = params_sha256(theta)
        if evaluates and (t % cfg.eval_every == 0 or t == cfg.steps):
            held.append((t, obj.loss(theta, hx, hy)))
    last_windows = obj.losses(theta, hx, hy) if evaluates else None
    return dict(n=n, numel=d, log=log, held_out=held, hashes=hashes, sha256=params_sha256(theta),
                first_windows=first_windows, last_windows=last_windows, params=theta,
                config=asdict(cfg), received=counter.received)


def spsa_peer(rank: int, world_size: int, *, model: dict, train: torch.Tensor,
              held_out: torch.Tensor, cfg: SpsaConfig, hash_at: Sequence[int] = (),
              die_at: tuple[int, int] | None = None) -> dict:
    """Worker for :func:`labkit.dist.launch`: peer ``rank`` of a Just One Byte run.

    Args:
        model: ``dict(config=GPTConfig fields, state=state_dict)``, the starting model.
        train: this run's training tokens (uint8, 1-D); peer ``r`` draws its batches with its
            own generator.
        held_out: tokens for the held-out loss (evaluated on peer 0 only).
        cfg: the run's hyper-parameters.
        hash_at: steps after which the parameters' SHA-256 is recorded.
        die_at: ``(peer, step)``: that peer's process ends abruptly (``os._exit``) before
            sending its byte of that step, to show how a lost peer surfaces.

    Returns:
        ``log`` (per step: bytes of this peer's message, bytes it sent, mean loss of its two
        forward passes, the gathered codes), ``held_out`` ((step, loss) on peer 0), ``hashes``,
        ``sha256`` of the final parameters, the parameters, and per-window held-out losses at
        the start and the end (peer 0).
    """
    _check_run(world_size, model, train, held_out, cfg, hash_at)
    if die_at is not None:
        check_int("die_at peer", die_at[0], 0, world_size - 1)
        check_int("die_at step", die_at[1], 1, cfg.steps)
    if not dist.is_initialized():
        raise ValueError("spsa_peer runs under labkit.dist.launch")
    return _loop(world_size, [rank], rank, model=model, train=train, held_out=held_out,
                 cfg=cfg, hash_at=hash_at, die_at=die_at)


def simulate_spsa(world_size: int, *, model: dict, train: torch.Tensor, held_out: torch.Tensor,
                  cfg: SpsaConfig, hash_at: Sequence[int] = ()) -> dict:
    """:func:`spsa_peer` for ``world_size`` peers in this process: the same parameters, bit for bit.

    The logged loss is the mean over the peers; ``sent`` is one byte per step (the message).
    """
    _check_run(world_size, model, train, held_out, cfg, hash_at)
    return _loop(world_size, list(range(world_size)), None, model=model, train=train,
                 held_out=held_out, cfg=cfg, hash_at=hash_at)


def batch_noise(first: torch.Tensor, last: torch.Tensor) -> tuple[float, float]:
    """Mean fall of the per-window losses and its standard error (paired windows)."""
    diff = (first - last).double()
    return float(diff.mean()), float(diff.std() / math.sqrt(diff.numel()))
