"""Ferret: first-order local updates sent as K coordinates on shared random bases, and FedAvg.

After Shu et al., "Ferret: Federated Full-Parameter Tuning at Scale for Large Language
Models", section 3. Each round, every client starts from the global parameters, takes
``local_steps`` ordinary (first-order) SGD steps on its own data and ends with an update
``Delta``. The parameter vector is cut into blocks (consecutive tensors, :func:`parameter_blocks`);
for block ``b`` of size ``d_b`` the round's seed gives ``k_b = min(K, d_b)`` random bases
``v_1..v_k`` with i.i.d. N(0, 1/d_b) entries, the same on every client and on the server. The
client sends the ``k_b`` floats

    gamma_k = (d_b / k_b) <v_k, Delta_b>,

and the server rebuilds ``Delta_b ~ sum_k gamma_k v_k``. Since ``E[v v^T] = I / d_b`` the
reconstruction is unbiased, and its mean squared error is ``(d_b + 1) / k_b ||Delta_b||^2``
(:func:`expected_error`): it falls as 1/K, and small blocks are rebuilt more accurately than
one big one. The server averages the clients' coordinates (the bases are shared, so averaging
coordinates is averaging reconstructions) and steps with a server learning rate.

FedAvg (:func:`run_federated` with ``method="fedavg"``) sends ``Delta`` in full, ``4 d`` bytes
per client and round, against Ferret's ``4 sum_b k_b``.

What the miniature leaves out: the published code's truncated-normal bases, its allocation of
more coordinates to blocks whose update is larger, its clipping of the reconstructed update,
client sampling, and LLM-sized models.

Section: chapter 13, "Shared randomness: Just One Byte and Ferret".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from labkit.federated.spsa import _Objective, eval_windows
from labkit.validation import check_int, check_real

__all__ = [
    "FedConfig", "basis", "coordinate_count", "expected_error", "parameter_blocks", "project",
    "project_on", "rebuild_from", "reconstruct", "round_bases", "run_federated",
]

Blocks = Sequence[tuple[int, int]]


def parameter_blocks(sizes: Sequence[int], *, min_size: int = 1) -> list[tuple[int, int]]:
    """Cut a flat vector of consecutive tensors of ``sizes`` into blocks ``(start, end)``.

    Consecutive tensors are merged until a block holds at least ``min_size`` entries (the
    last block may be smaller); ``min_size=1`` gives one block per tensor.
    """
    if not sizes:
        raise ValueError("sizes must not be empty")
    for s in sizes:
        check_int("sizes", s, 1)
    check_int("min_size", min_size, 1)
    blocks, start, end = [], 0, 0
    for s in sizes:
        end += s
        if end - start >= min_size:
            blocks.append((start, end))
            start = end
    if start < end:
        blocks.append((start, end))
    return blocks


def _check_blocks(blocks: Blocks, numel: int) -> None:
    if not blocks or blocks[0][0] != 0 or blocks[-1][1] != numel or any(
            a >= b for a, b in blocks) or any(b != c for (_, b), (c, _) in zip(blocks, blocks[1:])):
        raise ValueError(f"blocks must cover [0, {numel}) with consecutive non-empty ranges")


def _numel(blocks: Blocks) -> int:
    if not blocks:
        raise ValueError("blocks must not be empty")
    return int(blocks[-1][1])


def _check_k(k: int, numel: int) -> int:
    return check_int("K", k, 1, numel)


def _block_seed(seed: int, round_: int, block: int) -> int:
    digest = hashlib.blake2b(f"ferret:{seed}:{round_}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


def basis(block_numel: int, k: int, *, seed: int, round_: int, block: int) -> torch.Tensor:
    """The ``(k, block_numel)`` bases of block ``block`` in round ``round_``: entries N(0, 1/d_b)."""
    check_int("block_numel", block_numel, 1)
    check_int("k", k, 1, block_numel)
    gen = torch.Generator().manual_seed(_block_seed(seed, round_, block))
    return torch.randn(k, block_numel, generator=gen).mul_(block_numel ** -0.5)


def coordinate_count(blocks: Blocks, k: int) -> int:
    """Floats one client sends per round: ``sum_b min(K, d_b)``."""
    return sum(min(k, b - a) for a, b in blocks)


def expected_error(delta: torch.Tensor, blocks: Blocks, k: int) -> float:
    """``E ||rebuilt - Delta||^2 = sum_b (d_b + 1) / k_b ||Delta_b||^2`` (Gaussian bases)."""
    _check_blocks(blocks, delta.numel())
    _check_k(k, delta.numel())
    return sum((b - a + 1) / min(k, b - a) * float(delta[a:b].double().pow(2).sum())
               for a, b in blocks)


def round_bases(blocks: Blocks, k: int, *, seed: int, round_: int) -> list[torch.Tensor]:
    """Every block's bases for one round (what each client and the server regenerate)."""
    numel = _numel(blocks)
    _check_blocks(blocks, numel)
    _check_k(k, numel)
    return [basis(b - a, min(k, b - a), seed=seed, round_=round_, block=i)
            for i, (a, b) in enumerate(blocks)]


