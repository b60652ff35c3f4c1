"""In-memory snapshots of training state, erasure-coded across ranks.

After "Reliable and Efficient In-Memory Fault Tolerance of Large Language Model Pretraining"
(2024). Instead of writing a checkpoint to remote storage every few hundred steps, each rank
copies its shard of the training state (parameters, optimiser moments, RNG state, data position)
to host memory every ``k`` steps, and a background thread stores it there together with parity
that lets the job rebuild the shards of up to ``m`` lost machines from the survivors.

Layout (rotated parity, as in RAID-5/6): with ``n`` ranks and ``m`` parity pieces per stripe,
``k = n - m``. Each rank's shard is cut into ``k`` pieces of equal length. Stripe ``s`` (one per
rank, ``s = 0 .. n-1``) takes one piece from each of ranks ``s, s+1, ..., s+k-1`` (mod ``n``)
and stores its ``m`` parity pieces on ranks ``s+k, ..., s+n-1``: every rank holds its own shard
plus ``m`` parity pieces, and every stripe spans all ``n`` ranks, so any ``m`` lost ranks cost
each stripe at most ``m`` pieces. ``m = 1`` is XOR parity; ``m >= 2`` is Reed-Solomon over
GF(2^8) (:mod:`~labkit.comm.erasure`).

Snapshots go to ``/dev/shm`` (memory-backed) when it exists, else to the temporary directory;
each is written under a temporary name and renamed when complete, and the last two are kept, so
a rank killed mid-write leaves an older complete snapshot behind.

What the miniature leaves out: the ranks share one machine, so a lost machine is emulated by
deleting that rank's snapshot directory; the pieces travel by an all-gather of whole shards
rather than point-to-point sends to the parity holders; and the background thread shares the
cores with training.

Section: chapter 12, "In-memory fault tolerance".
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..validation import check_int
from .erasure import rs_decode, rs_encode, xor_parity, xor_rebuild

__all__ = ["SnapshotWriter", "encode_snapshot", "latest_common_step", "load_snapshot",
           "pack_state", "rebuild_shards", "snapshot_root", "stripes", "unpack_state"]


def snapshot_root() -> Path:
    """``/dev/shm`` when it exists and is writable, else the temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def pack_state(state: dict[str, Any]) -> bytes:
    """Serialise a state dict (tensors, numbers, RNG states) to bytes with ``torch.save``."""
    if not isinstance(state, dict):
        raise TypeError(f"pack_state: state must be a dict, got {type(state).__name__}")
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def unpack_state(blob: bytes) -> dict[str, Any]:
    """The state dict :func:`pack_state` serialised."""
    return torch.load(io.BytesIO(blob), weights_only=False)


def _check_nm(world_size: int, m: int) -> int:
    check_int("world_size", world_size, 2)
    check_int("m", m, 1)
    if m >= world_size:
        raise ValueError(f"m must be < world_size (at least one data piece per stripe), "
                         f"got m = {m}, world_size = {world_size}")
    return world_size - m


def stripes(world_size: int, m: int) -> list[tuple[list[int], list[int]]]:
    """For each stripe ``s``: the ranks giving its data pieces, and those holding its parity.

    Rank ``r`` gives stripe ``s`` its piece number ``(r - s) mod n``.
    """
    k = _check_nm(world_size, m)
    return [([(s + i) % world_size for i in range(k)],
             [(s + k + j) % world_size for j in range(m)]) for s in range(world_size)]


def _pieces(shard: bytes, k: int, size: int) -> list[bytes]:
    padded = shard + bytes(k * size - len(shard))
    return [padded[i * size:(i + 1) * size] for i in range(k)]


