"""Asserted claims: every result the book states is measured, printed beside its bound, checked
and recorded.

A notebook creates one :class:`ClaimLog` for its section and calls :meth:`ClaimLog.check` for
each claim. The check prints ``measured <op> bound``, appends a record
``(chapter, section, claim, measured, op, bound, passed, ...)`` to the section's JSON file and
raises :class:`ClaimFailed` (an ``AssertionError``) when the claim does not hold, so papermill
fails the notebook and the test that runs it. The book's "Claims" page renders those files.

Each check has a ``kind`` (see :data:`CLAIM_KINDS`): a ``"paper"`` claim (the default) scales a
paper's result down and could fail if the mechanism were wrong; a ``"sanity"`` check asserts an
identity, arithmetic or a property that holds by construction. The Claims page lists each kind
in its own table, so sanity checks never pass for evidence.

Records go to ``$LABKIT_RECORDS_DIR/<tier>/<chapter>/<section>.json``; without that variable,
to ``_build/records`` of the book checkout the kernel runs in, else to labkit's cache.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import operator
import os
import platform
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import cache_dir
from .tiers import validate_tier

__all__ = ["CLAIM_KINDS", "ClaimFailed", "ClaimLog", "machine_summary", "records_dir"]

#: The kinds the Claims page knows, in its order. Another lower-case tag (``"protocol"``) is
#: accepted too and gets a table of its own after these.
CLAIM_KINDS = ("paper", "sanity")
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_WIDTH = 80  # the book's content column, in characters

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


class ClaimFailed(AssertionError):
    """A claim of the book did not hold when measured."""


def records_dir() -> Path:
    """Root folder of the claim records (see module docstring)."""
    env = os.environ.get("LABKIT_RECORDS_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "labkit").is_dir():
            return folder / "_build" / "records"
    return cache_dir("records")


def _as_number(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, np.generic) and np.issubdtype(type(value), np.number):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{what} is NaN")
    return value


def _slug_ok(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "_-" for c in text)


@dataclass
class ClaimLog:
    """The claims of one notebook section.

    Args:
        chapter: the chapter folder, e.g. ``"01_message_passing"``.
        section: the notebook's file stem, e.g. ``"02_ultragcn"``.
        tier: the notebook's tier (records are kept per tier).

    Creating the log empties the section's record file, so a re-run never mixes runs.
    """

    chapter: str
    section: str
    tier: str
    claims: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("chapter", "section"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _slug_ok(value):
                raise ValueError(f"ClaimLog: {name} must be a folder/file stem like '01_ultragcn', got {value!r}")
        self.tier = validate_tier(self.tier)
        self._write()

    @property
    def path(self) -> Path:
        """The JSON file this log writes."""
        return records_dir() / self.tier / self.chapter / f"{self.section}.json"

    def check(self, claim: str, measured: Any, op: str, bound: Any, *, unit: str = "",
              paper: str | None = None, fmt: str = ".4g", kind: str = "paper") -> None:
        """Assert ``measured <op> bound``, print both, record the outcome.

        Args:
            claim: what is claimed, in words ("UltraGCN's Recall@20 is within 2 points of LightGCN's").
            measured: the value the notebook computed (number or one-element tensor).
            op: one of ``<=``, ``<``, ``>=``, ``>``, ``==``.
            bound: the value it is compared with.
            unit: printed after the numbers.
            paper: id of the paper (``book/_data/papers.yml``) whose headline this claim scales down.
            fmt: format spec for printing the numbers.
            kind: ``"paper"`` (a claim that could fail if the mechanism were wrong) or
                ``"sanity"`` (an identity, arithmetic, a property that holds by construction);
                see :data:`CLAIM_KINDS`.

        Raises:
            ClaimFailed: the claim does not hold (after recording it).
        """
        if not isinstance(claim, str) or not claim.strip():
            raise ValueError("check: claim must be a non-empty sentence")
        if op not in _OPS:
            raise ValueError(f"check: op must be one of {sorted(_OPS)}, got {op!r}")
        if not isinstance(kind, str):
            raise TypeError(f"check: kind must be a string such as 'paper' or 'sanity', got {type(kind).__name__}")
        if not _KIND.match(kind):
            raise ValueError(f"check: kind must be one of {CLAIM_KINDS} (or another lower-case tag), got {kind!r}")
        m = _as_number(measured, "measured")
        b = _as_number(bound, "bound")
        passed = bool(_OPS[op](m, b))
        self.claims.append({
            "claim": claim, "measured": m, "op": op, "bound": b, "passed": passed,
            "unit": unit, "paper": paper, "kind": kind,
        })
        self._write()
        mark = "PASS" if passed else "FAIL"
        suffix = f" {unit}" if unit else ""
        tag = "" if kind == "paper" else f"({kind}) "
        numbers = f"measured {m:{fmt}}{suffix} {op} bound {b:{fmt}}{suffix}"
        line = f"[{mark}] {tag}{claim}: {numbers}"
        if len(line) > _WIDTH:  # the claim wrapped to the page, the numbers on a line of their own
            indent = " " * (len(mark) + 3)
            line = textwrap.fill(f"[{mark}] {tag}{claim}:", _WIDTH, subsequent_indent=indent,
                                 break_on_hyphens=False) + f"\n{indent}{numbers}"
        print(line)
        if not passed:
            raise ClaimFailed(f"claim failed: {claim}: measured {m:{fmt}} is not {op} {b:{fmt}}")

    def _write(self) -> None:
        record = {
            "chapter": self.chapter,
            "section": self.section,
            "tier": self.tier,
            "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_summary(),
            "claims": self.claims,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.path)


def machine_summary() -> str:
    """A one-line description of where this runs: CPU cores or GPU name, torch version."""
    if torch.cuda.is_available():
        where = torch.cuda.get_device_name(0)
    else:
        where = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    return f"{where}, torch {torch.__version__}"
