"""Tests for labkit.data.loaders: local-only datasets with a helpful error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from labkit.data import offline_download_error, require_local

URL = "https://example.org/ml-1m.zip"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("labkit.data must not open network connections")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_existing_file_and_folder_are_returned(tmp_path: Path) -> None:
    data = tmp_path / "ratings.dat"
    data.write_text("1::2::5\n")
    assert require_local(data, name="MovieLens-1M", url=URL) == data
    assert require_local(str(tmp_path), name="MovieLens-1M", url=URL) == tmp_path
    assert isinstance(require_local(str(data), name="MovieLens-1M", url=URL), Path)


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ml-1m").mkdir()
    assert require_local("~/ml-1m", name="MovieLens-1M", url=URL) == tmp_path / "ml-1m"


def test_missing_dataset_says_what_where_and_from_where(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ml-1m"
    with pytest.raises(FileNotFoundError, match="MovieLens-1M") as info:
        require_local(missing, name="MovieLens-1M", url=URL)
    message = str(info.value)
    assert URL in message
    assert str(missing) in message
    assert "never downloads" in message
    assert not missing.exists()  # nothing was created on the way


def test_offline_download_error_is_returned_not_raised(tmp_path: Path) -> None:
    error = offline_download_error("CIFAR-10", "https://example.org/cifar")
    assert isinstance(error, FileNotFoundError)
    assert "CIFAR-10" in str(error) and "https://example.org/cifar" in str(error)
    with_path = offline_download_error("CIFAR-10", "https://example.org/cifar", path=tmp_path / "c")
    assert str(tmp_path / "c") in str(with_path)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        require_local(3, name="X", url=URL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path must not be empty"):
        require_local("", name="X", url=URL)
    with pytest.raises(TypeError, match="name must be a str, got NoneType"):
        require_local("x", name=None, url=URL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="url must be a non-empty string"):
        require_local("x", name="X", url="  ")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        offline_download_error("", URL)
