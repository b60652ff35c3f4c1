"""Collectives built from point-to-point messages: ring, binomial tree, pairwise all-to-all.

Every data-parallel step ends with the same chore: each of n ranks holds a gradient of S bytes
and all of them need the sum. ``torch.distributed.all_reduce`` does it in one call; this module
does it by hand, with ``dist.isend`` and ``dist.recv`` only, so the schedule and the bytes are
visible. The algorithms are the classic ones analysed by Thakur, Rabenseifner and Gropp,
"Optimization of Collective Communication Operations in MPICH" (2005), and used inside NCCL and
gloo; the chapter's papers (T3, C4, ByteScale, ...) all start from them.

- Ring reduce-scatter: the tensor is cut into n chunks; in each of n - 1 steps every rank sends
  one chunk to its right neighbour and adds the chunk arriving from its left one. Afterwards rank
  r holds chunk r of the sum.
- Ring all-gather: n - 1 more steps pass the finished chunks around the ring.
- Ring all-reduce = reduce-scatter + all-gather: each rank sends ``2 (n - 1) / n * S`` bytes,
  whatever n is, which is why rings are bandwidth-optimal.
- Tree all-reduce: a *binomial* tree reduce to rank 0 (round k: ranks with lowest set bit 2^k send
  their partial sum to ``rank - 2^k``), then the mirror-image broadcast; ``2 ceil(log2 n)`` rounds
  of whole-tensor messages, good for small (latency-bound) tensors.
- Pairwise all-to-all: in step s = 1..n-1 rank r sends chunk ``r + s`` to rank ``r + s`` and
  receives from rank ``r - s``.

Why ``isend`` and not ``send``: a blocking ``send`` returns only once the peer has taken the data
(for all but tiny messages). If every rank of a ring calls ``send`` first, every rank waits for a
receiver and nobody ever reaches ``recv``: a deadlock. Posting the send asynchronously, then
receiving, then waiting for the send breaks the cycle.

Chunks: a flat tensor of N elements is cut by :func:`chunk_sizes` into n chunks, the first
``N mod n`` one element longer (``torch.tensor_split``'s rule), so any N works; empty chunks are
skipped by both sides. Bytes are counted in an explicit :class:`ByteCounter` (payload only; the
optional shape check's tiny all_gather is not counted).

What the miniature leaves out: pipelining chunks within a step, several rings or channels,
topology awareness (hierarchical or 2-D rings), overlap with compute (T3's subject), and any
transport below gloo's TCP.

Shapes: n ranks (``world_size``), N elements per rank, S = N * itemsize bytes.
Section: chapter 11, "Collectives from send/recv".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "SUPPORTED_DTYPES", "ByteCounter", "ag_send_chunk", "all_to_all", "chunk_sizes", "ring_all_gather",
    "ring_all_reduce", "ring_reduce_scatter", "rs_send_chunk", "tree_all_reduce", "tree_peer", "tree_rounds",
]

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64,
)
_RECORD_DTYPES = (*SUPPORTED_DTYPES, torch.uint8)  # uint8 only where a call opts in
_MAX_NDIM = 8  # shapes are compared through a fixed-length int64 record


@dataclass
class ByteCounter:
    """Payload bytes and messages one rank sent and received (explicit, per call site)."""

    sent: int = 0
    received: int = 0
    messages_sent: int = 0
    messages_received: int = 0

    def reset(self) -> None:
        """Set every count back to zero."""
        self.sent = self.received = self.messages_sent = self.messages_received = 0


def chunk_sizes(numel: int, world_size: int) -> list[int]:
    """Sizes of the n chunks of N elements: the first ``N mod n`` get ``N // n + 1``."""
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be an int >= 0, got {numel!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    q, m = divmod(numel, world_size)
    return [q + 1 if i < m else q for i in range(world_size)]


# --- schedules (shared with the simulator, so both run the same steps; chapter 11, section 1) -----

def rs_send_chunk(rank: int, step: int, world_size: int) -> int:
    """Reduce-scatter: chunk index rank ``rank`` sends at ``step``; it receives ``rank - step - 2``."""
    return (rank - step - 1) % world_size


def ag_send_chunk(rank: int, step: int, world_size: int) -> int:
    """All-gather: chunk index rank ``rank`` sends at ``step``; it receives ``rank - step - 1``."""
    return (rank - step) % world_size


def tree_rounds(world_size: int) -> int:
    """Rounds of a binomial-tree reduce (or broadcast): ``ceil(log2 n)``."""
    return (world_size - 1).bit_length()


def tree_peer(rank: int, round_: int, world_size: int) -> tuple[str, int] | None:
    """Binomial reduce, round k: ``("send", parent)``, ``("recv", child)`` or ``None`` (idle)."""
    bit = 1 << round_
    if rank % (2 * bit) == bit:
        return ("send", rank - bit)
    if rank % (2 * bit) == 0 and rank + bit < world_size:
        return ("recv", rank + bit)
    return None


# --- checks ---------------------------------------------------------------------------------------

def _check(name: str, tensor: torch.Tensor, counter: ByteCounter | None, check_shapes: bool,
           allow_uint8: bool = False) -> tuple[int, int]:
    """Validate the group and the tensor; return ``(rank, world_size)``.

    ``allow_uint8`` admits raw bytes, for the collectives that only move data (never reduce).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if counter is not None and not isinstance(counter, ByteCounter):
        raise TypeError(f"{name}: counter must be a ByteCounter or None, got {type(counter).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"{name}: the default process group is not initialised (call init_process_group, "
                         "or run under labkit.dist.launch)")
    if not (tensor.dtype in SUPPORTED_DTYPES or (allow_uint8 and tensor.dtype == torch.uint8)):
        raise TypeError(f"{name}: tensor dtype must be one of {[str(d) for d in SUPPORTED_DTYPES]}, got {tensor.dtype}")
    if tensor.dim() > _MAX_NDIM:
        raise ValueError(f"{name}: tensor must have at most {_MAX_NDIM} dimensions, got {tensor.dim()}")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size < 2:
        raise ValueError(f"{name}: world_size must be >= 2, got {world_size}")
    if check_shapes:
        _check_same_shape(name, tensor, world_size)
    return rank, world_size


def _check_same_shape(name: str, tensor: torch.Tensor, world_size: int) -> None:
    """All-gather every rank's (dtype, shape) record and raise on every rank if they differ."""
    dtype_code = _RECORD_DTYPES.index(tensor.dtype)
    mine = torch.full((_MAX_NDIM + 2,), -1, dtype=torch.int64)
    mine[0], mine[1] = dtype_code, tensor.dim()
    mine[2:2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    records = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(records, mine)
    if any(not torch.equal(r, records[0]) for r in records):
        seen = ", ".join(f"rank {i}: {_RECORD_DTYPES[int(r[0])]} {tuple(int(d) for d in r[2:2 + int(r[1])])}"
                         for i, r in enumerate(records))
        raise ValueError(f"{name}: tensor shapes and dtypes must be equal on every rank, got {seen}")


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1)


def _exchange(send: torch.Tensor | None, dst: int, recv: torch.Tensor | None,
              src: int, counter: ByteCounter | None) -> None:
    """Post ``send`` to ``dst`` (asynchronously), receive ``recv`` from ``src``,
    wait for the send."""
    request = None
    if send is not None and send.numel() > 0:
        # async: a blocking send here would deadlock the ring
        request = dist.isend(send, dst)
        if counter is not None:
            counter.sent += send.numel() * send.element_size()
            counter.messages_sent += 1
    if recv is not None and recv.numel() > 0:
        dist.recv(recv, src)
        if counter is not None:
            counter.received += recv.numel() * recv.element_size()
            counter.messages_received += 1
    if request is not None:
        request.wait()


def _ring_reduce_scatter_(flat: torch.Tensor, rank: int, n: int,
                          counter: ByteCounter | None) -> list[torch.Tensor]:
    """Ring reduce-scatter in place on ``flat``; returns its n chunk views."""
    # n views of the flat buffer, chunk_sizes(N, n) long
    chunks = list(flat.tensor_split(n))
    scratch = torch.empty(max(c.numel() for c in chunks), dtype=flat.dtype)
    right, left = (rank + 1) % n, (rank - 1) % n
    for step in range(n - 1):  # n - 1 steps, one chunk out and one in each
        out = chunks[rs_send_chunk(rank, step, n)]
        into = chunks[(rank - step - 2) % n]
        buf = scratch[:into.numel()]
        _exchange(out, right, buf, left, counter)
        # the partial sum of chunk (rank - step - 2) grows by one more rank
        into.add_(buf)
    return chunks  # chunks[rank] now holds the full sum of chunk ``rank``


def _ring_all_gather_(chunks: list[torch.Tensor], rank: int, n: int, counter: ByteCounter | None) -> None:
    right, left = (rank + 1) % n, (rank - 1) % n
    for step in range(n - 1):
        _exchange(chunks[ag_send_chunk(rank, step, n)], right, chunks[(rank - step - 1) % n], left, counter)


def ring_reduce_scatter(tensor: torch.Tensor, *, counter: ByteCounter | None = None,
                        check_shapes: bool = True) -> torch.Tensor:
    """Ring reduce-scatter (sum): rank r gets chunk r of the element-wise sum over ranks.

    Args:
        tensor: this rank's tensor, any shape (flattened); same shape and dtype on every rank.
        counter: if given, incremented by the payload bytes this rank sends and receives.
        check_shapes: all-gather the shapes first and raise ``ValueError`` if they differ.

    Returns:
        A new 1-D tensor, chunk ``rank`` of ``chunk_sizes(N, n)``; ``tensor`` is left unchanged.
        This rank sends ``S - |chunk r|`` bytes (every chunk but its own once).
    """
    rank, n = _check("ring_reduce_scatter", tensor, counter, check_shapes)
    chunks = _ring_reduce_scatter_(_flat(tensor).clone(), rank, n, counter)
    return chunks[rank].clone()


def ring_all_gather(tensor: torch.Tensor, *, counter: ByteCounter | None = None,
                    check_shapes: bool = True, allow_uint8: bool = False) -> torch.Tensor:
    """Ring all-gather: every rank gets all ranks' tensors, stacked in rank order.

    Args:
        tensor: this rank's piece, any shape; same shape and dtype on every rank.
        counter: if given, incremented by this rank's payload bytes.
        check_shapes: verify the shapes agree across ranks first.
        allow_uint8: also accept uint8 (packed bits; no arithmetic happens on them).

    Returns:
        A new tensor of shape ``(n, *tensor.shape)``, like ``dist.all_gather`` stacked. Each rank
        sends ``(n - 1)`` pieces, i.e. ``(n - 1) / n`` of the output's bytes.
    """
    rank, n = _check("ring_all_gather", tensor, counter, check_shapes, allow_uint8)
    out = torch.empty((n, *tensor.shape), dtype=tensor.dtype)
    out[rank] = tensor.detach()
    _ring_all_gather_(list(out.reshape(n, -1).unbind(0)), rank, n, counter)
    return out


def ring_all_reduce(tensor: torch.Tensor, *, counter: ByteCounter | None = None,
                    check_shapes: bool = True) -> torch.Tensor:
    """Ring all-reduce (sum) = ring reduce-scatter, then ring all-gather, IN PLACE.

    Implements ``t = 2 (n - 1) alpha + 2 (n - 1) / n * S * beta`` (see :mod:`labkit.comm.costmodel`).

    Args:
        tensor: this rank's tensor, any shape; same shape and dtype on every rank. Overwritten by
            the sum (like ``dist.all_reduce``); a non-contiguous tensor is reduced in a copy that is
            then written back.
        counter: if given, incremented by this rank's payload bytes: exactly
            ``(2 N - |chunk r| - |chunk r+1|) * itemsize``, i.e. ``2 (n - 1) / n * S`` when n divides N.
        check_shapes: verify the shapes agree across ranks first.

    Returns:
        ``tensor`` itself, now holding the sum over ranks.
    """
    rank, n = _check("ring_all_reduce", tensor, counter, check_shapes)
    flat = _flat(tensor) if tensor.is_contiguous() else tensor.detach().contiguous().reshape(-1)
    chunks = _ring_reduce_scatter_(flat, rank, n, counter)
    _ring_all_gather_(chunks, rank, n, counter)
    if not tensor.is_contiguous():
        tensor.detach().copy_(flat.view(tensor.shape))
    return tensor


def tree_all_reduce(tensor: torch.Tensor, *, counter: ByteCounter | None = None,
                    check_shapes: bool = True) -> torch.Tensor:
    """Binomial-tree all-reduce (sum): reduce to rank 0, then broadcast back, IN PLACE.

    Not recursive doubling: round k of the reduce has ranks whose lowest set bit is 2^k send their
    whole partial sum to ``rank - 2^k``; the broadcast runs the rounds backwards. Time
    ``2 ceil(log2 n) (alpha + S beta)``. Rank r sends ``S`` (to its parent, unless r = 0) plus ``S``
    per child; over all ranks ``2 (n - 1) S``.

    Args:
        tensor: this rank's tensor, any shape; overwritten by the sum.
        counter: if given, incremented by this rank's payload bytes.
        check_shapes: verify the shapes agree across ranks first.

    Returns:
        ``tensor`` itself, now holding the sum over ranks.
    """
    rank, n = _check("tree_all_reduce", tensor, counter, check_shapes)
    flat = tensor.detach().contiguous().reshape(-1)
    buf = torch.empty_like(flat)
    rounds = tree_rounds(n)
    for k in range(rounds):  # reduce: leaves first
        role = tree_peer(rank, k, n)
        if role is not None and role[0] == "send":
            _exchange(flat, role[1], None, -1, counter)
        elif role is not None:
            _exchange(None, -1, buf, role[1], counter)
            flat.add_(buf)
    for k in reversed(range(rounds)):  # broadcast: the same edges, root first
        role = tree_peer(rank, k, n)
        if role is not None and role[0] == "send":
            _exchange(None, -1, flat, role[1], counter)
        elif role is not None:
            _exchange(flat, role[1], None, -1, counter)
    if flat.data_ptr() != tensor.data_ptr():
        tensor.detach().copy_(flat.view(tensor.shape))
    return tensor


def all_to_all(tensor: torch.Tensor, *, counter: ByteCounter | None = None,
               check_shapes: bool = True, allow_uint8: bool = False) -> torch.Tensor:
    """Pairwise all-to-all: chunk j of rank r goes to rank j; n - 1 steps of one exchange each.

    Args:
        tensor: this rank's tensor, any shape (flattened, cut by :func:`chunk_sizes`).
        counter: if given, incremented by this rank's payload bytes (``S - |chunk r|`` sent).
        check_shapes: verify the shapes agree across ranks first.
        allow_uint8: also accept uint8 (packed bits; no arithmetic happens on them).

    Returns:
        A new 1-D tensor: chunk r of rank 0, chunk r of rank 1, ..., chunk r of rank n-1
        (``n * |chunk r|`` elements, which is N when n divides N; like ``dist.all_to_all``).
    """
    rank, n = _check("all_to_all", tensor, counter, check_shapes, allow_uint8)
    chunks = _flat(tensor).tensor_split(n)
    mine = chunks[rank].numel()
    out = torch.empty(n * mine, dtype=tensor.dtype)
    pieces = out.split(mine) if mine > 0 else [out] * n
    if mine > 0:
        pieces[rank].copy_(chunks[rank])  # a rank keeps its own chunk: no message
    for step in range(1, n):
        dst, src = (rank + step) % n, (rank - step) % n
        _exchange(chunks[dst].contiguous(), dst, pieces[src] if mine > 0 else None, src, counter)
    return out
