"""Trained lab animals: load weights when they exist, else train them once and keep them.

Chapters share small trained models (a tiny GPT, a tiny DDPM, ...). Each is identified by a name
and the fields that determine it (its config, the tier, the seed, the training budget).
:func:`load_or_train` looks, in order, in

1. ``labkit/weights/<name>-<key>.pt``: weights committed with the package, so that a fresh
   machine (a Colab session, CI) trains nothing. Allowed only for files of at most
   :data:`MAX_COMMITTED_BYTES` whose training code is in labkit, made by
   ``python3 tools/make_weights.py`` (which also writes ``labkit/weights/manifest.json``: each
   file's fields and quality), and only with a test that retrains at the ``ci`` tier and checks
   the quality reached. Committed files may store float16 and are upcast to float32 on load;
2. labkit's cache, ``cache_dir("weights", name)``;

and otherwise calls ``train()`` and stores its result in the cache. Everything is keyed by
:func:`labkit.cache.cache_key` of the identifying fields, so a changed config never loads stale
weights; when no committed file matches but the package has committed files of the same animal,
a notice (once per animal and process) says which committed file is closest, what differs, and
how to regenerate them.

A cache file is written atomically (a temporary file in the same folder, then ``os.replace``)
under a lock file, so two processes that need the same animal train it once and never leave
half a file. A cache file that cannot be read, or does not hold the expected tensors, is moved
aside as ``<file>.corrupt-<timestamp>`` with a message saying why, and the animal is retrained;
a bad *committed* file is a packaging error and raises :class:`CommittedWeightsError`.

Setting the environment variable ``LABKIT_FORBID_TRAINING=1`` makes training raise instead:
a run that must load everything (a cold notebook test) proves it did.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cache import cache_dir, cache_key

try:  # POSIX: an advisory lock, released by the kernel when its holder dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: atomic writes only, a second process may train too
    fcntl = None  # type: ignore[assignment]

__all__ = ["COMMITTED_DIR", "FORBID_TRAINING_ENV", "MANIFEST_NAME", "MAX_COMMITTED_BYTES", "ArtifactEvent",
           "CommittedWeightsError", "TrainingForbiddenError", "artifact_key", "load_or_train", "state_shapes",
           "watch"]

COMMITTED_DIR = Path(__file__).parent / "weights"
MAX_COMMITTED_BYTES = 2 * 1024 * 1024
#: The file beside the committed weights that records each one's name, fields and quality.
MANIFEST_NAME = "manifest.json"
#: Environment variable: when set (to anything but ``""`` or ``"0"``), :func:`load_or_train` raises
#: :class:`TrainingForbiddenError` instead of training.
FORBID_TRAINING_ENV = "LABKIT_FORBID_TRAINING"

State = dict[str, Any]
#: Expected entries of a state dict: name -> shape, or None for "a tensor of any shape".
Expected = Mapping[str, torch.Size | tuple[int, ...] | None]

_HALF = (torch.float16, torch.bfloat16)
_stale_noticed: set[tuple[str, str]] = set()
_watchers: list[list[ArtifactEvent]] = []


class CommittedWeightsError(RuntimeError):
    """A committed weights file is unreadable or does not fit its model: the package is broken."""


class TrainingForbiddenError(RuntimeError):
    """Training was needed while ``LABKIT_FORBID_TRAINING`` is set."""


@dataclass(frozen=True)
class ArtifactEvent:
    """Where one :func:`load_or_train` call got its weights (recorded inside :func:`watch`).

    Attributes:
        name: the animal.
        stem: ``<name>-<key>``, the file name without ``.pt``.
        fields: the identifying fields, as plain JSON values.
        source: ``"committed"``, ``"cache"`` or ``"trained"``.
        path: the file loaded, or the cache file written.
    """

    name: str
    stem: str
    fields: dict[str, Any]
    source: str
    path: Path


@contextlib.contextmanager
def watch() -> Iterator[list[ArtifactEvent]]:
    """Record every :func:`load_or_train` call made inside the ``with`` block.

    >>> with watch() as events:
    ...     pass
    >>> events
    []
    """
    events: list[ArtifactEvent] = []
    _watchers.append(events)
    try:
        yield events
    finally:
        _watchers.remove(events)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"artifact name must be letters, digits, '_' or '-', got {name!r}")
    return name


def artifact_key(name: str, fields: Mapping[str, Any]) -> str:
    """File stem for an artifact: ``<name>-<hash of the identifying fields>``."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields must be a mapping, got {type(fields).__name__}")
    return f"{_check_name(name)}-{cache_key(**dict(fields))}"


