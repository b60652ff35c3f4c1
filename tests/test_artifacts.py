"""labkit.artifacts: committed, cached or trained once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit import artifacts
from labkit.artifacts import (COMMITTED_DIR, FORBID_TRAINING_ENV, MANIFEST_NAME, MAX_COMMITTED_BYTES,
                              CommittedWeightsError, TrainingForbiddenError, artifact_key, load_or_train, state_shapes,
                              watch)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_trains_once_then_loads_from_cache(cache: Path, tmp_path: Path) -> None:
    calls = []

    def train() -> dict:
        calls.append(1)
        return {"w": torch.arange(3.0)}

    fields = {"d": 4, "tier": "ci", "seed": 0}
    first = load_or_train("toy", fields, train, committed_dir=tmp_path / "none")
    second = load_or_train("toy", fields, train, committed_dir=tmp_path / "none")
    assert calls == [1] and torch.equal(first["w"], second["w"])
    assert (cache / "weights" / "toy" / f"{artifact_key('toy', fields)}.pt").exists()
    load_or_train("toy", {**fields, "seed": 1}, train, committed_dir=tmp_path / "none")
    assert calls == [1, 1], "other fields, other weights"


def test_committed_weights_win(cache: Path, tmp_path: Path) -> None:
    fields = {"tier": "ci"}
    committed = tmp_path / "committed"
    committed.mkdir()
    torch.save({"w": torch.ones(2)}, committed / f"{artifact_key('toy', fields)}.pt")
    state = load_or_train("toy", fields, lambda: pytest.fail("must not train"), committed_dir=committed)
    assert torch.equal(state["w"], torch.ones(2))


@pytest.mark.parametrize("name", ["", "a b", "../x", 3])
def test_bad_names(name) -> None:
    with pytest.raises(ValueError, match="artifact name"):
        artifact_key(name, {})


def test_bad_train_and_fields(cache: Path) -> None:
    with pytest.raises(TypeError, match="callable"):
        load_or_train("toy", {}, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state dict"):
        load_or_train("toy", {"x": 1}, lambda: [1])  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="mapping"):
        artifact_key("toy", [1])  # type: ignore[arg-type]


def test_committed_weights_respect_the_size_limit() -> None:
    for path in COMMITTED_DIR.glob("*.pt"):
        assert path.stat().st_size <= MAX_COMMITTED_BYTES, f"{path.name} is above 2 MB"


# --- a damaged cache is repaired, a damaged committed file is an error ---------------------------------------

EXPECTED = {"w": torch.Size([3]), "b": torch.Size([2])}


def _good_state() -> dict:
    return {"w": torch.arange(3.0), "b": torch.ones(2)}


def _write_bad(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        torch.save({"w": torch.arange(1000.0), "b": torch.ones(2)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "non_dict":
        torch.save([torch.arange(3.0), torch.ones(2)], path)
    elif kind == "non_tensor_entry":
        torch.save({"w": torch.arange(3.0), "b": 2.0}, path)
    elif kind == "wrong_keys":
        torch.save({"w": torch.arange(3.0), "bias": torch.ones(2)}, path)
    elif kind == "wrong_shapes":
        torch.save({"w": torch.arange(4.0), "b": torch.ones(2)}, path)
    else:
        raise AssertionError(kind)


BAD_KINDS = ["truncated", "garbage", "empty", "non_dict", "non_tensor_entry", "wrong_keys", "wrong_shapes"]
REASONS = {"truncated": "cannot be read", "garbage": "cannot be read", "empty": "empty", "non_dict": "not a state dict",
           "non_tensor_entry": "not a tensor", "wrong_keys": "'bias'", "wrong_shapes": "shape (4,)"}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_cache_file_is_moved_aside_and_retrained(kind: str, cache: Path, tmp_path: Path, capsys) -> None:
    fields = {"tier": "ci", "kind": kind}
    path = cache / "weights" / "toy" / f"{artifact_key('toy', fields)}.pt"
    _write_bad(path, kind)
    bad = path.read_bytes()
    calls = []

    def train() -> dict:
        calls.append(1)
        return _good_state()

    state = load_or_train("toy", fields, train, expected=EXPECTED, committed_dir=tmp_path / "none")
    out = capsys.readouterr().out
    assert calls == [1] and torch.equal(state["w"], torch.arange(3.0))
    assert str(path) in out and REASONS[kind] in out, out
    aside = list(path.parent.glob(f"{path.name}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bad, "the bad file is kept aside for inspection"
    again = load_or_train("toy", fields, lambda: pytest.fail("the repaired cache must load"), expected=EXPECTED,
                          committed_dir=tmp_path / "none")
    assert torch.equal(again["b"], torch.ones(2))


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "wrong_shapes"])
def test_a_bad_committed_file_is_a_packaging_error(kind: str, cache: Path, tmp_path: Path) -> None:
    fields = {"tier": "ci"}
    committed = tmp_path / "committed" / f"{artifact_key('toy', fields)}.pt"
    _write_bad(committed, kind)
    with pytest.raises(CommittedWeightsError, match=f"{committed.name}.*packaging error"):
        load_or_train("toy", fields, lambda: pytest.fail("must not train"), expected=EXPECTED,
                      committed_dir=committed.parent)
    assert committed.exists(), "a committed file is never moved"


def test_committed_half_precision_is_upcast(cache: Path, tmp_path: Path) -> None:
    fields = {"tier": "ci"}
    committed = tmp_path / "committed"
    committed.mkdir()
    torch.save({"w": torch.arange(3.0).half(), "n": torch.arange(2)}, committed / f"{artifact_key('toy', fields)}.pt")
    state = load_or_train("toy", fields, lambda: pytest.fail("must not train"), committed_dir=committed)
    assert state["w"].dtype == torch.float32 and state["n"].dtype == torch.int64


def test_train_must_return_the_expected_entries(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="toy: train.*'b'"):
        load_or_train("toy", {"x": 2}, lambda: {"w": torch.arange(3.0)}, expected=EXPECTED,
                      committed_dir=tmp_path / "none")
    with pytest.raises(TypeError, match="expected"):
        load_or_train("toy", {"x": 3}, _good_state, expected=[("w", (3,))],  # type: ignore[arg-type]
                      committed_dir=tmp_path / "none")
    with pytest.raises(TypeError, match=r"expected\['w'\]"):
        load_or_train("toy", {"x": 3}, _good_state, expected={"w": "3"},  # type: ignore[dict-item]
                      committed_dir=tmp_path / "none")


def test_a_failed_write_leaves_no_file_behind(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(obj, handle) -> None:
        handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        load_or_train("toy", {"x": 4}, _good_state, committed_dir=tmp_path / "none")
    folder = cache / "weights" / "toy"
    assert not [p for p in folder.iterdir() if not p.name.endswith(".lock")], list(folder.iterdir())


_RACER = """
import os, sys, time
from pathlib import Path
import torch
from labkit.artifacts import load_or_train

