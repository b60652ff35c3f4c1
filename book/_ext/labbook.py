"""Sphinx extension of the lab book: pages generated from the book's data at build time.

Directives (each page that uses one is re-read on every build, and its table is filled in only
after every notebook has executed, so it always shows this build's results):

``{labbook-papers}``    every paper of ``book/_data/papers.yml``: its title linked to its entry
                        on the References page (``book/references.bib``, key = the paper's id),
                        chapter, the section that teaches it (or "coming"), the paper's headline.
``{labbook-claims}``    every claim recorded by ``labkit.ClaimLog`` during execution, beside the
                        headline of the paper it scales down; one table per kind of check (paper
                        claims, then sanity checks, then any other tag).
``{labbook-runtimes}``  each notebook's measured run time per tier (``book/_data/runtimes.json``,
                        updated with this build's own execution times) and its exercises.
``{labbook-part} I``    the planned chapters of one part of the book and where they stand.

It also repairs two page-script problems of the stack (see :func:`_dedup_scripts` and
:func:`_one_mathjax`) and loads ``book/_static/labbook_shims.js``.

Environment: ``LABBOOK_TIER`` (tier whose claims and times this build shows, default
``default``), ``LABKIT_RECORDS_DIR`` (claims records; default ``<book>/_build/records``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import yaml
from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.nodes import make_refnode

logger = logging.getLogger(__name__)

KINDS = ("papers", "claims", "runtimes", "part")
TIERS = ("ci", "default", "gpu")
REFERENCES_DOC = "book/references"
BIBFILE = "book/references.bib"
# A sphinx-exercise exercise in a notebook's markdown: ```{exercise} or :::{exercise-start}
EXERCISE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})[ \t]*\{exercise(?:-start)?\}", re.M)
# Headings of the Claims page's tables, per kind of check (labkit.claims.CLAIM_KINDS)
CLAIM_KIND_TITLES = {"paper": ("claim", "claims"), "sanity": ("sanity check", "sanity checks")}


class labbook_table(nodes.General, nodes.Element):
    """Placeholder replaced by a table once every document has been read."""


class _TableDirective(Directive):
    kind = ""
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        env.labbook_docs = getattr(env, "labbook_docs", set()) | {env.docname}
        node = labbook_table(kind=self.kind, arg=self.arguments[0] if self.arguments else "")
        return [node]


def _directive(kind: str) -> type[Directive]:
    return type(f"{kind.title()}Directive", (_TableDirective,), {"kind": kind})


# -- data --------------------------------------------------------------------------------------

def _root(app: Sphinx) -> Path:
    return Path(app.srcdir)


def _load_yaml(app: Sphinx, name: str) -> list[dict[str, Any]]:
    return yaml.safe_load((_root(app) / "book" / "_data" / name).read_text())


def _runtimes_path(app: Sphinx) -> Path:
    return _root(app) / "book" / "_data" / "runtimes.json"


def _tier() -> str:
    tier = os.environ.get("LABBOOK_TIER", "default")
    if tier not in TIERS:
        raise ValueError(f"LABBOOK_TIER must be one of {TIERS}, got {tier!r}")
    return tier


def _records_dir(app: Sphinx) -> Path:
    env = os.environ.get("LABKIT_RECORDS_DIR")
    return Path(env) if env else _root(app) / "_build" / "records"


def citation_anchor(key: str) -> str:
    """The HTML id of ``key``'s entry on the References page (``bibtex_cite_id: "cite-{key}"``)."""
    return nodes.make_id(f"cite-{key}")


def _bib_keys(app: Sphinx) -> set[str]:
    path = _root(app) / BIBFILE
    return set(re.findall(r"^@\w+\{\s*([^,\s]+)\s*,", path.read_text(), re.M)) if path.exists() else set()


def exercise_count(path: Path) -> int:
    """Exercises (sphinx-exercise directives) in the markdown of a notebook or a MyST page."""
    if not path.exists():
        return 0
    if path.suffix != ".ipynb":
        return len(EXERCISE.findall(path.read_text()))
    cells = json.loads(path.read_text()).get("cells", [])
    return sum(len(EXERCISE.findall("".join(c.get("source", "")))) for c in cells if c.get("cell_type") == "markdown")


