"""Train the conditional GAN on TRAINING songs only, checkpoint it, and sample from it.

``train_or_load_gan`` asserts that every song it is given is a training song, trains the GAN
of :mod:`emovit.gan` (or reuses ``generator.pth`` when it was trained with the same config,
architecture, features, songs, LABEL VALUES and standardizer), and writes ``generator.pth``
and ``discriminator.pth`` atomically.

Training (one step = one discriminator update + one generator update):
* each item is a random ``gan_crop_frames`` window of a training song (the store may keep
  whole clips longer than ``cfg.num_frames``; only each song's valid frames are used);
* DiffAugment (``gan_diffaugment``) on real and fake alike before the discriminator; with
  ``gan_ada_target`` > 0 each augmentation is applied with a probability ADA's controller
  raises while D is sure of the real crops and lowers when it is not (:func:`emovit.gan.ada_update`);
* the generator forward of the discriminator step runs under ``torch.no_grad()`` (its graph
  would never be used);
* mixed precision per :func:`emovit.runtime.amp_dtype` (fp16 + GradScaler before Ampere,
  bf16 on Ampere+, off on the CPU); the discriminator's pooled features stay float32;
* an exponential moving average of the generator's weights is what samples; its decay ramps
  up with the step and is capped by ``gan_ema_decay`` (:func:`ema_decay`: in both presets the
  ramp, not the cap, decides);
* a non-finite loss skips that step and is counted; more than ``cfg.max_skipped_steps``
  skipped steps restore the last good (last evaluated) weights and stop training;
* every ``gan_eval_every`` steps the EMA generator draws samples for the VALIDATION songs'
  labels (validation labels and audio are read for monitoring only, never trained on):
  label fidelity (CCC of a ridge probe fitted on the real training songs) and the Frechet
  distance of band statistics to the real validation songs; the checkpoint with the best
  score = mean fidelity - 0.25 * max(0, ln(Frechet / real-vs-real reference)) is kept.

``synthesize`` draws ``num_synthetic`` labels from the training songs' label distribution
(resampled rows plus small Gaussian jitter, clipped to the training range -- never uniform
over [-1, 1]), generates spectrograms in batches on the device and stores them like the real
features: dB, float16, memory-mapped, so both pass through the same ViT preprocessing. Its
cache file name holds the GAN key AND a digest of the generator's weights. With
``synthetic_envelope`` s > 0 each sample's band levels over its window move the share s of the way
to :class:`SongEnvelopes`' levels: the training songs' quadratic fit of band levels on the labels,
plus what one random training song's levels carry beyond it (the GAN keeps making everything that
moves within the window). ``synthetic_dynamics`` d > 0 does the same for how far each band moves
around its level (its std over the window, in log): every frame's deviation is scaled, so the
notes stay on their rows and in their frames.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from emovit import gan as G
from emovit import workspace
from emovit.config import Config
from emovit.files import LOG, atomic_path, copy_file, hash_json, load_checkpoint
from emovit.gan_quality import frechet_distance
from emovit.metrics import ccc
from emovit.probe import band_stats, fit_probe, song_features
from emovit.runtime import amp_dtype
from emovit.split import Standardizer, assert_only_train, ids_of

GAN_FIELDS = (
    "gan_steps",
    "gan_batch_size",
    "gan_lr_g",
    "gan_lr_d",
    "gan_z_dim",
    "gan_channels",
    "gan_crop_frames",
    "gan_diffaugment",
    "gan_ada_target",
    "gan_ada_ramp",
    "gan_d_band_stats",
    "gan_mode_seeking",
    "gan_ema_decay",
    "gan_eval_every",
    "gan_margin",
    "gan_band_condition",
    "gan_d_batch_spread",
    "gan_aux_weight",
    "gan_style_dims",
    "gan_style_weight",
    "gan_style_source",
    "gan_d_slow_frames",
    "gan_d_lags",
    "gan_upsample",
    "gan_slow_noise",
    "mixed_precision",
    "seed",
)
CHECKPOINT_VERSION = 2  # 1: the dense-layer generator trained in epochs (stale)
ADA_INTERVAL = 4  # steps whose real-crop signs one ADA update averages
# G and D keep their 4-D weights and activations channels-last (NHWC): on CPU their convolutions run
# ~1.5x faster a step than in the default layout (oneDNN), and on GPU NHWC is what tensor cores read.
MEMORY_FORMAT = torch.channels_last
SELECTION_FD_WEIGHT = 0.25  # weight of ln(Frechet / reference) in the checkpoint-selection score


@dataclass
class GanResult:
    """A trained (or reloaded) GAN and how it got there."""

    generator: G.Generator  # the EMA generator: what samples
    discriminator: G.Discriminator
    arch: G.GanArch
    standardizer: Standardizer
    train_labels: np.ndarray  # (N, 2) labels of the training songs it learned from
    key: str
    history: list[dict] = field(default_factory=list)  # one row per evaluation (every gan_eval_every steps)
    reused: bool = False
    diverged: dict | None = None  # {"step", "skipped_steps", "restored_step"} when training stopped on NaN/inf
    seconds: float = 0.0  # training seconds of this run (0 when the checkpoint was reused)
    best_step: int = 0  # step of the kept checkpoint
    steps_completed: int = 0
    skipped_steps: int = 0  # steps skipped on a non-finite loss
    weights_digest: str = ""  # sha256 of the generator's state (names the synthetic cache)
    train_generator: G.Generator | None = None  # the training (non-EMA) generator at best_step
    batch_size: int = 0  # crops per step it was trained with
    trained_seconds: float = 0.0  # training seconds of the run that trained it
    envelope: SongEnvelopes | None = None  # the training songs' band levels, when synthetic_envelope or _dynamics > 0


def arch_from_config(cfg: Config, n_mels: int | None = None, out_low: float = -4.0, out_high: float = 4.0) -> G.GanArch:
    """The GAN architecture of ``cfg`` (output range: the standardized training data's min and max)."""
    return G.GanArch(
        n_mels=n_mels or cfg.n_mels,
        frames=cfg.num_frames,
        z_dim=cfg.gan_z_dim,
        channels=cfg.gan_channels,
        out_low=out_low,
        out_high=out_high,
        d_band_stats=cfg.gan_d_band_stats,
        margin=cfg.gan_margin,
        band_condition=cfg.gan_band_condition,
        d_batch_spread=cfg.gan_d_batch_spread,
        d_slow_frames=cfg.gan_d_slow_frames,
        d_lags=cfg.gan_d_lags,
        upsample=cfg.gan_upsample,
        slow_noise=cfg.gan_slow_noise,
    )


def gan_key(
    cfg: Config, arch: G.GanArch, feature_path: str, song_ids, labels: np.ndarray, standardizer: Standardizer
) -> str:
    """Hash of everything the trained GAN depends on: settings, arch, features, songs, label values."""
    return hash_json(
        {
            "version": CHECKPOINT_VERSION,
            "gan": {k: getattr(cfg, k) for k in GAN_FIELDS},
            "arch": arch.to_dict(),
            "features": os.path.basename(feature_path),
            "songs": [int(s) for s in song_ids],
            "labels": np.round(np.asarray(labels, np.float64), 6).tolist(),
            "standardizer": standardizer.to_dict(),
        }
    )


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex) over a model's state dict, names and bytes in order."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _valid_frames(store, song_ids, total: int) -> np.ndarray:
    """Valid frames per song: the store's ``frames`` column when it has one, else all ``total``."""
    songs = store.songs.set_index("song_id")
    if "frames" in songs.columns:
        return np.minimum(songs.loc[song_ids, "frames"].to_numpy(np.int64), total)
    return np.full(len(song_ids), total, np.int64)


