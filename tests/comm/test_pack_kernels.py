"""labkit.comm._kernels: Triton pack/unpack against the reference (interpreter on CPU: tiny inputs)."""

from __future__ import annotations

import pytest
import torch

from labkit.comm.datatypes import StridedLayout, layout_of, pack, pack_reference, unpack, unpack_reference

pytestmark = pytest.mark.gpu  # kernel parity: selected natively on a GPU host
KERNELS = "labkit.comm._kernels"


def cases():
    return {
        "sub_block": lambda x: x[1:4, 2:7:2, 1:5],
        "every_other_column": lambda x: x[:, :, ::2],
        "one_plane": lambda x: x[2],
        "permuted_four_levels": lambda x: x.permute(2, 0, 1).unsqueeze(0).expand(1, -1, -1, -1)[:, :, 1:4],
        "single_element": lambda x: x[4, 6, 5:6],
        "empty": lambda x: x[:, 3:3],
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
@pytest.mark.parametrize("case", list(cases()))
def test_pack_unpack_triton_match_reference(triton_kernels, device: str, case: str, dtype: torch.dtype) -> None:
    kernels = triton_kernels(KERNELS)
    x = torch.arange(5 * 7 * 6).reshape(5, 7, 6).to(dtype).to(device)
    view = cases()[case](x)
    lay = layout_of(view, x)
    packed = kernels.pack_triton(x, lay, block_size=16)  # several programs, a ragged last one
    assert packed.dtype == dtype and torch.equal(packed.cpu(), pack_reference(x, lay).cpu())
    assert torch.equal(packed.cpu(), view.reshape(-1).cpu())
    got = kernels.unpack_triton(packed, lay, torch.full_like(x, -7), block_size=16)
    assert torch.equal(got.cpu(), unpack_reference(packed, lay, torch.full_like(x, -7)).cpu())


def test_through_the_dispatcher_and_non_canonical_layout(triton_kernels, device: str) -> None:
    triton_kernels(KERNELS)
    x = torch.randn(40, device=device)
    lay = StridedLayout(2, ((1, 99), (3, 8), (2, 3)), 1)  # written non-canonically
    assert torch.equal(pack(x, lay, backend="triton").cpu(), pack(x, lay, backend="reference").cpu())
    buf = torch.randn(lay.numel, device=device)
    out_t = unpack(buf, lay, torch.zeros(40, device=device), backend="triton")
    assert torch.equal(out_t.cpu(), unpack(buf, lay, torch.zeros(40, device=device), backend="reference").cpu())


def test_triton_rejects_bad_inputs(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    x = torch.zeros(2000, device=device)
    with pytest.raises(ValueError, match="power of two"):
        kernels.pack_triton(x, StridedLayout(2), block_size=12)
    with pytest.raises(ValueError, match="at most 4 canonical levels"):
        kernels.pack_triton(x, StridedLayout(1, ((2, 1000), (2, 300), (2, 90), (2, 20), (2, 3))))
    with pytest.raises(TypeError, match="bool tensors"):
        kernels.pack_triton(torch.zeros(4, dtype=torch.bool, device=device), StridedLayout(2))
    with pytest.raises(ValueError, match="buf must be 1-D"):
        kernels.unpack_triton(torch.zeros(3, device=device), StridedLayout(2), x)
