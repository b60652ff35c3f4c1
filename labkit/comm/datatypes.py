"""Nested strided datatypes in canonical form, and packing them into one contiguous buffer.

TEMPI ("TEMPI: An Interposed MPI Library with a Canonical Representation of CUDA-aware
Datatypes", Pearson et al., HPDC 2021, arXiv:2012.14363) starts from an observation about MPI
derived datatypes: an application may build the same memory layout in many ways (a vector of
vectors, a subarray, an hvector of contiguous types), and an MPI library that walks the
construction tree as given ends up sending one tiny message, or issuing one tiny
``cudaMemcpy``, per contiguous block. TEMPI rewrites every such tree into one *canonical*
description, a contiguous block plus a few (count, stride) levels with trivial levels dropped
and contiguous ones merged, and then packs the whole layout with a single kernel launch whose
threads compute their source address from those levels.

Here a :class:`StridedLayout` is that canonical form, in elements rather than bytes:
``offset`` (first element), ``block`` (contiguous elements per block) and ``levels``, the
(count, stride) pairs from the outermost to the innermost. Element ``(i_1, ..., i_L, e)`` of
the layout sits at ``offset + sum_k i_k * stride_k + e`` of the flat base buffer, and packing
lists the elements in that (row-major) order.

Shapes: L levels, B = prod(counts) blocks, so ``numel = B * block``.

What the miniature leaves out: byte-level types mixing element sizes (MPI structs),
``MPI_Type_create_resized`` extents, the interposition on ``MPI_Send``/``MPI_Recv`` and TEMPI's
measured model that picks between packing on the device, staging through the host, or sending
one message per block.

Section: chapter 11, "Datatypes and dynamic meshes: TEMPI and ByteScale".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..backend import Op

__all__ = [
    "StridedLayout",
    "canonicalize",
    "layout_of",
    "pack",
    "pack_as_strided",
    "pack_by_blocks",
    "pack_reference",
    "source_offsets",
    "unpack",
    "unpack_reference",
]


def _int(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class StridedLayout:
    """A nested strided layout over a flat buffer, in elements (MPI's vector-of-vectors).

    Attributes:
        block: contiguous elements per block (>= 0).
        levels: ((count, stride), ...) from the outermost level to the innermost; counts >= 0,
            strides >= 0 (in elements).
        offset: index of the layout's first element in the flat base buffer (>= 0).
    """

    block: int
    levels: tuple[tuple[int, int], ...] = ()
    offset: int = 0

    def __post_init__(self) -> None:
        _int(self.block, "block", minimum=0)
        _int(self.offset, "offset", minimum=0)
        if not isinstance(self.levels, tuple):
            raise TypeError(f"levels must be a tuple of (count, stride) pairs, got {type(self.levels).__name__}")
        for k, level in enumerate(self.levels):
            if not isinstance(level, tuple) or len(level) != 2:
                raise ValueError(f"levels[{k}] must be a (count, stride) pair, got {level!r}")
            _int(level[0], f"levels[{k}] count", minimum=0)
            _int(level[1], f"levels[{k}] stride", minimum=0)

    @property
    def n_blocks(self) -> int:
        """B: contiguous blocks (what a per-block packer copies one at a time)."""
        return math.prod(c for c, _ in self.levels)

    @property
    def numel(self) -> int:
        """Elements the layout describes: the length of the packed buffer."""
        return self.n_blocks * self.block

    @property
    def extent(self) -> int:
        """Elements of the base buffer the layout needs: one past its last element."""
        if self.numel == 0:
            return 0
        return self.offset + sum((c - 1) * s for c, s in self.levels) + self.block

    @property
    def shape(self) -> tuple[int, ...]:
        """The layout read as a tensor view: the level counts, then the block."""
        return (*(c for c, _ in self.levels), self.block)

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides matching :attr:`shape` (the block has stride 1)."""
        return (*(s for _, s in self.levels), 1)


def canonicalize(layout: StridedLayout) -> StridedLayout:
    """TEMPI's canonical form: drop count-1 levels, fold contiguous levels into the block,
    merge adjacent levels that step evenly, so equal layouts get one description.

    Rules, applied until none fires: a level of count 1 is dropped (it moves nothing); the
    innermost level whose stride equals the block is contiguous and multiplies the block; an
    outer level whose stride is the inner level's count times its stride merges with it into one
    level. An empty layout (some count or the block 0) becomes ``StridedLayout(0)``.
    """
    if not isinstance(layout, StridedLayout):
        raise TypeError(f"layout must be a StridedLayout, got {type(layout).__name__}")
    if layout.numel == 0:
        return StridedLayout(0)
    # show: start rules
    # rule 1: a level of count 1 moves nothing
    block, levels = layout.block, [lv for lv in layout.levels if lv[0] != 1]
    changed = True
    while changed:
        changed = False
        # rule 2: innermost stride == block: contiguous, a longer block
        if levels and levels[-1][1] == block:
            block *= levels.pop()[0]
            changed = True
        for k in range(len(levels) - 1):
            (c_out, s_out), (c_in, s_in) = levels[k], levels[k + 1]
            # rule 3: outer stride == inner span (count * stride): one level
            if s_out == c_in * s_in:
                levels[k: k + 2] = [(c_out * c_in, s_in)]
                changed = True
                break
    return StridedLayout(block, tuple(levels), layout.offset)
    # show: end rules


def layout_of(view: torch.Tensor, base: torch.Tensor) -> StridedLayout:
    """The canonical layout of ``view`` (a strided view such as ``x[:, ::2]``) inside ``base``.

    Args:
        view: any tensor view sharing ``base``'s storage.
        base: the contiguous tensor it was cut from; the layout indexes ``base.reshape(-1)``.

    Returns:
        The canonical :class:`StridedLayout`, such that ``pack(base, layout)`` equals
        ``view.reshape(-1)``.
    """
    for name, t in (("view", view), ("base", base)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if not base.is_contiguous():
        raise ValueError("base must be contiguous: the layout indexes its flat buffer")
    if view.untyped_storage().data_ptr() != base.untyped_storage().data_ptr() or view.dtype != base.dtype:
        raise ValueError("view must be a view of base (same storage and dtype)")
    offset = view.storage_offset() - base.storage_offset()
    if view.numel() == 0:
        return StridedLayout(0)
    if offset < 0 or any(s < 0 for s in view.stride()):
        raise ValueError("view must lie inside base with non-negative strides")
    dims = list(zip(view.shape, view.stride()))
    if dims and dims[-1][1] == 1:  # the innermost unit-stride dimension is the block
        block, levels = dims[-1][0], tuple(dims[:-1])
    else:  # single elements (or a 0-d view) are blocks of one
        block, levels = 1, tuple(dims)
    layout = canonicalize(StridedLayout(block, levels, offset))
    if layout.extent > base.numel():
        raise ValueError(f"view reaches element {layout.extent - 1} beyond base's {base.numel()} elements")
    return layout


def _flat_base(base: torch.Tensor, layout: StridedLayout, *, op: str, name: str = "base") -> torch.Tensor:
    if not isinstance(base, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(base).__name__}")
    if not isinstance(layout, StridedLayout):
        raise TypeError(f"{op}: layout must be a StridedLayout, got {type(layout).__name__}")
    if not base.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (the layout indexes its flat buffer)")
    if layout.extent > base.numel():
        raise ValueError(f"{op}: layout needs {layout.extent} elements of {name}, which has {base.numel()}")
    return base.reshape(-1)


def source_offsets(layout: StridedLayout, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat index, in the base buffer, of every packed element: shape (numel,), int64."""
    if not isinstance(layout, StridedLayout):
        raise TypeError(f"layout must be a StridedLayout, got {type(layout).__name__}")
    idx = torch.arange(layout.block, device=device) + layout.offset  # (block,)
    for count, stride in reversed(layout.levels):  # innermost level first
        # (count, 1) steps + (inner elements,): offset + sum_k i_k * stride_k + e
        idx = (torch.arange(count, device=device)[:, None] * stride + idx[None, :]).reshape(-1)
    return idx


def pack_reference(base: torch.Tensor, layout: StridedLayout) -> torch.Tensor:
    """Gather the layout's elements of ``base`` into a new 1-D contiguous buffer (MPI_Pack).

    Args:
        base: contiguous tensor holding the data; the layout indexes ``base.reshape(-1)``.
        layout: a :class:`StridedLayout` (canonical or not).

    Returns:
        (numel,) tensor of ``base``'s dtype and device.
    """
    flat = _flat_base(base, layout, op="pack")
    return flat[source_offsets(layout, device=flat.device)]


def unpack_reference(buf: torch.Tensor, layout: StridedLayout, out: torch.Tensor) -> torch.Tensor:
    """Scatter a packed buffer back into the layout's elements of ``out`` (MPI_Unpack), in place.

    Args:
        buf: (numel,) packed elements, the dtype and device of ``out``.
        layout: the layout; it must not repeat an element (no stride 0 on a level of count > 1).
        out: contiguous tensor written in place.

    Returns:
        ``out``.
    """
    flat = _flat_base(out, layout, op="unpack", name="out")
    _check_buf(buf, layout, out, op="unpack")
    flat[source_offsets(layout, device=flat.device)] = buf
    return out


def _check_buf(buf: torch.Tensor, layout: StridedLayout, out: torch.Tensor, *, op: str) -> None:
    if not isinstance(buf, torch.Tensor):
        raise TypeError(f"{op}: buf must be a tensor, got {type(buf).__name__}")
    if buf.dim() != 1 or buf.numel() != layout.numel:
        raise ValueError(f"{op}: buf must be 1-D with the layout's {layout.numel} elements, got shape {tuple(buf.shape)}")
    if buf.dtype != out.dtype or buf.device != out.device:
        raise TypeError(f"{op}: buf and out must share dtype and device, got {buf.dtype}/{buf.device} "
                        f"and {out.dtype}/{out.device}")
    if any(c > 1 and s == 0 for c, s in layout.levels):
        raise ValueError(f"{op}: layout repeats elements (stride 0), so unpacking into it is ambiguous")


def pack_as_strided(base: torch.Tensor, layout: StridedLayout) -> torch.Tensor:
    """The layout as a tensor view of ``base``, copied with ``.contiguous()`` (PyTorch's own copy)."""
    flat = _flat_base(base, layout, op="pack_as_strided")
    return flat.as_strided(layout.shape, layout.strides, flat.storage_offset() + layout.offset).contiguous().reshape(-1)


def pack_by_blocks(base: torch.Tensor, layout: StridedLayout) -> torch.Tensor:
    """Pack by one small copy per contiguous block: what a naive MPI does (one memcpy per block)."""
    flat = _flat_base(base, layout, op="pack_by_blocks")
    out = torch.empty(layout.numel, dtype=flat.dtype, device=flat.device)
    starts = source_offsets(StridedLayout(1, layout.levels, layout.offset)).tolist()  # (B,) block starts
    b = layout.block
    for k, start in enumerate(starts):
        out[k * b: (k + 1) * b].copy_(flat[start: start + b])
    return out


#: ``pack(base, layout, backend=None)``: one gather of the whole layout, reference or Triton.
pack = Op("pack", reference=pack_reference, triton="labkit.comm._kernels:pack_triton")
#: ``unpack(buf, layout, out, backend=None)``: the inverse scatter, in place into ``out``.
unpack = Op("unpack", reference=unpack_reference, triton="labkit.comm._kernels:unpack_triton")
