"""Label-only model inversion through knowledge transfer (LOKT) on 8 x 8 digits.

Paper: "Label-Only Model Inversion Attacks via Knowledge Transfer" (Nguyen et al., NeurIPS 2023,
arXiv:2310.19342). A model inversion attack reconstructs what a classifier's private classes
look like. With white-box access one optimises a GAN's latent so that the classifier assigns the
generated image to class c; with *hard labels only* there is no gradient to follow. LOKT
transfers the target's knowledge into models the attacker owns, and then runs the white-box
attack on those:

1. a target-labelled conditional GAN (T-ACGAN): a generator G(z, y) and a discriminator D with
   an adversarial head D_adv and an auxiliary classification head D_cls. D_adv learns to tell
   public (unlabelled) images from generated ones; D_cls learns the target's hard labels
   ŷ = T(G(z, y)) of the generated images; G learns to fool D_adv and to make D_cls say y;
2. surrogate classifiers trained on G's samples labelled by T;
3. the white-box inversion of G's latent for class c against the ensemble of surrogates.

The losses, after the authors' public training code (non-saturating BCE for the adversarial
terms, a weight α on the class terms, and a warm-up with α = 0, which is an ordinary GAN on the
public data):

    L_D = BCE(D_adv(x_pub), 1) + BCE(D_adv(G(z, y)), 0) + α CE(D_cls(G(z, y)), T(G(z, y)))
    L_G = BCE(D_adv(G(z, y)), 1) + α CE(D_cls(G(z, y)), y)

and the inversion minimises, over z with y = c fixed, the mean over surrogates S_k of the
max-margin loss max_{j != c} S_k(x)_j - S_k(x)_c on randomly shifted copies of x = G(z, c).

The miniature: private data are the digits 0-4 (sklearn's 8 x 8 digits), public data the
digits 5-9 without labels, T and the evaluator E small CNNs (:class:`DigitClassifier`), G and D
small MLPs. Here D_cls also reads T's labels of the public images (the authors' code labels only
generated ones; ``label_public=False`` restores that). What it leaves out: faces, StyleGAN-sized
generators, the surrogates' architecture search, and the paper's image augmentations.

Shapes: B images, C private classes, Z latent width, D feature width.
Section: chapter 15, "Label-only model inversion: LOKT".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from labkit.data.synthetic import digits
from labkit.diffusion.quality import DigitClassifier
from labkit.validation import check_int, check_real, check_tensor

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["AuxDiscriminator", "ConditionalGenerator", "DigitSplit", "LabelOracle", "TACGAN",
           "accuracy", "attack_accuracy", "budget_figure", "check_classes", "feature_distance",
           "invert", "margin_loss", "random_latents", "reconstruction_figure", "split_digits",
           "surrogate_set", "tacgan_step", "train_classifier", "train_tacgan"]

_N_TEST = 360  # the held-out digits, as in labkit.diffusion.train.digits_split


def check_classes(classes: object, n_classes: int, *, name: str = "classes") -> list[int]:
    """Return ``classes`` as a list of ints, each in ``[0, n_classes)``, at least one.

    Raises:
        TypeError: not a sequence of ints.
        ValueError: empty, or a class out of range (naming the argument and the range).
    """
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise TypeError(f"{name} must be a sequence of class indices, got {type(classes).__name__}")
    if len(classes) == 0:
        raise ValueError(f"{name} must name at least one class, got an empty sequence")
    return [check_int(f"{name}[{i}]", c, 0, n_classes - 1) for i, c in enumerate(classes)]


@dataclass(frozen=True)
class DigitSplit:
    """Private (labelled, classes ``0..C-1``) and public (unlabelled, the other digits) images.

    Images are (B, 1, 8, 8) in [-1, 1]; labels (B,) int64.
    """

    private_x: torch.Tensor
    private_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    public_x: torch.Tensor
    n_classes: int


def split_digits(n_private: int = 5, *, seed: int = 0) -> DigitSplit:
    """The private digits ``0..n_private-1`` (train and test) and the public rest, unlabelled.

    The public images come from the training part only, so the private test images stay unseen
    by every model.

    Args:
        n_private: C, how many digit classes are private (2 to 9).
        seed: the shuffle of the digits.
    """
    n_private = check_int("n_private", n_private, 2, 9)
    images, labels = digits(size=8, seed=seed)
    n = labels.numel() - _N_TEST
    x, y, x_test, y_test = images[:n], labels[:n], images[n:], labels[n:]
    private, test = y < n_private, y_test < n_private
    return DigitSplit(private_x=x[private], private_y=y[private], test_x=x_test[test],
                      test_y=y_test[test], public_x=x[~private], n_classes=n_private)


def _shift(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Roll a batch by one random offset in {-1, 0, 1}² (the digits are not all centred alike)."""
    dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, n_classes: int,
                     feature_dim: int = 32, seed: int = 0, epochs: int = 20,
                     lr: float = 3e-3) -> DigitClassifier:
    """A :class:`DigitClassifier` trained with cross-entropy on its first ``n_classes`` logits.

    Used for the target T, the evaluator E and the surrogates (a few seconds on a CPU).

    Args:
        images: (B, 1, 8, 8) in [-1, 1].
        labels: (B,) in ``[0, n_classes)``.
        n_classes: C, the classes the model answers among.
        feature_dim: D, its penultimate width.
        seed: initialisation, batch order and shifts.
        epochs: passes over the data (batches of 64, one-pixel random shifts).
        lr: Adam's learning rate.

    Returns:
        The model in eval mode; its prediction is the argmax of ``model(x)[:, :n_classes]``.
    """
    check_tensor("images", images, dims=4)
    n_classes = check_int("n_classes", n_classes, 2, 10)
    check_int("epochs", epochs, 1)
    check_real("lr", lr, 0.0, strict=True)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("images must hold at least one image")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    gen = torch.Generator().manual_seed(seed)
    model = DigitClassifier(feature_dim, init_seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=gen).split(64):
            logits = model(_shift(images[idx], gen))[:, :n_classes]
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             n_classes: int) -> float:
    """Top-1 accuracy of ``model`` among its first ``n_classes`` logits."""
    pred = model(images)[:, :n_classes].argmax(1)
    return (pred == labels).float().mean().item()


