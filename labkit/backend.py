"""One dispatcher for ops that have a readable PyTorch reference and a compiled Triton path.

Every heavy op in labkit is registered once with two implementations of the same signature:
``reference`` (plain PyTorch, runs everywhere, the one to read) and ``triton`` (a ``@triton.jit``
kernel and its launcher, imported lazily so that ``import labkit`` never needs Triton).

Which one runs is decided, first match wins, by

1. the ``backend=`` argument of the call,
2. the innermost :func:`use_backend` context manager,
3. the ``LABKIT_BACKEND`` environment variable,
4. ``"auto"``: Triton when Triton and a CUDA device that Triton supports (compute capability
   :data:`MIN_CUDA_CAPABILITY` or newer) are both there, else the reference; a call whose tensor
   arguments include a CPU tensor runs the reference under ``auto`` even on a GPU host (a small
   CPU model beside a GPU, the MPC parties' shares). An older card (a T4, sm_75) runs the
   references: Triton supports compute capability 8.0 and newer, and the integer ``tl.dot`` of
   the W8A8/W4A4 and ring kernels does not compile below it.

Asking for an unknown backend raises ``ValueError``; asking for ``"triton"`` where it cannot
run raises :class:`BackendUnavailable`. On a CPU-only machine ``backend="triton"`` runs the
kernels in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before they were imported
(``auto`` never picks the interpreter: it is 10^4-10^5 times slower than compiled code).
Section: chapter 00, "How this book runs".
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "MIN_CUDA_CAPABILITY",
    "Op",
    "resolve_backend",
    "triton_available",
    "triton_interpreting",
    "use_backend",
]

#: Names a caller may ask for. ``auto`` resolves to one of the other two.
BACKENDS: tuple[str, ...] = ("auto", "reference", "triton")

#: Oldest CUDA compute capability the Triton path runs on (Triton's own supported range).
MIN_CUDA_CAPABILITY: tuple[int, int] = (8, 0)

_ACTIVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("labkit_backend", default=None)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine (e.g. Triton without CUDA)."""


def _validate(name: object, *, source: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{source}: backend must be a string, one of {BACKENDS}, got {type(name).__name__}")
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {BACKENDS}")
    return name


def triton_interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors, slowly."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _supported_cuda() -> bool:
    """A CUDA device is present and its compute capability is at least :data:`MIN_CUDA_CAPABILITY`."""
    return torch.cuda.is_available() and tuple(torch.cuda.get_device_capability()) >= MIN_CUDA_CAPABILITY


def triton_available() -> bool:
    """Whether the Triton path can run here: Triton importable and (a supported CUDA device or
    the interpreter)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return triton_interpreting() or _supported_cuda()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run the enclosed calls with ``name`` unless a call passes ``backend=`` itself.

    >>> with use_backend("reference"):
    ...     resolve_backend()
    'reference'
    """
    token = _ACTIVE.set(_validate(name, source="use_backend"))
    try:
        yield name
    finally:
        _ACTIVE.reset(token)


def resolve_backend(backend: str | None = None) -> str:
    """Turn a request (or ``None``) into ``"reference"`` or ``"triton"`` following the order above.

    Raises:
        ValueError: the name (from any source) is not one of :data:`BACKENDS`.
        BackendUnavailable: ``"triton"`` was asked for but cannot run here.
    """
    if backend is not None:
        name, source = _validate(backend, source="backend argument"), "backend argument"
    elif _ACTIVE.get() is not None:
        name, source = _ACTIVE.get(), "use_backend()"
    elif os.environ.get("LABKIT_BACKEND"):
        name = _validate(os.environ["LABKIT_BACKEND"], source="LABKIT_BACKEND")
        source = "LABKIT_BACKEND"
    else:
        name, source = "auto", "default"
    if name == "auto":
        cuda_triton = importlib.util.find_spec("triton") is not None and _supported_cuda()
        return "triton" if cuda_triton else "reference"
    if name == "triton" and not triton_available():
        raise BackendUnavailable(
            f"backend 'triton' was requested ({source}) but cannot run here: it needs the "
            "'triton' package and either a CUDA device of compute capability "
            f"{MIN_CUDA_CAPABILITY[0]}.{MIN_CUDA_CAPABILITY[1]} or newer{_device_note()} or "
            "TRITON_INTERPRET=1 (set before the kernels are imported) to run the kernels on CPU "
            "in Triton's interpreter."
        )
    return name  # type: ignore[return-value]


def _device_note() -> str:
    if not torch.cuda.is_available():
        return ""
    major, minor = torch.cuda.get_device_capability()
    return f" (this {torch.cuda.get_device_name()} is {major}.{minor})"


@dataclass(frozen=True)
class Op:
    """An op with a PyTorch reference and a lazily imported Triton implementation.

    Args:
        name: the op's public name (used in error messages).
        reference: the PyTorch implementation.
        triton: ``"package.module:function"`` of the Triton launcher with the same signature;
            the module is imported only when the Triton path is chosen.

    Calling the op forwards every argument to the chosen implementation; the keyword
    ``backend=`` picks one explicitly.
    """

    name: str
    reference: Callable[..., Any]
    triton: str

    def __post_init__(self) -> None:
        if ":" not in self.triton:
            raise ValueError(f"Op {self.name}: triton must look like 'pkg.module:function', got {self.triton!r}")

    def implementation(self, backend: str | None = None) -> Callable[..., Any]:
        """The function that a call with ``backend`` would run."""
        if resolve_backend(backend) == "reference":
            return self.reference
        module, _, attr = self.triton.partition(":")
        return getattr(importlib.import_module(module), attr)

    def __call__(self, *args: Any, backend: str | None = None, **kwargs: Any) -> Any:
        if _auto_requested(backend) and _holds_cpu_tensor(args, kwargs):
            return self.reference(*args, **kwargs)  # auto on a GPU host, but this call's data is on the CPU
        return self.implementation(backend)(*args, **kwargs)


def _auto_requested(backend: str | None) -> bool:
    """Whether the call leaves the choice to ``auto`` (no argument, context or variable names one)."""
    if backend is not None:
        return backend == "auto"
    if _ACTIVE.get() is not None:
        return _ACTIVE.get() == "auto"
    return os.environ.get("LABKIT_BACKEND", "auto") in ("", "auto")


def _holds_cpu_tensor(args: tuple, kwargs: dict) -> bool:
    """Whether any tensor argument lives on the CPU (``auto`` then runs the reference there)."""
    return any(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in (*args, *kwargs.values()))