# show: start ferret
def project_on(delta: torch.Tensor, blocks: Blocks,
               bases: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A client's message: per block, gamma_b = (d_b / k_b) V_b Delta_b."""
    return [v @ delta[a:b] * ((b - a) / v.shape[0])
            for (a, b), v in zip(blocks, bases, strict=True)]


def rebuild_from(coords: Sequence[torch.Tensor], blocks: Blocks,
                 bases: Sequence[torch.Tensor]) -> torch.Tensor:
    """The server's side: Delta_b ~ V_b^T gamma_b, block by block."""
    out = torch.empty(blocks[-1][1])
    for (a, b), v, gamma in zip(blocks, bases, coords, strict=True):
        out[a:b] = gamma @ v
    return out
# show: end ferret


def project(delta: torch.Tensor, blocks: Blocks, k: int, *, seed: int,
            round_: int) -> list[torch.Tensor]:
    """:func:`project_on` with the round's bases: ``min(K, d_b)`` floats per block."""
    if not isinstance(delta, torch.Tensor) or delta.dim() != 1 or delta.dtype != torch.float32:
        raise TypeError("delta must be a 1-D float32 tensor")
    _check_blocks(blocks, delta.numel())
    _check_k(k, delta.numel())
    return project_on(delta, blocks, round_bases(blocks, k, seed=seed, round_=round_))


def reconstruct(coords: Sequence[torch.Tensor], blocks: Blocks, *, seed: int,
                round_: int) -> torch.Tensor:
    """:func:`rebuild_from` after regenerating the bases from the round's seed."""
    if len(coords) != len(blocks):
        raise ValueError(f"coords has {len(coords)} blocks, blocks has {len(blocks)}")
    _check_blocks(blocks, _numel(blocks))
    bases = [basis(b - a, gamma.numel(), seed=seed, round_=round_, block=i)
             for i, ((a, b), gamma) in enumerate(zip(blocks, coords))]
    return rebuild_from(coords, blocks, bases)


@dataclass(frozen=True)
class FedConfig:
    """A federated run with in-process clients.

    Attributes:
        rounds: communication rounds.
        clients: number of clients, at least 2; client ``c`` holds shard ``c`` of the tokens.
        local_steps: SGD steps per client and round.
        lr: the clients' SGD learning rate.
        server_lr: the server's step on the averaged (rebuilt) update.
        batch_size: windows per local step.
        eval_windows: held-out windows (fixed) per evaluation.
        min_block: Ferret's blocks hold at least this many parameters.
        seed: seeds the bases and the clients' batches.
    """

    rounds: int = 5
    clients: int = 2
    local_steps: int = 10
    lr: float = 0.1
    server_lr: float = 1.0
    batch_size: int = 8
    eval_windows: int = 64
    min_block: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("rounds", self.rounds, 1)
        check_int("clients", self.clients, 2)
        check_int("local_steps", self.local_steps, 1)
        check_real("lr", self.lr, 0.0, strict=True)
        check_real("server_lr", self.server_lr, 0.0, strict=True)
        check_int("batch_size", self.batch_size, 1)
        check_int("eval_windows", self.eval_windows, 1)
        check_int("min_block", self.min_block, 1)
        check_int("seed", self.seed, 0)


def _local_update(obj: _Objective, theta: torch.Tensor, shard: torch.Tensor,
                  gen: torch.Generator, cfg: FedConfig) -> torch.Tensor:
    """``local_steps`` of SGD from ``theta``; returns Delta = theta - theta_local."""
    block = obj.net.cfg.block_size
    local = theta.clone()
    for _ in range(cfg.local_steps):
        starts = torch.randint(0, shard.numel() - block - 1, (cfg.batch_size,), generator=gen)
        windows = shard[torch.arange(block + 1) + starts[:, None]].long()
        torch.nn.utils.vector_to_parameters(local, obj.params)
        obj.net.zero_grad(set_to_none=True)
        logits = obj.net(windows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 windows[:, 1:].reshape(-1))
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in obj.params])
        local = local - cfg.lr * grad
    return theta - local


