"""Train the conditional GAN on TRAINING songs only, checkpoint it, and sample from it.

``train_or_load_gan`` asserts that every song it is given is a training song, trains the
SNGAN of :mod:`emovit.gan` (or reuses ``generator.pth`` when it was trained with the same
config, architecture, features and songs), and writes ``generator.pth`` and
``discriminator.pth`` atomically. A non-finite loss stops training, restores the weights
of the last finite epoch and is recorded; the run goes on.

``synthesize`` draws ``num_synthetic`` labels from the training songs' label distribution
(resampled rows plus small Gaussian jitter, clipped to the training range -- never uniform
over [-1, 1]), generates spectrograms in batches on the device and stores them like the real
features: dB, float16, memory-mapped, so both pass through the same ViT preprocessing.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from emovit import gan as G
from emovit.config import Config
from emovit.io import LOG, atomic_path, hash_json, load_checkpoint
from emovit.runtime import amp_dtype
from emovit.split import Standardizer, assert_only_train

GAN_FIELDS = ("gan_epochs", "gan_batch_size", "gan_lr_g", "gan_lr_d", "gan_z_dim", "gan_channels", "seed")
CHECKPOINT_VERSION = 1


@dataclass
class GanResult:
    """A trained (or reloaded) GAN and how it got there."""

    generator: G.Generator
    discriminator: G.Discriminator
    arch: G.GanArch
    standardizer: Standardizer
    train_labels: np.ndarray  # (N, 2) labels of the training songs it learned from
    key: str
    history: list[dict] = field(default_factory=list)  # one row per epoch
    reused: bool = False
    diverged: dict | None = None  # {"epoch", "step", "restored_epoch"} when training stopped on NaN/inf
    seconds: float = 0.0


def gan_key(cfg: Config, arch: G.GanArch, feature_path: str, song_ids, standardizer: Standardizer) -> str:
    return hash_json({
        "version": CHECKPOINT_VERSION, "gan": {k: getattr(cfg, k) for k in GAN_FIELDS}, "arch": arch.to_dict(),
        "features": os.path.basename(feature_path), "songs": sorted(int(s) for s in song_ids),
        "standardizer": standardizer.to_dict(),
    })


def train_or_load_gan(cfg: Config, store, split, song_ids, standardizer: Standardizer, device: str) -> GanResult:
    """Train the cGAN on ``song_ids`` (must all be training songs), or reuse its checkpoint.

    Args:
        store: :class:`emovit.features.FeatureStore` holding the songs' log-mels (dB).
        split: the split table; validation or test songs among ``song_ids`` raise AssertionError.
    """
    song_ids = sorted(int(s) for s in song_ids)
    assert_only_train(song_ids, split, stage="GAN")
    labels = store.songs.set_index("song_id").loc[song_ids, ["valence", "arousal"]].to_numpy(np.float32)
    x = torch.from_numpy(store.centre_windows(song_ids))  # (N, n_mels, T) float16 dB
    x = standardizer(x.float()).to(torch.float16).unsqueeze(1)  # (N, 1, n_mels, T)
    arch = G.GanArch(n_mels=x.shape[2], frames=x.shape[3], z_dim=cfg.gan_z_dim, channels=cfg.gan_channels,
                     out_low=round(float(x.min()), 3), out_high=round(float(x.max()), 3))
    key = gan_key(cfg, arch, store.path, song_ids, standardizer)
    g_path = os.path.join(cfg.output_dir, "generator.pth")
    d_path = os.path.join(cfg.output_dir, "discriminator.pth")
    if os.path.exists(g_path) and os.path.exists(d_path):
        try:
            result = load_gan(g_path, d_path, device)
        except RuntimeError as err:
            if not cfg.retrain_bad_checkpoints:
                raise RuntimeError(f"{err} Or set retrain_bad_checkpoints=True to train it again.") from err
            LOG.warning("GAN: %s -- training again (retrain_bad_checkpoints=True)", err)
            result = None
        if result is not None and result.key == key:
            LOG.info("GAN: reusing %s (same config, features and training songs)", g_path)
            result.reused = True
            return result
        if result is not None:
            LOG.info("GAN: %s was trained with other settings or songs; training again", g_path)

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen, disc = G.Generator(arch).to(device), G.Discriminator(arch).to(device)
    history, diverged = _train(gen, disc, x.to(device), torch.from_numpy(labels).to(device), cfg, device)
    result = GanResult(gen, disc, arch, standardizer, labels, key, history, False, diverged,
                       time.perf_counter() - start)
    save_gan(result, cfg, g_path, d_path)
    return result


def _train(gen, disc, x, y, cfg: Config, device: str) -> tuple[list[dict], dict | None]:
    """SNGAN training loop; returns (history, divergence record or None)."""
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.gan_lr_g, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.gan_lr_d, betas=(0.0, 0.9))
    dtype = amp_dtype(device) if cfg.mixed_precision else None
    scaler_g = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    scaler_d = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    n, bs = len(x), min(cfg.gan_batch_size, len(x))
    steps = max(1, n // bs)  # drop the last partial batch: BatchNorm needs full batches
    gen_rng = torch.Generator().manual_seed(cfg.seed)
    good = (copy.deepcopy(gen.state_dict()), copy.deepcopy(disc.state_dict()), 0)
    history: list[dict] = []
    bar = tqdm(range(1, cfg.gan_epochs + 1), desc="GAN", unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        gen.train()
        disc.train()
        perm = torch.randperm(n, generator=gen_rng).to(device)
        sums = dict.fromkeys(("d_loss", "g_loss", "d_real", "d_fake"), 0.0)
        for step in range(steps):
            idx = perm[step * bs:(step + 1) * bs]
            real, labels = x[idx].float(), y[idx]
            z = torch.randn(bs, gen.arch.z_dim, device=device)
            with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None):
                fake = gen(z, labels)
                d_real, d_fake = disc(real, labels), disc(fake.detach(), labels)
                d_loss = G.d_hinge_loss(d_real, d_fake)
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(d_loss).backward()
            scaler_d.step(opt_d)
            scaler_d.update()
            with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None):
                g_loss = G.g_hinge_loss(disc(gen(torch.randn_like(z), labels), labels))
            opt_g.zero_grad(set_to_none=True)
            scaler_g.scale(g_loss).backward()
            scaler_g.step(opt_g)
            scaler_g.update()
            values = torch.stack([d_loss.detach().float(), g_loss.detach().float(),
                                  d_real.detach().float().mean(), d_fake.detach().float().mean()]).cpu()
            if not torch.isfinite(values).all():
                gen.load_state_dict(good[0])
                disc.load_state_dict(good[1])
                record = {"epoch": epoch, "step": step, "restored_epoch": good[2]}
                LOG.warning("GAN: non-finite loss at epoch %d step %d; restored the weights of epoch %d "
                            "and stopped GAN training", epoch, step, good[2])
                bar.close()
                return history, record
            for k, v in zip(sums, values.tolist()):
                sums[k] += v
        row = {k: v / steps for k, v in sums.items()} | {"epoch": epoch, "seconds": time.perf_counter() - t0}
        history.append(row)
        good = (copy.deepcopy(gen.state_dict()), copy.deepcopy(disc.state_dict()), epoch)
        bar.set_postfix(d_loss=f"{row['d_loss']:.3f}", g_loss=f"{row['g_loss']:.3f}")
        if epoch == 1 and cfg.gan_epochs > 1:
            LOG.info("GAN: first epoch %.1f s; ETA for %d epochs ~%.0f s", row["seconds"], cfg.gan_epochs,
                     row["seconds"] * (cfg.gan_epochs - 1))
    return history, None


def save_gan(result: GanResult, cfg: Config, g_path: str, d_path: str) -> None:
    """Write generator.pth and discriminator.pth atomically (loadable with weights_only=True)."""
    common = {
        "arch": result.arch.to_dict(), "key": result.key, "standardizer": result.standardizer.to_dict(),
        "train_labels": torch.from_numpy(np.asarray(result.train_labels, np.float32)),
        "history": result.history, "diverged": result.diverged, "config": cfg.to_dict(),
        "seconds": result.seconds, "version": CHECKPOINT_VERSION,
    }
    for model, path in ((result.generator, g_path), (result.discriminator, d_path)):
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, **common}, tmp)


def load_gan(g_path: str, d_path: str, device: str) -> GanResult:
    """Rebuild a GAN from its two checkpoints (``torch.load(weights_only=True)``)."""
    g_ckpt = load_checkpoint(g_path)
    d_ckpt = load_checkpoint(d_path)
    arch = G.GanArch(**g_ckpt["arch"])
    gen, disc = G.Generator(arch), G.Discriminator(arch)
    gen.load_state_dict(g_ckpt["state_dict"])
    disc.load_state_dict(d_ckpt["state_dict"])
    return GanResult(
        gen.to(device), disc.to(device), arch, Standardizer(**g_ckpt["standardizer"]),
        g_ckpt["train_labels"].numpy(), g_ckpt["key"], g_ckpt["history"], True, g_ckpt["diverged"],
        g_ckpt["seconds"],
    )


def sample_labels(train_labels: np.ndarray, n: int, jitter: float, seed: int) -> np.ndarray:
    """(n, 2) labels: training rows resampled, plus N(0, jitter), clipped to the training range."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(train_labels, np.float32)[rng.integers(0, len(train_labels), size=n)]
    noisy = rows + rng.normal(0.0, jitter, size=rows.shape).astype(np.float32)
    return np.clip(noisy, train_labels.min(axis=0), train_labels.max(axis=0)).astype(np.float32)


