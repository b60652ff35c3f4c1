"""Latent transparency: alpha hidden as a small offset in a frozen autoencoder's latent space.

*Transparent Image Layer Diffusion using Latent Transparency* (Zhang and Agrawala, 2024,
arXiv:2402.17113) turns a pretrained latent diffusion model into a generator of transparent
(RGBA) images without retraining its autoencoder. The frozen encoder ``E*`` maps the image
composited on a neutral background to a latent ``x``; a new *transparency encoder* reads the
RGBA image and adds an offset, ``x_a = x + E(I)``; a new *transparency decoder* reads the
adjusted latent and the frozen decoder's RGB ``D*(x_a)`` and recovers the alpha channel and the
colours. The offset must be *harmless*: the frozen decoder applied to ``x_a`` must still give
back the image, so that ``x_a`` stays where the pretrained diffusion model expects latents and
the model only needs a light fine-tune on them. The training objective (Section 3.1) is

    L = L_recon + lambda_id * L_identity (+ lambda_disc * L_disc),
    L_recon = || I_rgba - D(D*(x_a), x_a) ||^2,   L_identity = || I_c - D*(x_a) ||^2,

with ``I_c`` the composited RGB that ``E*`` was given. The public models (the transparency
encoder's last convolution starts at zero, so training starts from the frozen latent exactly;
the decoder takes the frozen decoder's RGB and the latent and outputs alpha and RGB) fix the
layout followed here.

The miniature: seeded 8 x 8 RGBA sprites (:func:`make_sprites`: soft shapes with colour
gradients and partial opacity), a tiny RGB autoencoder (:class:`RGBAutoencoder`, trained once
by :func:`train_autoencoder`, then frozen) with a 4 x 4 x 4 latent, and the two transparency
networks (:class:`LatentTransparency`) trained by :func:`train_transparency` with
:func:`transparency_loss`. :func:`transparency_metrics` measures what the paper cares about:
the alpha error, the change of the frozen decoder's RGB, and how far the latents' per-channel
mean and standard deviation moved.

What the miniature leaves out: the PatchGAN discriminator term, the variational posterior of
Stable Diffusion's VAE (our autoencoder is deterministic), the iterative colour padding of
transparent pixels (our sprites' colours are defined everywhere), the diffusion fine-tune on
SDXL with 1M images, and multi-layer generation.

Shapes: B batch, H x W sprite (8 x 8), Z latent channels, h x w latent (H/2 x W/2).
Section: chapter 08, "Latent transparency".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from labkit.runtime import seed_everything
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["LatentTransparency", "RGBAutoencoder", "TransparencyMetrics", "TransparencyRun", "check_rgba",
           "composite", "make_sprites", "over_checkerboard", "sprite_mosaic", "train_autoencoder",
           "train_transparency", "transparency_loss", "transparency_metrics"]

_SHAPES = ("disk", "square", "ring", "diamond", "glow")


def check_rgba(name: str, sprites: object) -> torch.Tensor:
    """Return ``sprites`` if it is a float (B, 4, H, W) tensor of RGBA values in [0, 1].

    Raises:
        TypeError: not a float tensor.
        ValueError: not 4-D, no alpha channel (C != 4), or values outside [0, 1].
    """
    check_tensor(name, sprites, dims=4, dtype="float", shape="(B, 4, H, W)")
    if sprites.shape[1] != 4:
        raise ValueError(f"{name} must be RGBA with an alpha channel, shape (B, 4, H, W); got "
                         f"{sprites.shape[1]} channel(s) in shape {tuple(sprites.shape)}")
    if sprites.numel() and (float(sprites.min()) < 0.0 or float(sprites.max()) > 1.0):
        raise ValueError(f"{name} must hold values in [0, 1], got [{float(sprites.min()):.3g}, "
                         f"{float(sprites.max()):.3g}]")
    return sprites


def make_sprites(n: int, *, size: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` seeded RGBA sprites: a soft shape, a two-colour gradient, a random opacity.

    Each sprite is one of ``disk``, ``square``, ``ring``, ``diamond`` (anti-aliased by 4 x 4
    supersampling) or ``glow`` (alpha falling off smoothly from the centre), at a random centre
    and radius; half of them are fully opaque inside the shape, the others have an opacity in
    [0.35, 1). The colour is a gradient between two random colours across the whole square, so
    transparent pixels have a colour too (the paper pads them; here nothing needs padding).

    Returns:
        (n, 4, size, size) float32 in [0, 1]: channels R, G, B, alpha.
    """
    check_int("n", n, 1)
    check_int("size", size, 4)
    gen = torch.Generator().manual_seed(int(check_int("seed", seed, 0)))
    ss = 4  # supersampling factor for soft edges
    grid = (torch.arange(size * ss, dtype=torch.float32) + 0.5) / ss  # sub-pixel centres
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    out = torch.empty(n, 4, size, size)
    u = lambda *shape: torch.rand(shape, generator=gen)  # noqa: E731
    for i in range(n):
        kind = _SHAPES[int(torch.randint(0, len(_SHAPES), (1,), generator=gen))]
        cy, cx = (0.3 + 0.4 * u(2) * 1.0) * size
        r = float(size * (0.18 + 0.2 * u(1)))
        dy, dx = yy - cy, xx - cx
        if kind == "disk":
            inside = (dy ** 2 + dx ** 2 <= r ** 2).float()
        elif kind == "square":
            inside = ((dy.abs() <= r) & (dx.abs() <= r)).float()
        elif kind == "ring":
            d = (dy ** 2 + dx ** 2).sqrt()
            inside = ((d <= r * 1.25) & (d >= r * 0.6)).float()
        elif kind == "diamond":
            inside = (dy.abs() + dx.abs() <= r * 1.3).float()
        else:  # glow: a smooth falloff, alpha strictly between 0 and 1 almost everywhere
            inside = torch.exp(-(dy ** 2 + dx ** 2) / (2 * (0.8 * r) ** 2))
        alpha = F.avg_pool2d(inside[None, None], ss)[0, 0]  # (size, size)
        opacity = 1.0 if float(u(1)) < 0.5 else float(0.35 + 0.65 * u(1))
        c0, c1 = u(3), u(3)
        theta = float(2 * math.pi * u(1))
        pix = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        py, px = torch.meshgrid(pix, pix, indexing="ij")
        ramp = (0.5 + (px - 0.5) * math.cos(theta) + (py - 0.5) * math.sin(theta)).clamp(0, 1)
        out[i, :3] = c0[:, None, None] * (1 - ramp) + c1[:, None, None] * ramp
        out[i, 3] = (alpha * opacity).clamp(0, 1)
    return out


