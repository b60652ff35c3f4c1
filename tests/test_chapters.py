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

    def test_colab_cell_raises_when_the_install_fails(self, nb: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """Run the cell as Colab would (a google.colab module present) with pip failing: the cell
        must raise with pip's message, not succeed and leave the next cell to fail on the import.
        Outside Colab the same cell does nothing."""
        import subprocess
        import sys
        import types

        cell = next(source(c) for c in cells(nb) if "google.colab" in source(c))
        calls: list[list[str]] = []

        def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
            calls.append(cmd)
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: could not clone the repository")

        monkeypatch.setattr(subprocess, "run", failing_pip)
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
        exec(compile(cell, "colab-cell", "exec"), {})  # not on Colab: nothing runs
        assert calls == []
        google = types.ModuleType("google")
        google.colab = types.ModuleType("google.colab")  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", google.colab)  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match=r"(?s)installing labkit failed.*could not clone"):
            exec(compile(cell, "colab-cell", "exec"), {})
        assert calls and calls[0][1:4] == ["-m", "pip", "install"]

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


# -- the chapter contract ---------------------------------------------------------------------------
# Every chapter meets the full contract: the mechanism shown from labkit's source with
# labkit.show, 2-4 exercises per section with at least one executed, asserting solution, every
# paper of a section cited with {cite}, code within the page's 80 columns. A new chapter is held
# to it from its first notebook.
CONTRACT_NOTEBOOKS = ALL_NOTEBOOKS
PAGE_COLUMNS = 80

EXERCISE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})[ \t]*\{exercise(?:-start)?\}", re.M)
LABEL = re.compile(r"^[ \t]*:label:[ \t]*(\S+)", re.M)
SOLUTION_START = re.compile(r"^[ \t]*(?:`{3,}|:{3,})[ \t]*\{solution-start\}[ \t]*(\S+)", re.M)
SOLUTION_END = re.compile(r"^[ \t]*(?:`{3,}|:{3,})[ \t]*\{solution-end\}", re.M)
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
ASSERT = re.compile(r"^[ \t]*assert\b", re.M)


def markdown(nb: Path) -> str:
    return "\n".join(source(c) for c in cells(nb) if c["cell_type"] == "markdown")


def exercise_labels(nb: Path) -> list[str]:
    """The label of each exercise directive (the line after it that says ``:label:``)."""
    text = markdown(nb)
    labels = []
    for m in EXERCISE.finditer(text):
        label = LABEL.search(text, m.end())
        labels.append(label.group(1) if label else "")
    return labels


def gated_solutions(nb: Path) -> list[tuple[str, list[str], str]]:
    """``(exercise label, code of the cells inside, the start cell's text)`` of each gated
    solution; an unclosed one is returned with the code up to the end of the notebook."""
    out: list[tuple[str, list[str], str]] = []
    current: tuple[str, list[str], str] | None = None
    for cell in cells(nb):
        text = source(cell)
        if cell["cell_type"] == "markdown":
            if current is not None and SOLUTION_END.search(text):
                out.append(current)
                current = None
            start = SOLUTION_START.search(text)
            if start:
                assert current is None, f"solution-start inside the open solution of {current[0]}"
                current = (start.group(1), [], text)
        elif current is not None:
            current[1].append(text)
    if current is not None:
        out.append((current[0], current[1], current[2] + "\n(unclosed)"))
    return out


def cited_keys(nb: Path) -> set[str]:
    return {key.strip() for m in CITE.finditer(markdown(nb)) for key in m.group(1).split(",")}


def test_contract_covers_every_chapter() -> None:
    assert CONTRACT_NOTEBOOKS, "no chapter notebook found"


