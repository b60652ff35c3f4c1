"""labkit.moe._kernels: Triton gating, permutation and grouped GEMM against the references.

Compiled on a GPU, under TRITON_INTERPRET=1 on CPU (slow), so the shapes stay tiny and awkward
(37 tokens, 5 experts, D = 53, F = 29). The grouped GEMM tests that need several row tiles per
expert and several steps over D shrink the tile sizes through ``GROUPED_MM_CONFIGS``.
"""

from __future__ import annotations

import pytest
import torch

from labkit.moe.gating import permute_tokens, permute_tokens_reference, topk_gating, topk_gating_reference
from labkit.moe.grouped_gemm import grouped_mm, grouped_mm_reference
from labkit.testing import assert_close

pytestmark = pytest.mark.gpu  # kernel parity: selected natively on a GPU host
KERNELS = "labkit.moe._kernels"


def dtypes(device: str) -> list[torch.dtype]:
    """The interpreter mishandles bfloat16: it is checked on a GPU only."""
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


def routed(n_tokens: int, n_experts: int, top_k: int, *, seed: int, drop: float = 0.0,
           skip: tuple[int, ...] = ()) -> torch.Tensor:
    """Experts (N, k) of random logits (no ties), experts in ``skip`` never chosen, a share
    ``drop`` of the assignments set to -1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_tokens, n_experts, generator=g)
    logits[:, list(skip)] = -1e9
    experts = torch.topk(logits, top_k, dim=-1).indices
    experts[torch.rand(experts.shape, generator=g) < drop] = -1
    return experts


def sorted_rows(counts: list[int], d: int, f: int, dtype: torch.dtype, device: str, *, seed: int):
    g = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0)
    x = torch.randn(sum(counts), d, generator=g).to(dtype).to(device)
    weight = (torch.randn(len(counts), d, f, generator=g) / d**0.5).to(dtype).to(device)
    return x, weight, offsets.to(device)


@pytest.mark.parametrize("n_experts,top_k", [(5, 1), (5, 2), (5, 3), (8, 2), (8, 3), (1, 1)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_topk_gating_matches_reference(triton_kernels, device: str, n_experts: int, top_k: int,
                                       renormalize: bool) -> None:
    kernels = triton_kernels(KERNELS)
    logits = torch.randn(37, n_experts, generator=torch.Generator().manual_seed(n_experts * 10 + top_k)).to(device)
    probs, weights, experts = kernels.topk_gating_triton(logits, top_k, renormalize=renormalize)
    ref = topk_gating_reference(logits, top_k, renormalize=renormalize)
    assert probs.dtype == weights.dtype == torch.float32 and experts.dtype == torch.int64
    assert weights.shape == experts.shape == (37, top_k)
    assert torch.equal(experts.cpu(), ref[2].cpu())
    assert_close(probs, ref[0], backend="triton")
    assert_close(weights, ref[1], backend="triton")
    assert_close(probs.sum(-1), torch.ones(37, device=device), backend="triton")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_topk_gating_strided_and_low_precision_logits(triton_kernels, device: str, dtype: torch.dtype) -> None:
    kernels = triton_kernels(KERNELS)
    logits = torch.randn(6, 37, generator=torch.Generator().manual_seed(1)).to(dtype).to(device).t()  # (37, 6) view
    out = kernels.topk_gating_triton(logits, 2)
    ref = topk_gating_reference(logits, 2)
    assert torch.equal(out[2].cpu(), ref[2].cpu())
    assert_close(out[0], ref[0], backend="triton")
    assert_close(out[1], ref[1], backend="triton")


def test_topk_gating_ties_go_to_the_lowest_index(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    logits = torch.tensor([[0.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]], device=device)
    _, weights, experts = kernels.topk_gating_triton(logits, 3)
    assert experts.cpu().tolist() == [[1, 2, 0], [0, 1, 2]]
    assert_close(weights[1], torch.full((3,), 1 / 3, device=device), backend="triton")


@pytest.mark.parametrize("case", ["e5_k2", "e8_k3_dropped", "zero_token_experts", "all_dropped_tokens",
                                  "several_blocks_e5", "several_blocks_e64", "everything_dropped"])
def test_permute_tokens_matches_reference_exactly(triton_kernels, device: str, case: str) -> None:
    kernels = triton_kernels(KERNELS)
    n_tokens, n_experts, top_k, drop, skip = {
        "e5_k2": (37, 5, 2, 0.0, ()),
        "e8_k3_dropped": (37, 8, 3, 0.3, ()),
        "zero_token_experts": (37, 8, 2, 0.1, (0, 3, 7)),
        "all_dropped_tokens": (37, 5, 2, 0.0, ()),
        "several_blocks_e5": (600, 5, 2, 0.2, (2,)),  # 1200 assignments: two blocks of 1024
        "several_blocks_e64": (200, 64, 2, 0.1, ()),  # 400 assignments: four blocks of 128
        "everything_dropped": (9, 4, 2, 1.0, ()),
    }[case]
    experts = routed(n_tokens, n_experts, top_k, seed=len(case), drop=drop, skip=skip)
    if case == "all_dropped_tokens":
        experts[[0, 5, 36]] = -1  # every choice of these tokens dropped
    experts = experts.to(device)
    order, offsets = kernels.permute_tokens_triton(experts, n_experts)
    ref_order, ref_offsets = permute_tokens_reference(experts, n_experts)
    assert order.dtype == offsets.dtype == torch.int64
    assert torch.equal(offsets.cpu(), ref_offsets.cpu())
    assert torch.equal(order.cpu(), ref_order.cpu())
    if skip:
        assert all(int(offsets[e + 1] - offsets[e]) == 0 for e in skip)


def test_permute_tokens_no_tokens(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    order, offsets = kernels.permute_tokens_triton(torch.empty(0, 2, dtype=torch.int64, device=device), 3)
    assert order.numel() == 0 and offsets.cpu().tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("counts", [[10, 0, 30, 34, 0], [74], [0, 0, 0], [1, 0, 2, 0, 0, 5, 0, 3]],
                         ids=["e5_with_empty", "one_expert", "no_rows", "ragged_e8"])
def test_grouped_mm_matches_reference(triton_kernels, device: str, counts: list[int]) -> None:
    kernels = triton_kernels(KERNELS)
    for dtype in dtypes(device):
        x, weight, offsets = sorted_rows(counts, 53, 29, dtype, device, seed=sum(counts))
        poison = torch.full((sum(counts), 29), float("nan"), dtype=dtype, device=device)
        del poison  # a freed NaN block of the output's size: a row no tile writes shows up as NaN
        out = kernels.grouped_mm_triton(x, weight, offsets)
        assert out.shape == (sum(counts), 29) and out.dtype == dtype
        assert_close(out, grouped_mm_reference(x, weight, offsets), backend="triton")


def test_grouped_mm_small_tiles(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """16-row tiles: experts span several tiles, D = 53 takes four ragged steps, F = 29 two blocks."""
    kernels = triton_kernels(KERNELS)
    for dtype in (torch.float32, torch.float16):
        monkeypatch.setitem(kernels.GROUPED_MM_CONFIGS, dtype, (16, 16, 16, 1, 1))
        x, weight, offsets = sorted_rows([17, 0, 48, 1, 33], 53, 29, dtype, device, seed=5)
        tile_expert, tile_row = kernels.grouped_tiles(offsets, 16)
        assert tile_expert.cpu().tolist() == [0, 0, 2, 2, 2, 3, 4, 4, 4]
        assert tile_row.cpu().tolist() == [0, 16, 17, 33, 49, 65, 66, 82, 98]
        assert_close(kernels.grouped_mm_triton(x, weight, offsets), grouped_mm_reference(x, weight, offsets),
                     backend="triton")
    monkeypatch.setitem(kernels.GROUPED_MM_CONFIGS, torch.float32, (16, 16, 16, 1, 1))
    x, weight, offsets = sorted_rows([20, 12], 64, 32, torch.float32, device, seed=6)  # D a multiple of BLOCK_K
    strided_w = weight.transpose(1, 2).contiguous().transpose(1, 2)  # (E, D, F) view of an (E, F, D) tensor
    assert_close(kernels.grouped_mm_triton(x, strided_w, offsets), grouped_mm_reference(x, weight, offsets),
                 backend="triton")


def test_routing_pipeline_through_the_dispatcher(triton_kernels, device: str) -> None:
    """Gate, permute, grouped GEMM and unpermute via the Ops, with some assignments dropped."""
    triton_kernels(KERNELS)
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(37, 5, generator=g).to(device)
    x = torch.randn(37, 53, generator=g).to(device)
    weight = (torch.randn(5, 53, 29, generator=g) / 53**0.5).to(device)
    outs = {}
    for backend in ("reference", "triton"):
        _, gate_w, experts = topk_gating(logits, 2, renormalize=False, backend=backend)
        experts = torch.where(torch.arange(37, device=device)[:, None] % 7 == 0, -1, experts)  # drop a few
        order, offsets = permute_tokens(experts, 5, backend=backend)
        y = grouped_mm(x[order // 2], weight, offsets, backend=backend)
        outs[backend] = (gate_w, order, offsets, y)
    (w_r, o_r, f_r, y_r), (w_t, o_t, f_t, y_t) = outs["reference"], outs["triton"]
    assert torch.equal(o_r.cpu(), o_t.cpu()) and torch.equal(f_r.cpu(), f_t.cpu())
    assert_close(w_t, w_r, backend="triton")
    assert_close(y_t, y_r, backend="triton")


def test_triton_rejects_bad_inputs(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    with pytest.raises(ValueError, match="top_k=3 exceeds"):
        kernels.topk_gating_triton(torch.zeros(4, 2, device=device), 3)
    with pytest.raises(TypeError, match="2-D float tensor"):  # the shared check: a wrong dtype is a TypeError
        kernels.topk_gating_triton(torch.zeros(4, 2, dtype=torch.int64, device=device), 1)
    with pytest.raises(ValueError, match="expert index 5 >= n_experts=5"):
        kernels.permute_tokens_triton(torch.tensor([[0, 5]], device=device), 5)
    with pytest.raises(ValueError, match="2-D int64"):
        kernels.permute_tokens_triton(torch.tensor([[0, 1]], dtype=torch.int32, device=device), 5)
    x, weight, offsets = sorted_rows([3, 2], 8, 4, torch.float32, device, seed=0)
    with pytest.raises(ValueError, match="end at A=5"):
        kernels.grouped_mm_triton(x, weight, torch.tensor([0, 3, 4], device=device))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        kernels.grouped_mm_triton(x.double(), weight.double(), offsets)
