"""Erasure codes over byte columns: XOR parity and Reed-Solomon over GF(2^8).

The in-memory snapshots of "Reliable and Efficient In-Memory Fault Tolerance of Large Language
Model Pretraining" (2024) survive the loss of a machine because every group of ``k`` shards is
stored with ``m`` parity shards on other machines: any ``k`` of the ``k + m`` pieces give back
the data. The code works on *columns*: byte ``j`` of each of the ``k`` data shards forms a
message of ``k`` symbols, and the ``m`` parity bytes at position ``j`` are its check symbols.

Arithmetic is in the field GF(2^8): bytes added with XOR, multiplied as polynomials modulo the
primitive polynomial ``x^8 + x^4 + x^3 + x^2 + 1`` (``0x11d``), with generator ``alpha = 2``.
The code is the systematic Reed-Solomon code with generator polynomial

    g(x) = (x - alpha^0) (x - alpha^1) ... (x - alpha^(m-1)),

the parity of a message ``d(x)`` being ``d(x) x^m mod g(x)`` (the convention of the
``reedsolo`` package's ``RSCodec(nsym=m)``, which the tests compare against). For ``m = 1``,
``g(x) = x + 1`` and the parity is the XOR of the data bytes. Since the code is linear, parity
is a matrix ``P`` (m x k) times the data, and erasure decoding picks ``k`` surviving rows of
``[I; P]`` and inverts that ``k x k`` matrix (any ``k`` rows are invertible: the code is MDS).

Shapes: ``k`` data shards, ``m`` parity shards, ``L`` bytes per shard.

What the miniature leaves out: the decoding of *errors* at unknown positions (only erasures,
whose positions are known, occur here), and fast vectorised field arithmetic (numpy table
look-ups stand in for the paper's GPU/SIMD encoders).

Section: chapter 12, "In-memory fault tolerance".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PRIMITIVE = 0x11D  # x^8 + x^4 + x^3 + x^2 + 1


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """exp (510 entries, doubled to skip a modulo), log, and the full 256 x 256 product."""
    exp = np.zeros(510, dtype=np.int64)
    log = np.zeros(256, dtype=np.int64)
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1  # multiply by alpha = 2
        if x & 0x100:
            x ^= PRIMITIVE
    exp[255:] = exp[:255]
    a = np.arange(256)
    mul = exp[(log[a][:, None] + log[a][None, :])].astype(np.uint8)
    mul[0, :] = 0
    mul[:, 0] = 0
    return exp, log, mul


EXP, LOG, MUL = _tables()


def gf_mul(a: int, b: int) -> int:
    """The product of two bytes in GF(2^8) (modulo ``0x11d``)."""
    return int(MUL[a, b])


def gf_inv(a: int) -> int:
    """The multiplicative inverse of a non-zero byte in GF(2^8)."""
    if not isinstance(a, int) or not 1 <= a <= 255:
        raise ValueError(f"gf_inv: a must be an int in [1, 255], got {a!r}")
    return int(EXP[255 - LOG[a]])


def _as_rows(name: str, shards: Sequence[bytes | np.ndarray]) -> np.ndarray:
    """Stack byte shards of equal length into a uint8 array (rows = shards)."""
    if len(shards) == 0:
        raise ValueError(f"{name}: need at least one shard")
    rows = [np.frombuffer(s, dtype=np.uint8) if isinstance(s, (bytes, bytearray))
            else np.asarray(s) for s in shards]
    for r in rows:
        if r.dtype != np.uint8 or r.ndim != 1:
            raise TypeError(f"{name}: shards must be bytes or 1-D uint8 arrays")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"{name}: shards must have equal lengths, got {sorted(lengths)}")
    return np.stack(rows)


def _check_km(k: int, m: int) -> None:
    for name, v in (("k", k), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if k + m > 255:
        raise ValueError(f"k + m must be <= 255 (symbols of GF(2^8)), got {k} + {m}")


def xor_parity(shards: Sequence[bytes | np.ndarray]) -> bytes:
    """The XOR of equal-length byte shards (RAID-5 parity; Reed-Solomon with ``m = 1``)."""
    return np.bitwise_xor.reduce(_as_rows("xor_parity", shards), axis=0).tobytes()


def xor_rebuild(survivors: Sequence[bytes | np.ndarray], parity: bytes | np.ndarray) -> bytes:
    """The one missing data shard: the XOR of the parity and the surviving data shards."""
    return xor_parity([*survivors, parity])


def _mat_vec(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a @ rows`` over GF(2^8): a (p x q) matrix times q byte rows of length L."""
    out = np.zeros((a.shape[0], rows.shape[1]), dtype=np.uint8)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if a[i, j]:
                out[i] ^= MUL[a[i, j]][rows[j]]
    return out


