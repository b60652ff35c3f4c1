"""Tests of labkit.diffusion.multitask: joint image-label diffusion (MT-Diffusion)."""

import math

import pytest
import torch

from labkit.diffusion import DiffusionTrainConfig, NoiseSchedule, UNetConfig
from labkit.diffusion.multitask import (MultiTaskUNet, label_agreement, label_eps, label_signal, multitask_loss,
                                        sample_joint, shuffled_agreement, train_multitask)

from ._models import SCHEDULE, randomise

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

TINY = UNetConfig(base_channels=8, groups=4, time_dim=16, n_classes=None)


def random_joint(seed: int = 0) -> MultiTaskUNet:
    """A tiny joint model with every parameter random (no zero-initialised head hides the label)."""
    return randomise(MultiTaskUNet(TINY, n_classes=4), seed)


def test_label_signal_hand_example():
    out = label_signal(torch.tensor([2, 0]), 3)
    assert out.tolist() == [[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]


@pytest.mark.parametrize("y, exc", [(torch.tensor([3]), ValueError), (torch.tensor([-1]), ValueError),
                                    (torch.tensor([0.0]), TypeError), (torch.tensor([[0]]), ValueError)])
def test_label_signal_rejects_bad_labels(y, exc):
    with pytest.raises(exc, match="y"):
        label_signal(y, 3)


def test_label_eps_inverts_the_forward_process_for_a_sure_head():
    # A head that puts all its mass on the true class estimates l0 exactly, so the implied noise
    # is the noise that made l_t: eps_l = (l_t - sqrt(abar) l0) / sqrt(1 - abar).
    sched = NoiseSchedule(n_steps=100)
    y = torch.tensor([0, 3, 1])
    l0 = label_signal(y, 4)
    t = torch.tensor([5, 50, 99])
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    l_t = sched.q_sample(l0, t, noise)
    logits = 100.0 * l0  # softmax is one-hot at the label to float precision
    assert torch.allclose(label_eps(l_t, logits, t, sched), noise, atol=1e-4)


def test_label_eps_hand_example_for_a_uniform_head():
    # uniform softmax over K = 2: l0_hat = 2 * 0.5 - 1 = 0, so eps_l = l_t / sqrt(1 - abar)
    sched = NoiseSchedule(n_steps=10)
    t = torch.tensor([4])
    l_t = torch.tensor([[0.3, -0.6]])
    abar = float(sched.abar(4))
    expect = l_t / math.sqrt(1 - abar)
    assert torch.allclose(label_eps(l_t, torch.zeros(1, 2), t, sched), expect, atol=1e-6)
    with pytest.raises(ValueError, match="logits"):
        label_eps(l_t, torch.zeros(1, 3), t, sched)


def test_model_shapes_parameters_and_label_path():
    model = random_joint()
    x = torch.randn(5, 1, 8, 8)
    t = torch.tensor([0, 10, 20, 30, 99])
    l_a, l_b = torch.randn(5, 4), torch.randn(5, 4)
    eps, logits = model(x, l_a, t)
    assert eps.shape == (5, 1, 8, 8) and logits.shape == (5, 4)
    # the noisy label reaches both heads through the embedding
    eps_b, logits_b = model(x, l_b, t)
    assert (logits - logits_b).abs().max() > 1e-3
    assert (eps - eps_b).abs().max() > 1e-3
    # parameters: the backbone plus the label encoder (K E + E) and head ((C_last + E) E + E + E K + K)
    E, C_last, K = 16, 16, 4
    extra = (K * E + E) + ((C_last + E) * E + E) + (E * K + K)
    assert model.n_params() == model.unet.n_params() + extra


def test_model_rejects_bad_configs_and_labels():
    with pytest.raises(ValueError, match="unconditional"):
        MultiTaskUNet(UNetConfig(base_channels=8, groups=4, time_dim=16, n_classes=10))
    with pytest.raises(TypeError, match="cfg"):
        MultiTaskUNet("small")
    with pytest.raises(ValueError, match="n_classes"):
        MultiTaskUNet(TINY, n_classes=1)
    model = random_joint()
    with pytest.raises(ValueError, match="l_t"):
        model(torch.randn(2, 1, 8, 8), torch.randn(2, 5), torch.tensor([1, 2]))


def test_multitask_loss_is_image_term_plus_weighted_label_term():
    model = random_joint()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    t = torch.randint(0, SCHEDULE.n_steps, (6,), generator=g)
    noise, label_noise = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 4, generator=g)
    total, image, label = multitask_loss(model, SCHEDULE, x0, y, t, noise, label_noise, label_weight=0.5)
    assert torch.allclose(total, image + 0.5 * label)
    # the image term is DDPM's on the jointly noised state
    l_t = SCHEDULE.q_sample(label_signal(y, 4), t, label_noise)
    eps, logits = model(SCHEDULE.q_sample(x0, t, noise), l_t, t)
    assert torch.allclose(image, ((eps - noise) ** 2).mean())
    assert torch.allclose(label, torch.nn.functional.cross_entropy(logits, y))


