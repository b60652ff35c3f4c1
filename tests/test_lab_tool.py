"""tools/lab.py: the fork helper and the staleness key of the book build."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests import _book


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """tools/lab.py working on a copy of the book's config, notebooks and labkit."""
    spec = importlib.util.spec_from_file_location("lab_tool", _book.ROOT / "tools" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(_book.ROOT / name, tmp_path / name)
    shutil.copytree(_book.ROOT / "chapters", tmp_path / "chapters")
    shutil.copytree(_book.ROOT / "labkit", tmp_path / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def test_set_repo_rewrites_config_and_colab_cells(lab, tmp_path: Path) -> None:
    url = "https://github.com/someone/fork-of-book"
    assert lab.cmd_set_repo([url]) == 0
    assert f"url: {url}" in (tmp_path / "_config.yml").read_text()
    for nb in (tmp_path / "chapters").rglob("*.ipynb"):
        text = json.dumps(json.loads(nb.read_text()))
        assert f"labkit @ git+{url}" in text and "mlsys-labbook/labbook" not in text


@pytest.mark.parametrize("args", [[], ["http://github.com/a/b"], ["https://gitlab.com/a/b"], ["a", "b"]])
def test_set_repo_rejects_bad_urls(lab, args) -> None:
    with pytest.raises(SystemExit):
        lab.cmd_set_repo(args)


def test_dependency_key_follows_core_and_imported_subpackages(lab, tmp_path: Path) -> None:
    nb = tmp_path / "chapters" / "00_how_this_book_runs" / "01_how_this_book_runs.ipynb"
    before = lab.labkit_dependencies(nb)
    (tmp_path / "labkit" / "intro" / "grid.py").write_text("# changed\n", encoding="utf-8")
    after_sub = lab.labkit_dependencies(nb)
    (tmp_path / "labkit" / "data" / "corpus.py").write_text("# not imported by chapter 00\n", encoding="utf-8")
    after_other = lab.labkit_dependencies(nb)
    (tmp_path / "labkit" / "claims.py").write_text("# core\n", encoding="utf-8")
    after_core = lab.labkit_dependencies(nb)
    assert before != after_sub, "a subpackage the notebook imports"
    assert after_sub == after_other, "a subpackage it does not import"
    assert after_other != after_core, "a core module"
