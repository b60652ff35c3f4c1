#!/usr/bin/env python3
"""Local copies of the CDN files that the built book's pages load, for the offline browser test.

The built HTML pages of the book load a few JavaScript libraries from public CDNs:

* require.js (myst-nb puts it in the ``<head>`` of every page that shows ipywidgets),
  ``https://cdnjs.cloudflare.com/ajax/libs/require.js/<v>/require.min.js``;
* the ipywidgets HTML manager, which renders the saved widget state (myst-nb, same place),
  ``https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@<v>/dist/embed-amd.js``;
  at run time that bundle loads its font files from the same ``dist/`` folder;
* plotly.js, loaded by the ``notebook_connected`` renderer's output,
  ``https://cdn.plot.ly/plotly-<v>.min.js`` (a ``<script src>``) and
  ``https://cdn.plot.ly/plotly-<v>.min`` (an ES-module ``import`` in the renderer's init cell);
* MathJax: plotly's HTML output adds
  ``https://cdnjs.cloudflare.com/ajax/libs/mathjax/<v>/es5/tex-svg.min.js`` and Sphinx adds
  ``https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js`` to pages with maths; MathJax
  loads further components and fonts from the same ``es5/`` folder on demand.

The browser test (``tests/book/test_browser.py``) runs without network: it answers every request
for one of these URLs from the folder this script fills. The folder holds one sub-folder per
package version and a ``manifest.json``::

    {"format": 1,
     "packages": {"requirejs@2.3.4": {"name": "requirejs", "version": "2.3.4", "dir": "requirejs-2.3.4"}, ...},
     "routes": {"https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js": "requirejs-2.3.4/require.js",
                "https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@1.0.6/dist/": "html-manager-1.0.6/dist/",
                ...}}

A route whose URL ends with ``/`` is a prefix: the rest of the requested URL's path is looked up
under the local folder it names. Other routes match the URL exactly (query and fragment ignored).
Paths are relative to the folder holding ``manifest.json``.

This script runs at set-up time and may use the network, through ``npm pack`` (npm registry
only); plotly.js is copied from the installed ``plotly`` Python package when its version is the
one asked for. It is idempotent: when the manifest already covers every asset asked for and all
its files exist, it does nothing.

Usage::

    python tools/browser_assets.py DEST [--html BUILT_HTML_DIR] [--force]

``--html`` also scans a built book for CDN URLs of the known kinds (other versions than the
defaults, say), fetches those too, and lists external script/stylesheet URLs that no route covers.

Standard library only.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable

FORMAT = 1
MANIFEST = "manifest.json"

# The versions that myst-nb 1.4 (``nb_ipywidgets_js``), Sphinx 7 (``mathjax_path``) and plotly 6/7
# (``include_mathjax="cdn"``) write into the pages. The plotly.js version comes from the installed
# plotly package (the renderer writes that version into its output).
REQUIREJS_VERSION = "2.3.4"
HTML_MANAGER_VERSION = "1.0.6"
MATHJAX_VERSIONS = ("3.2.2", "3")

_V = r"(?P<v>[0-9][0-9A-Za-z.+-]*)"
# kind -> regexes that recognise a CDN URL of that kind and capture the version spec it asks for.
URL_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "requirejs": (
        re.compile(r"https://cdnjs\.cloudflare\.com/ajax/libs/require\.js/" + _V + r"/require(?:\.min)?\.js"),
        re.compile(r"https://(?:cdn\.jsdelivr\.net/npm|unpkg\.com)/requirejs@" + _V + r"/require\.js"),
    ),
    "html-manager": (
        re.compile(r"https://(?:cdn\.jsdelivr\.net/npm|unpkg\.com)/@jupyter-widgets/html-manager@" + _V + r"/dist/"),
    ),
    "plotly": (re.compile(r"https://cdn\.plot\.ly/plotly-" + _V + r"\.min(?:\.js)?"),),
    "mathjax": (
        re.compile(r"https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/" + _V + r"/es5/"),
        re.compile(r"https://(?:cdn\.jsdelivr\.net/npm|unpkg\.com)/mathjax@" + _V + r"/es5/"),
    ),
}

_NPM_NAME = {
    "requirejs": "requirejs",
    "html-manager": "@jupyter-widgets/html-manager",
    "plotly": "plotly.js-dist-min",
    "mathjax": "mathjax",
}


def _routes_for(kind: str, spec: str, local_dir: str) -> dict[str, str]:
    """The CDN URLs (exact, or prefixes ending in '/') served by one fetched package."""
    if kind == "requirejs":
        f = f"{local_dir}/require.js"
        return {
            f"https://cdnjs.cloudflare.com/ajax/libs/require.js/{spec}/require.min.js": f,
            f"https://cdnjs.cloudflare.com/ajax/libs/require.js/{spec}/require.js": f,
            f"https://cdn.jsdelivr.net/npm/requirejs@{spec}/require.js": f,
            f"https://unpkg.com/requirejs@{spec}/require.js": f,
        }
    if kind == "html-manager":
        d = f"{local_dir}/dist/"
        return {
            f"https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@{spec}/dist/": d,
            f"https://unpkg.com/@jupyter-widgets/html-manager@{spec}/dist/": d,
        }
    if kind == "plotly":
        f = f"{local_dir}/plotly.min.js"
        return {
            f"https://cdn.plot.ly/plotly-{spec}.min.js": f,
            # plotly's notebook_connected init cell does `import "https://cdn.plot.ly/plotly-<v>.min"`
            f"https://cdn.plot.ly/plotly-{spec}.min": f,
        }
    if kind == "mathjax":
        d = f"{local_dir}/es5/"
        return {
            f"https://cdnjs.cloudflare.com/ajax/libs/mathjax/{spec}/es5/": d,
            f"https://cdn.jsdelivr.net/npm/mathjax@{spec}/es5/": d,
            f"https://unpkg.com/mathjax@{spec}/es5/": d,
        }
    raise ValueError(kind)


# --------------------------------------------------------------------------- discovery


def installed_plotlyjs() -> tuple[str, Path] | None:
    """(version, path) of plotly.min.js shipped in the installed plotly package, without importing it."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        js = Path(loc) / "package_data" / "plotly.min.js"
        if js.is_file():
            with js.open("r", encoding="utf-8", errors="replace") as fh:
                head = fh.read(400)
            m = re.search(r"plotly\.js v([0-9][0-9A-Za-z.+-]*)", head)
            if m:
                return m.group(1), js
    return None


