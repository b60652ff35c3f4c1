#!/usr/bin/env python3
"""Set up, build and test the lab book with one command each (standard library only).

    python3 tools/lab.py book      # build the book into _build/html, executing every chapter
    python3 tools/lab.py test      # run the whole test suite (what CI runs); extra args go to pytest
    python3 tools/lab.py lab       # JupyterLab at the repository root; extra args go to `jupyter lab`
    python3 tools/lab.py set-repo URL   # point the launch buttons and Colab cells at a fork

`book`, `test` and `lab` first make sure `.venv/` exists with the pinned `requirements.txt`
installed (re-installing when that file or `pyproject.toml` changes) and labkit installed in
editable mode. `book` and `test` then install the Debian packages in DEBIAN (chromium for the
browser tests, iverilog and MPICH for chapter 18) when they are missing, as root or through
passwordless sudo, and otherwise stop with the command to run;
`test` also prepares the offline copies of the web assets the browser test needs. `lab` serves
JupyterLab on the book's kernel (.venv's python) with the book's environment, less what only
suits a page built after the fact (see lab_env).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
VPY = VENV / "bin" / "python"
STAMP = VENV / ".labbook-installed"
ASSETS = VENV / "labbook-assets"
OLDEST = ROOT / ".venv-oldest"  # the oldest supported Triton over .venv's packages
OLDEST_PY = OLDEST / "bin" / "python"
RECORDS = ROOT / "_build" / "records"
JCACHE = ROOT / "_build" / ".jupyter_cache"


def log(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    log(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


# -- environment -------------------------------------------------------------------------------

def _install_fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        h.update((ROOT / name).read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def ensure_venv() -> None:
    """Create .venv and install the pinned requirements and labkit when missing or outdated."""
    if sys.version_info < (3, 11):
        sys.exit(f"[lab] Python 3.11 or newer is required, this is {sys.version.split()[0]}")
    if not VPY.exists():
        log(f"creating {VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    fingerprint = _install_fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    run([VPY, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([VPY, "-m", "pip", "install", "-q", "-r", ROOT / "requirements.txt"])
    run([VPY, "-m", "pip", "install", "-q", "--no-deps", "-e", ROOT])
    STAMP.write_text(fingerprint)


def tested_versions() -> dict[str, str]:
    """The versions the test suite runs besides requirements.txt's pins: [tool.labkit.tested]."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["labkit"]["tested"]


