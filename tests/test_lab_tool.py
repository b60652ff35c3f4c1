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


# -- Debian packages (chromium, iverilog, MPICH): installed by `book` and `test` when missing ---------


@pytest.fixture
def tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """tools/lab.py with its Debian packages missing, a PATH of fake programs and a recording runner.

    Two packages stand in for the table: ``chromium`` and ``iverilog``, whose files live under
    ``tmp_path``. ``tool.commands`` lists the commands the runner was given; a fake ``apt-get
    install`` creates the files of the packages it names, as the real one would.
    """
    spec = importlib.util.spec_from_file_location("lab_tool_debian", _book.ROOT / "tools" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(module, "DEBIAN", {"chromium": tmp_path / "usr-bin" / "chromium",
                                           "iverilog": tmp_path / "usr-bin" / "iverilog"})
    module.commands = []

    def fake_run(cmd, **kw) -> None:
        module.commands.append([str(c) for c in cmd])
        if "install" in cmd:
            for package in cmd[cmd.index("-y") + 1:]:
                module.DEBIAN[package].parent.mkdir(exist_ok=True)
                module.DEBIAN[package].write_text("#!/bin/sh\n")

    monkeypatch.setattr(module, "run", fake_run)
    module.fake_bin = bin_dir
    return module


def _program(folder: Path, name: str, body: str) -> Path:
    """An executable shell script ``folder/name``; it appends its arguments to ``folder/name.calls``."""
    path = folder / name
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{folder / name}.calls"\n{body}\n')
    path.chmod(0o755)
    return path


APT = [["apt-get", "update"],
       ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "chromium", "iverilog"]]
BY_HAND = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium iverilog"


def test_the_table_names_the_packages_the_book_needs() -> None:
    spec = importlib.util.spec_from_file_location("lab_tool_table", _book.ROOT / "tools" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.DEBIAN) == {"chromium", "iverilog", "mpich", "libmpich-dev"}
    assert module.DEBIAN["chromium"] == module.CHROMIUM
    assert module.DEBIAN["libmpich-dev"].name == "mpicc"