def default_specs() -> set[tuple[str, str]]:
    specs = {("requirejs", REQUIREJS_VERSION), ("html-manager", HTML_MANAGER_VERSION)}
    specs |= {("mathjax", v) for v in MATHJAX_VERSIONS}
    plotly = installed_plotlyjs()
    if plotly is not None:
        specs.add(("plotly", plotly[0]))
    return specs


_URL_IN_TEXT = re.compile(r"""https?://[^\s"'<>)`\\]+""")
_TAG_URL = re.compile(
    r"""<(?P<tag>script|link|img|iframe|source|video|audio)\b[^>]*?\b(?:src|href)\s*=\s*["'](?P<url>https?://[^"']+)["']""",
    re.I,
)
_IMPORT_URL = re.compile(r"""import\s*(?:\(\s*)?["'](?P<url>https?://[^"']+)["']""")


def scan_html(html_dir: Path) -> tuple[set[tuple[str, str]], dict[str, set[str]]]:
    """Scan a built book for CDN URLs.

    Returns the (kind, version spec) pairs of the known CDN URLs found anywhere in the pages, and
    ``{url: {tags}}`` for every external URL a page loads as a resource (``<script src>``,
    ``<link href>``, ``<img src>``, ``<iframe src>``..., ES-module ``import "..."``).
    """
    specs: set[tuple[str, str]] = set()
    loaded: dict[str, set[str]] = {}
    for page in sorted(Path(html_dir).rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        for m in _URL_IN_TEXT.finditer(text):
            specs |= _classify(m.group(0))
        for m in _TAG_URL.finditer(text):
            tag = m.group("tag").lower()
            if tag == "link" and not re.search(r"""rel\s*=\s*["'][^"']*(stylesheet|preload|modulepreload|icon)""", m.group(0), re.I):
                continue  # <link rel="canonical"> and the like are not loaded
            loaded.setdefault(m.group("url"), set()).add(tag)
        for m in _IMPORT_URL.finditer(text):
            loaded.setdefault(m.group("url"), set()).add("import")
    return specs, loaded


def _classify(url: str) -> set[tuple[str, str]]:
    found = set()
    for kind, patterns in URL_PATTERNS.items():
        for pat in patterns:
            m = pat.match(url)
            if m:
                found.add((kind, m.group("v").rstrip(".")))
    return found


# --------------------------------------------------------------------------- manifest


def _read_manifest(dest: Path) -> dict:
    try:
        data = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"format": FORMAT, "packages": {}, "routes": {}}
    if data.get("format") != FORMAT:
        return {"format": FORMAT, "packages": {}, "routes": {}}
    data.setdefault("packages", {})
    data.setdefault("routes", {})
    return data