def ensure_oldest_triton() -> None:
    """Create .venv-oldest, the oldest supported Triton on top of .venv, when missing or outdated.

    It holds two packages, ``triton`` at ``oldest-triton`` of pyproject.toml's [tool.labkit.tested]
    and ``numpy`` at ``oldest-numpy`` (what that Triton's interpreter works with); a .pth file then
    appends .venv's site-packages after its own, so torch, pytest and the rest come from .venv while
    ``import triton`` finds the older release. tests/test_triton_versions.py runs the kernel tests
    with its python. Rebuilt from scratch when those versions, this Python or .venv's
    site-packages change.
    """
    tested = tested_versions()
    version = tested["oldest-triton"]
    packages = [f"triton=={version}", f"numpy=={tested['oldest-numpy']}"]
    pinned_site = subprocess.run([str(VPY), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 check=True, capture_output=True, text=True).stdout.strip()
    fingerprint = hashlib.sha256("\n".join([*packages, sys.version, pinned_site]).encode()).hexdigest()
    stamp = OLDEST / ".labbook-installed"
    if OLDEST_PY.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return
    log(f"creating {OLDEST.relative_to(ROOT)} ({', '.join(packages)} over {VENV.relative_to(ROOT)})")
    venv.EnvBuilder(with_pip=True, clear=True).create(OLDEST)
    # before the .pth file: with .venv on its path, pip would take .venv's copies as installed
    run([OLDEST_PY, "-m", "pip", "install", "-q", "--no-deps", *packages])
    own_site = subprocess.run([str(OLDEST_PY), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True).stdout.strip()
    # addsitedir, not a bare path: .venv's own .pth files (the editable labkit) are read too
    (Path(own_site) / "labbook-pinned-venv.pth").write_text(f"import site; site.addsitedir({pinned_site!r})\n")
    found = subprocess.run([str(OLDEST_PY), "-c", "import triton, torch; print(triton.__version__)"],
                           check=True, capture_output=True, text=True).stdout.strip()
    if found != version:
        sys.exit(f"[lab] {OLDEST.relative_to(ROOT)} imports triton {found}, expected {version}")
    stamp.write_text(fingerprint)


CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium: the browser the browser tests drive

#: Debian package -> a file it installs. chromium drives the browser tests; iverilog (``iverilog``,
#: ``vvp``) simulates chapter 18's Verilog; MPICH (``mpiexec``) and its headers and compiler
#: wrapper (``mpicc``) build and run chapter 18's MPI programs (MPICH, not Open MPI, which refuses
#: to run as root without an extra flag).
DEBIAN: dict[str, Path] = {
    "chromium": CHROMIUM,
    "iverilog": Path("/usr/bin/iverilog"),
    "mpich": Path("/usr/bin/mpiexec"),
    "libmpich-dev": Path("/usr/bin/mpicc"),
}


def missing_debian() -> list[str]:
    """The packages of :data:`DEBIAN` whose file is missing, in table order."""
    return [package for package, path in DEBIAN.items() if not path.exists()]


def debian_by_hand(packages: list[str]) -> str:
    """The shell command that installs ``packages``, for a person to run."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    return (f"{sudo}apt-get update && {sudo}DEBIAN_FRONTEND=noninteractive apt-get install -y "
            + " ".join(packages))


def debian_install_commands(packages: list[str]) -> list[list[str]]:
    """The apt-get commands that install ``packages`` here: as root, else through sudo -n.

    Exits with the command to run by hand when there is no apt-get, or when this user is not root
    and sudo is missing or asks for a password.
    """
    names = ", ".join(packages)
    if shutil.which("apt-get") is None:
        sys.exit(f"[lab] Debian packages missing ({names}) and this machine has no apt-get: install "
                 "them, then run this command again")
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], stdin=subprocess.DEVNULL,
                                                 capture_output=True, timeout=60).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        sys.exit(f"[lab] Debian packages missing ({names}) and installing them needs root (this user "
                 "is not root and has no passwordless sudo). Run\n    "
                 f"{debian_by_hand(packages)}\nthen run this command again.")
    return [[*prefix, "apt-get", "update"],
            [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", *packages]]


def ensure_debian() -> None:
    """Install the Debian packages of :data:`DEBIAN` that are missing (nothing is downloaded later)."""
    packages = missing_debian()
    if not packages:
        return
    commands = debian_install_commands(packages)
    log(f"missing: {', '.join(str(DEBIAN[p]) for p in packages)}: installing Debian's "
        f"{', '.join(packages)}")
    for cmd in commands:
        try:
            run(cmd)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(f"[lab] installing Debian packages failed at `{' '.join(cmd)}` ({exc}). Run\n    "
                     f"{debian_by_hand(packages)}\nthen run this command again.")
    still = missing_debian()
    if still:
        sys.exit(f"[lab] apt-get ran but {', '.join(str(DEBIAN[p]) for p in still)} is still missing: "
                 f"install Debian's {', '.join(still)}, then run this command again")
    log(f"installed: {', '.join(packages)}")


def ensure_browser_assets() -> None:
    """Offline copies of require.js, the widget manager and plotly.js for the browser test."""
    run([VPY, ROOT / "tools" / "browser_assets.py", ASSETS])


def book_env(tier: str) -> dict[str, str]:
    """Environment for executing notebooks for the book (not set inside notebooks: Colab keeps its own)."""
    env = dict(os.environ)
    env.update({
        "PLOTLY_RENDERER": "notebook_connected",  # plotly 7's default mime type is skipped by JB1
        "TQDM_DISABLE": "1",  # progress bars help a live reader, not a page built after the fact
        "LABBOOK_TIER": tier,
        "LABKIT_RECORDS_DIR": str(RECORDS),
        "PATH": f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONHASHSEED": "0",
    })
    return env


# -- book --------------------------------------------------------------------------------------

def toc_notebooks() -> list[Path]:
    """Notebooks listed in _toc.yml, in order (the test suite's own reading of the toc)."""
    sys.path.insert(0, str(ROOT))
    from tests._book import toc_notebooks as listed

    return listed()


def labkit_dependencies(notebook: Path) -> str:
    """Hash of the labkit code a notebook runs: the core modules plus the subpackages it imports."""
    code = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                     if c["cell_type"] == "code")
    subs = sorted(set(re.findall(r"labkit\.(\w+)", code)))
    files = sorted((ROOT / "labkit").glob("*.py"))
    for sub in subs:
        if (ROOT / "labkit" / sub).is_dir():
            files += sorted((ROOT / "labkit" / sub).rglob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _deps_file(notebook: Path, tier: str) -> Path:
    return RECORDS / tier / notebook.parent.name / f"{notebook.stem}.deps"


def invalidate_stale(notebooks: list[Path]) -> None:
    """Make sure every notebook whose results may be stale executes again.

    jupyter-cache keys on a notebook's code only, and Sphinx re-reads a page only when its file
    changed. So a notebook whose labkit code changed, whose claim records are missing, or that
    has no cache entry loses its entry and has its file's mtime bumped: Sphinx reads it again and
    myst-nb, finding no entry, executes it.
    """
    entries: dict[str, list[int]] = {}
    cache = None
    if JCACHE.exists():
        from jupyter_cache import get_cache

        cache = get_cache(str(JCACHE))
        for rec in cache.list_cache_records():
            entries.setdefault(rec.uri, []).append(rec.pk)
    for nb in notebooks:
        deps = _deps_file(nb, "default")
        if not deps.with_suffix(".json").exists():
            reason = "no claim records"
        elif not deps.exists() or deps.read_text() != labkit_dependencies(nb):
            reason = "its labkit code changed"
        elif str(nb) not in entries:
            reason = "not in the execution cache"
        else:
            continue
        log(f"executing {nb.relative_to(ROOT)} ({reason})")
        for pk in entries.get(str(nb), []):
            cache.remove_cache(pk)
        os.utime(nb)


def cmd_book(args: list[str]) -> int:
    ensure_debian()  # before the build: check_pages needs chromium afterwards
    notebooks = toc_notebooks()
    invalidate_stale(notebooks)
    cmd = [VENV / "bin" / "jupyter-book", "build", ROOT, "-W", "--keep-going", *args]
    log(" ".join(map(str, cmd)))
    rc = subprocess.run([str(c) for c in cmd], env=book_env("default")).returncode
    if rc == 0:
        for nb in notebooks:
            _deps_file(nb, "default").parent.mkdir(parents=True, exist_ok=True)
            _deps_file(nb, "default").write_text(labkit_dependencies(nb))
        log(f"book built: {ROOT / '_build' / 'html' / 'index.html'}")
        rc = check_pages()
    return rc


def check_pages() -> int:
    """Open the built chapter pages in chromium (the browser test)."""
    ensure_browser_assets()
    env = book_env("default")
    env.update(LABBOOK_ASSETS=str(ASSETS), LABBOOK_HTML=str(ROOT / "_build" / "html"))
    cmd = [VPY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/book/test_browser.py"]
    log("checking the built pages in chromium (screenshots in _build/screenshots)")
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env).returncode


def cmd_test(args: list[str]) -> int:
    ensure_debian()
    ensure_oldest_triton()
    ensure_browser_assets()
    env = book_env("ci")
    env["LABBOOK_ASSETS"] = str(ASSETS)
    cmd = [VPY, "-m", "pytest", *args]
    log(" ".join(map(str, cmd)))
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env).returncode


# -- lab ---------------------------------------------------------------------------------------

LAB_DATA = VENV / "labbook-jupyter"  # a Jupyter data folder, first on `lab`'s JUPYTER_PATH
LAB_RECORDS = ROOT / "_build" / "lab" / "records"


def ensure_kernelspec() -> Path:
    """Write the kernel spec notebooks get under `lab`: ``python3``, run by .venv's python.

    It lives in LAB_DATA, which lab_env puts first on JUPYTER_PATH, so neither the spec ipykernel
    ships (``python``, whichever is first on PATH) nor one in the reader's home can shadow it. The
    display name is the chapters' own, so saving a chapter leaves its kernel metadata unchanged.
    """
    spec = {
        "argv": [str(VPY), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3",
        "language": "python",
        "metadata": {"debugger": True},
    }
    path = LAB_DATA / "kernels" / "python3" / "kernel.json"
    text = json.dumps(spec, indent=1) + "\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(text)
        partial.replace(path)
        log(f"kernel spec python3 runs {VPY} ({path})")
    return path


def lab_env() -> dict[str, str]:
    """Environment of `lab`'s server and kernels: what book_env sets that matters to a live reader.

    PATH (.venv first) and PYTHONHASHSEED stay. PLOTLY_RENDERER goes: JupyterLab draws plotly's
    own mime type with the renderer it serves itself, offline, where notebook_connected would fetch
    plotly.js from a CDN. TQDM_DISABLE goes (progress bars help a live reader), and so does
    LABBOOK_TIER (only the book's generated pages read it). Claims go to LAB_RECORDS, so a reader's
    runs leave the built book's records alone.
    """
    env = book_env("default")
    for key in ("PLOTLY_RENDERER", "TQDM_DISABLE", "LABBOOK_TIER"):
        env.pop(key, None)
    env["LABKIT_RECORDS_DIR"] = str(LAB_RECORDS)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(LAB_DATA), env.get("JUPYTER_PATH")) if p)
    return env


def jupyter_lab_command(args: list[str]) -> list[str]:
    """``jupyter lab`` from .venv with ``args``; as root with --allow-root (the server refuses root without it)."""
    root = ["--allow-root"] if os.geteuid() == 0 and "--allow-root" not in args else []
    return [str(VENV / "bin" / "jupyter"), "lab", *root, *args]


def cmd_lab(args: list[str]) -> int:
    """JupyterLab at the repository root on the book's kernel; this process becomes the server."""
    ensure_kernelspec()
    cmd = jupyter_lab_command(args)
    log(" ".join(cmd))
    os.chdir(ROOT)
    os.execve(cmd[0], cmd, lab_env())


# -- forks -------------------------------------------------------------------------------------

COLAB_RE = re.compile(r'labkit @ git\+[^"\\]+')


def cmd_set_repo(args: list[str]) -> int:
    if len(args) != 1 or not re.match(r"https://github\.com/[\w.-]+/[\w.-]+$", args[0]):
        sys.exit("usage: python3 tools/lab.py set-repo https://github.com/OWNER/REPO")
    url = args[0]
    cfg = ROOT / "_config.yml"
    text = re.sub(r"(repository:\n  url: )\S+", rf"\g<1>{url}", cfg.read_text())
    cfg.write_text(text)
    for nb in sorted((ROOT / "chapters").rglob("*.ipynb")):
        nb.write_text(COLAB_RE.sub(f"labkit @ git+{url}", nb.read_text()))
    log(f"repository set to {url} in _config.yml and every notebook's Colab cell")
    return 0


COMMANDS = {"book": cmd_book, "test": cmd_test, "lab": cmd_lab, "set-repo": cmd_set_repo}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    name, rest = argv[0], argv[1:]
    if name == "set-repo":
        return cmd_set_repo(rest)
    if os.environ.get("LABBOOK_IN_VENV") != "1":
        ensure_venv()
        env = dict(os.environ, LABBOOK_IN_VENV="1")
        if name == "lab":  # the server takes this process over, so Ctrl-C reaches it alone
            os.chdir(ROOT)
            os.execve(str(VPY), [str(VPY), __file__, *argv], env)
        return subprocess.run([str(VPY), __file__, *argv], env=env, cwd=ROOT).returncode
    return COMMANDS[name](rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