@torch.no_grad()
def generate(gen: G.Generator, labels: np.ndarray, standardizer: Standardizer, device: str,
             batch_size: int = 64, seed: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Spectrograms for ``labels`` (n, 2): (n, n_mels, T) float16 in dB, like the real store.

    ``out`` may be a memmap to write into; same seed and labels give the same output.
    """
    gen.eval()
    n = len(labels)
    out = np.empty((n, gen.arch.n_mels, gen.arch.frames), np.float16) if out is None else out
    rng = torch.Generator(device="cpu").manual_seed(seed)
    for i in tqdm(range(0, n, batch_size), desc="sampling", unit="batch", leave=False):
        y = torch.from_numpy(labels[i:i + batch_size]).to(device)
        z = torch.randn(len(y), gen.arch.z_dim, generator=rng).to(device)
        x = standardizer.inverse(gen(z, y).float()).squeeze(1)
        out[i:i + len(y)] = x.clamp(-1000, 1000).to(torch.float16).cpu().numpy()
    return out


@dataclass
class SyntheticSet:
    mels: np.ndarray  # (n, n_mels, T) float16 dB, memory-mapped
    labels: np.ndarray  # (n, 2) valence, arousal on [-1, 1]
    path: str
    reused: bool
    seconds: float


def synthesize(result: GanResult, cfg: Config, device: str) -> SyntheticSet:
    """``cfg.num_synthetic`` samples, cached under ``<cache>/gan`` by GAN key, count and seed."""
    start = time.perf_counter()
    folder = os.path.join(cfg.cache_path, "gan")
    os.makedirs(folder, exist_ok=True)
    stem = f"synthetic_{result.key}_{cfg.num_synthetic}_{cfg.seed}_{cfg.synthetic_label_jitter}"
    mel_path, label_path = (os.path.join(folder, f"{stem}.{ext}") for ext in ("npy", "labels.npy"))
    reused = os.path.exists(mel_path) and os.path.exists(label_path)
    if not reused:
        labels = sample_labels(result.train_labels, cfg.num_synthetic, cfg.synthetic_label_jitter, cfg.seed)
        with atomic_path(mel_path) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                           shape=(len(labels), result.arch.n_mels, result.arch.frames))
            generate(result.generator, labels, result.standardizer, device, cfg.gan_sample_batch_size,
                     seed=cfg.seed, out=mm)
            mm.flush()
            del mm
        with atomic_path(label_path) as tmp:
            np.save(tmp, labels)
    mels = np.load(mel_path, mmap_mode="r")
    labels = np.load(label_path)
    LOG.info("GAN: %d synthetic spectrograms %s %s", len(labels), "reused from" if reused else "written to", mel_path)
    return SyntheticSet(mels, labels, mel_path, reused, time.perf_counter() - start)