def _complete(dest: Path, manifest: dict, keys: Iterable[str]) -> bool:
    packages = manifest["packages"]
    if any(k not in packages for k in keys):
        return False
    for rel in manifest["routes"].values():
        p = dest / rel
        if not (p.is_dir() if rel.endswith("/") else p.is_file()):
            return False
    return True


def routes_as_paths(dest: Path, manifest: dict) -> dict[str, Path]:
    return {url: (dest / rel) for url, rel in sorted(manifest["routes"].items())}


def load_routes(dest: Path) -> dict[str, Path]:
    """The routes of an existing asset folder: CDN URL (or URL prefix ending in '/') -> local path."""
    return routes_as_paths(Path(dest), _read_manifest(Path(dest)))


def lookup(routes: dict[str, Path], url: str) -> Path | None:
    """The local file that answers ``url``, or None. Exact routes first, then the longest prefix."""
    url = url.split("#", 1)[0].split("?", 1)[0]
    if url in routes and not str(url).endswith("/"):
        return routes[url]
    best = None
    for prefix, local in routes.items():
        if prefix.endswith("/") and url.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, local)
    if best is None:
        return None
    rest = url[len(best[0]):]
    if not rest:
        return None
    root = best[1].resolve()
    candidates = [rest]
    if rest.endswith(".min.js"):
        # cdnjs serves e.g. mathjax's es5/tex-svg.min.js; the npm package has es5/tex-svg.js (already minified)
        candidates.append(rest[: -len(".min.js")] + ".js")
    for cand in candidates:
        target = (root / cand).resolve()
        if target.is_file() and target.is_relative_to(root):
            return target
    return None


# --------------------------------------------------------------------------- fetching


