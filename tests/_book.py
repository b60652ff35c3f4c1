"""Helpers shared by the notebook, chapter and book tests: the table of contents, executing a
notebook at the ci tier once per session, and the run-time records."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
EXECUTED = BUILD / "ci_executed"
RUNTIMES = ROOT / "book" / "_data" / "runtimes.json"
CI_BUDGET_S = 60
CI_FAIL_S = 90  # the budget plus room for noise on a shared machine


def records_dir() -> Path:
    return Path(os.environ.get("LABKIT_RECORDS_DIR") or BUILD / "records")


def claims_record(notebook: Path, tier: str) -> Path:
    """Where labkit's ClaimLog writes the claims of ``notebook`` (chapter folder / file stem)."""
    return records_dir() / tier / notebook.parent.name / f"{notebook.stem}.json"


def toc_files() -> list[str]:
    """Every `file:` entry of _toc.yml (without suffix), in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    out: list[str] = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for e in entries:
            if "file" in e:
                out.append(e["file"])
            walk(e.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return out


def toc_notebooks() -> list[Path]:
    return [ROOT / f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]


def docname(notebook: Path) -> str:
    return notebook.relative_to(ROOT).with_suffix("").as_posix()


@dataclass(frozen=True)
class Execution:
    source: Path
    output: Path
    seconds: float


def execute_ci(notebook: Path) -> Execution:
    """Run one notebook with papermill at tier="ci" in its own folder; record its wall time."""
    import papermill as pm

    out = EXECUTED / notebook.relative_to(ROOT)
    out.parent.mkdir(parents=True, exist_ok=True)
    claims_record(notebook, "ci").unlink(missing_ok=True)  # only this run's claims count
    # A ci run trains no lab animal: its weights are committed (labkit/weights), so a notebook
    # whose recipe drifted from them fails here instead of silently training for a minute.
    forbid_before = os.environ.get("LABKIT_FORBID_TRAINING")
    os.environ["LABKIT_FORBID_TRAINING"] = "1"
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook), str(out), parameters={"tier": "ci"}, kernel_name="python3",
            cwd=str(notebook.parent), progress_bar=False, log_output=False,
        )
    finally:
        if forbid_before is None:
            del os.environ["LABKIT_FORBID_TRAINING"]
        else:
            os.environ["LABKIT_FORBID_TRAINING"] = forbid_before
    seconds = time.perf_counter() - t0
    record_runtime(notebook, "ci", seconds)
    return Execution(notebook, out, seconds)


def machine() -> str:
    """The machine a time was measured on: the GPU (with torch's version) or the CPU cores."""
    import torch

    if torch.cuda.is_available():
        import triton

        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"


def record_runtime(notebook: Path, tier: str, seconds: float) -> None:
    """Publish a measured time in book/_data/runtimes.json (the run-time table's source)."""
    data = json.loads(RUNTIMES.read_text()) if RUNTIMES.exists() else {}
    data.setdefault(docname(notebook), {})[tier] = {
        "seconds": round(seconds, 1), "machine": machine(), "date": dt.date.today().isoformat(),
    }
    RUNTIMES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