def state_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    """The shape of every entry of ``model.state_dict()``: the ``expected`` of :func:`load_or_train`."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {k: v.shape for k, v in model.state_dict().items()}


def _plain(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields as the JSON values that :func:`labkit.cache.cache_key` hashes."""
    return json.loads(json.dumps(dict(fields), sort_keys=True, default=repr))


def _check_expected(expected: object) -> dict[str, tuple[int, ...] | None] | None:
    if expected is None:
        return None
    if not isinstance(expected, Mapping):
        raise TypeError(f"expected must be a mapping of entry name to shape, got {type(expected).__name__}")
    out: dict[str, tuple[int, ...] | None] = {}
    for key, shape in expected.items():
        if not isinstance(key, str):
            raise TypeError(f"expected: entry names must be str, got {key!r}")
        if shape is not None and not (isinstance(shape, (tuple, torch.Size))
                                      and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise TypeError(f"expected[{key!r}] must be a torch.Size, a tuple of ints or None, got {shape!r}")
        out[key] = None if shape is None else tuple(shape)
    return out


def _state_problem(state: object, expected: Mapping[str, tuple[int, ...] | None] | None) -> str | None:
    """Why ``state`` is not a usable state dict (or, with ``expected``, not this model's), else None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a state dict"
    for key, value in state.items():
        if not isinstance(key, str):
            return f"it has a key {key!r} that is not a str"
        if not isinstance(value, torch.Tensor):
            return f"entry {key!r} is a {type(value).__name__}, not a tensor"
    if expected is None:
        return None
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if extra:
            parts.append(f"unexpected {_few(extra)}")
        return "its entries differ from the model's: " + "; ".join(parts)
    for key, shape in expected.items():
        if shape is not None and tuple(state[key].shape) != shape:
            return f"entry {key!r} has shape {tuple(state[key].shape)} where the model has {shape}"
    return None


def _few(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


class _Unusable(Exception):
    """A weights file that cannot be used; the message says why."""


def _read(path: Path, expected: Mapping[str, tuple[int, ...] | None] | None) -> State:
    """Load and verify one weights file; raise :class:`_Unusable` with the reason."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise _Unusable("the file is empty (0 bytes)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _Unusable:
        raise
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = detail[:160] + ("..." if len(detail) > 160 else "")
        raise _Unusable(f"it cannot be read as a torch file ({type(exc).__name__}"
                        f"{': ' + detail if detail else ''}; {size} bytes)") from exc
    problem = _state_problem(state, expected)
    if problem is not None:
        raise _Unusable(problem)
    return state


def _record(name: str, stem: str, fields: Mapping[str, Any], source: str, path: Path) -> None:
    for events in _watchers:
        events.append(ArtifactEvent(name, stem, _plain(fields), source, path))


def _training_forbidden() -> bool:
    return os.environ.get(FORBID_TRAINING_ENV, "").strip() not in ("", "0")


@contextlib.contextmanager
def _locked(path: Path, name: str) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively (a second process waits for the first to finish training)."""
    if fcntl is None:  # pragma: no cover - see the import
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{name}: another process is training {path.name}; waiting for it")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _save_atomically(state: State, path: Path) -> None:
    """Write ``state`` to a unique temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _move_aside(path: Path, name: str, reason: str) -> None:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # already gone
        return
    print(f"{name}: the cached weights {path} are unusable:\n  {reason}.\n  Moved aside to {aside.name}; retraining.")


def _load_cached(path: Path, name: str, expected: Mapping[str, tuple[int, ...] | None] | None, *,
                 repair: bool) -> State | None:
    """The cached state, or None when absent; a bad file is moved aside when ``repair`` (else None)."""
    if not path.exists():
        return None
    try:
        return _read(path, expected)
    except _Unusable as exc:
        if repair:
            _move_aside(path, name, str(exc))
        return None


def _upcast(state: State) -> State:
    return {k: v.float() if v.dtype in _HALF else v for k, v in state.items()}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _notice_stale(name: str, stem: str, fields: Mapping[str, Any], folder: Path) -> None:
    """Once per (folder, name): no committed file matches, but others of this animal exist."""
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{16}}\.pt")
    others = sorted(p.name for p in folder.glob(f"{name}-*.pt") if pattern.fullmatch(p.name))
    if not others or (str(folder), name) in _stale_noticed:
        return
    _stale_noticed.add((str(folder), name))
    closest, diffs = others[0], None
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        manifest = {}
    mine = _flat(_plain(fields))
    for file in others:
        entry = manifest.get(file)
        if not isinstance(entry, dict) or not isinstance(entry.get("fields"), dict):
            continue
        theirs = _flat(entry["fields"])
        diff = [f"{k}: {theirs.get(k, '(absent)')!r} -> {mine.get(k, '(absent)')!r}"
                for k in sorted(set(mine) | set(theirs)) if mine.get(k, "(absent)") != theirs.get(k, "(absent)")]
        if diffs is None or len(diff) < len(diffs):
            closest, diffs = file, diff
    lines = [f"{name}: no committed weights match this recipe ({stem}.pt);",
             f"  {folder} holds {len(others)} other {name} file(s)."]
    if diffs is None:  # no manifest to compare with
        lines.append(f"  One of them is {closest}.")
    else:
        label = manifest[closest].get("label")
        lines.append(f"  The closest, {closest}{f' ({label})' if label else ''}, differs in")
        lines += [f"    {d}" for d in diffs[:4]] + ([f"    and {len(diffs) - 4} more fields"] if len(diffs) > 4 else [])
    lines += ["  If the recipe of a committed animal changed, its committed weights are stale:",
              "  regenerate them with `python3 tools/make_weights.py`. Using the cache or training now."]
    print("\n".join(lines))