def train_or_load_gan(cfg: Config, store, split, song_ids, standardizer: Standardizer, device: str) -> GanResult:
    """Train the cGAN on ``song_ids`` (must all be training songs), or reuse its checkpoint.

    Args:
        store: :class:`emovit.features.FeatureStore` holding the songs' log-mels (dB), shape
            (N, n_mels, T_store) with T_store >= cfg.num_frames allowed.
        split: the split table; validation or test songs among ``song_ids`` raise AssertionError.
            Its validation songs are read for monitoring (fidelity, Frechet) only.
    """
    song_ids = sorted(int(s) for s in song_ids)
    assert_only_train(song_ids, split, stage="GAN")
    # copy=True: pandas may hand out a read-only array, which torch.from_numpy warns about
    labels = store.songs.set_index("song_id").loc[song_ids, ["valence", "arousal"]].to_numpy(np.float32, copy=True)
    x = torch.from_numpy(np.ascontiguousarray(store.song_mels(song_ids)))  # (N, n_mels, T_store) float16 dB
    x = standardizer(x.float()).to(torch.float16).unsqueeze(1)  # (N, 1, n_mels, T_store)
    arch = arch_from_config(cfg, n_mels=x.shape[2], out_low=round(float(x.min()), 3), out_high=round(float(x.max()), 3))
    key = gan_key(cfg, arch, store.path, song_ids, labels, standardizer)
    envelope = None
    if cfg.synthetic_envelope > 0 or cfg.synthetic_dynamics > 0:  # not part of the key: sampling, not the GAN
        window_stds = np.asarray(store.centre_windows(song_ids), np.float32).std(axis=2)  # a sample's length
        envelope = SongEnvelopes.fit(song_features(store, song_ids)[:, : arch.n_mels], labels, window_stds)
    folder = workspace.entry(cfg, "gan", key)  # the checkpoints' home, shared by every run of these settings
    g_path, d_path = os.path.join(folder, "generator.pth"), os.path.join(folder, "discriminator.pth")
    if os.path.exists(g_path) and os.path.exists(d_path):
        try:
            result = load_gan(g_path, d_path, device)
        except RuntimeError as err:
            if not cfg.retrain_bad_checkpoints:
                raise RuntimeError(f"{err} Or set retrain_bad_checkpoints=True to train it again.") from err
            LOG.warning("GAN: %s -- training again (retrain_bad_checkpoints=True)", err)
            result = None
        except StaleCheckpoint as err:
            LOG.info("GAN: %s; training again", err)
            result = None
        if result is not None and result.key == key:
            LOG.info("GAN: reusing %s (same config, features, training songs and labels)", g_path)
            result.reused, result.trained_seconds, result.seconds = True, result.seconds, 0.0
            result.envelope = envelope
            _export(cfg, folder, g_path, d_path)
            return result
        if result is not None:
            LOG.info("GAN: %s was trained with other settings, songs or labels; training again", g_path)

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = G.Generator(arch).to(device, memory_format=MEMORY_FORMAT)
    disc = G.Discriminator(arch).to(device, memory_format=MEMORY_FORMAT)
    monitor = Monitor.build(cfg, store, split, song_ids, labels)
    frames = _valid_frames(store, song_ids, x.shape[3])
    crop = _crop_length(cfg, x.shape[3])
    norm_rng = torch.Generator().manual_seed(cfg.seed + 2)
    norm_idx = torch.randint(0, len(x), (min(4 * len(x), 512),), generator=norm_rng)  # <= 512 crops: bounded memory
    norm_crops = random_crops(x, norm_idx, frames, crop, norm_rng)
    disc.set_band_normalization(norm_crops)
    aux = None
    if cfg.gan_aux_weight > 0:  # a frozen ridge probe of the same real training crops
        probe = fit_probe(band_stats(standardizer.inverse(norm_crops[:, 0]).numpy()), labels[norm_idx.numpy()])
        aux = G.BandProbe.from_probe(probe, standardizer.mean, standardizer.std).to(device)
    style = codes = None
    if cfg.gan_style_dims > 0:  # each song's style beyond its labels, carried by z's first dims
        if cfg.gan_style_dims > arch.z_dim:
            raise ValueError(f"gan_style_dims={cfg.gan_style_dims} exceeds gan_z_dim={arch.z_dim}")
        if cfg.gan_style_source == "crop":  # fitted on the real crops above; each crop's own style (codes None)
            means, y = norm_crops.float().mean(dim=3).flatten(1), torch.from_numpy(labels[norm_idx.numpy()])
            style = G.StyleCodes.fit(means, y, cfg.gan_style_dims).to(device)
        else:  # each song's style over its whole clip
            means, y = song_band_means(x, frames), torch.from_numpy(labels)
            style = G.StyleCodes.fit(means, y, cfg.gan_style_dims)
            codes = (means.float() - G.label_design(y) @ style.coef) @ style.components.T  # (N, k), unit variance
            style, codes = style.to(device), codes.to(device)
    result = GanResult(gen, disc, arch, standardizer, labels, key, envelope=envelope)
    _train(
        result,
        x.to(device),
        torch.from_numpy(labels).to(device),
        frames,
        monitor,
        cfg,
        device,
        aux=aux,
        style=style,
        codes=codes,
    )
    result.seconds = result.trained_seconds = time.perf_counter() - start
    result.weights_digest = weights_digest(result.generator)
    params = sum(
        p.numel() for m in (result.generator, result.train_generator, result.discriminator) for p in m.parameters()
    )
    workspace.ensure_free(folder, 4 * params, "the GAN checkpoints")
    save_gan(result, cfg, g_path, d_path)
    _export(cfg, folder, g_path, d_path)
    return result