def composite(sprites: torch.Tensor) -> torch.Tensor:
    """The sprites over a neutral grey, in [-1, 1]: what the frozen RGB autoencoder sees.

    ``alpha * c + (1 - alpha) * 0.5`` mapped to [-1, 1] is ``alpha * (2c - 1)``: a fully
    transparent pixel is 0 (grey), whatever its colour.

    Shapes:
        sprites: (B, 4, H, W) in [0, 1]; result: (B, 3, H, W).
    """
    check_rgba("sprites", sprites)
    return sprites[:, 3:] * (2 * sprites[:, :3] - 1)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class RGBAutoencoder(nn.Module):
    """A tiny deterministic RGB autoencoder: (B, 3, H, W) -> (B, Z, H/2, W/2) -> (B, 3, H, W).

    Plays the pretrained latent space: trained once on composited sprites, then frozen.

    Args:
        latent_channels: Z.
        width: channels of the hidden convolutions.
    """

    def __init__(self, latent_channels: int = 4, width: int = 16) -> None:
        super().__init__()
        check_int("latent_channels", latent_channels, 1)
        check_int("width", width, 1)
        self.latent_channels = latent_channels
        # the latent is standardised per channel (running statistics, frozen after training)
        self.enc = nn.Sequential(_conv(3, width), nn.SiLU(), _conv(width, width, 2), nn.SiLU(),
                                 _conv(width, latent_channels), nn.BatchNorm2d(latent_channels, affine=False))
        self.dec = nn.Sequential(_conv(latent_channels, width), nn.SiLU(), nn.Upsample(scale_factor=2),
                                 _conv(width, width), nn.SiLU(), _conv(width, 3))

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """``E*``: RGB in [-1, 1] to the latent (B, Z, H/2, W/2)."""
        return self.enc(rgb)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``D*``: the latent to RGB in [-1, 1] (tanh)."""
        return torch.tanh(self.dec(z))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(rgb))


def train_autoencoder(sprites: torch.Tensor, *, steps: int = 300, batch: int = 64, lr: float = 3e-3,
                      latent_channels: int = 4, width: int = 16, latent_noise: float = 0.2,
                      seed: int = 0) -> RGBAutoencoder:
    """Train :class:`RGBAutoencoder` on the composited sprites (MSE), then freeze it.

    The latent is standardised per channel and, during training only, perturbed by Gaussian
    noise of std ``latent_noise``: the role of the variational posterior's noise in Stable
    Diffusion's VAE, which makes the decoder tolerate small moves of the latent.

    Returns:
        The autoencoder in eval mode with ``requires_grad`` off for every parameter.
    """
    check_rgba("sprites", sprites)
    check_int("steps", steps, 1)
    check_int("batch", batch, 1)
    check_real("lr", lr, 0.0, strict=True)
    check_real("latent_noise", latent_noise, 0.0)
    gen = seed_everything(seed)
    ae = RGBAutoencoder(latent_channels, width)
    rgb = composite(sprites)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, rgb.shape[0], (batch,), generator=gen)
        z = ae.encode(rgb[idx])
        z = z + latent_noise * torch.randn(z.shape, generator=gen)
        loss = F.mse_loss(ae.decode(z), rgb[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return ae.eval().requires_grad_(False)


class LatentTransparency(nn.Module):
    """The transparency encoder ``E`` (RGBA -> latent offset) and decoder ``D`` (-> RGBA).

    ``E`` reads alpha and the colours, (B, 4, H, W), and outputs an offset (B, Z, H/2, W/2); its
    last convolution starts at zero, so at initialisation ``x_a = x``. ``D`` reads the frozen
    decoder's RGB (B, 3, H, W) and the adjusted latent upsampled to (B, Z, H, W) and outputs
    alpha and the colours in [0, 1].

    Args:
        latent_channels: Z, as the frozen autoencoder's.
        width: channels of the hidden convolutions.
        use_offset: False makes ``E`` output zeros (the ablation "no latent transparency": ``D``
            must then guess alpha from the frozen latent alone).
    """

    def __init__(self, latent_channels: int = 4, width: int = 16, *, use_offset: bool = True) -> None:
        super().__init__()
        check_int("latent_channels", latent_channels, 1)
        check_int("width", width, 1)
        self.use_offset = bool(use_offset)
        last = _conv(width, latent_channels)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.enc = nn.Sequential(_conv(4, width), nn.SiLU(), _conv(width, width, 2), nn.SiLU(),
                                 _conv(width, width), nn.SiLU(), last)
        self.dec = nn.Sequential(_conv(3 + latent_channels, width), nn.SiLU(), _conv(width, width), nn.SiLU(),
                                 _conv(width, width), nn.SiLU(), _conv(width, 4))

    def offset(self, sprites: torch.Tensor) -> torch.Tensor:
        """``E(I)``: the latent offset of RGBA ``sprites`` (B, Z, H/2, W/2)."""
        out = self.enc(2 * sprites - 1)
        return out if self.use_offset else torch.zeros_like(out)

    def decode(self, rgb: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """``D(D*(x_a), x_a)``: RGBA in [0, 1] from the frozen decoder's RGB and the latent."""
        up = F.interpolate(latent, size=rgb.shape[-2:], mode="nearest")  # (B, Z, H, W)
        return torch.sigmoid(self.dec(torch.cat([rgb, up], dim=1)))


