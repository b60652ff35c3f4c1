"""labkit.artifacts: committed, cached or trained once."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch

from labkit import artifacts
from labkit.artifacts import (COMMITTED_DIR, FORBID_TRAINING_ENV, MANIFEST_NAME, MAX_COMMITTED_BYTES,
                              CommittedWeightsError, TrainingForbiddenError, artifact_key, load_or_train, state_shapes,
                              watch)
from labkit.data.corpus import TextCorpus, stdlib_corpus
from labkit.lm import GPTConfig, TrainConfig, pretrained_gpt, tiny_gpt_recipe


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


def test_stale_committed_weights_are_reported_once(cache: Path, tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
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
    (committed / MANIFEST_NAME).unlink()
    monkeypatch.setattr(artifacts, "_stale_noticed", set())  # a fresh process
    load_or_train("toy", {**old, "seed": 2}, train, committed_dir=committed)
    assert f"One of them is {old_file}." in capsys.readouterr().out, "without a manifest: which file exists"


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


# --- the Python version does not enter the tiny GPT's key ----------------------------------------------------

def _toy_corpus(fill: int, source: str) -> TextCorpus:
    data = torch.arange(600, dtype=torch.int64).add(fill).remainder(256).to(torch.uint8)
    return TextCorpus(train=data[:500], val=data[500:], files_train=(f"a{fill}.py",), files_val=(f"b{fill}.py",),
                      source=source)


def test_the_gpt_key_names_how_the_corpus_was_built(cache: Path, one_thread) -> None:
    cfg = GPTConfig(n_layer=1, d_model=16, n_head=2, block_size=8, ffn="dense", d_ff=32)
    recipe = TrainConfig(steps=2, batch_size=2, eval_every=2, eval_batches=1)
    with watch() as events:
        pretrained_gpt(cfg, _toy_corpus(0, "made the same way"), recipe, progress=False, verbose=False)
        pretrained_gpt(cfg, _toy_corpus(7, "made the same way"), recipe, progress=False, verbose=False)
        pretrained_gpt(cfg, _toy_corpus(7, ""), recipe, progress=False, verbose=False)
    assert [e.source for e in events] == ["trained", "cache", "trained"], "other bytes, same recipe: same weights"
    assert events[0].fields["corpus"] == "made the same way" and "files" not in events[0].fields
    source = stdlib_corpus().source
    assert source.startswith("stdlib_corpus(") and platform.python_version() not in source


# --- the committed lab animals -------------------------------------------------------------------------------

def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("labkit_make_weights", ROOT / "tools" / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ROOT = Path(__file__).resolve().parents[1]
make_weights = _load_tool()
ANIMALS = {a.label: a for a in make_weights.catalogue()}
MANIFEST = json.loads((COMMITTED_DIR / MANIFEST_NAME).read_text()) if (COMMITTED_DIR / MANIFEST_NAME).exists() else {}
FILES = {entry["label"]: (name, entry) for name, entry in MANIFEST.get("files", {}).items()}


@pytest.fixture(scope="module")
def same_corpus() -> bool:
    """False on another Python: its standard library is other text, so GPT losses move more."""
    return make_weights.same_corpus(MANIFEST)


def test_every_animal_has_one_committed_file_in_the_manifest() -> None:
    files = MANIFEST.get("files", {})
    on_disk = {p.name for p in COMMITTED_DIR.glob("*.pt")}
    assert on_disk == set(files), "labkit/weights and its manifest disagree: run python3 tools/make_weights.py"
    assert sorted(FILES) == sorted(ANIMALS), "the catalogue changed: run python3 tools/make_weights.py"
    for name, entry in files.items():
        size = (COMMITTED_DIR / name).stat().st_size
        assert size == entry["bytes"] <= MAX_COMMITTED_BYTES, name
        assert name.startswith(entry["name"] + "-") and name == f"{artifact_key(entry['name'], entry['fields'])}.pt"


def _load_committed(animal, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.nn.Module, Path]:
    monkeypatch.setenv(FORBID_TRAINING_ENV, "1")  # it must come from the committed file
    with watch() as events:
        model = animal.load()
    monkeypatch.delenv(FORBID_TRAINING_ENV)
    assert events[-1].source == "committed", events
    return model, events[-1].path


def _committed_quality(label: str, monkeypatch: pytest.MonkeyPatch, same_corpus: bool) -> float:
    """Load the committed weights of ``label`` (its recipe's key must name the committed file) and
    check the quality they reach against the one recorded in the manifest; return it."""
    animal, (name, entry) = ANIMALS[label], FILES[label]
    model, path = _load_committed(animal, monkeypatch)
    assert path.name == name, "the recipe's key is the committed file's"
    measured = animal.quality(model)
    assert animal.within(measured, entry["value"], recorded=True, same_data=same_corpus), (
        f"{animal.metric} {measured:.4f}, recorded {entry['value']:.4f}")
    return measured


@pytest.mark.parametrize("label", [a.label for a in ANIMALS.values() if a.tier == "ci"])
def test_ci_weights_retrain_to_the_committed_quality(label: str, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                     one_thread, same_corpus: bool) -> None:
    animal = ANIMALS[label]
    committed = _committed_quality(label, monkeypatch, same_corpus)
    retrained = animal.quality(animal.retrain())
    assert animal.within(retrained, committed, same_data=same_corpus), (
        f"{label}: retrained {animal.metric} {retrained:.4f}, committed {committed:.4f}")


@pytest.mark.parametrize("label", [a.label for a in ANIMALS.values() if a.tier == "default"])
def test_default_weights_load_with_their_recorded_quality(label: str, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                          one_thread, same_corpus: bool) -> None:
    _committed_quality(label, monkeypatch, same_corpus)


def test_a_changed_recipe_names_the_stale_committed_file(cache: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(artifacts, "_stale_noticed", set())
    monkeypatch.setenv(FORBID_TRAINING_ENV, "1")
    cfg, recipe = tiny_gpt_recipe("ci")
    with pytest.raises(TrainingForbiddenError):
        pretrained_gpt(cfg, stdlib_corpus(), replace(recipe, steps=recipe.steps - 1), progress=False)
    out = capsys.readouterr().out
    name, _ = FILES["tiny GPT: tiny_gpt_recipe (ci)"]
    closest = f"The closest, {name} (tiny GPT: tiny_gpt_recipe (ci)), differs in\n    train.steps: 150 -> 149\n"
    assert closest in out, out
    assert "python3 tools/make_weights.py" in out


# --- a cold run of a ci notebook trains nothing --------------------------------------------------------------

@pytest.mark.notebook
@pytest.mark.parametrize("notebook, animals", [
    ("chapters/05_routing/01_topk_routing.ipynb", ["tiny_gpt"]),
    ("chapters/09_diffusion_acceleration/01_sampling_time.ipynb", ["tiny_ddpm", "digit_classifier"]),
])
def test_a_cold_ci_notebook_trains_nothing(notebook: str, animals: list[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill as pm

    path = ROOT / notebook
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))  # a fresh machine: an empty cache
    monkeypatch.setenv("LABKIT_RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setenv(FORBID_TRAINING_ENV, "1")  # any training raises in the notebook
    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters={"tier": "ci"}, kernel_name="python3", cwd=str(path.parent),
                        progress_bar=False, log_output=False)
    text = "".join("".join(o.get("text", "")) for cell in json.loads(out.read_text())["cells"]
                   for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    for name in animals:
        assert f"{name}: loaded committed weights" in text, text[:2000]
    assert "trained and cached" not in text and "no committed weights match" not in text
    assert not list((tmp_path / "cache").rglob("weights/**/*.pt")), "nothing was written to the weights cache"
