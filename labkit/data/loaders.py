"""Optional real datasets that the book never downloads while it runs.

Chapters that can use a real dataset (a recommender log, a point cloud benchmark) find it
on disk with :func:`require_local`; when it is missing they stop with a message that says
what to fetch, from where, and where to put it. The notebooks' CI tier never needs one:
they fall back to :mod:`labkit.data.synthetic`. No function here opens a network connection.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["require_local", "offline_download_error"]


def offline_download_error(name: str, url: str, *, path: str | os.PathLike[str] | None = None) -> FileNotFoundError:
    """Build (not raise) the error for a dataset that would have to be downloaded.

    Args:
        name: the dataset's human name, e.g. "MovieLens-1M".
        url: where a person can download it by hand.
        path: where labkit expects it; named in the message when given.

    Returns:
        A ``FileNotFoundError`` whose message names the dataset, the URL and the place.
    """
    name = _check_text("name", name)
    url = _check_text("url", url)
    where = ""
    if path is not None:
        target = Path(_check_path(path)).expanduser()
        where = f" and put it at {target} (absolute: {target.absolute()})"
    return FileNotFoundError(
        f"dataset {name!r} is not available locally, and labkit never downloads during book "
        f"execution. Download it by hand from {url}{where}, then run this again."
    )


def require_local(path: str | os.PathLike[str], *, name: str, url: str) -> Path:
    """Return ``path`` when it exists on disk, else fail with how to get the dataset.

    Args:
        path: file or folder where the dataset must already be (``~`` is expanded).
        name: the dataset's human name, used in the message.
        url: where to download it by hand, used in the message.

    Returns:
        The path as a ``Path`` (user-expanded).

    Raises:
        FileNotFoundError: the path does not exist; the message names the dataset, the URL
            and where to put it.
        TypeError: ``path`` is not a str or path-like, or ``name``/``url`` are not strings.
        ValueError: ``name`` or ``url`` is empty.
    """
    name = _check_text("name", name)
    url = _check_text("url", url)
    target = Path(_check_path(path)).expanduser()
    if target.exists():
        return target
    raise offline_download_error(name, url, path=target)


def _check_path(path: object) -> str | os.PathLike[str]:
    if isinstance(path, (str, os.PathLike)) and not isinstance(os.fspath(path), bytes):
        if not os.fspath(path):
            raise ValueError("path must not be empty")
        return path
    raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")


def _check_text(argument: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{argument} must be a non-empty string")
    return value
