"""Conditional GAN for log-mel spectrograms conditioned on continuous (valence, arousal).

Recipe: SNGAN with a projection discriminator and the hinge loss (Miyato et al. 2018,
"Spectral Normalization for GANs"; Miyato & Koyama 2018, "cGANs with Projection
Discriminator"). Why this one: spectral normalization bounds the discriminator's Lipschitz
constant without the extra backward pass of a gradient penalty (WGAN-GP costs ~2x per D
step), the hinge loss is the standard stable pairing for it, and the projection term
<embed(y), phi(x)> is the well-tested way to condition D on a label -- here a continuous
one, so the embedding is a linear map of (V, A) instead of a lookup table. The generator
uses conditional batch norm (per-channel scale and shift predicted from (V, A)) so the
label acts at every resolution, as in BigGAN.

Shapes: the generator maps z (B, z_dim) and y (B, 2) to x (B, 1, n_mels, T) in the
STANDARDIZED log-mel space of the real features ((dB - mean) / std with training-song
statistics), bounded by a tanh to the range of the training data. It works on a grid of (n_mels, ceil(T / 16) * 16) and crops to T, so any T
works (1292 for the kaggle preset, 431 for the demo). n_mels must be a multiple of 16.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

UPSAMPLINGS = 4  # the generator doubles height and width this many times


@dataclass
class GanArch:
    """Architecture settings, stored in the checkpoints so a GAN can be rebuilt."""

    n_mels: int
    frames: int
    z_dim: int = 128
    channels: int = 32  # width of the last generator / first discriminator block
    label_dim: int = 2
    out_low: float = -4.0  # output range (standardized units): the training data's min ...
    out_high: float = 4.0  # ... and max, reached through a tanh

    def to_dict(self) -> dict:
        return asdict(self)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without affine, then scale and shift predicted from the label embedding."""

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(e).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class GBlock(nn.Module):
    """Residual up-block: (B, c_in, H, W) -> (B, c_out, 2H, 2W)."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(c_in, embed_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn2 = ConditionalBatchNorm(c_out, embed_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, e)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), e)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """(z (B, z_dim), y (B, 2)) -> standardized log-mel (B, 1, n_mels, frames)."""

    def __init__(self, arch: GanArch):
        super().__init__()
        if arch.n_mels % 2**UPSAMPLINGS:
            raise ValueError(f"n_mels must be a multiple of {2**UPSAMPLINGS}, got {arch.n_mels}")
        self.arch = arch
        ch = arch.channels
        widths = [ch * 4, ch * 4, ch * 2, ch, ch]
        self.h0 = arch.n_mels // 2**UPSAMPLINGS
        self.w0 = math.ceil(arch.frames / 2**UPSAMPLINGS)
        embed_dim = 64
        self.embed = nn.Sequential(nn.Linear(arch.label_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.fc = nn.Linear(arch.z_dim + embed_dim, widths[0] * self.h0 * self.w0)
        self.blocks = nn.ModuleList(GBlock(widths[i], widths[i + 1], embed_dim) for i in range(UPSAMPLINGS))
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.out = nn.Conv2d(widths[-1], 1, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.embed(y)
        h = self.fc(torch.cat([z, e], dim=1)).view(len(z), -1, self.h0, self.w0)
        for block in self.blocks:
            h = block(h, e)
        x = torch.tanh(self.out(F.relu(self.out_bn(h))))
        mid, half = (self.arch.out_high + self.arch.out_low) / 2, (self.arch.out_high - self.arch.out_low) / 2
        return (mid + half * x)[..., : self.arch.frames]


class DBlock(nn.Module):
    """Residual down-block with spectral norm: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, first: bool = False):
        super().__init__()
        self.first = first
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.leaky_relu(x, 0.2)
        h = self.conv2(F.leaky_relu(self.conv1(h), 0.2))
        return F.avg_pool2d(h, 2, ceil_mode=True) + F.avg_pool2d(self.skip(x), 2, ceil_mode=True)


class Discriminator(nn.Module):
    """(x (B, 1, n_mels, frames), y (B, 2)) -> score (B,): linear term + projection <embed(y), phi(x)>."""

    def __init__(self, arch: GanArch):
        super().__init__()
        self.arch = arch
        ch = arch.channels
        widths = [1, ch, ch * 2, ch * 4, ch * 8]
        self.blocks = nn.ModuleList(DBlock(widths[i], widths[i + 1], first=i == 0) for i in range(UPSAMPLINGS))
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Linear(arch.label_dim, widths[-1], bias=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h)
        h = F.leaky_relu(h, 0.2).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def d_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def g_hinge_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