def _export(cfg: Config, folder: str, *paths: str) -> None:
    """Copy the checkpoints from the cache into the run's outputs; prune superseded GANs."""
    for path in paths:
        copy_file(path, os.path.join(cfg.output_dir, os.path.basename(path)))
    workspace.prune(cfg, "gan", in_use=folder)


# ---- monitoring on validation songs ----------------------------------------------------------


@dataclass
class Monitor:
    """Label fidelity and Frechet distance of EMA samples for the validation songs' labels."""

    probe: object  # ridge probe fitted on the real training songs' band statistics
    val_labels: np.ndarray  # (V, 2)
    val_features: np.ndarray  # (V, F) band statistics of the real validation songs (centre crops)
    fidelity_reference: dict  # per dimension: the probe's CCC on the real validation songs
    frechet_reference: float  # Frechet(real train, real validation)
    copies: int  # samples per validation label

    @classmethod
    def build(cls, cfg: Config, store, split, song_ids, labels: np.ndarray) -> Monitor | None:
        val_ids = ids_of(split, "val")
        if len(val_ids) < 3:
            LOG.warning("GAN: fewer than 3 validation songs; no monitoring, the last step is kept")
            return None
        f_train = band_stats(store.centre_windows(song_ids))
        f_val = band_stats(store.centre_windows(val_ids))
        val_labels = store.songs.set_index("song_id").loc[val_ids, ["valence", "arousal"]].to_numpy(np.float32)
        probe = fit_probe(f_train, labels)
        pred = probe.predict(f_val)
        ref = {dim: ccc(val_labels[:, d], pred[:, d]) for d, dim in enumerate(("valence", "arousal"))}
        return cls(probe, val_labels, f_val, ref, frechet_distance(f_train, f_val), copies=2)

    def evaluate(self, gen: G.Generator, standardizer: Standardizer, device: str, seed: int) -> dict:
        labels = np.repeat(self.val_labels, self.copies, axis=0)
        f_syn = band_stats(generate(gen, labels, standardizer, device, batch_size=64, seed=seed))
        pred = self.probe.predict(f_syn)
        row = {f"fidelity_{dim}": ccc(labels[:, d], pred[:, d]) for d, dim in enumerate(("valence", "arousal"))}
        row |= {f"fidelity_reference_{dim}": v for dim, v in self.fidelity_reference.items()}
        # One sample per validation label, so the distance has the reference's sample size.
        row["frechet"] = frechet_distance(self.val_features, f_syn[:: self.copies])
        row["frechet_reference"] = self.frechet_reference
        fd_penalty = max(0.0, math.log(max(row["frechet"], 1e-9) / max(self.frechet_reference, 1e-9)))
        row["score"] = (row["fidelity_valence"] + row["fidelity_arousal"]) / 2 - SELECTION_FD_WEIGHT * fd_penalty
        return row


