"""Private randomness: each party's own cryptographic generator, seeded from the operating system.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023). Every guarantee
of secret sharing ("a share is a uniform word", "an opened ``x - a`` is a one-time pad") holds
only if the masks are unpredictable to the other parties. CrypTen, our anchor for the engine,
seeds each party's generators from the OS and, where two parties need common randomness, lets
one of them draw the seed and send it over the private channel.

Intuition: a party's randomness has two enemies. (1) A *public* seed: if every party's
generator derives from an argument they all receive, any party can replay the dealer and
unmask every opened value. (2) A *weak* generator: PyTorch's CPU generator is a Mersenne
Twister with a 32-bit seed; the seed can be searched exhaustively, and 624 consecutive outputs
(which P1 receives in the clear: its half of every dealer triple is a raw draw) determine the
whole state. So a party here draws a 256-bit seed from ``secrets`` (the OS's cryptographic
source) inside its own process and expands it with SHAKE-256 in counter mode: draw ``k`` reads
``SHAKE256(seed || k)``. The seed never leaves the object (no message, no pickling, no repr).

Reproducible runs exist for one purpose, comparing the simulator with real processes bit for
bit, and only through :func:`insecure_prg`, whose seed derives from a public integer: a run
made that way is marked ``secure=False`` (:mod:`labkit.mpc.runtime`).

What the miniature leaves out: a vetted DRBG construction (NIST SP 800-90A), forward secrecy
(reseeding), and pairwise seeds: none of the engine's protocols needs two parties to share
randomness (the dealer draws triples alone; an input's owner draws its mask alone). A protocol
that needs it (zero-sharing, seed-compressed triples) must have one party draw a seed with
:meth:`PRG.from_os` and send it as a logged message, as CrypTen does.

Section: chapter 14, "Sharing secrets".
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence

import numpy as np
import torch

from ..validation import check_int

__all__ = ["SEED_BYTES", "PRG", "insecure_prg"]

SEED_BYTES = 32  # 256-bit seeds


class PRG:
    """A cryptographic pseudo-random generator of ring elements (SHAKE-256 in counter mode).

    Args:
        seed: at least 16 bytes of key material. Use :meth:`from_os` (private) or
            :func:`insecure_prg` (reproducible, public); the constructor is for tests.

    Attributes:
        draws: how many draws have been made (the counter of the next one).
    """

    __slots__ = ("_seed", "draws")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)):
            raise TypeError(f"seed must be bytes, got {type(seed).__name__}")
        if len(seed) < 16:
            raise ValueError(f"seed must hold at least 16 bytes, got {len(seed)}")
        self._seed = bytes(seed)
        self.draws = 0

    @classmethod
    def from_os(cls) -> PRG:
        """A generator seeded with :data:`SEED_BYTES` bytes from the OS (``secrets.token_bytes``)."""
        return cls(secrets.token_bytes(SEED_BYTES))

    @property
    def seed(self) -> bytes:
        """The key material. Only tests of secrecy read it: a party that sends it breaks the protocol."""
        return self._seed

    def words(self, shape: Sequence[int] | torch.Size) -> torch.Tensor:
        """Uniform int64 words (all 2^64 values equally likely) of the given shape: one draw."""
        shape = tuple(check_int(f"shape[{i}]", d, 0) for i, d in enumerate(shape))
        n = math.prod(shape)
        # show: start expand
        # draw k reads SHAKE256(seed || k): 8 bytes per word, never a repeated stream
        counter = self.draws.to_bytes(8, "little")
        stream = hashlib.shake_256(self._seed + counter)
        self.draws += 1
        if n == 0:
            return torch.zeros(shape, dtype=torch.int64)
        raw = stream.digest(8 * n)
        words = np.frombuffer(raw, dtype="<i8").astype(np.int64)  # writable copy
        return torch.from_numpy(words).reshape(shape)
        # show: end expand

    def __repr__(self) -> str:
        return f"PRG(draws={self.draws}, seed=<private>)"

    def __reduce__(self) -> None:  # pickling would copy the seed into another process
        raise TypeError("a PRG holds a party's private seed and cannot be pickled or sent")


def insecure_prg(seed: int, rank: int) -> PRG:
    """The generator of party ``rank`` in a run opted into ``insecure_seed=seed``.

    Its key is a hash of the public ``seed`` and the rank: every party (and every reader) can
    recompute every other party's randomness. Only for reproducing a run bit for bit.
    """
    check_int("seed", seed, 0)
    check_int("rank", rank, 0)
    key = hashlib.sha256(f"labkit.mpc insecure seed {seed} rank {rank}".encode()).digest()
    return PRG(key)