# show: start layout
def encode_snapshot(shards: Sequence[bytes], m: int) -> list[dict[str, bytes]]:
    """What each rank stores: its shard, the parity pieces it holds, and the shard lengths.

    Args:
        shards: the ``n`` ranks' serialised shards (any lengths; padded to whole pieces).
        m: parity pieces per stripe (losses tolerated), ``1 <= m < n``.

    Returns:
        per rank, a dict of named byte strings: ``"shard"``, ``"lengths"`` (JSON) and
        ``"parity-<s>-<j>"`` for parity piece ``j`` of stripe ``s``.
    """
    n = len(shards)
    k = _check_nm(n, m)
    size = -(-max(len(s) for s in shards) // k)  # piece length: ceil(max / k)
    pieces = [_pieces(bytes(s), k, size) for s in shards]
    lengths = json.dumps([len(s) for s in shards]).encode()
    stores = [{"shard": bytes(s), "lengths": lengths} for s in shards]
    for s, (data_ranks, parity_ranks) in enumerate(stripes(n, m)):
        data = [pieces[r][(r - s) % n] for r in data_ranks]
        parity = [xor_parity(data)] if m == 1 else rs_encode(data, m)
        for j, r in enumerate(parity_ranks):
            stores[r][f"parity-{s}-{j}"] = parity[j]
    return stores


def rebuild_shards(stores: Sequence[dict[str, bytes] | None], m: int) -> list[bytes]:
    """Every rank's shard from the surviving stores (a lost rank's store is ``None``).

    Raises:
        ValueError: more than ``m`` stores are lost.
    """
    n = len(stores)
    k = _check_nm(n, m)
    lost = [r for r, st in enumerate(stores) if st is None]
    if len(lost) > m:
        raise ValueError(f"rebuild_shards: {len(lost)} ranks lost ({lost}), the code "
                         f"rebuilds at most m = {m}")
    lengths = json.loads(next(st for st in stores if st is not None)["lengths"])
    size = -(-max(lengths) // k)
    pieces = {r: _pieces(stores[r]["shard"], k, size) for r in range(n) if r not in lost}
    out = {r: [b""] * k for r in lost}
    for s, (data_ranks, parity_ranks) in enumerate(stripes(n, m)):
        if not set(lost) & set(data_ranks):
            continue
        data = [None if r in lost else pieces[r][(r - s) % n] for r in data_ranks]
        parity = [None if r in lost else stores[r][f"parity-{s}-{j}"]
                  for j, r in enumerate(parity_ranks)]
        if m == 1:  # one missing data piece: XOR of everything that is left
            data[data.index(None)] = xor_rebuild(
                [d for d in data if d is not None], parity[0])
        else:
            data = rs_decode(data + parity, k)
        for i, r in enumerate(data_ranks):
            if r in lost:
                out[r][(r - s) % n] = data[i]
    return [b"".join(out[r])[:lengths[r]] if r in lost else bytes(stores[r]["shard"])
            for r in range(n)]
# show: end layout


class SnapshotWriter:
    """A background thread that writes one rank's snapshot stores to a directory.

    :meth:`submit` returns once the previous snapshot is written; the thread writes each named byte string of the store to
    ``<directory>/step-<step>.tmp/`` and renames the folder to ``step-<step>`` when all are
    written (to memory, under ``/dev/shm``), keeping the last ``keep`` snapshots.

    Args:
        directory: this rank's snapshot folder (created if missing).
        keep: how many complete snapshots to keep, at least 1.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = check_int("keep", keep, 1)
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def submit(self, step: int,
               store: dict[str, bytes] | Callable[[], dict[str, bytes]]) -> None:
        """Queue ``store`` (name -> bytes) as the snapshot of ``step``.

        ``store`` may be a function returning that dict: the thread then calls it, so the
        parity is computed in the background too. A previous snapshot still being written is
        waited for first: at most one is in flight, so when a job dies every rank has
        finished the snapshot before the last one it started. Ranks kept in step by a
        collective can still be one snapshot apart, so a job keeps ``keep >= 3`` to be sure
        that every rank holds a common one.
        """
        if self._error is not None:
            raise RuntimeError("SnapshotWriter: an earlier write failed") from self._error
        if not (callable(store) or isinstance(store, dict)):
            raise TypeError(f"store must be a dict or a function, got {type(store).__name__}")
        self.wait()
        self._queue.put((check_int("step", step, 0), store))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except BaseException as exc:  # reported by the next submit or close
                self._error = exc
            finally:
                self._queue.task_done()

    def _write(self, step: int, store: Any) -> None:
        if callable(store):
            store = store()
        tmp = self.directory / f"step-{step}.tmp"
        tmp.mkdir(exist_ok=True)
        for name, blob in store.items():
            (tmp / name).write_bytes(blob)
        final = self.directory / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in _steps(self.directory)[:-self.keep]:
            shutil.rmtree(self.directory / f"step-{old}")

    def wait(self) -> None:
        """Block until every submitted snapshot is written."""
        self._queue.join()
        if self._error is not None:
            raise RuntimeError("SnapshotWriter: a write failed") from self._error

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self.wait()
        self._queue.put(None)
        self._thread.join()


def _steps(directory: Path) -> list[int]:
    """The steps of the complete snapshots in ``directory``, ascending."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in directory.iterdir()
                  if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit())


def latest_common_step(directories: Sequence[str | os.PathLike]) -> int:
    """The latest step with a complete snapshot in every existing directory of the list.

    Raises:
        ValueError: no directory exists, or they share no complete snapshot.
    """
    found = [set(_steps(Path(d))) for d in directories if Path(d).is_dir()]
    if not found:
        raise ValueError("latest_common_step: none of the snapshot directories exists")
    common = set.intersection(*found)
    if not common:
        raise ValueError("latest_common_step: the directories share no complete snapshot")
    return max(common)


def load_snapshot(directory: str | os.PathLike, step: int) -> dict[str, bytes] | None:
    """The store written for ``step`` in ``directory``, or ``None`` if the folder is gone."""
    folder = Path(directory) / f"step-{step}"
    if not folder.is_dir():
        return None
    return {p.name: p.read_bytes() for p in folder.iterdir()}
