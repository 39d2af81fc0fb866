"""Conditional GAN for log-mel spectrograms conditioned on continuous (valence, arousal).

Design and why (the measurements behind each choice: docs/experiments.md, section 1):

* **Generator convolutional along time.** The starting grid (n_mels / 16 rows x frames / 16
  columns) is a learned per-row constant plus a projection of (global z, label embedding),
  both extended along time, concatenated with a local noise sequence. Time structure (beats,
  chord changes) is a pattern convolutions learn once and repeat; song-level attributes come
  from z and the label; the same weights generate any length, so the GAN trains on random
  time crops of the songs and samples full windows. Rows keep their frequency identity (the
  per-row constant; ``band_condition`` adds a label- and z-dependent level per mel band).
* **No edge artifacts** (``margin``): G computes ``margin`` extra starting-grid columns on each
  side and drops them, so the zero padding of its convolutions at the time edges never reaches
  an output frame (its reach is 47 frames; 3 columns are 48).
* **Conditioning everywhere.** Conditional batch norm in every generator block from (label
  embedding, z), BigGAN-style; a projection discriminator <embed(y), phi(x)> it cannot ignore.
* **Band statistics in the discriminator** (``d_band_stats``): a spectrally normalised MLP reads
  each band's mean and std over time, standardized by real training crops, so samples must
  match songs' dynamics and register, not only their average spectrum.
  Options, off: ``d_batch_spread`` (the batch's std of each statistic), ``d_slow_frames`` (movement
  between segments), ``d_lags`` (each band's autocorrelation at lags 1, 2, 4, ...: held notes,
  beats), ``slow_noise`` (G's noise drifts over bars), ``upsample`` (smooth 2x steps: "bilinear",
  or "bilinear-freq": across bands only, frames repeated so onsets stay sharp).
* **Style beyond the labels** (``gan_style_dims``, off): a cGAN tends to ignore its noise, so
  songs of one emotion come out as near copies. With k style dims, z's first k entries are, in
  training, the paired real song's (or, ``gan_style_source`` "crop", crop's) :class:`StyleCodes`
  and G's loss asks each fake to carry them; in sampling z stays N(0, I), which draws styles
  with the real songs' covariance.
* **Balanced capacity.** The discriminator's widths mirror the generator's (at least as many
  parameters; a test checks it), spectral norm on every layer.
* **Data-efficient training** (:mod:`emovit.gan_train`): DiffAugment on real and fake alike
  (ADA's adaptive strength an option, :func:`ada_update`), a sampling EMA of G, steps not epochs,
  checkpoints kept by label fidelity and Frechet distance on validation songs; optionally a frozen
  band-statistics probe of real crops whose error on the fakes' labels joins G's loss (:class:`BandProbe`).
* **Precision.** D's pooling, projection and head run in float32 under autocast (fp16 sums overflow).

Shapes: the generator maps z (B, z_dim), y (B, 2) and a noise sequence (B, noise_dim, n_mels /
16, ceil(frames / 16) + 2 margin) to x (B, 1, n_mels, frames) in the STANDARDIZED log-mel space
of the real features ((dB - mean) / std with training-song statistics), bounded by a tanh to the
range of the training data. n_mels must be a multiple of 16.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

UPSAMPLINGS = 4  # the generator doubles height and width this many times
ARCH_NAME = "conv-time-v4"  # stored in checkpoints; other names are stale architectures


@dataclass
class GanArch:
    """Architecture settings, stored in the checkpoints so a GAN can be rebuilt."""

    n_mels: int
    frames: int  # frames of a generated spectrogram (any length works; this is the default)
    z_dim: int = 128  # global noise: song-level attributes
    noise_dim: int = 8  # channels of the local noise sequence: variation along time
    channels: int = 32  # width of the last generator / first discriminator block (inner up to 8x)
    label_dim: int = 2
    embed_dim: int = 64  # label embedding width
    out_low: float = -4.0  # output range (standardized units): the training data's min ...
    out_high: float = 4.0  # ... and max, reached through a tanh
    d_band_stats: bool = False  # D also sees each band's mean and std over time (song-level dynamics)
    margin: int = 0  # starting-grid columns generated on each side of the output and dropped (no edge artifact)
    band_condition: bool = False  # G adds a label- and z-dependent level per mel band to its output
    d_batch_spread: bool = False  # D's statistics MLP also reads the batch's spread of each statistic
    d_slow_frames: int = 0  # D's statistics also hold each band's movement over segments this long (0 = off)
    slow_noise: int = 0  # half of G's noise channels averaged over this many starting-grid columns (0 = off)
    d_lags: int = 0  # D's statistics also hold each band's autocorrelation at lags 1, 2, 4, ... <= d_lags
    upsample: str = "nearest"  # G's 2x upsampling: "nearest", "bilinear" or "bilinear-freq" (bands only)
    name: str = ARCH_NAME

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def rows0(self) -> int:
        return self.n_mels // 2**UPSAMPLINGS

    def columns0(self, frames: int | None = None) -> int:
        """Starting-grid columns G computes for ``frames`` output frames, margins included."""
        return math.ceil((frames or self.frames) / 2**UPSAMPLINGS) + 2 * self.margin


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without affine, then scale and shift predicted from the conditioning vector."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(c).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class GBlock(nn.Module):
    """Residual up-block: (B, c_in, H, W) -> (B, c_out, 2H, 2W)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, upsample: str = "nearest"):
        super().__init__()
        self.upsample = upsample
        self.bn1 = ConditionalBatchNorm(c_in, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn2 = ConditionalBatchNorm(c_out, cond_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = upsample(F.relu(self.bn1(x, c)), self.upsample)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.skip(upsample(x, self.upsample))


def upsample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W); H is the mel bands, W the frames. "bilinear-freq" interpolates
    across bands and repeats frames: a smooth spectrum without blurring onsets in time."""
    if mode == "bilinear-freq":
        frames = F.interpolate(x, scale_factor=(1, 2), mode="nearest")
        return F.interpolate(frames, scale_factor=(2, 1), mode="bilinear")
    return F.interpolate(x, scale_factor=2, mode=mode)


def generator_widths(channels: int) -> list[int]:
    return [channels * 8, channels * 4, channels * 2, channels, channels]


class Generator(nn.Module):
    """(z (B, z_dim), y (B, 2), noise (B, noise_dim, rows0, cols0)) -> (B, 1, n_mels, frames)."""

    def __init__(self, arch: GanArch):
        super().__init__()
        if arch.n_mels % 2**UPSAMPLINGS:
            raise ValueError(f"n_mels must be a multiple of {2**UPSAMPLINGS}, got {arch.n_mels}")
        self.arch = arch
        widths = generator_widths(arch.channels)
        cond_dim = arch.embed_dim + arch.z_dim
        self.embed = nn.Sequential(
            nn.Linear(arch.label_dim, arch.embed_dim), nn.ReLU(), nn.Linear(arch.embed_dim, arch.embed_dim)
        )
        self.const = nn.Parameter(torch.randn(1, widths[0], arch.rows0, 1))  # per-row identity, extended in time
        self.global_proj = nn.Linear(cond_dim, widths[0] * arch.rows0)
        self.inp = nn.Conv2d(widths[0] + arch.noise_dim, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            GBlock(widths[i], widths[i + 1], cond_dim, arch.upsample) for i in range(UPSAMPLINGS)
        )
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.out = nn.Conv2d(widths[-1], 1, 3, padding=1)
        if arch.band_condition:  # (label embedding, z) -> a level per mel band, before the tanh
            self.band_level = nn.Linear(cond_dim, arch.n_mels)
            nn.init.zeros_(self.band_level.weight)
            nn.init.zeros_(self.band_level.bias)

    def noise_shape(self, batch: int, frames: int | None = None) -> tuple[int, int, int, int]:
        return (batch, self.arch.noise_dim, self.arch.rows0, self.arch.columns0(frames))

    def forward(
        self, z: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None = None, frames: int | None = None
    ) -> torch.Tensor:
        frames = frames or self.arch.frames
        if noise is None:
            noise = torch.randn(self.noise_shape(len(z), frames), device=z.device, dtype=z.dtype)
        if self.arch.slow_noise > 1:
            noise = slow_noise(noise, self.arch.slow_noise)
        c = torch.cat([self.embed(y), z], dim=1)
        base = self.const + self.global_proj(c).view(len(z), -1, self.arch.rows0, 1)
        h = self.inp(torch.cat([base.expand(-1, -1, -1, noise.shape[3]), noise.to(base.dtype)], dim=1))
        for block in self.blocks:
            h = block(h, c)
        x = self.out(F.relu(self.out_bn(h)))
        if self.arch.band_condition:
            x = x + self.band_level(c)[:, None, :, None]
        mid, half = (self.arch.out_high + self.arch.out_low) / 2, (self.arch.out_high - self.arch.out_low) / 2
        start = self.arch.margin * 2**UPSAMPLINGS  # the margins' frames are dropped with their zero-padded edges
        return (mid + half * torch.tanh(x))[..., start : start + frames]


def slow_noise(noise: torch.Tensor, columns: int) -> torch.Tensor:
    """(B, C, rows, cols) i.i.d. noise -> the same with its first C // 2 channels a moving average over
    ``columns`` columns, rescaled to unit variance: a latent that drifts over ``columns`` x 16 frames
    (chords, sections) beside the fast one, since G's convolutions reach only ~47 frames."""
    k = noise.shape[1] // 2
    pad = (columns // 2, columns - 1 - columns // 2, 0, 0)
    slow = F.avg_pool2d(F.pad(noise[:, :k], pad, mode="replicate"), (1, columns), stride=1) * math.sqrt(columns)
    return torch.cat([slow, noise[:, k:]], dim=1)


def halve_nhwc(x: torch.Tensor) -> torch.Tensor:
    """2x2 mean pooling of a channels-last (B, C, H, W) tensor with even H and W -> (B, C, H/2, W/2),
    as a reshape of its NHWC view and a mean: the same numbers as ``F.avg_pool2d(x, 2)``, with a
    backward that is one broadcast, cheaper on GPUs than avg_pool2d's (``benchmarks/gpu.json``)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4)).permute(0, 3, 1, 2)


def halve(x: torch.Tensor, nhwc: bool | None = None) -> torch.Tensor:
    """D's down-sampling: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)), the mean of each 2x2 block
    (``F.avg_pool2d(x, 2, ceil_mode=True)``). Even-sized channels-last maps take :func:`halve_nhwc`
    where ``nhwc`` allows it (default: on CUDA); odd sizes, and the CPU, avg_pool2d itself."""
    even = x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
    if (x.is_cuda if nhwc is None else nhwc) and even and x.is_contiguous(memory_format=torch.channels_last):
        return halve_nhwc(x)
    return F.avg_pool2d(x, 2, ceil_mode=True)


class DBlock(nn.Module):
    """Residual down-block with spectral norm: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, first: bool = False, down: bool = True):
        super().__init__()
        self.first, self.down = first, down
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.leaky_relu(x, 0.2)
        h = self.conv2(F.leaky_relu(self.conv1(h), 0.2))
        if not self.down:
            return h + self.skip(x)
        return halve(h) + halve(self.skip(x))


def discriminator_widths(channels: int) -> list[int]:
    return [1, channels, channels * 2, channels * 4, channels * 8]


class Discriminator(nn.Module):
    """(x (B, 1, n_mels, W), y (B, 2)) -> score (B,) float32: linear term + projection <embed(y), phi(x)>.

    phi(x) (B, 8 * channels * n_mels / 16): the last block's features averaged over TIME only
    (any crop length works; rows keep their frequency identity), computed in float32.
    """

    def __init__(self, arch: GanArch):
        super().__init__()
        self.arch = arch
        widths = discriminator_widths(arch.channels)
        self.blocks = nn.ModuleList(DBlock(widths[i], widths[i + 1], first=i == 0) for i in range(UPSAMPLINGS))
        self.blocks.append(DBlock(widths[-1], widths[-1], down=False))  # capacity at low resolution (cheap)
        self.features_dim = widths[-1] * arch.rows0
        if arch.d_band_stats:  # (B, n_stats) band mean / std (/ slow movement / lags) over time -> (B, widths[-1])
            # standardized with the real crops' statistics (set_band_normalization): across real
            # crops a band's mean varies by ~0.5 and its std by ~0.2 standardized units, and the
            # fakes' deficits are fractions of that -- too small for a spectrally normalised
            # (1-Lipschitz) MLP to score without this rescaling (docs/experiments.md, section 1.3)
            n_stats = (2 + bool(arch.d_slow_frames) + len(lags(arch.d_lags))) * arch.n_mels
            self.register_buffer("stats_shift", torch.zeros(n_stats))
            self.register_buffer("stats_scale", torch.ones(n_stats))
            self.stats = nn.Sequential(
                spectral_norm(nn.Linear((2 if arch.d_batch_spread else 1) * n_stats, widths[-1])),
                nn.LeakyReLU(0.2),
                spectral_norm(nn.Linear(widths[-1], widths[-1])),
            )
            self.features_dim += widths[-1]
        self.linear = spectral_norm(nn.Linear(self.features_dim, 1))
        self.embed = nn.Sequential(
            spectral_norm(nn.Linear(arch.label_dim, arch.embed_dim)),
            nn.ReLU(),
            spectral_norm(nn.Linear(arch.embed_dim, self.features_dim)),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, W) -> phi (B, features_dim) float32 (pooling outside autocast)."""
        h = x
        for block in self.blocks:
            h = block(h)
        with torch.autocast(device_type=h.device.type, enabled=False):
            phi = F.leaky_relu(h.float(), 0.2).sum(dim=3).flatten(1)
            if not self.arch.d_band_stats:
                return phi
            moments = (self.band_statistics(x.float()) - self.stats_shift) / self.stats_scale
            if self.arch.d_batch_spread:  # minibatch std (ProGAN) per statistic: the batch's song-to-song variety
                spread = moments.std(dim=0, keepdim=True) if len(moments) > 1 else torch.zeros_like(moments)
                moments = torch.cat([moments, spread.expand_as(moments)], dim=1)
            return torch.cat([phi, F.leaky_relu(self.stats(moments), 0.2)], dim=1)

    def band_statistics(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, W) -> (B, n_stats): :func:`band_moments`, then with ``d_slow_frames`` each
        band's :func:`slow_movement`, then with ``d_lags`` its :func:`band_autocorrelation`."""
        parts = [band_moments(x)]
        if self.arch.d_slow_frames:
            parts.append(slow_movement(x, self.arch.d_slow_frames))
        if self.arch.d_lags:
            parts.append(band_autocorrelation(x, lags(self.arch.d_lags)))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def set_band_normalization(self, real: torch.Tensor) -> None:
        """Centre and scale the band-statistics input by real crops (N, 1, n_mels, W): per feature,
        the mean and the std across crops (floored at 1e-3)."""
        if self.arch.d_band_stats:
            m = self.band_statistics(real.float().to(self.stats_shift.device))
            self.stats_shift.copy_(m.mean(dim=0))
            self.stats_scale.copy_(m.std(dim=0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.features(x)
        with torch.autocast(device_type=phi.device.type, enabled=False):
            return self.linear(phi).squeeze(1) + (self.embed(y.float()) * phi).sum(dim=1)


def band_moments(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, n_mels, W) -> (B, 2 * n_mels): each band's mean, then its std over time."""
    return torch.cat([x.mean(dim=3), x.std(dim=3)], dim=2).flatten(1)


def slow_movement(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, 1, n_mels, W) -> (B, n_mels): each band's std over time of its mean over consecutive
    ``frames``-frame segments (trailing frames dropped): how much its level moves from one segment to
    the next (chord and section changes), which a std over single frames mixes with beats and notes."""
    segments = x.shape[3] // frames
    if segments < 2:
        raise ValueError(f"slow movement needs two {frames}-frame segments; the crop has {x.shape[3]} frames")
    return x[:, 0, :, : segments * frames].unflatten(2, (segments, frames)).mean(dim=3).std(dim=2)


def lags(most: int) -> list[int]:
    """1, 2, 4, ... up to ``most`` (empty for 0)."""
    return [2**i for i in range(max(most, 0).bit_length())]


def band_autocorrelation(x: torch.Tensor, lag_list: list[int]) -> torch.Tensor:
    """(B, 1, n_mels, W) -> (B, len(lag_list) * n_mels): each band's autocorrelation over time at
    each lag (deviations from its mean): how long a level holds (notes, chords) and how it repeats
    (beats), which a band's mean and std cannot tell apart from frame-to-frame jitter."""
    d = x[:, 0] - x[:, 0].mean(dim=2, keepdim=True)
    var = (d * d).mean(dim=2).clamp_min(1e-6)
    return torch.cat([(d[:, :, k:] * d[:, :, :-k]).mean(dim=2) / var for k in lag_list], dim=1)


class BandProbe(nn.Module):
    """A frozen linear regressor on band statistics: standardized log-mel (B, 1, n_mels, W) -> (B, 2).

    The ridge probe of :mod:`emovit.probe` (per-band mean and population std over time of the
    log-mel in dB, scaled, then linear), rewritten in torch so that a generator can learn from
    its gradient. ``from_probe`` copies a fitted scikit-learn pipeline; ``db_mean`` and ``db_std``
    undo the training-song standardization first.
    """

    def __init__(self, shift, scale, coef, intercept, db_mean: float, db_std: float):
        super().__init__()
        for name, value in (("shift", shift), ("scale", scale), ("coef", coef), ("intercept", intercept)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))
        self.db_mean, self.db_std = float(db_mean), float(db_std)
        for p in self.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_probe(cls, probe, db_mean: float, db_std: float) -> BandProbe:
        scaler, ridge = probe[0], probe[-1]
        return cls(scaler.mean_, scaler.scale_, ridge.coef_, ridge.intercept_, db_mean, db_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        db = x.float() * self.db_std + self.db_mean
        moments = torch.cat([db.mean(dim=3), db.std(dim=3, unbiased=False)], dim=2).flatten(1)
        return ((moments - self.shift) / self.scale) @ self.coef.T + self.intercept


def label_design(y: torch.Tensor) -> torch.Tensor:
    """(B, 2) (valence, arousal) -> (B, 6) quadratic design [1, v, a, v^2, a^2, v*a]."""
    v, a = y[:, 0], y[:, 1]
    return torch.stack([torch.ones_like(v), v, a, v * v, a * a, v * a], dim=1)


class StyleCodes(nn.Module):
    """A song's style: what its band means carry beyond its labels, as k whitened principal scores.

    Fitted on the real training songs' band means over time m (N, n_mels) and labels y (N, 2):
    a least-squares quadratic fit m ~ label_design(y) @ coef, then the top k principal
    directions of the residual, each scaled so the training songs' scores have unit variance.
    forward((B, 1, n_mels, W), (B, 2)) -> (B, k) scores of any spectrogram (differentiable).
    Fixed after fitting; used only while training the GAN (no checkpoint carries it).
    """

    def __init__(self, coef: torch.Tensor, components: torch.Tensor):
        super().__init__()
        self.register_buffer("coef", coef.float())  # (6, n_mels)
        self.register_buffer("components", components.float())  # (k, n_mels), rows scaled by 1 / score std

    @classmethod
    def fit(cls, band_means: torch.Tensor, labels: torch.Tensor, k: int) -> StyleCodes:
        m, y = band_means.double(), labels.double()
        design = label_design(y)
        if not 0 < k <= min(len(m) - design.shape[1] - 1, m.shape[1]):
            raise ValueError(
                f"gan_style_dims={k} needs 1 <= k <= songs - 7 and <= n_mels ({len(m)} songs, {m.shape[1]} mels)"
            )
        coef = torch.linalg.lstsq(design, m).solution
        _, s, vh = torch.linalg.svd(m - design @ coef, full_matrices=False)
        score_std = s[:k] / math.sqrt(len(m) - design.shape[1])  # ddof: the fit's 6 parameters
        return cls(coef, vh[:k] / score_std.clamp_min(1e-6)[:, None])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        residual = x.float().mean(dim=3).flatten(1) - label_design(y.float()) @ self.coef
        return residual @ self.components.T


def d_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def g_hinge_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def diff_augment(
    x: torch.Tensor, policy: str, generator: torch.Generator | None = None, p: float = 1.0
) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) for spectrograms, differentiable, per sample.

    x: (B, 1, n_mels, W) standardized. ``policy``: comma-separated subset of
      "translation": circular shift along time by up to W/8 frames (never along frequency:
                     a mel band's position is its pitch);
      "cutout": one time band of W/4 frames set to 0 (the training mean);
      "level": add U(-0.1, 0.1) standardized units (about +-1.5 dB) to the whole sample.
    ``p``: each augmentation is applied to each sample with this probability (ADA's strength,
    :func:`ada_update`); at 1 every sample gets every augmentation, and no extra random numbers
    are drawn. The same policy is applied to real and fake alike, so the discriminator cannot
    tell them apart by the augmentation, and the generator is not pushed to reproduce it.
    """
    if not policy:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability p={p} must be in [0, 1]")
    b, _, _, w = x.shape
    dev = x.device

    def chosen() -> torch.Tensor:  # (B,) bool: the samples this augmentation applies to
        if p >= 1.0:
            return torch.ones(b, dtype=torch.bool, device=dev)
        return (torch.rand(b, generator=generator) < p).to(dev)

    for name in policy.split(","):
        if name == "translation":
            shift = torch.randint(-(w // 8), w // 8 + 1, (b, 1), generator=generator).to(dev)
            shift = shift * chosen()[:, None]
            idx = (torch.arange(w, device=dev)[None, :] - shift) % w  # (B, W)
            x = torch.gather(x, 3, idx[:, None, None, :].expand_as(x))
        elif name == "cutout":
            size = max(1, w // 4)
            start = torch.randint(0, w - size + 1, (b, 1), generator=generator).to(dev)
            t = torch.arange(w, device=dev)[None, :]
            keep = ~((t >= start) & (t < start + size)) | ~chosen()[:, None]
            x = x * keep[:, None, None, :].to(x.dtype)
        elif name == "level":
            shift = (torch.rand(b, 1, 1, 1, generator=generator).to(dev, x.dtype) - 0.5) * 0.2
            x = x + shift * chosen()[:, None, None, None].to(x.dtype)
        else:
            raise ValueError(f"unknown DiffAugment policy {name!r} (use translation, cutout, level)")
    return x


def ada_update(p: float, real_signs: float, target: float, steps: int, ramp_steps: int) -> float:
    """ADA's controller (Karras et al. 2020): the augmentation probability after ``steps`` steps
    whose discriminator gave the augmented real crops a mean sign(D) of ``real_signs`` (the
    over-fitting heuristic r_t: 0 when D cannot tell real from fake, 1 when it is sure of every
    real crop). p moves by steps / ramp_steps towards more augmentation when r_t > ``target``,
    towards less when below, clipped to [0, 1]: from 0 to 1 takes ``ramp_steps`` steps at least.
    """
    direction = 1.0 if real_signs > target else -1.0 if real_signs < target else 0.0
    return float(min(1.0, max(0.0, p + direction * steps / ramp_steps)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