def machine() -> str:
    cores = os.cpu_count()
    return f"{cores} CPU cores ({platform.machine()}), Python {platform.python_version()}"


# -- table building ----------------------------------------------------------------------------

def _cell(value: Any) -> nodes.Node:
    if isinstance(value, nodes.Node):
        return value if isinstance(value, nodes.paragraph) else nodes.paragraph("", "", value)
    return nodes.paragraph(text="" if value is None else str(value))


def _table(headers: list[str], rows: list[list[Any]], caption: str | None = None) -> nodes.table:
    table = nodes.table(classes=["labbook-table"])
    if caption:
        table += nodes.title(text=caption)
    group = nodes.tgroup(cols=len(headers))
    table += group
    for _ in headers:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    row = nodes.row()
    for h in headers:
        row += nodes.entry("", _cell(h))
    head += row
    body = nodes.tbody()
    group += body
    for values in rows:
        row = nodes.row()
        for v in values:
            row += nodes.entry("", _cell(v))
        body += row
    return table


def _link(app: Sphinx, fromdoc: str, todoc: str, text: str) -> nodes.Node:
    if todoc in app.env.all_docs:
        return make_refnode(app.builder, fromdoc, todoc, "", nodes.inline(text=text))
    return nodes.inline(text=text)


def _chapter_doc(app: Sphinx, chapter: dict[str, Any]) -> str | None:
    """The first document of a chapter's folder that the book contains, if any."""
    prefix = f"chapters/{chapter['number']}_{chapter['slug']}/"
    docs = sorted(d for d in app.env.all_docs if d.startswith(prefix))
    index = prefix + "index"
    return index if index in docs else (docs[0] if docs else None)


def _paper_title(app: Sphinx, docname: str, paper: dict[str, Any], keys: set[str]) -> nodes.Node:
    """The paper's title, linked to its entry on the References page."""
    if paper["id"] not in keys:
        logger.warning(f"labbook-papers: no entry {paper['id']!r} in {BIBFILE}", location=docname)
        return nodes.inline(text=paper["title"])
    if REFERENCES_DOC not in app.env.all_docs:
        return nodes.inline(text=paper["title"])
    uri = app.builder.get_relative_uri(docname, REFERENCES_DOC) + "#" + citation_anchor(paper["id"])
    return nodes.reference("", paper["title"], internal=True, refuri=uri)


def _papers_table(app: Sphinx, docname: str) -> list[nodes.Node]:
    chapters = {c["number"]: c for c in _load_yaml(app, "chapters.yml")}
    keys = _bib_keys(app)
    rows = []
    for p in _load_yaml(app, "papers.yml"):
        ch = chapters[p["chapter"]]
        ch_doc = _chapter_doc(app, ch)
        ch_text = f"{ch['number']} {ch['title']}"
        where = _link(app, docname, ch_doc, ch_text) if ch_doc else nodes.inline(text=ch_text)
        section = p.get("section")
        sec = _link(app, docname, section[: -len(".ipynb")], "read it") if section else "coming"
        rows.append([_paper_title(app, docname, p, keys), where, sec, p["headline"]])
    n_taught = sum(1 for p in _load_yaml(app, "papers.yml") if p.get("section"))
    intro = nodes.paragraph(text=(f"{len(rows)} papers; {n_taught} taught so far, the rest are coming. "
                                  "Each title links to its entry in the references (authors, arXiv)."))
    return [intro, _table(["Paper", "Chapter", "Section", "The paper's headline"], rows)]


