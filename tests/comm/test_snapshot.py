"""Erasure-coded snapshots: layout, rebuild, the writer thread, and a real crash and resume."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from labkit.comm import snapshot
from labkit.comm._snapshot_runs import simulate_training, snapshot_training
from labkit.comm.snapshot import (SnapshotWriter, encode_snapshot, latest_common_step,
                                  load_snapshot, pack_state, rebuild_shards, snapshot_root,
                                  stripes, unpack_state)
from labkit.dist import LaunchError, launch


def test_stripes_by_hand() -> None:
    assert stripes(3, 1) == [([0, 1], [2]), ([1, 2], [0]), ([2, 0], [1])]
    layout = stripes(4, 2)
    assert layout[1] == ([1, 2], [3, 0])
    for n, m in [(3, 1), (4, 2), (5, 2)]:
        for data, parity in stripes(n, m):  # every stripe spans all ranks once
            assert sorted(data + parity) == list(range(n))
        held = [sum(r in p for _, p in stripes(n, m)) for r in range(n)]
        assert held == [m] * n  # parity rotates: m pieces per rank


@pytest.mark.parametrize("n, m", [(3, 1), (4, 2), (5, 3)])
def test_any_m_losses_rebuild_and_more_raise(n: int, m: int) -> None:
    shards = [os.urandom(50 + 13 * r) for r in range(n)]  # unequal lengths are padded
    stores = encode_snapshot(shards, m)
    for lost in itertools.combinations(range(n), m):
        assert rebuild_shards([None if r in lost else s for r, s in enumerate(stores)], m) == shards
    with pytest.raises(ValueError, match=f"at most m = {m}"):
        rebuild_shards([None] * (m + 1) + stores[m + 1:], m)


def test_store_sizes() -> None:
    shards = [bytes(60)] * 4
    stores = encode_snapshot(shards, 2)
    # rank 0 holds parity 0 of stripe 2 (ranks 2, 3 -> 0, 1) and parity 1 of stripe 1 (-> 3, 0)
    assert sorted(k for k in stores[0] if k.startswith("parity")) == ["parity-1-1", "parity-2-0"]
    # own shard plus m parity pieces of 60 / k = 30 bytes
    assert [len(st["shard"]) + sum(len(v) for k, v in st.items() if k.startswith("parity"))
            for st in stores] == [120] * 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="m must be < world_size"):
        stripes(3, 3)
    with pytest.raises(ValueError, match="world_size"):
        encode_snapshot([b"a"], 1)
    with pytest.raises(TypeError, match="state must be a dict"):
        pack_state([1])
    with pytest.raises(ValueError, match="keep"):
        SnapshotWriter(tempfile.mkdtemp(), keep=0)
    with pytest.raises(ValueError, match="none of the snapshot directories"):
        latest_common_step(["/nonexistent/a"])


def test_pack_roundtrip() -> None:
    g = torch.Generator().manual_seed(3)
    state = dict(step=4, rng=g.get_state(), x=torch.arange(5.0))
    back = unpack_state(pack_state(state))
    assert back["step"] == 4 and torch.equal(back["x"], state["x"])
    assert torch.equal(back["rng"], state["rng"])


def test_writer_keeps_the_last_two(tmp_path: Path) -> None:
    writer = SnapshotWriter(tmp_path / "r0")
    for step in (2, 4, 6):
        writer.submit(step, lambda s=step: {"shard": bytes([s])})  # encoded in the thread
    writer.close()
    assert sorted(p.name for p in (tmp_path / "r0").iterdir()) == ["step-4", "step-6"]
    assert load_snapshot(tmp_path / "r0", 6) == {"shard": b"\x06"}
    assert load_snapshot(tmp_path / "r1", 6) is None
    (tmp_path / "r1" / "step-4").mkdir(parents=True)
    (tmp_path / "r1" / "step-6.tmp").mkdir()  # an unfinished write does not count
    assert latest_common_step([tmp_path / "r0", tmp_path / "r1", tmp_path / "gone"]) == 4
    with pytest.raises(TypeError, match="store"):
        SnapshotWriter(tmp_path / "r2").submit(1, [b"x"])


def test_ranks_one_snapshot_apart_still_share_one(tmp_path: Path) -> None:
    """The case of a job that dies while a slow rank writes snapshot 16 and a fast one has
    finished 24: with the job's ``KEEP`` the fast rank still holds 8, the slow rank's newest."""
    from labkit.comm._snapshot_runs import KEEP

    fast = SnapshotWriter(tmp_path / "fast", keep=KEEP)
    for step in (8, 16, 24):
        fast.submit(step, {"shard": bytes([step])})
    fast.close()
    slow = SnapshotWriter(tmp_path / "slow", keep=KEEP)
    slow.submit(8, {"shard": b"\x08"})
    slow.close()
    (tmp_path / "slow" / "step-16.tmp").mkdir()  # cut short by the failure
    assert latest_common_step([tmp_path / "fast", tmp_path / "slow"]) == 8


def test_writer_reports_a_failed_write(tmp_path: Path) -> None:
    writer = SnapshotWriter(tmp_path)
    writer.submit(1, lambda: 1 / 0)
    with pytest.raises(RuntimeError, match="write failed"):
        writer.wait()


def test_root_falls_back_without_shm(monkeypatch: pytest.MonkeyPatch) -> None:
    assert snapshot_root() in (Path("/dev/shm"), Path(tempfile.gettempdir()))
    monkeypatch.setattr(snapshot.os, "access", lambda *a: False)
    assert snapshot_root() == Path(tempfile.gettempdir())


def test_real_crash_rebuild_and_resume(tmp_path: Path) -> None:
    kw = dict(steps=9, every=2, m=1, root=str(tmp_path), width=8)
    with pytest.raises(LaunchError) as info:
        launch(snapshot_training, 3, timeout=90, kwargs=dict(crash=(1, 5), **kw))
    assert info.value.rank == 1 and "exit code 3" in str(info.value)
    dirs = [tmp_path / f"rank{r}" for r in range(3)]
    step = latest_common_step(dirs)
    assert step in (2, 4)
    lost = (dirs[1] / f"step-{step}" / "shard").read_bytes()
    shutil.rmtree(dirs[1])  # the lost machine's memory
    res = launch(snapshot_training, 3, timeout=90, kwargs=dict(resume=True, **kw))
    assert res[0]["resumed_from"] == step
    assert res[2]["rebuilt"] == {1: hashlib.sha256(lost).hexdigest()}
    ref = simulate_training(3, steps=9, width=8)
    assert all(torch.equal(r["theta"], ref["theta"]) for r in res)
    # an unrecoverable loss: two of three stores gone
    shutil.rmtree(dirs[0])
    shutil.rmtree(dirs[1])
    with pytest.raises(LaunchError, match="at most m = 1"):
        launch(snapshot_training, 3, timeout=90, kwargs=dict(resume=True, **kw))


def test_submit_waits_for_the_previous_snapshot(tmp_path: Path) -> None:
    def slow() -> dict[str, bytes]:
        time.sleep(0.3)
        return {"shard": b"1"}

    writer = SnapshotWriter(tmp_path)
    writer.submit(1, slow)
    assert not (tmp_path / "step-1").exists()  # submit returned before the write
    writer.submit(2, {"shard": b"2"})
    assert (tmp_path / "step-1").is_dir()  # at most one snapshot in flight
    writer.close()


def test_overhead_study_and_figure() -> None:
    from labkit.comm._snapshot_runs import overhead_figure, overhead_study

    rows = overhead_study([8, 16], repeats=3)
    assert [r["width"] for r in rows] == [8, 16]
    assert rows[0]["params"] == 16 * 8 + 8 + 8 * 8 + 8 + 8 + 1
    assert all(r[k] > 0 for r in rows for k in ("step", "snapshot", "background", "disk"))
    fig = overhead_figure(rows, [1, 10, 100])
    assert len(fig.layout.sliders[0].steps) == 2
    snap = fig.data[3]  # last panel's snapshot line: overhead falls as 1/k
    assert snap.y[0] == pytest.approx(10 * snap.y[1]) == pytest.approx(100 * snap.y[2])