marks, barrier, committed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < 2:  # start training together
    time.sleep(0.01)

def train():
    with open(marks, "a") as handle:
        handle.write(f"{os.getpid()}\\n")
    time.sleep(1.0)
    return {"w": torch.arange(400_000, dtype=torch.float32)}

state = load_or_train("toy", {"race": 1}, train, expected={"w": (400_000,)}, committed_dir=committed)
assert torch.equal(state["w"], torch.arange(400_000, dtype=torch.float32))
"""


def test_two_processes_training_the_same_animal(cache: Path, tmp_path: Path) -> None:
    script, marks, barrier = tmp_path / "racer.py", tmp_path / "marks.txt", tmp_path / "barrier"
    script.write_text(_RACER)
    barrier.mkdir()
    env = {**os.environ, "LABKIT_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, str(script), str(marks), str(barrier), str(tmp_path / "none")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(marks.read_text().split()) == 1, "the second process waits for the first instead of training again"
    state = load_or_train("toy", {"race": 1}, lambda: pytest.fail("must load"), expected={"w": (400_000,)},
                          committed_dir=tmp_path / "none")
    assert torch.equal(state["w"], torch.arange(400_000, dtype=torch.float32))
    assert not list((cache / "weights" / "toy").glob("*.tmp"))


def test_forbidding_training(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORBID_TRAINING_ENV, "1")
    with pytest.raises(TrainingForbiddenError, match="toy: no committed or cached weights"):
        load_or_train("toy", {"x": 5}, _good_state, committed_dir=tmp_path / "none")
    monkeypatch.setenv(FORBID_TRAINING_ENV, "0")
    assert torch.equal(load_or_train("toy", {"x": 5}, _good_state, committed_dir=tmp_path / "none")["b"], torch.ones(2))


def test_stale_committed_weights_are_reported_once(cache: Path, tmp_path: Path, capsys) -> None:
    committed = tmp_path / "committed"
    committed.mkdir()
    old = {"cfg": {"d": 4}, "train": {"steps": 10}, "seed": 0}
    old_file = f"{artifact_key('toy', old)}.pt"
    torch.save(_good_state(), committed / old_file)
    (committed / MANIFEST_NAME).write_text(json.dumps(
        {"files": {old_file: {"name": "toy", "label": "the toy at ci", "fields": old}}}))
    calls = []

    def train() -> dict:
        calls.append(1)
        return _good_state()

    load_or_train("toy", {**old, "train": {"steps": 20}}, train, committed_dir=committed)
    out = capsys.readouterr().out
    assert calls == [1]
    assert "no committed weights match" in out and old_file in out and "the toy at ci" in out, out
    assert "train.steps: 10 -> 20" in out and "tools/make_weights.py" in out, out
    load_or_train("toy", {**old, "seed": 1}, train, committed_dir=committed)
    assert "no committed weights match" not in capsys.readouterr().out, "said once per animal"
    load_or_train("other", {**old, "seed": 1}, train, committed_dir=committed)
    assert "no committed weights match" not in capsys.readouterr().out, "only for animals with committed files"


def test_watch_records_where_weights_came_from(cache: Path, tmp_path: Path) -> None:
    fields = {"x": 6}
    with watch() as events:
        load_or_train("toy", fields, _good_state, committed_dir=tmp_path / "none", verbose=False)
        load_or_train("toy", fields, _good_state, committed_dir=tmp_path / "none", verbose=False)
    assert [e.source for e in events] == ["trained", "cache"]
    assert events[0].stem == artifact_key("toy", fields) and events[0].fields == fields
    assert events[0].path == cache / "weights" / "toy" / f"{events[0].stem}.pt"


def test_state_shapes() -> None:
    shapes = state_shapes(torch.nn.Linear(3, 2))
    assert shapes == {"weight": torch.Size([2, 3]), "bias": torch.Size([2])}
    with pytest.raises(TypeError, match="model"):
        state_shapes({"w": torch.ones(1)})  # type: ignore[arg-type]
