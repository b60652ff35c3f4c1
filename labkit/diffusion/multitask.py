"""Joint image-label diffusion: one shared backbone, an image head and a label head.

*Diffusion Models for Multi-Task Generative Modeling* (Chen et al., ICLR 2024,
arXiv:2407.17571), MT-Diffusion, builds one diffusion process over several kinds of data at
once. The forward process aggregates every modality into a common diffusion space; the reverse
process is a shared denoising backbone with one decoder head per modality; and the training
loss, derived from a multi-modal variational bound, is a sum of per-task terms: the image's
noise regression plus each head's negative log-likelihood of its own clean data given the noisy
state. Sampling runs the reverse chain once and reads every modality off the end, so an image
and its label are generated together, unconditionally.

The miniature does joint image-label generation on the 8 x 8 digits:

- the label is a vector ``l0 = 2 onehot(y) - 1`` (K = 10 entries in [-1, 1], the images'
  range) and is diffused with the image by the *same* schedule and step,
  ``l_t = sqrt(abar_t) l0 + sqrt(1 - abar_t) eps_l`` (:func:`label_signal`, DDPM eq. 4);
- :class:`MultiTaskUNet` wraps the book's :class:`~labkit.diffusion.unet.TinyUNet` (built
  unconditional): a linear *label encoder* adds ``l_t`` to the step embedding, so the shared
  decoder sees both modalities; the UNet's own output is the image head (noise, as DDPM); a
  *label head* on the bottleneck (the encoder's last features, pooled, with the embedding)
  predicts the clean label's logits;
- :func:`multitask_loss` is the two-task objective, ``||eps - eps_theta||^2 + lambda CE``;
- :func:`sample_joint` turns the label head's clean estimate into the noise DDIM needs and runs
  the book's one DDIM loop (:func:`~labkit.diffusion.sampling.ddim_loop`) on the image and the
  label packed into one state vector, since the DDIM update is elementwise;
- :func:`label_agreement` and :func:`shuffled_agreement` score the generated labels against a
  classifier's verdicts on the generated images, and calibrate the score by shuffling.

What the miniature leaves out: learned modality encoders with the paper's time-dependent
aggregation weights (here the label enters the state directly and the embedding linearly),
representation and masked-image modalities, ImageNet, and the paper's exact loss weights (the
label term's weight ``lambda`` is a knob here).

Shapes: B batch, K classes, C channels, H x W image, E embedding width, S sampling steps.
Section: chapter 08, "Joint image-label generation with one diffusion model".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from labkit.runtime import seed_everything
from labkit.validation import check_int, check_real, check_tensor

from .sampling import ddim_loop
from .schedule import NoiseSchedule
from .train import DiffusionTrainConfig, training_loop
from .unet import TinyUNet, UNetConfig

__all__ = ["JointTrajectory", "MultiTaskResult", "MultiTaskUNet", "label_agreement", "label_eps",
           "label_signal", "multitask_loss", "sample_joint", "shuffled_agreement", "train_multitask"]


def label_signal(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The clean label as a point of the diffusion space: ``2 onehot(y) - 1``.

    Args:
        y: (B,) integer labels in [0, n_classes).
        n_classes: K.

    Returns:
        (B, K) float32, +1 at the label and -1 elsewhere.
    """
    K = check_int("n_classes", n_classes, 2)
    check_tensor("y", y, dims=1, dtype="integer")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= K):
        raise ValueError(f"y must hold labels in [0, {K}), got [{int(y.min())}, {int(y.max())}]")
    return 2.0 * F.one_hot(y, K).float() - 1.0