class LabelOracle:
    """The target as the attacker sees it: images in, hard labels out, every query counted.

    Args:
        model: the target classifier T (its logits stay hidden).
        n_classes: C, the classes it answers among.
    """

    def __init__(self, model: nn.Module, n_classes: int) -> None:
        self._model = model.eval()
        self.n_classes = check_int("n_classes", n_classes, 2, 10)
        self.queries = 0

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Hard labels (B,) int64 of ``images`` (B, 1, 8, 8); adds B to :attr:`queries`."""
        self.queries += images.shape[0]
        return self._model(images.detach())[:, :self.n_classes].argmax(1)


class ConditionalGenerator(nn.Module):
    """G(z, y): [z, one-hot(y)] -> MLP -> tanh -> (B, 1, 8, 8)."""

    def __init__(self, n_classes: int, *, z_dim: int = 16, width: int = 128) -> None:
        super().__init__()
        self.n_classes, self.z_dim = n_classes, z_dim
        self.net = nn.Sequential(
            nn.Linear(z_dim + n_classes, width), nn.LeakyReLU(0.2),
            nn.Linear(width, width), nn.LeakyReLU(0.2),
            nn.Linear(width, 64), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B,) -> images (B, 1, 8, 8) in [-1, 1]."""
        h = torch.cat([z, F.one_hot(y, self.n_classes).float()], 1)  # (B, Z + C)
        return self.net(h).view(-1, 1, 8, 8)