def _claims_table(app: Sphinx, docname: str) -> list[nodes.Node]:
    tier = _tier()
    papers = {p["id"]: p for p in _load_yaml(app, "papers.yml")}
    folder = _records_dir(app) / tier
    rows: dict[str, list[list[Any]]] = {}
    machines = set()
    for path in sorted(folder.glob("*/*.json")):
        record = json.loads(path.read_text())
        doc = f"chapters/{record['chapter']}/{record['section']}"
        if doc not in app.env.all_docs:
            continue  # a record left by a notebook that is no longer in the book
        machines.add(record.get("machine", "?"))
        title = app.env.titles[doc].astext() if doc in app.env.titles else doc
        for c in record["claims"]:
            unit = f" {c['unit']}" if c.get("unit") else ""
            measured = f"{c['measured']:.4g}{unit} {c['op']} {c['bound']:.4g}{unit}"
            paper = papers.get(c.get("paper") or "")
            headline = f"{paper['short']}: {paper['headline']}" if paper else "(book machinery)"
            kind = c.get("kind") or "paper"  # records written before kinds existed are paper claims
            rows.setdefault(kind, []).append([_link(app, docname, doc, title), c["claim"], measured,
                                              "holds" if c["passed"] else "FAILED", headline])
    where = ", ".join(sorted(machines)) or "no machine"
    order = [k for k in CLAIM_KIND_TITLES if k in rows] + sorted(k for k in rows if k not in CLAIM_KIND_TITLES)
    counts = ", ".join(_kind_count(k, len(rows[k])) for k in order)
    intro = nodes.paragraph(text=(
        f"{counts or 'No claims'}, measured at the '{tier}' tier by this build's execution ({where}). "
        "Each one is asserted in its notebook: a check that stops holding fails the build. Claims "
        "scale a paper's result down (or test the book's machinery) and would fail if the mechanism "
        "were wrong; sanity checks assert identities, arithmetic and properties that hold by "
        "construction, which the claims beside them rest on."))
    out: list[nodes.Node] = [intro]
    for kind in order:
        out.append(nodes.rubric(text=f"{_kind_names(kind)[1].capitalize()} ({len(rows[kind])})"))
        out.append(_table(["Section", "Claim", "Measured vs bound", "Status", "Paper's own headline"], rows[kind]))
    return out


def _kind_names(kind: str) -> tuple[str, str]:
    """Singular and plural name of a kind of check: ``("claim", "claims")``, ``("protocol check", ...)``."""
    name = kind.replace("_", " ")
    return CLAIM_KIND_TITLES.get(kind, (f"{name} check", f"{name} checks"))


def _kind_count(kind: str, n: int) -> str:
    """``"3 claims"``, ``"1 sanity check"``, ``"2 protocol checks"``."""
    one, many = _kind_names(kind)
    return f"{n} {one if n == 1 else many}"


def _update_runtimes(app: Sphinx) -> dict[str, Any]:
    """Merge this build's execution times (myst-nb's execution data) into runtimes.json."""
    path = _runtimes_path(app)
    data = json.loads(path.read_text()) if path.exists() else {}
    try:
        from myst_nb.sphinx_ import NbMetadataCollector
    except ImportError:  # pragma: no cover - myst-nb is part of jupyter-book
        return data
    tier, today = _tier(), dt.date.today().isoformat()
    changed = False
    for doc in sorted(app.env.all_docs):
        exec_data = NbMetadataCollector.get_exec_data(app.env, doc)
        if not exec_data or not exec_data.get("succeeded") or exec_data.get("method") in (None, "off"):
            continue
        entry = {"seconds": round(float(exec_data["runtime"]), 1), "machine": machine(), "date": today}
        old = data.get(doc, {}).get(tier)
        if old is None or abs(old["seconds"] - entry["seconds"]) > 0.05:
            data.setdefault(doc, {})[tier] = entry
            changed = True
    if changed:
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def _runtimes_table(app: Sphinx, docname: str) -> list[nodes.Node]:
    data = _update_runtimes(app)
    budgets = {"ci": 60, "default": 120, "gpu": 300}
    rows = []
    for doc in sorted(d for d in app.env.all_docs if d.startswith("chapters/")):
        times = data.get(doc, {})
        title = app.env.titles[doc].astext() if doc in app.env.titles else doc
        cells = []
        for tier in TIERS:
            t = times.get(tier)
            cells.append(f"{t['seconds']:.1f} s" if t else "not measured")
        where = "; ".join(f"{tier}: {times[tier]['machine']}, {times[tier]['date']}" for tier in TIERS if tier in times)
        exercises = exercise_count(_root(app) / (doc + ".ipynb")) or exercise_count(_root(app) / (doc + ".md"))
        rows.append([_link(app, docname, doc, title), *cells, str(exercises), where])
    intro = nodes.paragraph(text=(
        "Wall time of each notebook's execution per tier. Budgets: ci "
        f"{budgets['ci']} s and default {budgets['default']} s on 2 CPU cores, gpu {budgets['gpu']} s "
        "on one H100. The ci times come from the test suite, the default times from the book build, "
        "the gpu times from a run on a GPU host. Exercises: how many the page sets (each with its "
        "solution folded under it)."))
    return [intro, _table(["Notebook", "ci", "default", "gpu", "Exercises", "Measured on"], rows)]