def test_packages_present_run_nothing(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in tool.DEBIAN.values():
        path.parent.mkdir(exist_ok=True)
        path.write_text("#!/bin/sh\n")
    monkeypatch.setattr(tool.os, "geteuid", lambda: 1000)  # no sudo, no apt-get: nothing may be needed
    tool.ensure_debian()
    assert tool.commands == []


def test_only_the_missing_packages_are_installed(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    _program(tool.fake_bin, "apt-get", "exit 0")
    tool.DEBIAN["chromium"].parent.mkdir()
    tool.DEBIAN["chromium"].write_text("#!/bin/sh\n")
    monkeypatch.setattr(tool.os, "geteuid", lambda: 0)
    tool.ensure_debian()
    assert tool.commands == [APT[0], [*APT[1][:-2], "iverilog"]]


def test_packages_install_with_apt_as_root(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    _program(tool.fake_bin, "apt-get", "exit 0")
    _program(tool.fake_bin, "sudo", "exit 1")
    monkeypatch.setattr(tool.os, "geteuid", lambda: 0)
    tool.ensure_debian()
    assert tool.commands == APT
    assert all(path.exists() for path in tool.DEBIAN.values())
    assert not (tool.fake_bin / "sudo.calls").exists(), "root needs no sudo"


def test_packages_install_through_passwordless_sudo(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    _program(tool.fake_bin, "apt-get", "exit 0")
    _program(tool.fake_bin, "sudo", "exit 0")
    monkeypatch.setattr(tool.os, "geteuid", lambda: 1000)
    tool.ensure_debian()
    assert tool.commands == [["sudo", "-n", *cmd] for cmd in APT]
    assert (tool.fake_bin / "sudo.calls").read_text().split("\n")[0] == "-n true"


@pytest.mark.parametrize("sudo", ["asks for a password", "missing"])
def test_without_root_stops_with_the_command_to_run(tool, monkeypatch: pytest.MonkeyPatch, sudo) -> None:
    _program(tool.fake_bin, "apt-get", "exit 0")
    if sudo != "missing":
        _program(tool.fake_bin, "sudo", "echo 'sudo: a password is required' >&2; exit 1")
    monkeypatch.setattr(tool.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as stop:
        tool.ensure_debian()
    message = str(stop.value.code)
    assert "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium iverilog" in message
    assert tool.commands == []


def test_without_apt_get_stops(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool.os, "geteuid", lambda: 0)
    with pytest.raises(SystemExit, match="no apt-get"):
        tool.ensure_debian()
    assert tool.commands == []


def test_apt_failure_stops_with_the_command_to_run(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    _program(tool.fake_bin, "apt-get", "exit 0")
    monkeypatch.setattr(tool.os, "geteuid", lambda: 0)

    def failing(cmd, **kw) -> None:
        tool.commands.append(cmd)
        raise tool.subprocess.CalledProcessError(100, cmd)

    monkeypatch.setattr(tool, "run", failing)
    with pytest.raises(SystemExit) as stop:
        tool.ensure_debian()
    assert "failed at `apt-get update`" in str(stop.value.code)
    assert f"\n    {BY_HAND}\n" in str(stop.value.code)
    assert tool.commands == [APT[0]], "stops at the first failure"


def test_package_still_missing_after_apt_stops(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    _program(tool.fake_bin, "apt-get", "exit 0")
    monkeypatch.setattr(tool.os, "geteuid", lambda: 0)
    monkeypatch.setattr(tool, "run", lambda cmd, **kw: tool.commands.append(cmd))  # installs nothing
    with pytest.raises(SystemExit, match="still missing"):
        tool.ensure_debian()
    assert tool.commands == APT


@pytest.mark.parametrize("command", ["book", "test"])
def test_book_and_test_install_debian_packages_first(tool, monkeypatch: pytest.MonkeyPatch, command) -> None:
    def stop() -> None:
        raise SystemExit("debian step")

    monkeypatch.setattr(tool, "ensure_debian", stop)
    with pytest.raises(SystemExit, match="debian step"):
        tool.COMMANDS[command]([])


# -- lab: JupyterLab on the book's kernel --------------------------------------------------------


def test_lab_kernelspec_runs_the_venv_python(tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool, "LAB_DATA", tmp_path / "data")
    path = tmp_path / "data" / "kernels" / "python3" / "kernel.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                "display_name": "Python 3 (ipykernel)", "language": "python"}))
    assert tool.ensure_kernelspec() == path
    spec = json.loads(path.read_text())
    assert spec["argv"][:3] == [str(tool.VPY), "-m", "ipykernel_launcher"] and "{connection_file}" in spec["argv"]
    chapter = _book.ROOT / "chapters" / "00_how_this_book_runs" / "01_how_this_book_runs.ipynb"
    metadata = json.loads(chapter.read_text())["metadata"]["kernelspec"]
    assert (spec["display_name"], spec["language"]) == (metadata["display_name"], metadata["language"])
    assert metadata["name"] == path.parent.name


def test_lab_env_keeps_what_a_live_reader_needs(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("PLOTLY_RENDERER", "notebook_connected")
    monkeypatch.setenv("JUPYTER_PATH", "/elsewhere")
    env = tool.lab_env()
    assert env["PATH"].split(":")[:2] == [str(tool.VENV / "bin"), "/usr/bin"]
    assert env["PYTHONHASHSEED"] == tool.book_env("default")["PYTHONHASHSEED"]
    assert env["JUPYTER_PATH"].split(":") == [str(tool.LAB_DATA), "/elsewhere"], "the book's kernel spec first"
    for key in ("TQDM_DISABLE", "PLOTLY_RENDERER", "LABBOOK_TIER"):
        assert key not in env, key
    assert env["LABKIT_RECORDS_DIR"] == str(tool.LAB_RECORDS) != tool.book_env("default")["LABKIT_RECORDS_DIR"]


@pytest.mark.parametrize("euid", [0, 1000])
def test_lab_command_passes_args_to_jupyter_lab(tool, monkeypatch: pytest.MonkeyPatch, euid) -> None:
    monkeypatch.setattr(tool.os, "geteuid", lambda: euid)
    jupyter = str(tool.VENV / "bin" / "jupyter")
    as_root = ["--allow-root"] if euid == 0 else []
    assert tool.jupyter_lab_command(["--port=9999", "x.ipynb"]) == [jupyter, "lab", *as_root, "--port=9999", "x.ipynb"]
    assert tool.jupyter_lab_command(["--allow-root"]) == [jupyter, "lab", "--allow-root"]


class Exec(Exception):
    """What os.execve was asked to run (raised in its place)."""


def _capture_exec(tool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    cwd: list[str] = []
    monkeypatch.setattr(tool.os, "chdir", lambda path: cwd.append(str(path)))

    def execve(path, argv, env):
        raise Exec(path, list(argv), env, list(cwd))

    monkeypatch.setattr(tool.os, "execve", execve)
    return cwd


def test_cmd_lab_becomes_jupyter_lab_at_the_root(tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool, "LAB_DATA", tmp_path / "data")
    monkeypatch.setattr(tool.os, "geteuid", lambda: 1000)
    _capture_exec(tool, monkeypatch)
    with pytest.raises(Exec) as done:
        tool.cmd_lab(["--no-browser"])
    path, argv, env, cwd = done.value.args
    assert path == argv[0] == str(tool.VENV / "bin" / "jupyter")
    assert argv[1:] == ["lab", "--no-browser"]
    assert cwd == [str(tool.ROOT)]
    assert env["JUPYTER_PATH"].split(":")[0] == str(tmp_path / "data")
    assert (tmp_path / "data" / "kernels" / "python3" / "kernel.json").exists()


def test_lab_sets_up_the_venv_then_hands_over(tool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABBOOK_IN_VENV", raising=False)
    calls: list[str] = []
    monkeypatch.setattr(tool, "ensure_venv", lambda: calls.append("venv"))
    _capture_exec(tool, monkeypatch)
    with pytest.raises(Exec) as done:
        tool.main(["lab", "--port=1234"])
    path, argv, env, cwd = done.value.args
    assert calls == ["venv"]
    assert path == str(tool.VPY) and argv[2:] == ["lab", "--port=1234"]
    assert env["LABBOOK_IN_VENV"] == "1" and cwd == [str(tool.ROOT)]