@pytest.mark.parametrize("nb", CONTRACT_NOTEBOOKS, ids=[_book.docname(nb) for nb in CONTRACT_NOTEBOOKS])
class TestChapterContract:
    def test_two_to_four_exercises(self, nb: Path) -> None:
        labels = exercise_labels(nb)
        assert 2 <= len(labels) <= 4, f"{len(labels)} exercises; a section sets 2-4"
        assert all(labels) and len(set(labels)) == len(labels), f"each exercise needs its own :label: {labels}"

    def test_gated_solutions_close_fold_and_answer_an_exercise(self, nb: Path) -> None:
        labels = set(exercise_labels(nb))
        for label, _, start in gated_solutions(nb):
            assert "(unclosed)" not in start, f"solution of {label} has no solution-end"
            assert label in labels, f"solution-start names {label!r}, not an exercise of this page"
            assert re.search(r"^[ \t]*:class:.*\bdropdown\b", start, re.M), f"fold the solution of {label}"

    def test_a_code_solution_asserts_its_result(self, nb: Path) -> None:
        asserting = [label for label, code, _ in gated_solutions(nb) if any(ASSERT.search(c) for c in code)]
        assert asserting, "at least one gated solution with a code cell that asserts its result"

    def test_sections_cite_their_papers(self, nb: Path) -> None:
        papers = yaml.safe_load((_book.ROOT / "book" / "_data" / "papers.yml").read_text())
        own = {p["id"] for p in papers if p.get("section") == nb.relative_to(_book.ROOT).as_posix()}
        missing = own - cited_keys(nb)
        assert not missing, f"cite the section's papers with {{cite}}`id`: {sorted(missing)}"

    def test_citations_have_entries(self, nb: Path) -> None:
        bib = (_book.ROOT / "book" / "references.bib").read_text()
        keys = set(re.findall(r"^@\w+\{\s*([^,\s]+)\s*,", bib, re.M))
        unknown = cited_keys(nb) - keys
        assert not unknown, f"no entry in book/references.bib for {sorted(unknown)}"

    def test_shows_library_source(self, nb: Path) -> None:
        code = "\n".join(source(c) for c in cells(nb) if c["cell_type"] == "code")
        assert re.search(r"(?<![\w.])show\(", code), "show the mechanism's source with labkit.show(...)"

    def test_code_fits_the_page(self, nb: Path) -> None:
        long = [f"cell {i}: {line}" for i, c in enumerate(cells(nb)) if c["cell_type"] == "code"
                for line in source(c).splitlines() if len(line) > PAGE_COLUMNS]
        assert not long, f"code lines over {PAGE_COLUMNS} characters:\n" + "\n".join(long)


def test_contract_helpers_on_a_made_up_notebook(tmp_path: Path) -> None:
    def cell(kind: str, text: str) -> dict:
        return {"cell_type": kind, "metadata": {}, "source": text}

    nb = tmp_path / "01_x.ipynb"
    nb.write_text(json.dumps({"cells": [
        cell("markdown", "# T\nAs {cite}`ultragcn, graphhash` and {cite:p}`ncn` show.\n\n"
                         ":::{exercise}\n:label: ex-a\nDo it.\n:::"),
        cell("markdown", "```{exercise}\n:label: ex-b\n```"),
        cell("markdown", "```{solution-start} ex-a\n:class: dropdown\n```"),
        cell("code", "x = 1\nassert x == 1"),
        cell("markdown", "```{solution-end}\n```"),
        cell("markdown", "```{solution-start} ex-b\n```"),
        cell("code", "y = 2"),
    ]}))
    assert exercise_labels(nb) == ["ex-a", "ex-b"]
    assert cited_keys(nb) == {"ultragcn", "graphhash", "ncn"}
    (a, a_code, a_start), (b, b_code, b_start) = gated_solutions(nb)
    assert (a, a_code, b, b_code) == ("ex-a", ["x = 1\nassert x == 1"], "ex-b", ["y = 2"])
    assert "dropdown" in a_start and "(unclosed)" in b_start and "dropdown" not in b_start
    assert ASSERT.search(a_code[0]) and not ASSERT.search(b_code[0])