RECIPE = DiffusionTrainConfig(steps=30, batch_size=16, lr=3e-3, warmup=5, eval_every=10)


def _data():
    g = torch.Generator().manual_seed(3)
    y = torch.arange(40) % 4
    # four classes, each a fixed pattern plus a little noise: learnable in a few steps
    protos = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    x = (protos[y] + 0.1 * torch.randn(40, 1, 8, 8, generator=g)).clamp(-1, 1)
    return x, y


def test_train_multitask_is_deterministic_and_learns_the_label():
    x, y = _data()
    a = train_multitask(x, y, RECIPE, cfg=TINY, n_classes=4, schedule=SCHEDULE, seed=0, progress=False)
    b = train_multitask(x, y, RECIPE, cfg=TINY, n_classes=4, schedule=SCHEDULE, seed=0, progress=False)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert [row[0] for row in a.history] == [10, 20, 30]
    # the label term falls below the uniform guess's ln 4 by the end
    assert a.history[-1][2] < math.log(4)
    assert not a.model.training


def test_train_multitask_rejects_bad_arguments():
    x, y = _data()
    kw = dict(cfg=TINY, n_classes=4, schedule=SCHEDULE, progress=False)
    with pytest.raises(ValueError, match="label_weight"):
        train_multitask(x, y, RECIPE, label_weight=-1.0, **kw)
    with pytest.raises(ValueError, match="ema"):
        train_multitask(x, y, DiffusionTrainConfig(steps=2, ema=0.9), **kw)
    with pytest.raises(ValueError, match="labels"):
        train_multitask(x, y[:5], RECIPE, **kw)
    with pytest.raises(ValueError, match="y must hold labels"):
        train_multitask(x, y + 1, RECIPE, **kw)
    with pytest.raises(ValueError, match="images"):
        train_multitask(x[:, :, :4, :4], y, RECIPE, **kw)
    with pytest.raises(TypeError, match="train_cfg"):
        train_multitask(x, y, {"steps": 2}, **kw)


def test_sample_joint_shapes_determinism_and_final_label():
    model = random_joint()
    a = sample_joint(model, SCHEDULE, n=7, steps=5, seed=2)
    b = sample_joint(model, SCHEDULE, n=7, steps=5, seed=2)
    assert a.images.shape == (7, 1, 8, 8) and a.labels.shape == (7,)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.steps == [99, 74, 50, 25, 0]
    assert a.label_probs.shape == (5, 7, 4) and a.image_x0.shape == (5, 7, 1, 8, 8)
    # the last step returns the label head's clean estimate, 2 softmax - 1: same argmax
    assert torch.equal(a.labels, a.label_probs[-1].argmax(dim=1))
    assert a.images.abs().max() <= 1.0
    c = sample_joint(model, SCHEDULE, n=7, steps=5, seed=3)
    assert not torch.equal(a.images, c.images)
    with pytest.raises(ValueError, match="steps"):
        sample_joint(model, SCHEDULE, n=2, steps=0)
    with pytest.raises(TypeError, match="model"):
        sample_joint(model.unet, SCHEDULE, n=2)


def test_label_agreement_hand_example_and_errors():
    assert label_agreement(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    with pytest.raises(ValueError, match="one shape"):
        label_agreement(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(TypeError, match="verdicts"):
        label_agreement(torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))


def test_shuffled_agreement_keeps_the_marginals():
    # all labels 1 and all verdicts 1: every permutation still agrees everywhere
    ones = torch.ones(10, dtype=torch.long)
    assert torch.equal(shuffled_agreement(ones, ones, n_perm=5), torch.ones(5, dtype=torch.float64))
    # perfectly paired balanced labels: shuffling breaks the pairing; sample i then draws the
    # label of a uniformly random sample, which equals its own with probability 100/400 = 1/4
    y = torch.arange(400) % 4
    assert label_agreement(y, y) == 1.0
    sh = shuffled_agreement(y, y, n_perm=200, seed=1)
    assert sh.shape == (200,)
    assert abs(sh.mean().item() - 0.25) < 0.01
    with pytest.raises(ValueError, match="n_perm"):
        shuffled_agreement(y, y, n_perm=0)