class MultiTaskUNet(nn.Module):
    """A shared TinyUNet backbone with a label encoder, an image head and a label head.

    ``forward(x_t, l_t, t) -> (eps, logits)``: the predicted image noise (the UNet's output) and
    the label head's logits for the clean label. The backbone's encoder and decoder run as in
    :class:`~labkit.diffusion.unet.TinyUNet`; the noisy label enters the embedding the decoder
    receives (the encoder sees only the image and the step, so its features are the UNet's own).

    Args:
        cfg: the backbone; must be unconditional (``n_classes=None``): the label is generated,
            not given.
        n_classes: K.
        init_seed: seed of the backbone's name-seeded initialisation and of the heads.
    """

    def __init__(self, cfg: UNetConfig = UNetConfig(n_classes=None), *, n_classes: int = 10,
                 init_seed: int = 0) -> None:
        super().__init__()
        if not isinstance(cfg, UNetConfig):
            raise TypeError(f"cfg must be a UNetConfig, got {type(cfg).__name__}")
        if cfg.n_classes is not None:
            raise ValueError(f"cfg must be unconditional (n_classes=None): the label is generated, "
                             f"got n_classes={cfg.n_classes}")
        self.n_classes = check_int("n_classes", n_classes, 2)
        check_int("init_seed", init_seed, 0)
        self.unet = TinyUNet(cfg, init_seed=init_seed)
        E, C_last = cfg.time_dim, cfg.widths[-1]
        gen = torch.Generator().manual_seed(init_seed + 1)
        self.label_in = nn.Linear(self.n_classes, E)  # label encoder: l_t -> embedding
        self.label_head = nn.Sequential(nn.Linear(C_last + E, E), nn.SiLU(), nn.Linear(E, self.n_classes))
        for layer in (self.label_in, self.label_head[0], self.label_head[2]):
            bound = layer.in_features ** -0.5
            with torch.no_grad():
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound)
                layer.bias.zero_()

    @property
    def cfg(self) -> UNetConfig:
        """The backbone's architecture."""
        return self.unet.cfg

    def n_params(self) -> int:
        """Number of parameters (backbone and both label layers)."""
        return sum(p.numel() for p in self.parameters())

    # show: start model
    def forward(self, x_t: torch.Tensor, l_t: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) images, (B, K) labels, (B,) steps -> (eps, logits)."""
        B, K = x_t.shape[0], self.n_classes
        if l_t.shape != (B, K):
            raise ValueError(f"l_t must be (B, K) = ({B}, {K}), "
                             f"got {tuple(l_t.shape)}")
        feats = self.unet.encode(x_t, t)  # shared encoder: image and step
        # label encoder: the noisy label joins the step embedding, (B, E)
        emb = feats.emb + self.label_in(l_t)
        pooled = feats.h.mean(dim=(2, 3))  # the bottleneck, (B, C_last)
        # label head: logits of the clean label, (B, K)
        logits = self.label_head(torch.cat([pooled, emb], dim=1))
        # image head: the UNet's decoder predicts the image noise
        eps = self.unet.decode(feats, emb)  # (B, C, H, W)
        return eps, logits
    # show: end model


def label_eps(l_t: torch.Tensor, logits: torch.Tensor, t: torch.Tensor,
              schedule: NoiseSchedule) -> torch.Tensor:
    """The label noise implied by the label head's clean estimate, for the DDIM update.

    The head predicts a distribution over classes; its mean in the diffusion space is
    ``l0_hat = 2 softmax(logits) - 1``, and DDPM eq. 4 solved for the noise gives
    ``eps_l = (l_t - sqrt(abar_t) l0_hat) / sqrt(1 - abar_t)``.

    Shapes:
        l_t, logits, result: (B, K); t: (B,).
    """
    if logits.shape != l_t.shape:
        raise ValueError(f"logits must have l_t's shape {tuple(l_t.shape)}, got {tuple(logits.shape)}")
    # show: start label-eps
    abar = schedule.abar(t, device=l_t.device).to(l_t.dtype)[:, None]  # (B, 1)
    # the head's clean estimate: the mean of 2 onehot - 1 under its softmax
    l0_hat = 2.0 * torch.softmax(logits, dim=1) - 1.0
    # DDPM eq. 4 solved for the noise
    return (l_t - abar.sqrt() * l0_hat) / (1 - abar).sqrt()
    # show: end label-eps


# show: start loss
def multitask_loss(model: MultiTaskUNet, schedule: NoiseSchedule,
                   x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, label_noise: torch.Tensor, *,
                   label_weight: float = 1.0) -> tuple[torch.Tensor, ...]:
    """The two-task loss at steps ``t``: ``(total, image, label)``."""
    l0 = label_signal(y, model.n_classes)  # (B, K) in {-1, +1}
    # one forward process for both modalities: same schedule, same t
    x_t = schedule.q_sample(x0, t, noise)
    l_t = schedule.q_sample(l0, t, label_noise)
    eps, logits = model(x_t, l_t, t)
    image = F.mse_loss(eps, noise)  # DDPM's simple term, the image
    # the label decoder's -log p(y | x_t, l_t, t)
    label = F.cross_entropy(logits, y)
    return image + label_weight * label, image, label
# show: end loss


@dataclass
class MultiTaskResult:
    """A trained joint model, its schedule and its curve.

    ``history`` rows are (step, mean image loss, mean label loss since the previous row, seconds
    of training so far).
    """

    model: MultiTaskUNet
    schedule: NoiseSchedule
    label_weight: float
    history: list[tuple[int, float, float, float]] = field(default_factory=list)


def train_multitask(images: torch.Tensor, labels: torch.Tensor, train_cfg: DiffusionTrainConfig, *,
                    cfg: UNetConfig = UNetConfig(n_classes=None), n_classes: int = 10,
                    label_weight: float = 1.0, schedule: NoiseSchedule = NoiseSchedule(), seed: int = 0,
                    progress: bool = True) -> MultiTaskResult:
    """Train a fresh :class:`MultiTaskUNet` on image-label pairs with :func:`multitask_loss`.

    The recipe is :func:`~labkit.diffusion.train.train_ddpm`'s (AdamW, warm-up, cosine decay,
    gradient clipping at 1.0), so the joint model costs one DDPM training; deterministic on CPU.

    Args:
        images: (N, C, H, W) in [-1, 1].
        labels: (N,) integer labels in [0, n_classes).
        train_cfg: the recipe (its ``ema`` must be None: no averaging here).
        cfg: the unconditional backbone.
        n_classes: K.
        label_weight: lambda, the weight of the label term; >= 0 (0 trains the label head on
            nothing but its initialisation).
        schedule: the forward process of both modalities.
        seed: seeds the initialisation, the batches, the steps and both noises.
        progress: show a tqdm bar.

    Returns:
        :class:`MultiTaskResult`, model in eval mode.
    """
    if not isinstance(train_cfg, DiffusionTrainConfig):
        raise TypeError(f"train_cfg must be a DiffusionTrainConfig, got {type(train_cfg).__name__}")
    if train_cfg.ema is not None:
        raise ValueError(f"train_cfg.ema must be None for train_multitask, got {train_cfg.ema}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    lam = check_real("label_weight", label_weight, 0.0)
    check_tensor("images", images, dims=4, dtype="float", shape="(N, C, H, W)")
    check_tensor("labels", labels, dims=1, dtype="integer", shape="(N,)")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be (N,) = ({images.shape[0]},), got {tuple(labels.shape)}")
    gen = seed_everything(seed)
    model = MultiTaskUNet(cfg, n_classes=n_classes, init_seed=seed)
    label_signal(labels, model.n_classes)  # validates the label range once
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must be (N, {shape[0]}, {shape[1]}, {shape[2]}), got {tuple(images.shape)}")
    N, T, B, K = images.shape[0], schedule.n_steps, train_cfg.batch_size, model.n_classes
    result = MultiTaskResult(model=model, schedule=schedule, label_weight=lam)

    def step_losses(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, N, (B,), generator=gen)
        t = torch.randint(0, T, (B,), generator=gen)
        noise = torch.randn((B, *shape), generator=gen)
        label_noise = torch.randn((B, K), generator=gen)
        return multitask_loss(model, schedule, images[idx], labels[idx], t, noise, label_noise,
                              label_weight=lam)

    model.train()
    for log in training_loop(model, train_cfg, step_losses, desc="train joint", progress=progress):
        _, img, lab = log.losses
        result.history.append((log.step, img, lab, log.clock))
    model.eval()
    return result


@dataclass
class JointTrajectory:
    """What :func:`sample_joint` generated, and the clean estimates along the way.

    Attributes:
        images: (B, C, H, W) in [-1, 1], the generated images.
        labels: (B,) int64, the generated labels (argmax of the final label state).
        steps: the S training steps visited, noisiest first.
        label_probs: (S, B, K), the label head's softmax at each visited step.
        image_x0: (S, B, C, H, W), the clean-image estimate at each visited step (clamped).
    """

    images: torch.Tensor
    labels: torch.Tensor
    steps: list[int]
    label_probs: torch.Tensor
    image_x0: torch.Tensor


@torch.no_grad()
def sample_joint(model: MultiTaskUNet, schedule: NoiseSchedule, *, n: int, steps: int = 50,
                 seed: int = 0) -> JointTrajectory:
    """Generate ``n`` image-label pairs together with deterministic DDIM (eta = 0).

    Image and label are packed into one state of ``C H W + K`` numbers per sample and updated
    by the one DDIM loop: the image's noise comes from the image head, the label's from the
    label head through :func:`label_eps`.

    Args:
        model: a trained :class:`MultiTaskUNet`.
        schedule: the schedule it was trained with.
        n: B, samples to draw.
        steps: S, DDIM steps in [1, T].
        seed: seeds the starting noise of both modalities.

    Returns:
        :class:`JointTrajectory`.
    """
    if not isinstance(model, MultiTaskUNet):
        raise TypeError(f"model must be a MultiTaskUNet, got {type(model).__name__}")
    n = check_int("n", n, 1)
    check_int("steps", steps, 1, schedule.n_steps)
    cfg, K = model.cfg, model.n_classes
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    D = shape[0] * shape[1] * shape[2]
    model.eval()
    device = next(model.parameters()).device
    state = torch.randn((n, D + K), generator=torch.Generator().manual_seed(seed)).to(device)
    probs, x0s, visited = [], [], []

    # show: start joint-eps
    def eps_fn(z: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        # unpack the state: images (B, C, H, W) and labels (B, K)
        x_t, l_t = z[:, :D].view(-1, *shape), z[:, D:]
        eps, logits = model(x_t, l_t, t)
        # the label's noise, implied by the label head's clean estimate
        eps_l = label_eps(l_t, logits, t, schedule)
        a = float(schedule.abar(int(t[0])))
        x0 = (x_t - (1 - a) ** 0.5 * eps) / a ** 0.5  # record the estimates
        x0s.append(x0.clamp(-1, 1).cpu())
        probs.append(torch.softmax(logits, dim=1).cpu())
        visited.append(int(t[0]))
        return torch.cat([eps.flatten(1), eps_l], dim=1)  # (B, D + K)
    # show: end joint-eps

    final = ddim_loop(eps_fn, state, schedule, steps)  # eq. 12 on both modalities at once
    images = final[:, :D].view(-1, *shape).cpu()
    labels = final[:, D:].argmax(dim=1).cpu()
    return JointTrajectory(images=images, labels=labels, steps=visited, label_probs=torch.stack(probs),
                           image_x0=torch.stack(x0s))


def label_agreement(labels: torch.Tensor, verdicts: torch.Tensor) -> float:
    """Fraction of samples whose generated label equals the classifier's verdict on its image.

    Args:
        labels: (B,) generated labels.
        verdicts: (B,) the judge's classes for the generated images.
    """
    check_tensor("labels", labels, dims=1, dtype="integer", shape="(B,)")
    check_tensor("verdicts", verdicts, dims=1, dtype="integer", shape="(B,)")
    if labels.shape != verdicts.shape or labels.numel() == 0:
        raise ValueError(f"labels and verdicts must be non-empty and of one shape, got "
                         f"{tuple(labels.shape)} and {tuple(verdicts.shape)}")
    return (labels == verdicts).double().mean().item()


def shuffled_agreement(labels: torch.Tensor, verdicts: torch.Tensor, *, n_perm: int = 1000,
                       seed: int = 0) -> torch.Tensor:
    """The agreement of randomly permuted labels with the verdicts: the calibration of chance.

    Shuffling keeps both marginals (how often each label and each verdict occurs) and breaks only
    the pairing, so the result is what :func:`label_agreement` scores when a label says nothing
    about its own image (about ``sum_k p_label(k) p_verdict(k)``, 0.1 for balanced classes).

    Args:
        labels, verdicts: as for :func:`label_agreement`.
        n_perm: how many permutations.
        seed: seeds the permutations.

    Returns:
        (n_perm,) float64 agreements.
    """
    label_agreement(labels, verdicts)  # validates both
    n_perm = check_int("n_perm", n_perm, 1)
    gen = torch.Generator().manual_seed(seed)
    B = labels.numel()
    perms = torch.stack([torch.randperm(B, generator=gen) for _ in range(n_perm)])  # (n_perm, B)
    return (labels[perms] == verdicts[None]).double().mean(dim=1)