class AuxDiscriminator(nn.Module):
    """D(x) -> (D_adv logit (B,), D_cls logits (B, C)): a shared MLP trunk with two heads.

    The trunk and D_adv are spectrally normalised (as the authors' SN-ResNet discriminator
    is); without it the MLP GAN of 700 digits learns far more slowly.
    """

    def __init__(self, n_classes: int, *, width: int = 128) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.trunk = nn.Sequential(nn.Flatten(), sn(nn.Linear(64, width)), nn.LeakyReLU(0.2),
                                   sn(nn.Linear(width, width)), nn.LeakyReLU(0.2))
        self.adv = sn(nn.Linear(width, 1))
        self.cls = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)  # (B, width)
        return self.adv(h).squeeze(1), self.cls(h)


@dataclass
class TACGAN:
    """A trained T-ACGAN and what it cost.

    Attributes:
        generator: G(z, y) after training.
        discriminator: D with both heads.
        warmup_generator: G at the end of the warm-up (α = 0): a plain GAN of the public data.
        queries: target queries spent (labels of generated and public images).
        history: per step, the share of G(z, y) that T labels y (after the warm-up).
    """

    generator: ConditionalGenerator
    discriminator: AuxDiscriminator
    warmup_generator: ConditionalGenerator
    queries: int
    history: list[float] = field(default_factory=list)