# ---- training --------------------------------------------------------------------------------


def song_band_means(x: torch.Tensor, frames: np.ndarray) -> torch.Tensor:
    """(N, 1, n_mels, T) songs with ``frames`` (N,) valid frames each -> (N, n_mels) float32 band
    means over each song's valid frames."""
    return torch.stack([x[i, 0, :, : max(int(f), 1)].float().mean(dim=1) for i, f in enumerate(frames)])


def style_targets(style, codes, idx: torch.Tensor, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """The styles (B, k) the fakes paired with the real crops ``real`` (B, 1, n_mels, W) of songs
    ``idx`` get: the songs' codes (N, k) when given, else each real crop's own style; None without
    a style."""
    if style is None:
        return None
    if codes is not None:
        return codes[idx.to(codes.device)]
    with torch.no_grad():
        return style(real, labels)


def latent(gen, n: int, device, codes: torch.Tensor | None = None) -> torch.Tensor:
    """(n, z_dim) standard normal z; with ``codes`` (n, k), its first k dims are those songs' styles."""
    z = torch.randn(n, gen.arch.z_dim, device=device)
    if codes is not None:
        z = torch.cat([codes.to(z.dtype), z[:, codes.shape[1] :]], dim=1)
    return z


def random_crops(
    x: torch.Tensor, idx: torch.Tensor, frames: np.ndarray, length: int, rng: torch.Generator
) -> torch.Tensor:
    """(B, 1, n_mels, length) float32 windows of songs ``x[idx]`` at random valid offsets.

    Songs with fewer valid frames than ``length`` start at 0 (their padding is included).
    """
    out = []
    for i in idx.tolist():
        span = int(frames[i]) - length
        start = int(torch.randint(0, span + 1, (1,), generator=rng)) if span > 0 else 0
        out.append(x[i, :, :, start : start + length])
    return torch.stack(out).float()


def discriminator_step(
    gen, disc, real, labels, cfg: Config, autocast, aug_rng, codes: torch.Tensor | None = None, aug_p: float = 1.0
) -> tuple[torch.Tensor, ...]:
    """Forward of one D step: (loss, real scores, fake scores, fake). The fake is made under
    ``torch.no_grad()``: the D step never backpropagates into G, so no G graph is built.
    ``codes``: the real crops' songs' styles, given to the fakes (:func:`latent`); ``aug_p``: the
    probability of each augmentation (ADA)."""
    with torch.no_grad(), autocast():
        fake = gen(latent(gen, len(real), real.device, codes), labels, frames=real.shape[3])
    with autocast():
        d_real = disc(G.diff_augment(real, cfg.gan_diffaugment, aug_rng, aug_p), labels)
        d_fake = disc(G.diff_augment(fake, cfg.gan_diffaugment, aug_rng, aug_p), labels)
        d_loss = G.d_hinge_loss(d_real, d_fake)
    return d_loss, d_real, d_fake, fake


def generator_step_loss(
    gen,
    disc,
    labels,
    frames: int,
    cfg: Config,
    autocast,
    aug_rng,
    real: torch.Tensor | None = None,
    aux: G.BandProbe | None = None,
    style: G.StyleCodes | None = None,
    codes: torch.Tensor | None = None,
    aug_p: float = 1.0,
) -> torch.Tensor:
    """Hinge G loss, the fakes augmented with probability ``aug_p`` as in the D step. With
    ``cfg.gan_mode_seeking`` > 0 the batch is pairs sharing a label with different z, and the
    term weight * relu(target - ratio) pushes ratio = |band stats(fake_a) - band stats(fake_b)| /
    |z_a - z_b| up to the same ratio measured between real crops of two
    different songs (``real``), so z carries song-level variation (register, dynamics).
    With ``style`` and ``codes`` (B, k), z's first k dims are the batch songs' styles and
    weight * MSE(style(fake), codes) asks each fake to carry its song's style."""
    half = len(labels) // 2
    seek = cfg.gan_mode_seeking > 0 and half > 0 and real is not None
    if seek:
        labels = torch.cat([labels[:half], labels[:half], labels[2 * half :]])
        codes = None if codes is None else torch.cat([codes[:half], codes[:half], codes[2 * half :]])
    z = latent(gen, len(labels), labels.device, codes)
    with autocast():
        fake = gen(z, labels, frames=frames)
        loss = G.g_hinge_loss(disc(G.diff_augment(fake, cfg.gan_diffaugment, aug_rng, aug_p), labels))
    if aux is not None:  # the labels as a regressor trained on real crops reads them from the fakes
        loss = loss + cfg.gan_aux_weight * F.mse_loss(aux(fake), labels.float())
    if style is not None and codes is not None:
        loss = loss + cfg.gan_style_weight * F.mse_loss(style(fake, labels), codes.float())
    if seek:
        s_fake, s_real = G.band_moments(fake.float()), G.band_moments(real.float())
        dz = (z[:half] - z[half : 2 * half]).abs().mean(dim=1)
        ratio = (s_fake[:half] - s_fake[half : 2 * half]).abs().mean(dim=1) / dz
        target = ((s_real[:half] - s_real[half : 2 * half]).abs().mean(dim=1) / dz).mean().detach()
        loss = loss + cfg.gan_mode_seeking * F.relu(target - ratio.mean())
    return loss


def ema_decay(step: int, cap: float) -> float:
    """The EMA decay at ``step`` (1-based): the warm-up (1 + step) / (10 + step), capped at ``cap``.

    The warm-up averages over ~step / 9 recent steps (StyleGAN2-ADA's EMA ramp-up is of this
    kind: a half-life of 5% of training so far), so early weights do not linger; it reaches a
    cap of 0.99 at step 890 and 0.999 at step 8990. Both presets train for fewer steps (600,
    1750), so there the warm-up, not ``gan_ema_decay``, sets the decay (0.985 at step 600,
    0.9949 at step 1750): a smaller cap acts, a larger one changes nothing.
    """
    return min(cap, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


@torch.no_grad()
def standing_bn_stats(
    gen: G.Generator,
    labels: np.ndarray,
    device: str,
    frames: int,
    batches: int = 8,
    batch_size: int = 32,
    seed: int = 0,
) -> None:
    """Recompute the (EMA) generator's BatchNorm statistics from its own forward passes
    (BigGAN's "standing statistics"): EMA weights do not match running stats gathered by
    the training weights."""
    rng = np.random.default_rng(seed)
    for m in gen.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes below
    gen.train()
    cpu = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        y = torch.from_numpy(np.asarray(labels)[rng.integers(0, len(labels), batch_size)]).to(device)
        gen(
            torch.randn(batch_size, gen.arch.z_dim, generator=cpu).to(device),
            y,
            noise=torch.randn(gen.noise_shape(batch_size, frames), generator=cpu).to(device),
            frames=frames,
        )
    for m in gen.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    gen.eval()


def _snapshot(result: GanResult, gen, disc, ema, step: int) -> dict:
    return {
        "gen": copy.deepcopy(gen.state_dict()),
        "disc": copy.deepcopy(disc.state_dict()),
        "ema": copy.deepcopy(ema.state_dict()),
        "step": step,
    }


def _crop_length(cfg: Config, stored_frames: int) -> int:
    """Frames of a training crop: gan_crop_frames (0 = num_frames), at most the stored length, in
    whole low-resolution columns."""
    crop = min(cfg.gan_crop_frames or cfg.num_frames, int(stored_frames))
    return crop - (crop % 2**G.UPSAMPLINGS if crop >= 2**G.UPSAMPLINGS else 0)


def _train(
    result: GanResult,
    x,
    y,
    frames: np.ndarray,
    monitor: Monitor | None,
    cfg: Config,
    device: str,
    aux: G.BandProbe | None = None,
    style: G.StyleCodes | None = None,
    codes: torch.Tensor | None = None,
) -> None:
    """Hinge-loss GAN training for ``cfg.gan_steps`` steps; fills ``result`` in place. ``aux``: a
    frozen regressor whose squared error on the fakes' labels joins G's loss (``gan_aux_weight``).
    ``style``, ``codes`` (N, k): the training songs' styles (codes None: each real crop's own,
    :func:`style_targets`), given to the fakes paired with each real crop and asked back by G's
    loss (``gan_style_weight``)."""
    gen, disc = result.generator, result.discriminator
    ema = copy.deepcopy(gen).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.gan_lr_g, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.gan_lr_d, betas=(0.0, 0.99))
    dtype = amp_dtype(device) if cfg.mixed_precision else None
    scaler_g = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    scaler_d = torch.amp.GradScaler(device, enabled=dtype == torch.float16)

    def autocast():
        return torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None)

    n, bs = len(x), min(cfg.gan_batch_size, len(x))
    result.batch_size = bs
    crop = _crop_length(cfg, x.shape[3])
    rng = torch.Generator().manual_seed(cfg.seed)
    aug_rng = torch.Generator().manual_seed(cfg.seed + 1)
    best, best_score = _snapshot(result, gen, disc, ema, 0), -math.inf
    last_good = best
    sums, count, skipped, t0 = np.zeros(4), 0, 0, time.perf_counter()
    ada = cfg.gan_ada_target > 0  # ADA starts with no augmentation and adds it while D over-fits
    aug_p, real_signs = (0.0 if ada else 1.0), []
    bar = tqdm(range(1, cfg.gan_steps + 1), desc="GAN", unit="step")
    for step in bar:
        gen.train()
        disc.train()
        idx = torch.randint(0, n, (bs,), generator=rng)
        real, labels = random_crops(x, idx, frames, crop, rng), y[idx.to(y.device)]
        batch_codes = style_targets(style, codes, idx, real, labels)
        d_loss, d_real, d_fake, _ = discriminator_step(
            gen, disc, real, labels, cfg, autocast, aug_rng, batch_codes, aug_p
        )
        if not torch.isfinite(d_loss):
            skipped += 1
        else:
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(d_loss).backward()
            scaler_d.step(opt_d)
            scaler_d.update()
            g_loss = generator_step_loss(
                gen,
                disc,
                labels,
                crop,
                cfg,
                autocast,
                aug_rng,
                real=real,
                aux=aux,
                style=style,
                codes=batch_codes,
                aug_p=aug_p,
            )
            if not torch.isfinite(g_loss):
                skipped += 1
            else:
                opt_g.zero_grad(set_to_none=True)
                scaler_g.scale(g_loss).backward()
                scaler_g.step(opt_g)
                scaler_g.update()
                update_ema(ema, gen, ema_decay(step, cfg.gan_ema_decay))
                sums += [
                    float(d_loss.detach()),
                    float(g_loss.detach()),
                    float(d_real.detach().mean()),
                    float(d_fake.detach().mean()),
                ]
                count += 1
            if ada:
                real_signs.append(float(torch.sign(d_real.detach().float()).mean()))
                if len(real_signs) == ADA_INTERVAL:
                    mean_sign = float(np.mean(real_signs))
                    aug_p = G.ada_update(aug_p, mean_sign, cfg.gan_ada_target, len(real_signs), cfg.gan_ada_ramp)
                    real_signs = []
        if skipped > cfg.max_skipped_steps:
            for model, key in ((gen, "gen"), (disc, "disc"), (ema, "ema")):
                model.load_state_dict(last_good[key])
            result.diverged = {"step": step, "skipped_steps": skipped, "restored_step": last_good["step"]}
            LOG.warning(
                "GAN: %d steps with a non-finite loss (limit max_skipped_steps=%d); restored the weights "
                "of step %d and stopped GAN training",
                skipped,
                cfg.max_skipped_steps,
                last_good["step"],
            )
            break
        if step % cfg.gan_eval_every == 0 or step == cfg.gan_steps:
            row = {
                "step": step,
                **dict(zip(("d_loss", "g_loss", "d_real", "d_fake"), (sums / max(count, 1)).tolist())),
                "skipped_steps": skipped,
                "seconds": time.perf_counter() - t0,
                **({"ada_p": aug_p} if ada else {}),
            }
            standing_bn_stats(ema, result.train_labels, device, crop, seed=cfg.seed)
            if monitor is not None:
                row |= monitor.evaluate(ema, result.standardizer, device, seed=cfg.seed)
            score = row.get("score", step)  # without monitoring: the latest
            last_good = _snapshot(result, gen, disc, ema, step)
            if score > best_score:
                best, best_score = last_good, score
            row = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}
            result.history.append(row)
            bar.set_postfix(
                {
                    k: f"{row[k]:.2f}"
                    for k in ("d_loss", "g_loss", "fidelity_valence", "fidelity_arousal", "frechet")
                    if k in row
                }
            )
            sums, count = np.zeros(4), 0
        result.steps_completed = step
    bar.close()
    result.skipped_steps = skipped
    kept = best  # a snapshot taken at an evaluation before any divergence
    gen.load_state_dict(kept["gen"])
    disc.load_state_dict(kept["disc"])
    ema.load_state_dict(kept["ema"])
    result.best_step = kept["step"]
    result.generator = ema.eval()
    result.train_generator = gen