def _npm_pack(package: str, spec: str, workdir: Path) -> tuple[str, Path]:
    """``npm pack package@spec`` into workdir; returns (resolved version, tarball path)."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm is needed to fetch {package}@{spec} (apt-get install -y npm, or fill the asset folder elsewhere)"
        )
    proc = subprocess.run(
        [npm, "pack", f"{package}@{spec}", "--json", "--pack-destination", str(workdir)],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"npm pack {package}@{spec} failed:\n{proc.stderr.strip()}")
    # npm may print notices before the JSON array.
    out = proc.stdout
    info = json.loads(out[out.index("[") :])[0]
    return info["version"], workdir / info["filename"]


def _extract(tarball: Path, members: Iterable[str], target: Path, skip_suffixes: tuple[str, ...] = (".map",)) -> None:
    """Extract ``package/<member>`` files (a trailing '/' means a whole folder) to target/<member>."""
    members = list(members)
    with tarfile.open(tarball, "r:gz") as tar:
        for info in tar.getmembers():
            if not info.isfile() or not info.name.startswith("package/"):
                continue
            rel = info.name[len("package/") :]
            if not any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in members):
                continue
            if rel.endswith(skip_suffixes):
                continue
            out = (target / rel).resolve()
            if not out.is_relative_to(target.resolve()):
                raise RuntimeError(f"unsafe path in {tarball.name}: {info.name}")
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(info)
            assert src is not None
            with src, out.open("wb") as fh:
                shutil.copyfileobj(src, fh)
    for m in members:
        p = target / m
        if not (p.is_dir() if m.endswith("/") else p.is_file()):
            raise RuntimeError(f"{tarball.name} has no {m}")


def _fetch(kind: str, spec: str, dest: Path, log) -> tuple[str, str]:
    """Fetch one package into dest; returns (resolved version, local folder name)."""
    with tempfile.TemporaryDirectory(prefix="browser-assets-") as tmp:
        tmp = Path(tmp)
        staging = tmp / "out"
        staging.mkdir()
        plotly = installed_plotlyjs() if kind == "plotly" else None
        if plotly is not None and plotly[0] == spec:
            version = spec
            shutil.copyfile(plotly[1], staging / "plotly.min.js")
            log(f"plotly.js {version}: copied from {plotly[1]}")
        else:
            version, tarball = _npm_pack(_NPM_NAME[kind], spec, tmp)
            log(f"{_NPM_NAME[kind]}@{spec}: npm pack -> {version}")
            if kind == "requirejs":
                _extract(tarball, ["require.js"], staging)
            elif kind == "html-manager":
                _extract(tarball, ["dist/"], staging)
            elif kind == "plotly":
                _extract(tarball, ["plotly.min.js"], staging)
            elif kind == "mathjax":
                _extract(tarball, ["es5/"], staging)
            else:
                raise ValueError(kind)
        name = f"{kind}-{version}"
        final = dest / name
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(staging), str(final))
        return version, name


def ensure_assets(
    dest: Path,
    *,
    html_dir: Path | None = None,
    force: bool = False,
    log=None,
) -> dict[str, Path]:
    """Fill ``dest`` with the CDN assets the built book loads; return {CDN URL or prefix: local path}.

    Idempotent: when ``dest/manifest.json`` already covers every asset asked for (the defaults,
    plus those a scan of ``html_dir`` finds) and its files exist, nothing is fetched.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    dest = Path(dest)
    specs = default_specs()
    if html_dir is not None:
        specs |= scan_html(Path(html_dir))[0]
    keys = {f"{kind}@{spec}": (kind, spec) for kind, spec in specs}

    manifest = _read_manifest(dest)
    if not force and _complete(dest, manifest, keys):
        return routes_as_paths(dest, manifest)

    dest.mkdir(parents=True, exist_ok=True)
    fetched: dict[str, tuple[str, str]] = {}  # f"{kind}@{version}" -> (version, dir), to reuse e.g. mathjax@3 == 3.2.2
    for key in sorted(keys):
        kind, spec = keys[key]
        have = manifest["packages"].get(key)
        if have and not force and (dest / have["dir"]).is_dir():
            local = have["dir"]
            version = have["version"]
        elif f"{kind}@{spec}" in fetched:
            version, local = fetched[f"{kind}@{spec}"]
        else:
            version, local = _fetch(kind, spec, dest, log)
            fetched[f"{kind}@{version}"] = (version, local)
        fetched[key] = (version, local)
        manifest["packages"][key] = {"kind": kind, "version": version, "dir": local}
        manifest["routes"].update(_routes_for(kind, spec, local))

    manifest["format"] = FORMAT
    manifest["routes"] = dict(sorted(manifest["routes"].items()))
    manifest["packages"] = dict(sorted(manifest["packages"].items()))
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, dest / MANIFEST)
    if not _complete(dest, manifest, keys):
        raise RuntimeError(f"asset folder {dest} is incomplete after fetching")
    return routes_as_paths(dest, manifest)


def uncovered(routes: dict[str, Path], loaded: dict[str, set[str]]) -> dict[str, set[str]]:
    """The external resource URLs of a scan that no route answers."""
    return {u: t for u, t in sorted(loaded.items()) if lookup(routes, u) is None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("dest", type=Path, help="folder to fill (manifest.json + one folder per package)")
    ap.add_argument("--html", type=Path, default=None, help="built book html folder to scan for CDN URLs")
    ap.add_argument("--force", action="store_true", help="fetch again even if complete")
    args = ap.parse_args(argv)
    routes = ensure_assets(args.dest, html_dir=args.html, force=args.force)
    for url, path in routes.items():
        print(f"{url} -> {path}")
    if args.html is not None:
        missing = uncovered(routes, scan_html(args.html)[1])
        if missing:
            print("\nexternal resources with no local copy (the browser test blocks them):", file=sys.stderr)
            for url, tags in missing.items():
                print(f"  {url}  ({', '.join(sorted(tags))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
