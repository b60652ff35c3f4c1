"""The kernels under the oldest supported Triton, and one account of the versions that are tested.

``.venv`` runs requirements.txt's pins (Triton 3.9). ``.venv-oldest``, which ``python3 tools/lab.py
test`` creates (``ensure_oldest_triton``), holds only the oldest supported Triton (and the numpy
its interpreter works with) and takes everything else from ``.venv``; the GPU hosts and Colab run
that Triton natively, with their own torch. Here every kernel parity test file and the compile-only
builds (tests/test_kernel_compile.py) run again in a subprocess of ``.venv-oldest``'s Python under
``TRITON_INTERPRET=1``, and pyproject.toml's bounds are checked against the versions tested.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
OLDEST = ROOT / ".venv-oldest"
OLDEST_PY = OLDEST / "bin" / "python"
CREATE = "python3 tools/lab.py test tests/test_triton_versions.py"  # its set-up step builds .venv-oldest


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def versions_tested() -> dict[str, str]:
    """pyproject.toml's [tool.labkit.tested]: the versions run besides requirements.txt's pins."""
    return _pyproject()["tool"]["labkit"]["tested"]


def pinned_versions() -> dict[str, Version]:
    """requirements.txt's ``name==version`` pins."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt pins exact versions, got {line!r}"
            pins[req.name.lower()] = Version(spec.version)
    return pins


def declared(name: str) -> Requirement:
    """labkit's own requirement on ``name`` (project dependencies or an optional extra)."""
    project = _pyproject()["project"]
    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    (req,) = [Requirement(r) for r in lines if Requirement(r).name.lower() == name]
    return req


def lower_bound(req: Requirement) -> Version:
    (bound,) = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return bound


def kernel_test_files() -> list[Path]:
    """The kernel parity tests (tests/**/test_*kernels*.py, and any test file that takes the
    ``triton_kernels`` fixture), then the compile-only builds."""
    files = set(TESTS.rglob("test_*kernels*.py"))
    files |= {p for p in TESTS.rglob("test_*.py") if "triton_kernels" in p.read_text()}
    files.discard(Path(__file__).resolve())
    return sorted(files) + [TESTS / "test_kernel_compile.py"]


def test_kernel_test_files_found() -> None:
    names = {p.relative_to(TESTS).as_posix() for p in kernel_test_files()}
    # one per subpackage with a _kernels.py module, found whatever each file is called
    for kernels in sorted((ROOT / "labkit").glob("*/_kernels.py")):
        assert any(n.startswith(f"{kernels.parent.name}/") for n in names), (kernels, names)
    assert "test_kernel_compile.py" in names


def test_kernels_under_oldest_triton() -> None:
    """Every kernel test and compile-only build passes with the oldest supported Triton."""
    if not OLDEST_PY.exists():
        pytest.fail(f"{OLDEST.relative_to(ROOT)} is missing; create it with `{CREATE}`")
    files = [str(p.relative_to(ROOT)) for p in kernel_test_files()]
    # the versions are printed by the process that then runs the tests
    code = ("import sys, numpy, pytest, triton; "
            "print('versions:', triton.__version__, numpy.__version__, triton.__file__, flush=True); "
            "sys.exit(pytest.main(sys.argv[1:]))")
    cmd = [str(OLDEST_PY), "-c", code, "-q", "-p", "no:cacheprovider",
           # Triton 3.6's interpreter converts 1-element arrays with int(): deprecated in numpy 2.3
           "-W", "ignore:Conversion of an array with ndim > 0:DeprecationWarning", *files]
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    out = run.stdout + run.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    print(out.splitlines()[0] if out else "", summary, sep="\n")
    assert run.returncode == 0, f"kernel tests under {OLDEST.name} failed ({' '.join(cmd[3:])}):\n{out[-6000:]}"
    match = re.search(r"^versions: (\S+) (\S+) (\S+)$", out, re.MULTILINE)
    assert match, out[:2000]
    tested = versions_tested()
    assert match.group(1) == tested["oldest-triton"], (
        f"{OLDEST.name} imports triton {match.group(1)}, pyproject.toml says {tested['oldest-triton']}: "
        f"recreate it with `{CREATE}`")
    assert match.group(2) == tested["oldest-numpy"], match.group(0)
    assert Path(match.group(3)).is_relative_to(OLDEST), match.group(0)
    # nothing failed, errored or was skipped
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in .*", summary.strip("= ")), summary


def test_bounds_match_tested_versions() -> None:
    """pyproject.toml's bounds, requirements.txt's pins and the tested versions agree."""
    tested = {k: Version(v) for k, v in versions_tested().items()}
    pins = pinned_versions()
    triton, torch, numpy = declared("triton"), declared("torch"), declared("numpy")
    # the lower bounds are the oldest versions that run the kernels: .venv-oldest's Triton, the
    # GPU hosts' torch (whose own Triton is no older than .venv-oldest's)
    assert lower_bound(triton) == tested["oldest-triton"], (str(triton), tested["oldest-triton"])
    assert lower_bound(torch) == tested["gpu-torch"], (str(torch), tested["gpu-torch"])
    assert tested["oldest-triton"] <= tested["gpu-triton"] <= pins["triton"]
    assert tested["gpu-torch"] <= pins["torch"]
    # every tested version is allowed (an upper bound, if any, admits the pins)
    for req, versions in ((triton, ("oldest-triton", "gpu-triton")), (torch, ("gpu-torch",)),
                          (numpy, ("oldest-numpy",))):
        for key in versions:
            assert req.specifier.contains(tested[key]), (str(req), key, tested[key])
        assert req.specifier.contains(pins[req.name]), (str(req), pins[req.name])
    assert tested["oldest-numpy"] <= pins["numpy"]


def test_readme_states_the_bounds() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("torch", "triton"):
        bound = lower_bound(declared(name))
        shown = f"{name.capitalize() if name == 'triton' else name} {bound.major}.{bound.minor}+"
        assert shown in readme, f"README.md should state {shown!r} (pyproject.toml: {declared(name)})"
