"""labkit.comm.datatypes: canonical strided layouts, pack/unpack reference and the naive packers."""

from __future__ import annotations

import pytest
import torch

from labkit.comm.datatypes import (
    StridedLayout,
    canonicalize,
    layout_of,
    pack,
    pack_as_strided,
    pack_by_blocks,
    pack_reference,
    source_offsets,
    unpack,
    unpack_reference,
)


def test_canonicalize_by_hand() -> None:
    # blocks of 2 every 2 elements, 4 of them, then 3 such rows every 8: all one contiguous run of 24
    assert canonicalize(StridedLayout(2, ((1, 100), (3, 8), (4, 2)), 5)) == StridedLayout(24, (), 5)
    # (2, 30) x (3, 5) with block 3: nothing merges
    assert canonicalize(StridedLayout(3, ((2, 30), (3, 5)))) == StridedLayout(3, ((2, 30), (3, 5)))
    # outer stride = inner count * inner stride: one level of 12
    assert canonicalize(StridedLayout(1, ((4, 30), (3, 10)))) == StridedLayout(1, ((12, 10),))
    assert canonicalize(StridedLayout(4, ((0, 3),))) == StridedLayout(0)


def test_layout_of_examples() -> None:
    x = torch.arange(4 * 6 * 5.0).reshape(4, 6, 5)
    assert layout_of(x[2], x) == StridedLayout(30, (), 60)
    assert layout_of(x[:, ::2], x) == StridedLayout(5, ((12, 10),), 0)
    assert layout_of(x[:, :, 2], x) == StridedLayout(1, ((24, 5),), 2)
    assert layout_of(x[1:3, 2:5, 1:4], x) == StridedLayout(3, ((2, 30), (3, 5)), 41)


@pytest.mark.parametrize("cut", [lambda x: x[:, ::2], lambda x: x[1:3, 2:5, 1:4], lambda x: x.transpose(0, 2),
                                 lambda x: x[..., ::2][:, :1], lambda x: x[3, 5, 4], lambda x: x[:, 2:2]])
def test_packers_agree_and_unpack_inverts(cut) -> None:
    x = torch.arange(4 * 6 * 5, dtype=torch.int32).reshape(4, 6, 5)
    view = cut(x)
    lay = layout_of(view, x)
    expected = view.reshape(-1)
    for packer in (pack_reference, pack_as_strided, pack_by_blocks):
        assert torch.equal(packer(x, lay), expected)
    assert lay.numel == view.numel() and lay == canonicalize(lay)  # canonical form is a fixed point
    out = torch.full_like(x, -1)
    unpack(pack(x, lay, backend="reference"), lay, out, backend="reference")
    touched = torch.zeros(x.numel(), dtype=torch.bool)
    touched[source_offsets(lay)] = True
    assert torch.equal(out.reshape(-1)[touched], x.reshape(-1)[touched])
    assert bool((out.reshape(-1)[~touched] == -1).all())  # nothing outside the layout is written


def test_offsets_and_extent() -> None:
    lay = StridedLayout(2, ((2, 10), (3, 3)), 1)
    assert source_offsets(lay).tolist() == [1, 2, 4, 5, 7, 8, 11, 12, 14, 15, 17, 18]
    assert lay.extent == 19 and lay.n_blocks == 6 and lay.shape == (2, 3, 2) and lay.strides == (10, 3, 1)


def test_bad_inputs() -> None:
    x = torch.zeros(10)
    with pytest.raises(ValueError, match="block must be >= 0"):
        StridedLayout(-1)
    with pytest.raises(TypeError, match="levels must be a tuple"):
        StridedLayout(1, [(2, 3)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"levels\[0\] must be a \(count, stride\) pair"):
        StridedLayout(1, ((2,),))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="layout must be a StridedLayout"):
        canonicalize((1, ()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs 21 elements of base"):
        pack_reference(x, StridedLayout(1, ((3, 10),)))
    with pytest.raises(ValueError, match="base must be contiguous"):
        pack_reference(torch.zeros(4, 4).t(), StridedLayout(2))
    with pytest.raises(ValueError, match="view must be a view of base"):
        layout_of(torch.zeros(3), x)
    with pytest.raises(ValueError, match="buf must be 1-D"):
        unpack_reference(torch.zeros(3), StridedLayout(2), x)
    with pytest.raises(TypeError, match="share dtype and device"):
        unpack_reference(torch.zeros(2, dtype=torch.int64), StridedLayout(2), x)
    with pytest.raises(ValueError, match="repeats elements"):
        unpack_reference(torch.zeros(4), StridedLayout(2, ((2, 0),)), x)
    with pytest.raises(ValueError, match="unknown backend"):
        pack(x, StridedLayout(2), backend="cuda")
