"""Conditional GAN for log-mel spectrograms conditioned on continuous (valence, arousal).

Design (issue 12) and why:

* **Generator convolutional along time.** The previous generator put ~95% of its parameters
  in one dense layer that laid out the whole starting grid, so every time position was
  memorised separately and samples carried little more than loudness. Here the starting grid
  (n_mels / 16 rows x ceil(frames / 16) columns) is a learned per-row constant plus a
  projection of (global z, label embedding), both *extended along time*, concatenated with a
  local noise sequence (B, noise_dim, rows, columns) -- so time structure (beats, chord
  changes) is a pattern that convolutions learn once and repeat, song-level attributes come
  from the global z and the label, and the same weights generate any length. That lets the GAN
  train on random time crops of the real songs (``crop_frames``, many windows per song, ~3x
  cheaper steps) and still generate the full ``frames``. Frequency is not translation
  invariant in a mel spectrogram, so rows keep their identity (learned per-row constant, and
  the discriminator's head flattens rows instead of pooling them).
* **Conditioning everywhere.** Conditional batch norm in every generator block takes
  (label embedding, z) -- BigGAN's shared embedding + hierarchical z -- and the discriminator
  uses a projection term <embed(y), phi(x)> with an MLP label embedding, which it cannot
  ignore without losing the real/fake game on the label-dependent part.
* **Band statistics in the discriminator** (``d_band_stats``, issue 12's second iteration).
  Diagnosis without it (tools/gan_experiment.py, demo / band generator, numbers below): a
  probe trained on real songs read the synthetic labels, but one trained on synthetic
  samples failed on real songs, because the samples' song-level statistics were too narrow
  and too label-determined: per-band std over time had 0.64x / 0.70x the real spread (21 /
  1 of 128 probe features below 0.3x, which the probe's StandardScaler blows up) and sat
  0.7 / 1.2 real standard deviations off; the labels explained more of the synthetic
  features than of the real ones (median R^2 0.80 vs 0.55 / 0.78 vs 0.44); the synthetic
  set had well under half the real effective dimensionality (participation ratio 1.7 vs
  4.0 / 1.6 vs 5.4). The synthetic-trained ridge then chose a tiny penalty (alpha 1.8 vs
  178 / 0.02 vs 56 on real) and fitted directions unrelated to the real probe's (coefficient
  cosine -0.03 to 0.24). Giving the synthetic features real songs' residual (nuisance)
  variation lifted the demo's TSTR from -0.18 / 0.52 to 0.45 / 0.68 -- the missing
  song-to-song spread, not the labels, was the gap. The convolutional D pools over time,
  so second-order time statistics were weakly constrained. The fix: a small spectrally
  normalised MLP reads each band's mean and std over time of D's input; its output joins
  phi (the linear and the projection term), so D compares songs' dynamics and register with
  the samples'. Cost: a (2 n_mels -> 8c -> 8c) MLP, < 1% of a step (CPU seconds unchanged).
  With it (demo / band): participation ratio 2.3 / 2.7, R^2 0.74 / 0.69.
* **Band statistics standardized by the real crops** (issue 12's third iteration, ARCH_NAME
  conv-time-v3). Diagnosis: D's hinge loss sat at ~2.0 (chance) from step 50 to the end,
  real and fake scores equal to 0.01-0.1, yet a fresh D trained alone against the final EMA
  generator separated them within 200-300 steps (loss 0.05, with DiffAugment): D had the
  capacity but not the signal in the game. Across real crops each band's mean varies by
  ~0.5 and its std over time by ~0.2 standardized units (medians), and the synthetic
  deficit in the std (5.0 vs 6.2 dB on the demo, 4.8 vs 10.2 dB on the band generator, per
  128-frame crop) is a fraction of that; the statistics MLP, 1-Lipschitz under spectral
  norm, turned it into score differences too small to learn from. The MLP's input is now
  (moments - mean) / std of ~512 real training crops' moments (buffers, fitted once before
  training on training songs only, saved with D). D's hinge loss then falls to 1.1-1.5, and
  the generator is pushed where the statistics differ. Tried with it and rejected: a slow
  noise sequence (8 channels, knots every 64 frames, linearly interpolated) so G could vary
  over seconds -- better Frechet on 3 of 4 runs but weaker valence on 3 of 4 (valence
  fidelity 0.68x / 1.15x / 0.77x / 0.28x, TSTR valence 0.29x / 0.75x / -0.10x / 0.15x);
  G left it unused (frame autocorrelation at 16-172 frames stayed ~0, real songs ~0.3).
  Also rejected: residual dilated time convs at G's starting grid (dilations 1, 2, 4, 8):
  demo 42 TSTR 0.25x / 0.41x, band 42 valence fidelity 0.40x, and G outgrew D.
  Tried and rejected: a mode-seeking term on same-label pairs' band statistics
  (``gan_mode_seeking``, pushed toward the real cross-song spread): at weight 1.0 it
  wrecked fidelity and Frechet (step 150: fidelity 0.01 / 0.18, Frechet 29545 vs 0.30 /
  0.75, 6513 without); a 0.25 run was stopped early for time (no result). Off by default.
* **Crops long enough to hold a bar** (issue 12's fourth iteration: the demo preset's
  ``gan_crop_frames`` 128 -> 256 and ``gan_batch_size`` 16 -> 8, the same pixels and CPU
  seconds per step; the architecture is unchanged, and 256 frames (~6 s) is what the kaggle
  preset already used). Diagnosis on the band generator (v3, seed 42): synthetic frames
  decorrelated within ~16 frames (autocorrelation of band energy at lag 4 / 16 / 43 frames:
  0.31 / -0.14 / -0.01 vs 0.66 / 0.40 / 0.23 for real songs) and their per-band std within 32
  frames was 4.4 vs 7.4 dB: held chords and bass notes, and the on/off contrast where they
  change, were missing. Such events last a bar (57-172 frames at the generators' tempi), so a D
  that sees 128 frames rarely sees one whole. Measured with tools/gan_experiment.py
  ``--eval-songs 150`` (150 extra songs of the same generator, seed + 1000, used for nothing
  else; ratios to the real reference there; 600 steps, one thread), 128 x 16 -> 256 x 8:

  | measure (ratio, held-out songs) | demo 42 | demo 7 | band 42 | band 7 | mean |
  | --- | --- | --- | --- | --- | --- |
  | Frechet distance | 2.49 -> 1.99 | 3.51 -> 2.72 | 9.58 -> 3.81 | 11.83 -> 4.63 | 6.85 -> 3.29 |
  | train synthetic, test real, valence | 0.56 -> 0.64 | 0.69 -> 0.73 | 0.42 -> 0.53 | 0.39 -> 0.43 | 0.52 -> 0.58 |
  | train synthetic, test real, arousal | 0.71 -> 0.90 | 0.74 -> 0.91 | 0.81 -> 0.74 | 0.60 -> 0.61 | 0.72 -> 0.79 |
  | label fidelity valence | 0.93 -> 0.86 | 1.19 -> 0.66 | 0.91 -> 0.78 | 0.50 -> 0.93 | 0.88 -> 0.81 |
  | label fidelity arousal | 1.01 -> 1.02 | 0.97 -> 0.83 | 1.03 -> 0.99 | 0.98 -> 0.80 | 1.00 -> 0.91 |
  | diversity | 0.81 -> 0.77 | 0.84 -> 0.67 | 1.02 -> 0.79 | 0.94 -> 0.77 | 0.90 -> 0.75 |

  The Frechet distance and TSTR valence improve in 4 of 4 runs, TSTR arousal in 3 of 4: the
  samples are closer to real songs and more useful as training data; label fidelity and
  diversity fall a little (the labels are imprinted less strongly). GAN seconds unchanged
  (162-189 -> 160-169). On the 14 validation songs the notebook reports, the Frechet ratio
  reads far lower (demo 42: 1.17 -> 0.91; band 7: 4.41 -> 2.14): with 14 songs in 128
  features the real-vs-real reference is itself 4-5x the 150-song one. The kept step was 600
  (the last) in three runs and 300 in band 7. Longer training does not help: 1000 steps on
  the band generator kept step 700 (seed 42; held-out TSTR 0.47x / 0.92x, Frechet 3.80x) and
  300 (seed 7, the same weights as at 600 steps); past ~700 steps D's hinge loss falls to
  0.4-0.6 and valence fidelity on the validation songs drops (seed 42: 0.78 at step 700, 0.26
  at step 1000) -- the discriminator over-fits the 82 training songs. Width helps the band
  generator: ``gan_channels`` 12 instead of the demo's 8 (G and D both wider) gave held-out
  TSTR valence 0.77x / 0.56x (seeds 42 / 7, from 0.53x / 0.43x) and Frechet 3.43x / 3.70x
  (from 3.81x / 4.63x), but TSTR arousal 0.63x / 0.72x and fidelity valence 0.95x / 0.57x, at
  1.55x the seconds; the demo keeps 8 for its CPU budget (the kaggle preset uses 32). The
  demo preset now checks every 100 steps, not 50: a check costs ~1 CPU second (standing
  statistics and 28 full-length samples, 2 threads) and does not change the training
  trajectory (step 100's fidelity and Frechet distance were identical with checks every 10
  and every 100 steps).
  Tried in this iteration and rejected (demo 42 / band 42, held-out ratios vs v3): crops of
  256 at batch 16 (twice the seconds): Frechet 1.85 / 2.89 but TSTR valence 0.11 / 0.34;
  G matching the real batch's mean and spread of the standardized band statistics (weight 1):
  TSTR valence 0.59 / 0.33, Frechet 2.95 / 9.87; 4 of G's 8 noise channels held constant over
  random segments (~80 frames, "notes"), at 128-frame crops: TSTR valence 0.39 / 0.28,
  Frechet 3.30 / 9.67. A learned (channel, mel row) bias after each generator block, so rows
  inside one starting-grid row know their frequency (4 runs, vs the table's right-hand
  values): Frechet lower on 4 of 4 (mean 2.92x) and TSTR arousal up (mean 0.88x), but TSTR
  valence 0.82 / 0.01 / 0.38 / 0.65 (mean 0.47x, was 0.58x) and fidelity valence 1.12 / 0.63
  / 0.77 / 0.47.
  Where valence still fails (band generator): in real songs, valence given arousal is read
  from the bass register (partial correlation of bands 8-10's mean level -0.4 to -0.5, of
  bands 0-10's std +0.3 to +0.5); the synthetic songs carry it in band 1 and bands 37-46
  instead (bands 8-10: -0.1 to -0.2), so a probe trained on them reads the wrong bands. The
  notebook's demo run (``make validate``, 2 threads) met every quality target; its run on the
  band generator (``OVERRIDES {"demo_style": "band"}``) had fidelity 0.87x / 0.99x, TSTR
  -0.15x / 0.75x, Frechet 1.60x, diversity 0.74x, and there the synthetic set lowered the
  ViT's test valence CCC (paired -0.346 [-0.589, -0.039] vs real songs only).
* **Balanced capacity.** The discriminator's widths mirror the generator's (its parameter
  count is at least the generator's; a test checks it), with spectral norm on every layer.
* **Data-efficient training** (in :mod:`emovit.gan_train`): DiffAugment (random time
  translation, time cutout, small level shift) applied identically to real and fake before
  the discriminator; an exponential moving average of the generator's weights for sampling;
  training length in steps; label fidelity and the Frechet distance monitored on validation
  songs, the checkpoint kept by them.
* **Precision.** The discriminator's time pooling, projection and linear head run in float32
  even under autocast (a sum/mean over ~10^4 positions in fp16 loses precision and can
  overflow).

Shapes: the generator maps z (B, z_dim), y (B, 2) and a noise sequence (B, noise_dim,
n_mels / 16, ceil(frames / 16)) to x (B, 1, n_mels, frames) in the STANDARDIZED log-mel space
of the real features ((dB - mean) / std with training-song statistics), bounded by a tanh to
the range of the training data. ``frames`` may be any length (trained on crops, sampled at
full length). n_mels must be a multiple of 16.

Evidence for the third iteration (before the demo preset's crops became 256 x 8: the table in
"Crops long enough to hold a bar" above continues from it) (tools/gan_experiment.py, demo
preset sizes: 82 training songs, 14 validation songs, n_mels 64, 10 s; 600 steps of 128-frame
crops at batch 16, seed 42 for the GAN; one core of a shared 2-core CPU; ratio of
value to real reference per data set; "v2" = band statistics unnormalized (the previous
version), "v3" = standardized (this one); same split and features per column):

| measure (ratio) | demo 42 v2 | demo 42 v3 | demo 7 v2 | demo 7 v3 | band 42 v2 | band 42 v3 | band 7 v2 | band 7 v3 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| label fidelity valence | 1.13 | 1.00 | 1.20 | 1.32 | 1.10 | 0.99 | 0.72 | 0.70 |
| label fidelity arousal | 1.06 | 1.02 | 1.05 | 0.98 | 1.01 | 1.02 | 0.97 | 0.91 |
| train synthetic, test real, valence | 0.67 | 0.64 | 0.43 | 0.86 | -0.08 | 0.19 | 0.07 | -0.39 |
| train synthetic, test real, arousal | 0.89 | 0.66 | 0.57 | 0.80 | 0.88 | 0.78 | 0.18 | 0.53 |
| Frechet distance | 1.60 | 1.17 | 2.31 | 2.20 | 3.20 | 3.15 | 5.59 | 4.41 |
| diversity | 0.82 | 0.81 | 0.93 | 0.84 | 1.09 | 1.02 | 0.94 | 0.94 |

References (real validation songs; CCC for fidelity and TSTR, Frechet distance): demo 42
0.608 / 0.890 / 2844, demo 7 0.618 / 0.881 / 1570, band 42 0.640 / 0.905 / 2132, band 7
0.484 / 0.933 / 1426 -- 14 validation songs each, so every CCC here is noisy (TSTR most:
it moved 0.21x-0.67x between runs of one setting in earlier iterations). Means over the four
runs, v2 -> v3: Frechet 3.18x -> 2.73x (lower on all four), TSTR valence 0.27x -> 0.33x,
TSTR arousal 0.63x -> 0.69x (higher on two of four), valence fidelity 1.04x -> 1.00x; D's
hinge loss at the end ~2.0 -> 0.9-1.4. GAN training:
~165-195 CPU seconds for 600 steps in every column (the normalization costs one pass over
~512 crops). Reached on the demo generator (seed 42): fidelity and Frechet; TSTR sits at
0.64x / 0.66x (seed 7: 0.86x / 0.80x). Not reached on the band generator: TSTR valence and
the Frechet distance (its synthetic crops have half the real within-crop variation: drum
transients and held pads are not reproduced). Earlier iterations' tables are in the git
history.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

UPSAMPLINGS = 4  # the generator doubles height and width this many times
ARCH_NAME = "conv-time-v3"  # stored in checkpoints; other names are stale architectures


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

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(c_in, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn2 = ConditionalBatchNorm(c_out, cond_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


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
        self.embed = nn.Sequential(nn.Linear(arch.label_dim, arch.embed_dim), nn.ReLU(),
                                   nn.Linear(arch.embed_dim, arch.embed_dim))
        self.const = nn.Parameter(torch.randn(1, widths[0], arch.rows0, 1))  # per-row identity, extended in time
        self.global_proj = nn.Linear(cond_dim, widths[0] * arch.rows0)
        self.inp = nn.Conv2d(widths[0] + arch.noise_dim, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(GBlock(widths[i], widths[i + 1], cond_dim) for i in range(UPSAMPLINGS))
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.out = nn.Conv2d(widths[-1], 1, 3, padding=1)
        if arch.band_condition:  # (label embedding, z) -> a level per mel band, before the tanh
            self.band_level = nn.Linear(cond_dim, arch.n_mels)
            nn.init.zeros_(self.band_level.weight)
            nn.init.zeros_(self.band_level.bias)

    def noise_shape(self, batch: int, frames: int | None = None) -> tuple[int, int, int, int]:
        return (batch, self.arch.noise_dim, self.arch.rows0, self.arch.columns0(frames))

    def forward(self, z: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None = None,
                frames: int | None = None) -> torch.Tensor:
        frames = frames or self.arch.frames
        if noise is None:
            noise = torch.randn(self.noise_shape(len(z), frames), device=z.device, dtype=z.dtype)
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
        return (mid + half * torch.tanh(x))[..., start:start + frames]


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
        return F.avg_pool2d(h, 2, ceil_mode=True) + F.avg_pool2d(self.skip(x), 2, ceil_mode=True)


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
        if arch.d_band_stats:  # (B, 2 * n_mels) band mean / std over time -> (B, widths[-1])
            # standardized with the real crops' statistics (set_band_normalization): across real
            # crops a band's mean varies by ~0.5 and its std by ~0.2 standardized units, and the
            # fakes' deficits are fractions of that -- too small for a spectrally normalised
            # (1-Lipschitz) MLP to score without this rescaling (module docstring)
            self.register_buffer("stats_shift", torch.zeros(2 * arch.n_mels))
            self.register_buffer("stats_scale", torch.ones(2 * arch.n_mels))
            self.stats = nn.Sequential(spectral_norm(nn.Linear(2 * arch.n_mels, widths[-1])), nn.LeakyReLU(0.2),
                                       spectral_norm(nn.Linear(widths[-1], widths[-1])))
            self.features_dim += widths[-1]
        self.linear = spectral_norm(nn.Linear(self.features_dim, 1))
        self.embed = nn.Sequential(spectral_norm(nn.Linear(arch.label_dim, arch.embed_dim)), nn.ReLU(),
                                   spectral_norm(nn.Linear(arch.embed_dim, self.features_dim)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, W) -> phi (B, features_dim) float32 (pooling outside autocast)."""
        h = x
        for block in self.blocks:
            h = block(h)
        with torch.autocast(device_type=h.device.type, enabled=False):
            phi = F.leaky_relu(h.float(), 0.2).sum(dim=3).flatten(1)
            if not self.arch.d_band_stats:
                return phi
            moments = (band_moments(x.float()) - self.stats_shift) / self.stats_scale
            return torch.cat([phi, F.leaky_relu(self.stats(moments), 0.2)], dim=1)

    @torch.no_grad()
    def set_band_normalization(self, real: torch.Tensor) -> None:
        """Centre and scale the band-statistics input by real crops (N, 1, n_mels, W): per feature,
        the mean and the std across crops (floored at 1e-3)."""
        if self.arch.d_band_stats:
            m = band_moments(real.float().to(self.stats_shift.device))
            self.stats_shift.copy_(m.mean(dim=0))
            self.stats_scale.copy_(m.std(dim=0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.features(x)
        with torch.autocast(device_type=phi.device.type, enabled=False):
            return self.linear(phi).squeeze(1) + (self.embed(y.float()) * phi).sum(dim=1)


def band_moments(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, n_mels, W) -> (B, 2 * n_mels): each band's mean, then its std over time."""
    return torch.cat([x.mean(dim=3), x.std(dim=3)], dim=2).flatten(1)


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


def d_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def g_hinge_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) for spectrograms, differentiable, per sample.

    x: (B, 1, n_mels, W) standardized. ``policy``: comma-separated subset of
      "translation": circular shift along time by up to W/8 frames (never along frequency:
                     a mel band's position is its pitch);
      "cutout": one time band of W/4 frames set to 0 (the training mean);
      "level": add U(-0.1, 0.1) standardized units (about +-1.5 dB) to the whole sample.
    The same policy is applied to real and fake alike, so the discriminator cannot tell them
    apart by the augmentation, and the generator is not pushed to reproduce it.
    """
    if not policy:
        return x
    b, _, _, w = x.shape
    dev = x.device
    for name in policy.split(","):
        if name == "translation":
            shift = torch.randint(-(w // 8), w // 8 + 1, (b, 1), generator=generator).to(dev)
            idx = (torch.arange(w, device=dev)[None, :] - shift) % w  # (B, W)
            x = torch.gather(x, 3, idx[:, None, None, :].expand_as(x))
        elif name == "cutout":
            size = max(1, w // 4)
            start = torch.randint(0, w - size + 1, (b, 1), generator=generator).to(dev)
            t = torch.arange(w, device=dev)[None, :]
            keep = ~((t >= start) & (t < start + size))
            x = x * keep[:, None, None, :].to(x.dtype)
        elif name == "level":
            x = x + (torch.rand(b, 1, 1, 1, generator=generator).to(dev, x.dtype) - 0.5) * 0.2
        else:
            raise ValueError(f"unknown DiffAugment policy {name!r} (use translation, cutout, level)")
    return x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
