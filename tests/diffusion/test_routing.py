"""Tests of labkit.diffusion.routing (Denoising Task Routing) and its hook in the tiny UNet."""

import numpy as np
import pytest
import torch

from labkit.diffusion import TinyUNet, UNetConfig
from labkit.diffusion.routing import TaskRouting, active_channels, channel_mask, mask_table, window_start
from labkit.diffusion.unet import ResBlock


def _perturbed(model: TinyUNet, seed: int = 0) -> TinyUNet:
    """The zero-initialised convolutions make every block the identity; give them weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_window_start_hand_example():
    # C = 10, beta = 0.8: n_on = 8, the window starts in [0, 2]
    r = TaskRouting(beta=0.8, alpha=1.0, n_steps=3)
    assert window_start(torch.arange(3), 10, r).tolist() == [0, 1, 2]
    # alpha = 4, T = 5: (t / 4) ** 4 * 2 = 0, 0.0078, 0.125, 0.633, 2
    r4 = TaskRouting(beta=0.8, alpha=4.0, n_steps=5)
    assert window_start(torch.arange(5), 10, r4).tolist() == [0, 0, 0, 1, 2]
    assert channel_mask(torch.tensor([4]), 10, r4).tolist() == [[0.0, 0.0] + [1.0] * 8]


def test_mask_table_matches_the_linspace_formula():
    C, T, beta, alpha = 48, 1000, 0.8, 4.0
    table = mask_table(C, TaskRouting(beta, alpha, T))
    n_on = int(C * beta)
    start = np.round(np.linspace(0, 1, T) ** alpha * (C - n_on)).astype(np.int64)
    expect = np.zeros((T, C), dtype=np.float32)
    for t in range(T):
        expect[t, start[t]:start[t] + n_on] = 1
    assert np.array_equal(table.numpy(), expect)


@pytest.mark.parametrize("C,beta,alpha", [(24, 0.8, 4.0), (7, 0.3, 1.0), (1, 0.5, 2.0), (72, 1.0, 4.0)])
def test_every_mask_is_one_window_that_slides_forward(C, beta, alpha):
    r = TaskRouting(beta, alpha, 200)
    table = mask_table(C, r)
    n_on = active_channels(C, r)
    assert (table.sum(1) == n_on).all()
    starts = window_start(torch.arange(200), C, r)
    assert (starts.diff() >= 0).all()  # the window only moves towards the last channel
    assert starts[0] == 0 and starts[-1] == C - n_on  # first and last step at the ends
    for t in (0, 57, 199):  # contiguous: ones exactly from start to start + n_on
        row = table[t]
        assert row[starts[t]:starts[t] + n_on].all() and row.sum() == n_on


def test_alpha_above_one_shares_channels_at_low_noise():
    r = TaskRouting(0.5, 4.0, 1000)
    table = mask_table(64, r)
    overlap_low = (table[0] * table[250]).sum()  # low-noise steps: nearly the same window
    overlap_high = (table[750] * table[999]).sum()  # high-noise steps: windows far apart
    assert overlap_low > overlap_high


def test_block_gates_the_branch_input_and_keeps_the_identity_path():
    torch.manual_seed(0)
    block = ResBlock(16, 16, 8, 4)
    with torch.no_grad():
        block.conv2.weight.normal_()
    block.routing = TaskRouting(beta=0.5, alpha=1.0, n_steps=2)
    x = torch.randn(3, 16, 4, 4)
    emb = torch.randn(3, 8)
    t = torch.ones(3, dtype=torch.long)  # last step: window on channels 8..15
    d = torch.zeros_like(x)
    d[:, :8] = torch.randn(3, 8, 4, 4)  # change only the channels outside the window
    delta = block(x + d, emb, t) - block(x, emb, t)
    assert torch.allclose(delta, d, atol=1e-5)  # the branch never saw it; the identity did
    inside = torch.zeros_like(x)
    inside[:, 8:] = torch.randn(3, 8, 4, 4)  # inside the window the branch reacts
    assert not torch.allclose(block(x + inside, emb, t) - block(x, emb, t), inside, atol=1e-3)


def test_block_with_routing_needs_the_steps():
    block = ResBlock(8, 8, 4, 4)
    block.routing = TaskRouting()
    with pytest.raises(ValueError, match="pass t"):
        block(torch.randn(1, 8, 2, 2), torch.randn(1, 4))


def test_routing_adds_no_parameters_and_loads_plain_weights():
    plain = TinyUNet(UNetConfig(), init_seed=0)
    routed = TinyUNet(UNetConfig(task_routing=TaskRouting()), init_seed=0)
    assert routed.n_params() == plain.n_params()
    assert routed.state_dict().keys() == plain.state_dict().keys()
    routed.load_state_dict(plain.state_dict())  # strict: same tensors, same shapes


def test_beta_one_is_the_plain_model_and_beta_below_one_is_not():
    plain = _perturbed(TinyUNet(UNetConfig(), init_seed=0)).eval()
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    t = torch.tensor([0, 1, 200, 500, 800, 999])
    for beta, same in ((1.0, True), (0.8, False)):
        routed = TinyUNet(UNetConfig(task_routing=TaskRouting(beta=beta)), init_seed=0).eval()
        routed.load_state_dict(plain.state_dict())
        with torch.no_grad():
            close = torch.allclose(routed(x, t, y), plain(x, t, y), atol=1e-5)
        assert close == same


def test_routed_model_is_per_sample_and_encode_decode_agree():
    model = _perturbed(TinyUNet(UNetConfig(task_routing=TaskRouting()), init_seed=0)).eval()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([3, 1, 4, 1])
    t = torch.tensor([5, 999, 300, 700])
    with torch.no_grad():
        out = model(x, t, y)
        feats = model.encode(x, t, y)
        assert torch.equal(feats.t, t)
        assert torch.allclose(model.decode(feats), out)
        for i in range(4):  # each image's mask follows its own step
            assert torch.allclose(model(x[i:i + 1], t[i:i + 1], y[i:i + 1]), out[i:i + 1], atol=1e-5)


def test_cache_key_names_the_routing_only_when_set():
    r = TaskRouting(0.6, 2.0, 100)
    assert "task_routing" not in UNetConfig().as_dict()
    assert UNetConfig(task_routing=r).as_dict()["task_routing"] == {"beta": 0.6, "alpha": 2.0, "n_steps": 100}


@pytest.mark.parametrize("beta", [0.0, -0.1, 1.5])
def test_beta_outside_zero_one_is_rejected(beta):
    with pytest.raises(ValueError, match="beta"):
        TaskRouting(beta=beta)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_alpha_not_positive_is_rejected(alpha):
    with pytest.raises(ValueError, match="alpha"):
        TaskRouting(alpha=alpha)


def test_bad_arguments():
    with pytest.raises(TypeError, match="beta"):
        TaskRouting(beta="0.8")
    with pytest.raises(ValueError, match="n_steps"):
        TaskRouting(n_steps=0)
    with pytest.raises(TypeError, match="task_routing"):
        UNetConfig(task_routing=(0.8, 4.0))
    r = TaskRouting(n_steps=10)
    with pytest.raises(ValueError, match=r"t must be in \[0, 10\)"):
        channel_mask(torch.tensor([10]), 8, r)
    with pytest.raises(ValueError, match="integer tensor"):
        channel_mask(torch.tensor([1.0]), 8, r)
    with pytest.raises(ValueError, match="channels"):
        channel_mask(torch.tensor([1]), 0, r)
