"""Breaking a Beaver product on purpose: what P1 learns when the dealer's randomness is not private.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023), whose security
model (semi-honest parties, private channels, a dealer or third party that does not collude)
is only as good as the parties' randomness. CrypTen seeds every party from the OS for this
reason.

Intuition: in a product ``x * y`` (:func:`labkit.mpc.beaver.beaver_mul`) the parties open
``e = x - a``, where ``a = a0 + a1`` is the dealer's uniform mask. P1 follows the protocol
and keeps what it saw: its pieces ``(a1, b1, c1)`` and both halves of the opening. If it can
also get ``a0``, then ``x = e + a0 + a1`` exactly. Two ways to get it:

- the dealer's generator derives from a public seed (a run with ``insecure_seed``): P1
  replays the dealer. It can even *confirm* a guessed seed, because the replay must give
  back the very pieces P1 received;
- the dealer colludes and hands P1 the pieces it sent P0.

With private randomness (the default) no candidate seed reproduces P1's pieces, and the
replayed mask is an independent uniform word: the "recovered" value is noise, uncorrelated
with the secret.

What the miniature leaves out: attacks on later products of a run (the replay here stops
at the dealer's first draw) and on the weak generators themselves (see
:mod:`labkit.mpc.prg`).

Section: chapter 14, "Multiplying in secret".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..validation import check_int
from .comm import DEALER, MessageLog
from .dealer import mul_triple
from .prg import insecure_prg

__all__ = ["ProductView", "Recovery", "product_view", "recover_by_replay", "recover_with_dealer"]


@dataclass(frozen=True)
class ProductView:
    """What one computing party holds after a Beaver product ``x * y``.

    Attributes:
        party: the party whose view this is (0 or 1).
        shape_x, shape_y: the operands' shapes (public).
        pieces: its dealer pieces ``(a_i, b_i, c_i)``.
        e, f: the opened ``x - a`` and ``y - b`` (its own half plus the peer's).
    """

    party: int
    shape_x: tuple[int, ...]
    shape_y: tuple[int, ...]
    pieces: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    e: torch.Tensor
    f: torch.Tensor


@dataclass(frozen=True)
class Recovery:
    """An attempt to recover the peer's operand ``x``.

    Attributes:
        secret: the reconstruction of ``x`` as ring elements (fixed point: decode it).
        seed: the candidate seed whose replay reproduced the attacker's own pieces, or
            ``None`` when no candidate did (the reconstruction then used the first one).
        tried: how many candidate seeds were replayed.
    """

    secret: torch.Tensor
    seed: int | None
    tried: int


def product_view(log: MessageLog, *, shape_x: tuple[int, ...], shape_y: tuple[int, ...], party: int = 1,
                 scope: str = "mul") -> ProductView:
    """Party ``party``'s view of the first Beaver product in ``scope``, read from a run's log.

    Args:
        log: the log of a run made with ``keep_payloads=True``.
        shape_x, shape_y: the operands' shapes.
        party: the attacker (0 or 1).
        scope: the scope of the product (``"mul"`` for :func:`labkit.mpc.programs.op_program`).

    Raises:
        ValueError: the log kept no payloads or holds no such product.
    """
    party = check_int("party", party, 0, 1)
    nx, ny = math.prod(shape_x), math.prod(shape_y)
    sel = log.select(scope=scope)
    dealt = [m for m in sel.messages if m.kind == "dealer" and m.receiver == party]
    opens = {m.sender: m for m in sel.messages if m.kind == "open"}
    if not dealt or set(opens) != {0, 1}:
        raise ValueError(f"the log holds no Beaver product in scope {scope!r}")
    if dealt[0].payload is None or opens[0].payload is None:
        raise ValueError("the log kept no payloads: run with keep_payloads=True")
    first_round = min(m.round for m in opens.values())
    halves = [m.payload for m in sel.messages if m.kind == "open" and m.round == first_round]
    opened = halves[0] + halves[1]  # e and f, as both parties reconstruct them
    flat = dealt[0].payload
    nz = flat.numel() - nx - ny
    a, b, c = flat.split([nx, ny, nz])
    return ProductView(party, tuple(shape_x), tuple(shape_y), (a.reshape(shape_x), b.reshape(shape_y), c),
                       opened[:nx].reshape(shape_x), opened[nx:].reshape(shape_y))


def recover_by_replay(view: ProductView, candidates: Iterable[int]) -> Recovery:
    """Replay the dealer with each candidate public seed (:func:`~labkit.mpc.prg.insecure_prg`).

    The dealer's first draw is the triple of this product; a candidate is confirmed when the
    replayed pieces of the attacker equal the ones it received. Then ``x = e + a`` with the
    replayed ``a``. Without a confirmed candidate the reconstruction uses the first one.

    Returns:
        A :class:`Recovery`.
    """
    guess, tried = None, 0
    for seed in candidates:
        tried += 1
        pieces = mul_triple(view.shape_x, view.shape_y, generator=insecure_prg(seed, DEALER))
        mask = pieces[0][0] + pieces[1][0]  # a = a0 + a1
        if all(torch.equal(p.reshape(-1), q.reshape(-1)) for p, q in zip(pieces[view.party], view.pieces)):
            return Recovery(view.e + mask, seed, tried)
        if guess is None:
            guess = view.e + mask
    if guess is None:
        raise ValueError("candidates must name at least one seed")
    return Recovery(guess, None, tried)


def recover_with_dealer(view: ProductView, peer_mask_piece: torch.Tensor) -> torch.Tensor:
    """A colluding dealer hands over the peer's piece of ``a``: ``x = e + a_peer + a_own``."""
    return view.e + peer_mask_piece.reshape(view.shape_x) + view.pieces[0]
