"""T-ACGAN, surrogates and latent inversion of labkit.security.inversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.diffusion.quality import DigitClassifier
from labkit.security import inversion as inv


class Pixel(nn.Module):
    """A toy classifier: logit_c = x[..., c, c] summed over the batch's channel (C classes)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(self.n_classes)
        return x[:, 0, idx, idx] * 10.0  # (B, C)


class Brightness(nn.Module):
    """A toy classifier: logit_c = -100 (mean pixel - m_c)², unchanged by shifts."""

    def __init__(self, means: torch.Tensor) -> None:
        super().__init__()
        self.means = means

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -100 * (x.mean((1, 2, 3))[:, None] - self.means).square()  # (B, C)


class PixelGenerator(inv.ConditionalGenerator):
    """G(z, y) = tanh(z) as an 8 x 8 image: every image is reachable."""

    def __init__(self, n_classes: int) -> None:
        super().__init__(n_classes, z_dim=64, width=4)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z).view(-1, 1, 8, 8)


def test_margin_loss_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    # row 0, target 0: max(1, 2) - 3 = -1; row 1, target 2: max(0, 5) - (-1) = 6
    got = inv.margin_loss(logits, torch.tensor([0, 2]))
    assert torch.allclose(got, torch.tensor([-1.0, 6.0]))


def test_oracle_counts_queries_and_answers_hard_labels() -> None:
    oracle = inv.LabelOracle(Pixel(4), 3)  # answers among the first 3 logits only
    x = -torch.ones(5, 1, 8, 8)
    x[:, 0, 3, 3] = 1.0  # logit 3 is the largest, but class 3 is not an answer
    x[:2, 0, 1, 1] = 0.5
    labels = oracle(x)
    assert labels.dtype == torch.int64 and labels.tolist() == [1, 1, 0, 0, 0]
    oracle(x[:2])
    assert oracle.queries == 7


def test_split_keeps_private_and_public_apart() -> None:
    sp = inv.split_digits(3, seed=0)
    assert int(sp.private_y.max()) == 2 and int(sp.test_y.max()) == 2
    assert sp.public_x.shape[0] > 0 and sp.n_classes == 3
    # no public image equals a private one
    d = torch.cdist(sp.public_x.flatten(1), sp.private_x.flatten(1))
    assert float(d.min()) > 0
    with pytest.raises(ValueError, match="n_private"):
        inv.split_digits(10)


def test_check_classes_errors() -> None:
    assert inv.check_classes((0, 4), 5) == [0, 4]
    assert inv.check_classes(torch.tensor([1]), 5) == [1]
    with pytest.raises(ValueError, match="at least one class"):
        inv.check_classes([], 5)
    with pytest.raises(ValueError, match=r"classes\[1\] must be in \[0, 4\]"):
        inv.check_classes([0, 5], 5)
    with pytest.raises(ValueError, match=r"classes\[0\]"):
        inv.check_classes([-1], 5)
    with pytest.raises(TypeError, match="sequence"):
        inv.check_classes(3, 5)


def test_train_classifier_learns_and_validates() -> None:
    sp = inv.split_digits(2, seed=0)
    model = inv.train_classifier(sp.private_x, sp.private_y, n_classes=2, epochs=2, seed=1)
    assert isinstance(model, DigitClassifier)
    assert inv.accuracy(model, sp.test_x, sp.test_y, n_classes=2) > 0.9
    with pytest.raises(ValueError, match="labels must be in"):
        inv.train_classifier(sp.private_x, sp.private_y + 1, n_classes=2)
    with pytest.raises(ValueError, match="epochs"):
        inv.train_classifier(sp.private_x, sp.private_y, n_classes=2, epochs=0)


def test_invert_reaches_the_class_of_a_white_box_surrogate() -> None:
    gen = PixelGenerator(3)
    with pytest.raises(ValueError, match="at least one class"):
        inv.invert(gen, [Pixel(3)], [])
    with pytest.raises(ValueError, match=r"classes\[0\]"):
        inv.invert(gen, [Pixel(3)], [3])
    with pytest.raises(ValueError, match="surrogates"):
        inv.invert(gen, [], [0])
    # a shift-invariant white box: class c wants the mean pixel near m_c
    judge = Brightness(torch.tensor([-0.3, 0.0, 0.3]))
    before, y = inv.random_latents(gen, [0, 1, 2], n_per_class=4, seed=1)
    x, y2 = inv.invert(gen, [judge], [0, 1, 2], n_per_class=4, steps=100, lr=0.2,
                       seed=1)
    assert torch.equal(y, y2)
    acc_before = inv.accuracy(judge, before, y, n_classes=3)
    acc_after = inv.accuracy(judge, x, y, n_classes=3)
    assert acc_after > acc_before and acc_after >= 0.9


def test_train_tacgan_counts_queries_and_keeps_the_warmup_generator() -> None:
    sp = inv.split_digits(2, seed=0)
    oracle = inv.LabelOracle(Pixel(2), 2)
    gan = inv.train_tacgan(sp.public_x[:40], oracle, steps=6, warmup=2, batch=8, seed=0)
    # 40 public labels once, then 8 per step after the warm-up
    assert gan.queries == 40 + 4 * 8 == oracle.queries
    assert len(gan.history) == 4
    assert not all(torch.equal(a, b) for a, b in zip(gan.generator.parameters(),
                                                     gan.warmup_generator.parameters()))
    only_gen = inv.train_tacgan(sp.public_x[:40], inv.LabelOracle(Pixel(2), 2), steps=3,
                                warmup=1, batch=8, label_public=False)
    assert only_gen.queries == 2 * 8
    no_labels = inv.train_tacgan(sp.public_x[:40], inv.LabelOracle(Pixel(2), 2), steps=3,
                                 warmup=3, batch=8)
    assert no_labels.queries == 0 and no_labels.history == []
    with pytest.raises(ValueError, match="warmup"):
        inv.train_tacgan(sp.public_x, oracle, steps=3, warmup=4)
    with pytest.raises(ValueError, match="alpha"):
        inv.train_tacgan(sp.public_x, oracle, alpha=-1.0)


def test_surrogate_set_spends_one_query_per_image() -> None:
    gen = inv.ConditionalGenerator(2, z_dim=4, width=8)
    oracle = inv.LabelOracle(Pixel(2), 2)
    x, y = inv.surrogate_set(gen, oracle, 10, seed=0)
    assert x.shape == (10, 1, 8, 8) and y.shape == (10,) and oracle.queries == 10
    with pytest.raises(ValueError, match="n must be"):
        inv.surrogate_set(gen, oracle, 0)


def test_feature_distance_by_hand() -> None:
    class Ident(DigitClassifier):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :2]

    e = Ident()
    priv = torch.zeros(3, 1, 8, 8)
    priv[1, 0, 0, 0] = 3.0  # class 1 at (3, 0); class 0 at (0, 0) twice
    priv_y = torch.tensor([0, 1, 0])
    rec = torch.zeros(2, 1, 8, 8)
    rec[:, 0, 0, 1] = 4.0  # both at (0, 4)
    # target 0: nearest class-0 image at distance 4; target 1: |(0,4) - (3,0)| = 5
    got = inv.feature_distance(e, rec, torch.tensor([0, 1]), priv, priv_y)
    assert got == pytest.approx(4.5)