def _sample(gen: ConditionalGenerator, batch: int, rng: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(batch, gen.z_dim, generator=rng)
    y = torch.randint(0, gen.n_classes, (batch,), generator=rng)
    return z, y


def tacgan_step(gen: ConditionalGenerator, dis: AuxDiscriminator,
                opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                real: torch.Tensor, real_y: torch.Tensor | None,
                oracle: LabelOracle, *, alpha: float, rng: torch.Generator) -> float:
    """One T-ACGAN step: D on public vs generated images and on T's labels, then G.

    Returns the share of generated images that T labels with their requested class.
    """
    # show: start tacgan
    bce = F.binary_cross_entropy_with_logits
    b = real.shape[0]
    # discriminator: public images are real, generated ones fake; D_cls learns T's labels
    z, y = _sample(gen, b, rng)
    with torch.no_grad():
        fake = gen(z, y)
    adv_real, cls_real = dis(real)
    adv_fake, cls_fake = dis(fake)
    loss_d = bce(adv_real, torch.ones(b)) + bce(adv_fake, torch.zeros(b))
    hit = 0.0
    if alpha > 0:
        y_hat = oracle(fake)  # T's hard labels: b queries
        loss_d = loss_d + alpha * F.cross_entropy(cls_fake, y_hat)
        if real_y is not None:  # T's labels of the public images, asked once
            loss_d = loss_d + alpha * F.cross_entropy(cls_real, real_y)
        hit = (y_hat == y).float().mean().item()
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    # generator: fool D_adv, and make D_cls (T's stand-in) say the requested class
    z, y = _sample(gen, b, rng)
    adv_fake, cls_fake = dis(gen(z, y))
    loss_g = bce(adv_fake, torch.ones(b))
    if alpha > 0:
        loss_g = loss_g + alpha * F.cross_entropy(cls_fake, y)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return hit
    # show: end tacgan


def train_tacgan(public: torch.Tensor, oracle: LabelOracle, *, steps: int = 1500,
                 warmup: int = 500, alpha: float = 1.5, batch: int = 64,
                 label_public: bool = True, z_dim: int = 16, width: int = 128,
                 lr: float = 1e-3, seed: int = 0) -> TACGAN:
    """Train a T-ACGAN on unlabelled public images with the target's hard labels.

    Args:
        public: (B, 1, 8, 8) public images in [-1, 1] (no labels).
        oracle: the target, hard labels only; its query counter records the cost.
        steps: total steps (each one D and one G update), warm-up included.
        warmup: first steps with α = 0 (a plain GAN; no queries).
        alpha: weight α of the class terms afterwards.
        batch: images per step.
        label_public: let D_cls also learn T's labels of the public images (B queries, once).
        z_dim, width: G's latent width Z and the MLPs' width.
        lr: Adam's learning rate (betas 0.5, 0.9).
        seed: initialisation and sampling.
    """
    check_tensor("public", public, dims=4)
    steps = check_int("steps", steps, 1)
    warmup = check_int("warmup", warmup, 0, steps)
    alpha = check_real("alpha", alpha, 0.0)
    batch = check_int("batch", batch, 1)
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    gen = ConditionalGenerator(oracle.n_classes, z_dim=z_dim, width=width)
    dis = AuxDiscriminator(oracle.n_classes, width=width)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(dis.parameters(), lr=lr, betas=(0.5, 0.9))
    start = oracle.queries
    public_y = oracle(public) if label_public and warmup < steps else None
    warm = copy.deepcopy(gen)
    history = []
    for step in range(steps):
        if step == warmup:
            warm = copy.deepcopy(gen)
        idx = torch.randint(0, public.shape[0], (batch,), generator=rng)
        real_y = public_y[idx] if public_y is not None else None
        a = alpha if step >= warmup else 0.0
        hit = tacgan_step(gen, dis, opt_g, opt_d, _shift(public[idx], rng), real_y,
                          oracle, alpha=a, rng=rng)
        if step >= warmup:
            history.append(hit)
    return TACGAN(generator=gen.eval(), discriminator=dis.eval(),
                  warmup_generator=warm.eval(), queries=oracle.queries - start,
                  history=history)


@torch.no_grad()
def surrogate_set(generator: ConditionalGenerator, oracle: LabelOracle, n: int, *,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples G(z, y) (y uniform) labelled by the target: ``n`` queries.

    Returns:
        images (n, 1, 8, 8) and T's hard labels (n,).
    """
    n = check_int("n", n, 1)
    z, y = _sample(generator, n, torch.Generator().manual_seed(seed))
    x = generator(z, y)
    return x, oracle(x)


def margin_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Max-margin loss per image: ``max_{j != c} logit_j - logit_c`` (B,) for targets c (B,)."""
    own = logits.gather(1, target[:, None]).squeeze(1)  # (B,)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return others.max(1).values - own


def invert(generator: ConditionalGenerator, surrogates: Sequence[nn.Module],
           classes: Sequence[int], *, n_per_class: int = 8, steps: int = 200,
           lr: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """White-box inversion of G's latent for each class on an ensemble of surrogates.

    Minimises the mean over surrogates of :func:`margin_loss` of G(z, c), on a randomly
    shifted copy each step, over z (Adam); the weights of G and the surrogates stay fixed.

    Args:
        generator: G(z, y).
        surrogates: the white-box models S_k (their first C logits are read).
        classes: the classes c to reconstruct, each in ``[0, C)``.
        n_per_class: latents per class (independent reconstructions).
        steps, lr: Adam steps and learning rate on z.
        seed: the initial latents and the shifts.

    Returns:
        images (len(classes) * n_per_class, 1, 8, 8) and their target classes.
    """
    # show: start invert
    c = check_classes(classes, generator.n_classes)
    n_per_class = check_int("n_per_class", n_per_class, 1)
    if len(surrogates) == 0:
        raise ValueError("surrogates must hold at least one model")
    rng = torch.Generator().manual_seed(seed)
    y = torch.tensor(c).repeat_interleave(n_per_class)  # (B,)
    z = torch.randn(len(y), generator.z_dim, generator=rng).requires_grad_()
    opt = torch.optim.Adam([z], lr=lr)
    k = generator.n_classes
    for _ in range(check_int("steps", steps, 0)):
        x = _shift(generator(z, y), rng)
        loss = sum(margin_loss(s(x)[:, :k], y).mean() for s in surrogates)
        opt.zero_grad(set_to_none=True)
        (loss / len(surrogates)).backward()
        opt.step()
    with torch.no_grad():
        return generator(z, y), y
    # show: end invert


@torch.no_grad()
def random_latents(generator: ConditionalGenerator, classes: Sequence[int], *,
                   n_per_class: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """G(z, c) for random z, no optimisation: the generator's class input alone."""
    c = check_classes(classes, generator.n_classes)
    n_per_class = check_int("n_per_class", n_per_class, 1)
    y = torch.tensor(c).repeat_interleave(n_per_class)
    z = torch.randn(len(y), generator.z_dim, generator=torch.Generator().manual_seed(seed))
    return generator(z, y), y


def attack_accuracy(evaluator: nn.Module, images: torch.Tensor, targets: torch.Tensor, *,
                    n_classes: int) -> float:
    """Attack accuracy: the share of reconstructions the evaluator E classifies as their target."""
    return accuracy(evaluator, images, targets, n_classes=n_classes)


@torch.no_grad()
def feature_distance(evaluator: DigitClassifier, images: torch.Tensor, targets: torch.Tensor,
                     private_x: torch.Tensor, private_y: torch.Tensor) -> float:
    """Mean over reconstructions of the distance, in E's penultimate features, to the nearest
    private image of the target class (the paper's KNN distance; lower is nearer).
    """
    f = evaluator.features(images)  # (B, D)
    fp = evaluator.features(private_x)  # (P, D)
    d = torch.cdist(f, fp)  # (B, P)
    other = private_y[None, :] != targets[:, None]
    return d.masked_fill(other, float("inf")).min(1).values.mean().item()


def reconstruction_figure(images: Sequence[torch.Tensor], targets: torch.Tensor,
                          budgets: Sequence[int], *, per_class: int = 4,
                          active: int = 0) -> "go.Figure":
    """A grid of reconstructions (a row of ``per_class`` per class), one slider step per budget.

    Args:
        images: per budget, (B, 1, 8, 8) reconstructions ordered by class.
        targets: (B,) their classes (the same for every budget).
        budgets: the query budget of each entry of ``images``.
        per_class: columns shown per class.
        active: the slider's initial step.
    """
    import plotly.graph_objects as go

    from labkit.plotting import styled

    classes = sorted(set(targets.tolist()))
    fig = go.Figure()
    for i, x in enumerate(images):
        rows = []
        for c in classes:
            sel = x[targets == c][:per_class, 0]  # (per_class, 8, 8)
            rows.append(torch.cat(list(sel), 1))  # (8, 8 * per_class)
        grid = torch.cat(rows, 0).flip(0)  # (8 C, 8 per_class), row 0 at the top
        fig.add_heatmap(z=grid.numpy(), colorscale="gray_r", zmin=-1, zmax=1,
                        showscale=False, visible=i == active)
    steps = [dict(label=str(b), method="update",
                  args=[{"visible": [j == i for j in range(len(images))]}])
             for i, b in enumerate(budgets)]
    fig.update_layout(sliders=[dict(active=active, steps=steps,
                                    currentvalue=dict(prefix="surrogate queries: "))])
    ticks = [8 * (len(classes) - 1 - i) + 3.5 for i in range(len(classes))]
    fig.update_yaxes(tickvals=ticks, ticktext=[f"class {c}" for c in classes],
                     scaleanchor="x")
    fig.update_xaxes(showticklabels=False)
    return styled(fig, title="LOKT reconstructions per private class (slider: query "
                             "budget)", x_title="reconstructions (8 x 8 px each)",
                  y_title="target class", height=460)


def budget_figure(budgets: Sequence[int], curves: dict[str, Sequence[float]]) -> "go.Figure":
    """Attack accuracy (%) against the query budget, one line per attack."""
    import plotly.graph_objects as go

    from labkit.plotting import PALETTE, styled

    fig = go.Figure()
    for i, (name, acc) in enumerate(curves.items()):
        fig.add_scatter(x=list(budgets), y=[100 * a for a in acc], name=name,
                        mode="lines+markers", line_color=PALETTE[i % len(PALETTE)])
    fig.update_xaxes(type="log")
    return styled(fig, title="Attack accuracy against the query budget",
                  x_title="queries for the surrogates' training set (log)",
                  y_title="attack accuracy, E's top-1 (%)")