def run_federated(method: str, *, model: dict, train: torch.Tensor, held_out: torch.Tensor,
                  cfg: FedConfig, k: int | None = None) -> dict:
    """FedAvg or Ferret with ``cfg.clients`` in-process clients on shards of ``train``.

    Args:
        method: ``"fedavg"`` (the update in full) or ``"ferret"`` (``k`` coordinates per block).
        model: ``dict(config=GPTConfig fields, state=state_dict)``, the starting model.
        train: training tokens (uint8, 1-D), cut into ``cfg.clients`` contiguous shards.
        held_out: tokens for the held-out loss, evaluated after every round.
        cfg: the run.
        k: Ferret's K, in [1, d]; ignored by FedAvg.

    Returns:
        ``bytes`` (cumulative bytes sent per client, 0 first), ``held_out`` (loss before the
        first round and after each), ``relative_error`` (Ferret: per round,
        ||rebuilt - Delta||^2 / ||Delta||^2 of client 0), ``predicted_error`` (its
        expectation, :func:`expected_error` / ||Delta||^2), ``blocks`` and ``coordinates``.
    """
    if method not in ("fedavg", "ferret"):
        raise ValueError(f"method must be 'fedavg' or 'ferret', got {method!r}")
    if not isinstance(cfg, FedConfig):
        raise TypeError(f"cfg must be a FedConfig, got {type(cfg).__name__}")
    obj = _Objective(model)
    theta = obj.theta0
    d, block = theta.numel(), obj.net.cfg.block_size
    if method == "ferret":
        if k is None:
            raise ValueError("k is required for method='ferret'")
        _check_k(k, d)
    if not isinstance(train, torch.Tensor) or train.dim() != 1 or (
            train.numel() // cfg.clients <= block + 1):
        raise ValueError("train must be a 1-D token tensor with more than block_size + 1 tokens "
                         "per client")
    shards = train.tensor_split(cfg.clients)
    blocks = parameter_blocks([p.numel() for p in obj.params], min_size=cfg.min_block)
    per_round = 4 * (d if method == "fedavg" else coordinate_count(blocks, k))
    gens = [torch.Generator().manual_seed(7919 * cfg.seed + c) for c in range(cfg.clients)]
    hx, hy = eval_windows(held_out, cfg.eval_windows, block)
    held, sent, errors, predicted = [obj.loss(theta, hx, hy)], [0], [], []
    for r in range(cfg.rounds):
        deltas = [_local_update(obj, theta, shards[c], gens[c], cfg) for c in range(cfg.clients)]
        if method == "fedavg":
            step = torch.stack(deltas).mean(0)
        else:
            bases = round_bases(blocks, k, seed=cfg.seed, round_=r)  # drawn once here
            msgs = [project_on(dl, blocks, bases) for dl in deltas]
            mean = [torch.stack(parts).mean(0) for parts in zip(*msgs)]
            step = rebuild_from(mean, blocks, bases)
            own = rebuild_from(msgs[0], blocks, bases)
            norm = float(deltas[0].double().pow(2).sum())
            errors.append(float((own - deltas[0]).double().pow(2).sum()) / norm)
            predicted.append(expected_error(deltas[0], blocks, k) / norm)
        theta = theta - cfg.server_lr * step
        held.append(obj.loss(theta, hx, hy))
        sent.append(sent[-1] + per_round)
    return dict(method=method, k=k, bytes=sent, held_out=held, relative_error=errors,
                predicted_error=predicted,
                blocks=blocks, coordinates=per_round // 4, config=asdict(cfg))