# show: start rs
def generator_poly(m: int) -> list[int]:
    """g(x) = prod_{i<m} (x - alpha^i), coefficients from the highest degree down."""
    g = [1]
    for i in range(m):
        root = int(EXP[i])
        # multiply g by (x + root): minus is plus in GF(2^8)
        g = [a ^ gf_mul(b, root) for a, b in zip(g + [0], [0] + g)]
    return g


def parity_matrix(k: int, m: int) -> np.ndarray:
    """P (m x k): the parity of message e_j (x^m e_j(x) mod g(x)) is column j."""
    _check_km(k, m)
    g = generator_poly(m)
    p = np.zeros((m, k), dtype=np.uint8)
    for j in range(k):
        msg = [0] * k
        msg[j] = 1
        rem = msg + [0] * m  # long division of d(x) x^m by the monic g(x)
        for i in range(k):
            coef = rem[i]
            if coef:
                for t in range(1, m + 1):
                    rem[i + t] ^= gf_mul(g[t], coef)
        p[:, j] = rem[k:]
    return p


def gf_solve_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Solve ``a @ x = rows`` over GF(2^8) for x (k byte rows): Gauss-Jordan on ``a``."""
    a, rows = a.copy(), rows.copy()
    k = a.shape[0]
    for col in range(k):
        piv = col + int(np.flatnonzero(a[col:, col])[0])  # exists: a is invertible
        a[[col, piv]], rows[[col, piv]] = a[[piv, col]], rows[[piv, col]]
        inv = gf_inv(int(a[col, col]))
        a[col], rows[col] = MUL[inv][a[col]], MUL[inv][rows[col]]
        for r in range(k):
            f = int(a[r, col])
            if r != col and f:
                a[r] ^= MUL[f][a[col]]
                rows[r] ^= MUL[f][rows[col]]
    return rows
# show: end rs


def rs_encode(shards: Sequence[bytes | np.ndarray], m: int) -> list[bytes]:
    """The ``m`` Reed-Solomon parity shards of ``k`` equal-length data shards.

    Column ``j`` of ``data + parity`` equals ``RSCodec(nsym=m).encode(data[:, j])``.

    Args:
        shards: ``k`` data shards (bytes or 1-D uint8 arrays) of ``L`` bytes each.
        m: number of parity shards, ``k + m <= 255``.

    Returns:
        ``m`` parity shards of ``L`` bytes.

    Raises:
        ValueError: unequal shard lengths, ``m < 1`` or ``k + m > 255``.
    """
    data = _as_rows("rs_encode", shards)
    p = parity_matrix(len(shards), m)
    return [row.tobytes() for row in _mat_vec(p, data)]


def rs_decode(pieces: Sequence[bytes | np.ndarray | None], k: int) -> list[bytes]:
    """The ``k`` data shards from ``k + m`` pieces of which at most ``m`` are lost (``None``).

    ``pieces`` lists the data shards then the parity shards, a lost one as ``None``; column
    ``j`` of the result equals ``RSCodec(nsym=m).decode(column, erase_pos=lost)``.

    Raises:
        ValueError: more than ``m`` pieces lost, unequal lengths, or ``k + m > 255``.
    """
    m = len(pieces) - k
    _check_km(k, m)
    alive = [i for i, p in enumerate(pieces) if p is not None]
    if len(alive) < k:
        raise ValueError(f"rs_decode: {len(pieces) - len(alive)} pieces lost, the code "
                         f"recovers at most m = {m}")
    use = alive[:k]
    rows = _as_rows("rs_decode", [pieces[i] for i in use])
    full = np.concatenate([np.eye(k, dtype=np.uint8), parity_matrix(k, m)])  # [I; P]
    return [r.tobytes() for r in gf_solve_rows(full[use], rows)]
