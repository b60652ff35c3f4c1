"""Build the book with Jupyter Book 1 from notebooks that were already executed.

The source tree is copied into ``_build/ci_book/src`` with each notebook replaced by its executed
copy, execution is switched off, and the build runs with ``-W`` (any warning fails), so the test
suite checks the real book without executing anything twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests._book import BUILD, ROOT

OUT = BUILD / "ci_book"
COPIED = ("_config.yml", "_toc.yml", "book", "chapters")


def build_from_executed(executed: dict[Path, Path]) -> Path:
    """Copy, substitute executed notebooks, build. Returns the ``_build`` folder of the result."""
    src = OUT / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in COPIED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        else:
            shutil.copy2(path, src / name)
    for original, done in executed.items():
        shutil.copy2(done, src / original.relative_to(ROOT))
    config = yaml.safe_load((src / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    env = dict(os.environ, LABBOOK_TIER="ci")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(src), "--path-output", str(OUT), "-W", "--keep-going"],
                          env=env, capture_output=True, text=True)
    (OUT / "build.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (log: {OUT / 'build.log'}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return OUT / "_build"