# ---- checkpoints ---------------------------------------------------------------------------


class StaleCheckpoint(Exception):
    """A generator.pth from another checkpoint version or architecture: retrain, never load."""


def save_gan(result: GanResult, cfg: Config, g_path: str, d_path: str) -> None:
    """Write generator.pth and discriminator.pth atomically (loadable with weights_only=True).

    generator.pth: "state_dict" = the EMA generator (what samples), "train_state_dict" = the
    training generator at the same step; both carry arch, key, standardizer, training labels,
    history, the kept step and the weights digest.
    """
    common = {
        "arch": result.arch.to_dict(),
        "key": result.key,
        "standardizer": result.standardizer.to_dict(),
        "train_labels": torch.from_numpy(np.asarray(result.train_labels, np.float32)),
        "history": result.history,
        "diverged": result.diverged,
        "config": cfg.to_dict(),
        "seconds": result.seconds,
        "version": CHECKPOINT_VERSION,
        "best_step": result.best_step,
        "steps_completed": result.steps_completed,
        "skipped_steps": result.skipped_steps,
        "weights_digest": result.weights_digest,
        "batch_size": result.batch_size,
    }

    def cpu(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    train_gen = result.train_generator or result.generator
    files = (
        (g_path, {"state_dict": cpu(result.generator), "train_state_dict": cpu(train_gen)}),
        (d_path, {"state_dict": cpu(result.discriminator)}),
    )
    for path, states in files:
        with atomic_path(path) as tmp:
            torch.save({**states, **common}, tmp)


def load_gan(g_path: str, d_path: str, device: str) -> GanResult:
    """Rebuild a GAN from its two checkpoints (``torch.load(weights_only=True)``).

    Raises StaleCheckpoint for files of another version / architecture or with architecture
    settings this code does not know (checked before any state dict is loaded), RuntimeError
    naming the file for unreadable ones.
    """
    g_ckpt = load_checkpoint(g_path)
    d_ckpt = load_checkpoint(d_path)
    for path, ckpt in ((g_path, g_ckpt), (d_path, d_ckpt)):
        version, name = ckpt.get("version"), ckpt.get("arch", {}).get("name")
        if version != CHECKPOINT_VERSION or name != G.ARCH_NAME:
            raise StaleCheckpoint(
                f"{path} is checkpoint version {version}, architecture {name!r} "
                f"(this code: version {CHECKPOINT_VERSION}, {G.ARCH_NAME!r})"
            )
    unknown = sorted(set(g_ckpt["arch"]) - {f.name for f in dataclasses.fields(G.GanArch)})
    if unknown:  # written by a development version under the same name: its shapes are not ours
        raise StaleCheckpoint(f"{g_path} has architecture settings this code does not know: {unknown}")
    arch = G.GanArch(**g_ckpt["arch"])
    gen, disc = G.Generator(arch), G.Discriminator(arch)
    gen.load_state_dict(g_ckpt["state_dict"])
    disc.load_state_dict(d_ckpt["state_dict"])
    result = GanResult(
        gen.to(device, memory_format=MEMORY_FORMAT).eval(),
        disc.to(device, memory_format=MEMORY_FORMAT),
        arch,
        Standardizer(**g_ckpt["standardizer"]),
        g_ckpt["train_labels"].numpy(),
        g_ckpt["key"],
        g_ckpt["history"],
        True,
        g_ckpt["diverged"],
        g_ckpt["seconds"],
        g_ckpt["best_step"],
        g_ckpt["steps_completed"],
        g_ckpt["skipped_steps"],
        weights_digest(gen),
        batch_size=g_ckpt["batch_size"],
    )
    return result


# ---- sampling ------------------------------------------------------------------------------


def sample_labels(train_labels: np.ndarray, n: int, jitter: float, seed: int) -> np.ndarray:
    """(n, 2) labels: training rows resampled, plus N(0, jitter), clipped to the training range."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(train_labels, np.float32)[rng.integers(0, len(train_labels), size=n)]
    noisy = rows + rng.normal(0.0, jitter, size=rows.shape).astype(np.float32)
    return np.clip(noisy, train_labels.min(axis=0), train_labels.max(axis=0)).astype(np.float32)


@torch.no_grad()
def generate(
    gen: G.Generator,
    labels: np.ndarray,
    standardizer: Standardizer,
    device: str,
    batch_size: int = 64,
    seed: int = 0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Spectrograms for ``labels`` (n, 2): (n, n_mels, gen.arch.frames) float16 in dB, like the real store.

    ``out`` may be a memmap to write into; same seed and labels give the same output.
    """
    gen.eval()
    n = len(labels)
    out = np.empty((n, gen.arch.n_mels, gen.arch.frames), np.float16) if out is None else out
    rng = torch.Generator(device="cpu").manual_seed(seed)
    for i in tqdm(range(0, n, batch_size), desc="sampling", unit="batch", leave=False):
        y = torch.from_numpy(np.array(labels[i : i + batch_size], np.float32)).to(device)  # a copy: may be read-only
        z = torch.randn(len(y), gen.arch.z_dim, generator=rng).to(device)
        noise = torch.randn(gen.noise_shape(len(y)), generator=rng).to(device)
        x = standardizer.inverse(gen(z, y, noise=noise).float()).squeeze(1)
        out[i : i + len(y)] = x.clamp(-1000, 1000).to(torch.float16).cpu().numpy()
    return out


STD_FLOOR_DB = 1e-2  # added to a band's std before its log: a constant band is scaled from 0.01 dB, not 0


NEEDS_ENVELOPE = "synthetic_envelope or synthetic_dynamics > 0 needs the GAN from train_or_load_gan with that setting"


@dataclass
class SongEnvelopes:
    """The training songs' band levels and dynamics, lent to synthetic samples.

    Fitted on N training songs' band means over their whole clips m (N, n_mels, dB), labels
    y (N, 2) and, optionally, band stds over a window as long as a sample s (N, n_mels, dB): coef
    (6, n_mels) is the least-squares quadratic fit m ~ label_design(y) @ coef and residuals (N,
    n_mels) what each song's levels carry beyond its labels (mix, register, instrumentation);
    dyn_coef and dyn_residuals the same for log(s), how far each band moves around its level (drum
    intensity, note attacks). :meth:`apply` moves a sample's band means over time the given share
    of the way to fit(its label) + one random song's residual, and its log band stds the
    ``dynamics`` share of the way to that song's, by scaling every frame's deviation from its band
    mean: rhythm, chords and where the notes lie stay G's.
    Why: the GAN reproduces the labels' share of the band statistics and the texture within a
    window, but from a few hundred songs not their song-to-song spread, which real songs have and
    the labels do not explain; here that spread is taken from real training songs instead of learned.
    """

    coef: np.ndarray  # (6, n_mels) float64
    residuals: np.ndarray  # (N, n_mels) float64
    dyn_coef: np.ndarray | None = None  # (6, n_mels) float64: fit of the log band stds, when given
    dyn_residuals: np.ndarray | None = None  # (N, n_mels) float64

    @classmethod
    def fit(cls, band_means: np.ndarray, labels: np.ndarray, band_stds: np.ndarray | None = None) -> SongEnvelopes:
        design = G.label_design(torch.from_numpy(np.asarray(labels, np.float64))).numpy()
        if len(design) <= design.shape[1]:
            raise ValueError(
                f"synthetic_envelope fits 6 parameters a band: needs > 6 training songs, got {len(design)} "
                "(use more songs, or synthetic_envelope=0 to keep the generator's own band levels)"
            )
        m = np.asarray(band_means, np.float64)
        coef = np.linalg.lstsq(design, m, rcond=None)[0]
        env = cls(coef, m - design @ coef)
        if band_stds is not None:
            log_s = np.log(np.asarray(band_stds, np.float64) + STD_FLOOR_DB)
            env.dyn_coef = np.linalg.lstsq(design, log_s, rcond=None)[0]
            env.dyn_residuals = log_s - design @ env.dyn_coef
        return env

    def apply(
        self, mels: np.ndarray, labels: np.ndarray, rng: np.random.Generator, share: float = 1.0, dynamics: float = 0.0
    ) -> np.ndarray:
        """(B, n_mels, T) dB and (B, 2) labels -> (B, n_mels, T) float32, band levels moved by ``share``
        and band stds (in log) by ``dynamics``, both toward one song drawn per sample."""
        x = np.asarray(mels, np.float32)
        design = G.label_design(torch.from_numpy(np.asarray(labels, np.float64))).numpy()
        song = rng.integers(0, len(self.residuals), size=len(x))
        level = design @ self.coef + self.residuals[song]
        mean = x.mean(axis=2, keepdims=True)
        if dynamics > 0:
            if self.dyn_coef is None:
                raise ValueError("synthetic_dynamics > 0 needs SongEnvelopes fitted with band_stds")
            target = design @ self.dyn_coef + self.dyn_residuals[song]  # (B, n_mels) log dB
            own = np.log(x.std(axis=2).astype(np.float64) + STD_FLOOR_DB)
            x = mean + (x - mean) * np.exp(dynamics * (target - own)).astype(np.float32)[:, :, None]
        return x + np.float32(share) * (level[:, :, None].astype(np.float32) - mean)


def lend_levels(
    result: GanResult,
    mels: np.ndarray,
    labels: np.ndarray,
    share: float,
    rng: np.random.Generator,
    dynamics: float = 0.0,
):
    """G's samples (B, n_mels, T) dB and their (B, 2) labels -> the samples as the synthetic set
    stores them: band levels moved ``share`` and band stds ``dynamics`` of the way to the training
    songs' (:class:`SongEnvelopes`), float32; with both 0 the samples are returned as they are."""
    if share == 0 and dynamics == 0:
        return mels
    if result.envelope is None:
        raise ValueError(NEEDS_ENVELOPE)
    return result.envelope.apply(mels, labels, rng, share, dynamics)


@dataclass
class SyntheticSet:
    mels: np.ndarray  # (n, n_mels, T) float16 dB, memory-mapped
    labels: np.ndarray  # (n, 2) valence, arousal on [-1, 1]
    path: str
    reused: bool
    seconds: float


def synthesize(result: GanResult, cfg: Config, device: str) -> SyntheticSet:
    """``cfg.num_synthetic`` samples, cached under ``<cache>/synthetic`` by GAN key, generator
    weights, count, seed, jitter and envelope share."""
    start = time.perf_counter()
    lends = cfg.synthetic_envelope > 0 or cfg.synthetic_dynamics > 0
    if lends and result.envelope is None:  # before any sampling
        raise ValueError(NEEDS_ENVELOPE)
    digest = result.weights_digest or weights_digest(result.generator)
    stem = f"synthetic_{result.key}_{digest}_{cfg.num_synthetic}_{cfg.seed}_{cfg.synthetic_label_jitter}"
    if cfg.synthetic_envelope > 0:  # share 0 keeps the names of sets written before the option
        stem += f"_envelope{cfg.synthetic_envelope}"
    if cfg.synthetic_dynamics > 0:
        stem += f"_dynamics{cfg.synthetic_dynamics}"
    folder = workspace.entry(cfg, "synthetic", stem)
    mel_path, label_path = (os.path.join(folder, f"{stem}.{ext}") for ext in ("npy", "labels.npy"))
    reused = os.path.exists(mel_path) and os.path.exists(label_path)
    if not reused:
        labels = sample_labels(result.train_labels, cfg.num_synthetic, cfg.synthetic_label_jitter, cfg.seed)
        workspace.ensure_free(folder, len(labels) * result.arch.n_mels * result.arch.frames * 2, "the synthetic set")
        with atomic_path(mel_path) as tmp:
            mm = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float16, shape=(len(labels), result.arch.n_mels, result.arch.frames)
            )
            generate(
                result.generator, labels, result.standardizer, device, cfg.gan_sample_batch_size, seed=cfg.seed, out=mm
            )
            if lends:
                rng = np.random.default_rng(cfg.seed + 3)
                for i in range(0, len(labels), 256):
                    block = lend_levels(
                        result,
                        mm[i : i + 256],
                        labels[i : i + 256],
                        cfg.synthetic_envelope,
                        rng,
                        cfg.synthetic_dynamics,
                    )
                    mm[i : i + 256] = block.astype(np.float16)
            mm.flush()
            del mm
        with atomic_path(label_path) as tmp:
            np.save(tmp, labels)
    workspace.prune(cfg, "synthetic", in_use=folder)
    mels = np.load(mel_path, mmap_mode="r")
    labels = np.load(label_path)
    LOG.info("GAN: %d synthetic spectrograms %s %s", len(labels), "reused from" if reused else "written to", mel_path)
    return SyntheticSet(mels, labels, mel_path, reused, time.perf_counter() - start)