def load_or_train(name: str, fields: Mapping[str, Any], train: Callable[[], State], *,
                  expected: Expected | None = None, committed_dir: Path | None = None,
                  verbose: bool = True) -> State:
    """Weights of the lab animal ``name`` identified by ``fields``; trained once when absent.

    Args:
        name: the animal, e.g. ``"tiny_gpt"``.
        fields: everything that determines the weights: config (a dict or dataclass ``asdict``),
            ``tier``, ``seed``, training budget. Nothing that differs between machines (device,
            library or Python versions), or committed weights would never be found elsewhere.
        train: zero-argument callable that trains and returns a state dict (tensors on CPU).
        expected: the entries the state dict must have and their shapes (None: any shape), e.g.
            ``{**state_shapes(model), "__history__": None}``. A loaded file that differs is
            treated as corrupt. None checks only that the file holds a dict of tensors.
        committed_dir: where committed weights live (default :data:`COMMITTED_DIR`).
        verbose: print where the weights came from.

    Returns:
        The state dict (a fresh copy loaded from disk, or what ``train`` returned).

    Raises:
        CommittedWeightsError: the matching committed file is unreadable or does not fit.
        TrainingForbiddenError: training was needed and ``LABKIT_FORBID_TRAINING`` is set.
        TypeError, ValueError: bad arguments, or ``train()`` returned something unusable.
    """
    if not callable(train):
        raise TypeError(f"train must be callable, got {type(train).__name__}")
    shapes = _check_expected(expected)
    stem = artifact_key(name, fields)
    folder = Path(committed_dir) if committed_dir is not None else COMMITTED_DIR
    committed = folder / f"{stem}.pt"
    if committed.exists():
        try:
            state = _upcast(_read(committed, shapes))
        except _Unusable as exc:
            raise CommittedWeightsError(
                f"{name}: the committed weights {committed} are unusable: {exc}. This is a packaging error: "
                "reinstall labkit, or regenerate the file with `python3 tools/make_weights.py`") from None
        if verbose:
            print(f"{name}: loaded committed weights {committed.name}")
        _record(name, stem, fields, "committed", committed)
        return state
    _notice_stale(name, stem, fields, folder)

    cached = cache_dir("weights", name) / f"{stem}.pt"
    state = _load_cached(cached, name, shapes, repair=False)  # the common case takes no lock
    source = "cache"
    if state is None:
        with _locked(cached, name):
            state = _load_cached(cached, name, shapes, repair=True)  # another process may have written it
            if state is None:
                if _training_forbidden():
                    raise TrainingForbiddenError(
                        f"{name}: no committed or cached weights for {stem} and {FORBID_TRAINING_ENV} is set, "
                        "so it is not trained")
                state = train()
                if not isinstance(state, dict):
                    raise TypeError(f"train() must return a state dict, got {type(state).__name__}")
                problem = _state_problem(state, shapes)
                if problem is not None:
                    raise ValueError(f"{name}: train() returned an unusable state dict: {problem}")
                _save_atomically(state, cached)
                source = "trained"
    if verbose:
        print(f"{name}: trained and cached as {cached}" if source == "trained"
              else f"{name}: loaded cached weights {cached}")
    _record(name, stem, fields, source, cached)
    return state
