"""Judging generated digits without downloading anything: a small classifier and what it sees.

Image generators are usually scored with the Frechet Inception Distance (Heusel et al., 2017,
arXiv:1706.08500): fit a Gaussian to an Inception network's features of real images and another
to those of generated ones, and measure the Frechet (2-Wasserstein) distance between them,

    d^2 = || mu_a - mu_b ||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}).

Inception knows nothing of 8 x 8 digits and would have to be downloaded, so this module trains
its own judge, :class:`DigitClassifier` (a two-convolution CNN, a few seconds on a CPU), and
offers three measures built on it, plus one on pixels:

- :func:`classifier_confidence`: mean top softmax probability (are the samples clearly digits?),
- :func:`class_diversity`: entropy of the predicted-class histogram (are all digits there?),
- :func:`feature_frechet_distance`: the formula above on the classifier's penultimate features,
- :func:`pixel_deviation`: mean absolute pixel difference between two image sets drawn from the
  same noise (how far an accelerated sampler strays from the exact one).

What the miniature leaves out: Inception features, the precision/recall split of a sample's
quality, and the bias correction that small sample sizes need (with 100 samples the distance is
only comparable with another computed on the same number of samples).

Shapes: B images, K classes (10), D feature width.
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from labkit.artifacts import load_or_train, state_shapes
from labkit.runtime import seed_everything

from .train import digits_split

__all__ = ["ClassifierResult", "DigitClassifier", "SampleQuality", "class_diversity", "classifier_confidence",
           "feature_frechet_distance", "pixel_deviation", "pretrained_classifier", "sample_quality"]


class DigitClassifier(nn.Module):
    """conv 3x3 (16) -> ReLU -> conv 3x3 (32) -> ReLU -> max-pool 2 -> linear (D) -> ReLU -> linear (10).

    Reads 8 x 8 images in [-1, 1], the scale of the DDPM's data and samples.

    Args:
        feature_dim: D, width of the penultimate layer used by :func:`feature_frechet_distance`.
        init_seed: seed of the name-seeded initialisation.
    """

    def __init__(self, feature_dim: int = 32, *, init_seed: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, 10)
        for name, param in self.named_parameters():
            digest = hashlib.blake2b(f"{init_seed}:{name}".encode(), digest_size=8).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)
            with torch.no_grad():
                if name.endswith("bias"):
                    param.zero_()
                else:  # He-uniform for the ReLU layers
                    bound = math.sqrt(6.0 / param[0].numel())
                    param.copy_((torch.rand(param.shape, generator=g) * 2 - 1) * bound)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, (B, 1, 8, 8) -> (B, D)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"images must be (B, 1, 8, 8) in [-1, 1], got {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)  # (B, 32, 4, 4)
        return F.relu(self.fc(h.flatten(1)))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, (B, 1, 8, 8) -> (B, 10)."""
        return self.head(self.features(x))


@dataclass
class ClassifierResult:
    """The trained judge and its accuracy on the 360 held-out digits of :func:`digits_split`."""

    model: DigitClassifier
    test_accuracy: float