def transparency_loss(ae: RGBAutoencoder, lt: LatentTransparency, sprites: torch.Tensor, *,
                      identity_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The paper's objective without the discriminator: ``L_recon + lambda_id * L_identity``.

    Returns:
        ``{"loss", "recon", "identity"}``, scalars; ``loss`` carries the gradient.
    """
    # show: start loss
    rgb = composite(sprites)                  # I_c, what the frozen E* sees
    x = ae.encode(rgb)                        # frozen latent x = E*(I_c)
    x_a = x + lt.offset(sprites)              # adjusted latent x_a = x + E(I)
    rgb_a = ae.decode(x_a)                    # frozen decoder D*(x_a)
    out = lt.decode(rgb_a, x_a)               # D(D*(x_a), x_a): RGBA
    alpha = sprites[:, 3:]
    # L_recon: alpha everywhere, colours where they are visible (weighted by alpha)
    recon = (F.mse_loss(out[:, 3:], alpha)
             + ((out[:, :3] - sprites[:, :3]) ** 2 * alpha).mean())
    # L_identity ("harmlessness"): D*(x_a) must still be the image I_c
    identity = F.mse_loss(rgb_a, rgb)
    loss = recon + identity_weight * identity
    # show: end loss
    return {"loss": loss, "recon": recon.detach(), "identity": identity.detach()}


@dataclass
class TransparencyRun:
    """A trained :class:`LatentTransparency` and its training curve.

    ``history`` rows are (step, total loss, reconstruction loss, identity loss), every
    ``log_every`` steps, on the training batch.
    """

    model: LatentTransparency
    identity_weight: float
    history: list[tuple[int, float, float, float]] = field(default_factory=list)


def train_transparency(ae: RGBAutoencoder, sprites: torch.Tensor, *, identity_weight: float = 1.0,
                       use_offset: bool = True, steps: int = 300, batch: int = 64, lr: float = 3e-3,
                       width: int = 16, seed: int = 0, log_every: int = 25) -> TransparencyRun:
    """Train the transparency encoder and decoder against the frozen ``ae`` with Adam.

    Args:
        ae: the frozen RGB autoencoder (its weights are not touched).
        sprites: (N, 4, H, W) RGBA training sprites.
        identity_weight: lambda_id >= 0; 0 removes the harmlessness term.
        use_offset: False trains the decoder alone, on the frozen latent.
        steps, batch, lr, width, seed: the recipe; ``seed`` fixes the weights and the batches.
        log_every: record the losses every this many steps.
    """
    check_rgba("sprites", sprites)
    check_real("identity_weight", identity_weight, 0.0)
    check_int("steps", steps, 1)
    check_int("batch", batch, 1)
    check_int("log_every", log_every, 1)
    check_real("lr", lr, 0.0, strict=True)
    if not isinstance(ae, RGBAutoencoder):
        raise TypeError(f"ae must be an RGBAutoencoder, got {type(ae).__name__}")
    gen = seed_everything(seed)
    lt = LatentTransparency(ae.latent_channels, width, use_offset=use_offset)
    opt = torch.optim.Adam(lt.parameters(), lr=lr)
    run = TransparencyRun(model=lt, identity_weight=float(identity_weight))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        idx = torch.randint(0, sprites.shape[0], (batch,), generator=gen)
        parts = transparency_loss(ae, lt, sprites[idx], identity_weight=identity_weight)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            run.history.append((step + 1, parts["loss"].item(), parts["recon"].item(), parts["identity"].item()))
    lt.eval()
    return run


@dataclass(frozen=True)
class TransparencyMetrics:
    """What latent transparency costs and buys, on a set of sprites.

    Attributes:
        alpha_mae: mean |alpha - recovered alpha|, alpha in [0, 1].
        color_mae: mean |colour - recovered colour| weighted by alpha, in [0, 1] units.
        rgb_change: mean |D*(x_a) - D*(x)|, the frozen decoder's output change, in [0, 1] units.
        ae_error: mean |D*(x) - I_c|, the frozen autoencoder's own error, in [0, 1] units.
        mean_shift: largest per-channel |mean(x_a) - mean(x)|, in units of that channel's std of x.
        std_shift: largest per-channel |std(x_a) / std(x) - 1|.
        offset_rms: RMS of the offset ``x_a - x`` over the RMS spread of ``x`` (std over all entries).
    """

    alpha_mae: float
    color_mae: float
    rgb_change: float
    ae_error: float
    mean_shift: float
    std_shift: float
    offset_rms: float


@torch.no_grad()
def transparency_metrics(ae: RGBAutoencoder, lt: LatentTransparency, sprites: torch.Tensor) -> TransparencyMetrics:
    """Measure ``lt`` on ``sprites`` (see :class:`TransparencyMetrics`); RGB in [-1, 1] is halved."""
    check_rgba("sprites", sprites)
    rgb = composite(sprites)
    x = ae.encode(rgb)
    x_a = x + lt.offset(sprites)
    rgb_x, rgb_a = ae.decode(x), ae.decode(x_a)
    out = lt.decode(rgb_a, x_a)
    alpha = sprites[:, 3:]
    per_ch = lambda z: z.transpose(0, 1).reshape(z.shape[1], -1)  # noqa: E731  (Z, B*h*w)
    mu, sd = per_ch(x).mean(1), per_ch(x).std(1)
    mu_a, sd_a = per_ch(x_a).mean(1), per_ch(x_a).std(1)
    return TransparencyMetrics(
        alpha_mae=(out[:, 3:] - alpha).abs().mean().item(),
        color_mae=((out[:, :3] - sprites[:, :3]).abs() * alpha).sum().item() / max(3 * alpha.sum().item(), 1e-12),
        rgb_change=0.5 * (rgb_a - rgb_x).abs().mean().item(),
        ae_error=0.5 * (rgb_x - rgb).abs().mean().item(),
        mean_shift=((mu_a - mu).abs() / sd).max().item(),
        std_shift=(sd_a / sd - 1).abs().max().item(),
        offset_rms=((x_a - x).pow(2).mean().sqrt() / x.std()).item(),
    )


def over_checkerboard(sprites: torch.Tensor) -> torch.Tensor:
    """RGBA sprites composited over a light grey checkerboard (one square per pixel), RGB in [0, 1].

    The usual way to look at transparency: what shows through is the board.

    Shapes:
        sprites: (B, 4, H, W); result: (B, 3, H, W).
    """
    check_rgba("sprites", sprites)
    h, w = sprites.shape[-2:]
    board = 0.62 + 0.22 * ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2).float()  # (H, W)
    alpha = sprites[:, 3:]
    return sprites[:, :3] * alpha + board * (1 - alpha)


def sprite_mosaic(rows: list[torch.Tensor], *, scale: int = 6, gap: int = 2) -> torch.Tensor:
    """Tile rows of RGB images (each (B, 3, H, W) in [0, 1]) into one uint8 picture for a figure.

    Returns:
        (rows * (H * scale + gap), B * (W * scale + gap), 3) uint8, white gaps between tiles.
    """
    check_int("scale", scale, 1)
    check_int("gap", gap, 0)
    if not rows:
        raise ValueError("rows must hold at least one batch of images, got []")
    b, _, h, w = rows[0].shape
    th, tw = h * scale + gap, w * scale + gap
    out = torch.ones(len(rows) * th, b * tw, 3)
    for r, imgs in enumerate(rows):
        if tuple(imgs.shape) != (b, 3, h, w):
            raise ValueError(f"rows[{r}] must have shape {(b, 3, h, w)}, got {tuple(imgs.shape)}")
        big = imgs.clamp(0, 1).repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # (B, 3, hS, wS)
        for i in range(b):
            out[r * th:r * th + h * scale, i * tw:i * tw + w * scale] = big[i].permute(1, 2, 0)
    return (out * 255).round().to(torch.uint8)