def _part_table(app: Sphinx, docname: str, part: str) -> list[nodes.Node]:
    chapters = [c for c in _load_yaml(app, "chapters.yml") if c["part"] == part]
    if not chapters:
        raise ValueError(f"labbook-part: no chapter in part {part!r}")
    papers = _load_yaml(app, "papers.yml")
    rows = []
    for ch in chapters:
        doc = _chapter_doc(app, ch)
        text = f"{ch['number']} {ch['title']}"
        names = ", ".join(p["short"] for p in papers if p["chapter"] == ch["number"])
        rows.append([_link(app, docname, doc, text) if doc else text, names, "in the book" if doc else "coming"])
    return [_table(["Chapter", "Papers", "Status"], rows)]


# -- events ------------------------------------------------------------------------------------

def _resolve(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    for node in list(doctree.findall(labbook_table)):
        kind, arg = node["kind"], node["arg"]
        if kind == "papers":
            new = _papers_table(app, docname)
        elif kind == "claims":
            new = _claims_table(app, docname)
        elif kind == "runtimes":
            new = _runtimes_table(app, docname)
        else:
            new = _part_table(app, docname, arg)
        node.replace_self(new)


def _always_outdated(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    return sorted(getattr(env, "labbook_docs", set()) - removed)


def _purge(app: Sphinx, env: Any, docname: str) -> None:
    if hasattr(env, "labbook_docs"):
        env.labbook_docs.discard(docname)


def _merge(app: Sphinx, env: Any, docnames: set[str], other: Any) -> None:
    env.labbook_docs = getattr(env, "labbook_docs", set()) | getattr(other, "labbook_docs", set())


# -- page scripts ------------------------------------------------------------------------------

def _dedup_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Sphinx 7.4 writes inline scripts added after the builder started (sphinx-thebe's
    ``const THEBE_JS_URL = ...``) twice, and the second ``const`` throws a SyntaxError."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted((getattr(js, "attributes", None) or {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


_PLOTLY_MATHJAX = re.compile(r'<script[^>]*src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]+"[^>]*></script>')


def _one_mathjax(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Plotly's HTML output loads its own MathJax 3; with Sphinx's on the same page the second copy
    throws ("Cannot set property Package ..."). Keep Sphinx's."""
    scripts = context.get("script_files") or []
    if "body" in context and any("mathjax" in str(getattr(js, "filename", js) or "") for js in scripts):
        context["body"] = _PLOTLY_MATHJAX.sub("", context["body"])


def _static_path(app: Sphinx, config: Any) -> None:
    config.html_static_path.append(str(Path(app.srcdir) / "book" / "_static"))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", _static_path)
    app.connect("html-page-context", _one_mathjax, priority=900)
    app.connect("html-page-context", _dedup_scripts, priority=900)
    app.add_js_file("labbook_shims.js", priority=100)
    app.add_node(labbook_table)
    for kind in KINDS:
        app.add_directive(f"labbook-{kind}", _directive(kind))
    app.connect("doctree-resolved", _resolve)
    app.connect("env-get-outdated", _always_outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