def _train_classifier(seed: int, epochs: int) -> tuple[DigitClassifier, float]:
    x, y, x_test, y_test = digits_split(seed=0)
    gen = seed_everything(seed)
    model = DigitClassifier(init_seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            # one-pixel random shifts: the generated digits are not centred exactly like the data
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, acc


def pretrained_classifier(seed: int = 0, *, epochs: int = 30, verbose: bool = True) -> ClassifierResult:
    """The digit classifier, trained once (a few seconds) on the training split and cached.

    Args:
        seed: seeds its initialisation and batches.
        epochs: passes over the 1437 training digits.
        verbose: print where the weights came from.

    Returns:
        :class:`ClassifierResult` (model in eval mode, held-out accuracy, about 0.98).
    """
    fields = {"arch": "conv16-conv32-pool-fc32-fc10", "seed": seed, "epochs": epochs, "lr": 3e-3,
              "data": "digits_split(seed=0), shift augmentation +-1 px"}

    def run() -> dict:
        model, acc = _train_classifier(seed, epochs)
        state = dict(model.state_dict())
        state["__test_accuracy__"] = torch.tensor(acc, dtype=torch.float64)
        return state

    model = DigitClassifier(init_seed=seed)
    state = load_or_train("digit_classifier", fields, run, verbose=verbose,
                          expected={**state_shapes(model), "__test_accuracy__": torch.Size([])})
    acc = float(state.pop("__test_accuracy__"))
    model.load_state_dict(state)
    return ClassifierResult(model=model.eval(), test_accuracy=acc)


@torch.no_grad()
def _probs(classifier: DigitClassifier, images: torch.Tensor) -> torch.Tensor:
    classifier.eval()
    return torch.softmax(classifier(images.float().cpu()), dim=1)  # (B, K)


def classifier_confidence(images: torch.Tensor, *, classifier: DigitClassifier) -> float:
    """Mean over images of the classifier's top softmax probability, in [0.1, 1].

    Crisp digits score near 1; blobs that look like no digit (or like several) score lower.

    Args:
        images: (B, 1, 8, 8) in [-1, 1].
        classifier: the judge (:func:`pretrained_classifier`).
    """
    return _probs(classifier, images).max(dim=1).values.mean().item()


def class_diversity(images: torch.Tensor, *, classifier: DigitClassifier) -> float:
    """Entropy (nats) of the histogram of predicted classes: ``ln 10 = 2.303`` when all ten are equally common.

    A sampler that collapses onto a few digits scores low even if each image is crisp.

    Args:
        images: (B, 1, 8, 8) in [-1, 1].
        classifier: the judge.
    """
    pred = _probs(classifier, images).argmax(dim=1)  # (B,)
    p = torch.bincount(pred, minlength=10).double() / pred.numel()  # (K,)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def feature_frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two sets of features (the FID formula).

    ``|| mu_a - mu_b ||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^{1/2})``, in float64. The trace of
    the square root is taken as ``Tr((A S_b A)^{1/2})`` with ``A = S_a^{1/2}``: the two matrices
    are similar, so their square roots have the same trace, and ``A S_b A`` is symmetric
    positive semi-definite, so its root comes from an eigendecomposition with real, non-negative
    eigenvalues (tiny negative ones from rounding are clipped to 0). ``scipy.linalg.sqrtm`` of
    the non-symmetric product gives the same number, with a complex part to discard.

    Args:
        feats_a, feats_b: features of two sets of images (at least 2 rows each).

    Returns:
        The squared Frechet distance (>= 0; 0 for identical sets).

    Shapes:
        feats_a: (B_a, D); feats_b: (B_b, D).
    """
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (B, D) with B >= 2, got {tuple(f.shape)}")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature widths differ: {feats_a.shape[1]} vs {feats_b.shape[1]}")
    a, b = feats_a.detach().double().cpu(), feats_b.detach().double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)  # (D,)
    cov_a = torch.cov(a.T).reshape(a.shape[1], a.shape[1])  # (D, D), unbiased; reshape keeps D = 1 a matrix
    cov_b = torch.cov(b.T).reshape(b.shape[1], b.shape[1])

    def psd_sqrt(m: torch.Tensor) -> torch.Tensor:
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T

    root_a = psd_sqrt(cov_a)
    tr_cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    d2 = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_cross
    return max(float(d2), 0.0)


def pixel_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference per pixel between two image sets, in the [-1, 1] scale (max 2).

    Args:
        a, b: images of the same shape, e.g. two samplers' outputs from the same ``x_T``.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().mean().item()


@dataclass(frozen=True)
class SampleQuality:
    """The three classifier-based measures of one set of samples against real images."""

    confidence: float
    diversity: float
    frechet: float


def sample_quality(images: torch.Tensor, reference: torch.Tensor, *, classifier: DigitClassifier) -> SampleQuality:
    """Confidence, diversity and feature Frechet distance of ``images`` against ``reference``.

    Args:
        images: generated images, (B, 1, 8, 8) in [-1, 1].
        reference: real images (e.g. the test split of :func:`digits_split`), (B_r, 1, 8, 8).
        classifier: the judge.
    """
    with torch.no_grad():
        fa = classifier.eval().features(images.float().cpu())
        fb = classifier.features(reference.float().cpu())
    return SampleQuality(confidence=classifier_confidence(images, classifier=classifier),
                         diversity=class_diversity(images, classifier=classifier),
                         frechet=feature_frechet_distance(fa, fb))
