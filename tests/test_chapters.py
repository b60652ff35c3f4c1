"""The contract every chapter notebook meets before it is executed (../CHAPTER.md's checklist):
title first, a tagged parameters cell with tier and seed, the Colab cell pointing at the
repository of _config.yml, no committed outputs, listed in _toc.yml, claims logged under its
own name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests import _book

ALL_NOTEBOOKS = sorted((_book.ROOT / "chapters").rglob("*.ipynb"))
ALL_NOTEBOOKS = [nb for nb in ALL_NOTEBOOKS if ".ipynb_checkpoints" not in nb.parts]
REPO_URL = yaml.safe_load((_book.ROOT / "_config.yml").read_text())["repository"]["url"]


def cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("nb", ALL_NOTEBOOKS, ids=[_book.docname(nb) for nb in ALL_NOTEBOOKS])
class TestNotebookContract:
    def test_listed_in_toc(self, nb: Path) -> None:
        assert _book.docname(nb) in _book.toc_files(), "add the notebook to _toc.yml"

    def test_folder_and_file_names(self, nb: Path) -> None:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", nb.parent.name), "chapter folders are NN_slug"
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", nb.stem), "section notebooks are MM_slug.ipynb"

    def test_title_first(self, nb: Path) -> None:
        first = cells(nb)[0]
        assert first["cell_type"] == "markdown" and source(first).startswith("# ")

    def test_parameters_cell(self, nb: Path) -> None:
        tagged = [c for c in cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
        text = source(tagged[0])
        assert re.search(r'^tier = "default"', text, re.M), 'the parameters cell sets tier = "default"'
        assert re.search(r"^seed = \d+", text, re.M), "the parameters cell sets seed"

    def test_colab_cell(self, nb: Path) -> None:
        colab = [source(c) for c in cells(nb) if "google.colab" in source(c)]
        assert colab, "a Colab install cell (no-op outside Colab)"
        assert f"labkit @ git+{REPO_URL}" in colab[0], f"the Colab cell installs from {REPO_URL} (_config.yml)"

    def test_no_outputs(self, nb: Path) -> None:
        dirty = [i for i, c in enumerate(cells(nb)) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, f"commit notebooks without outputs (cells {dirty})"

    def test_claims_logged_under_own_name(self, nb: Path) -> None:
        code = "\n".join(source(c) for c in cells(nb) if c["cell_type"] == "code")
        assert f'ClaimLog("{nb.parent.name}", "{nb.stem}", tier)' in code

    def test_kernel_is_python3(self, nb: Path) -> None:
        assert json.loads(nb.read_text())["metadata"]["kernelspec"]["name"] == "python3"


def test_toc_entries_exist() -> None:
    for f in _book.toc_files():
        assert any((_book.ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml lists missing {f}"


def test_toc_follows_the_parts_of_the_book() -> None:
    toc = yaml.safe_load((_book.ROOT / "_toc.yml").read_text())
    chapters = yaml.safe_load((_book.ROOT / "book" / "_data" / "chapters.yml").read_text())
    parts = [p for p in dict.fromkeys(c["part"] for c in chapters)]
    captions = [p["caption"] for p in toc["parts"] if p["caption"].startswith("Part ")]
    assert captions == [f"Part {p}: {next(c['part_title'] for c in chapters if c['part'] == p)}" for p in parts]
    for part in toc["parts"]:
        files = [e["file"] for e in part["chapters"]]
        for f in files:
            m = re.match(r"chapters/(\d\d)_", f)
            if m and m.group(1) != "00":
                ch = next(c for c in chapters if c["number"] == m.group(1))
                assert part["caption"].startswith(f"Part {ch['part']}:"), f"{f} belongs in Part {ch['part']}"
