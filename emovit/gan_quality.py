"""What the synthetic spectrograms carry, each measure beside its real-data reference.

All measures work on the probe features of :mod:`emovit.probe` (per-band mean and std of
the log-mel in dB), which carry loudness, spectral balance and dynamics:

* label fidelity (train on real, test on synthetic): a ridge probe fitted on the real
  training songs predicts each synthetic sample's labels; CCC against the labels it was
  conditioned on. Reference: the same probe on the real validation songs.
* train on synthetic, test on real: the probe fitted on synthetic samples only, scored on
  the real validation songs. Reference: the probe fitted on the real training songs. Both share
  one penalty per row (the real probe's CV choice, times the synthetic rows over the real ones),
  so the two differ in their training data alone: a set of k copies of the training songs reads
  exactly the reference. A penalty chosen by CV among synthetic rows cannot: rows that share a
  source (a copy, the same song's level lent to several samples) agree with each other, so CV
  picks almost none, and such a probe reads real songs worse (those copies: ~0.7x).
* Frechet distance between the feature distributions of real training songs and synthetic
  samples (a random subset the size of the validation set, since the distance shrinks with
  sample size). Reference: real training vs real validation songs. The same distance on the band
  stds alone (``frechet_distance_dynamics``: how each band moves within the window) reads the part
  of the samples that their band levels do not set.
* diversity: mean pairwise distance between standardized feature vectors within synthetic
  samples vs within real training songs (mode collapse shows as a much smaller value).
* variety beyond the labels: the variance of the standardized features that a quadratic fit on
  (valence, arousal) leaves unexplained, synthetic vs real training songs. Real songs of one
  emotion still differ (tempo, gain, instruments, key); a generator that ignores its noise
  makes every song of an emotion alike, which diversity alone hides (the labels vary).
* movement over time: how much each band's level moves within a window (the variance of its
  mean over the window's quarters, in dB^2, summed over bands), synthetic vs real training
  songs. Real songs change over seconds (instruments enter, the register moves); a generator
  trained on short crops can make windows that hold still, which per-window statistics hide.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from scipy import linalg
from sklearn.preprocessing import StandardScaler

from emovit.files import atomic_write_json
from emovit.gan import count_parameters
from emovit.metrics import DIMENSIONS, ccc, ccc_interval, format_interval
from emovit.probe import band_stats, fit_probe
from emovit.split import ids_of


def centre_crop(mels: np.ndarray, frames: int) -> np.ndarray:
    """(N, n_mels, T) -> (N, n_mels, min(T, frames)): the centre ``frames`` of each row, so whole
    stored clips compare like with like with generated windows of ``frames``."""
    start = max(0, (mels.shape[2] - frames) // 2)
    return mels[:, :, start : start + frames]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    covmean = np.real(covmean)  # sqrtm returns tiny imaginary parts from round-off
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


def mean_pairwise_distance(x: np.ndarray, max_items: int = 500, seed: int = 0) -> float:
    """Mean Euclidean distance over all pairs of (a random subset of) rows of x (N, F)."""
    rng = np.random.default_rng(seed)
    if len(x) > max_items:
        x = x[rng.choice(len(x), max_items, replace=False)]
    sq = np.sum(x**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    iu = np.triu_indices(len(x), k=1)
    return float(np.sqrt(d2[iu]).mean())


def label_residual_variance(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean over features (N, F) of the variance a quadratic least-squares fit on labels (N, 2)
    leaves, with the fit's 6 degrees of freedom taken out of the denominator (unbiased)."""
    x = np.column_stack([np.ones(len(labels)), labels, labels**2, labels[:, 0] * labels[:, 1]])
    if len(x) <= x.shape[1]:
        raise ValueError(f"need more than {x.shape[1]} rows to fit the labels, got {len(x)}")
    beta, *_ = np.linalg.lstsq(x, features, rcond=None)
    return float(((features - x @ beta) ** 2).sum(axis=0).mean() / (len(x) - x.shape[1]))


def movement_over_time(mels: np.ndarray, parts: int = 4) -> float:
    """Mean over windows (N, n_mels, T) in dB of the summed-over-bands variance (population) of each
    band's mean over ``parts`` equal consecutive segments of the window (trailing frames dropped).
    Reads 256 windows at a time, so a memory-mapped set is never loaded whole."""
    seg = mels.shape[2] // parts
    if seg < 1 or len(mels) == 0:
        raise ValueError(f"cannot cut {len(mels)} windows of {mels.shape[2]} frames into {parts} segments")
    total = 0.0
    for i in range(0, len(mels), 256):
        x = np.asarray(mels[i : i + 256, :, : seg * parts], np.float32)
        means = x.reshape(len(x), x.shape[1], parts, seg).mean(axis=3, dtype=np.float64)
        total += float(means.var(axis=2).sum())
    return total / len(mels)


def gan_quality(
    real_train: np.ndarray,
    train_labels: np.ndarray,
    real_val: np.ndarray,
    val_labels: np.ndarray,
    synthetic: np.ndarray,
    synthetic_labels: np.ndarray,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict:
    """Every measure as {"value": synthetic, "reference": real-data value} per dimension; the CCC
    measures also carry "interval" and "reference_interval", 95% bootstrap intervals (validation
    songs resampled, the same resamples for a measure and its reference; synthetic samples for
    label fidelity's value). With few validation songs they are wide: read a ratio against them.

    Args:
        real_train, real_val, synthetic: log-mels (N, n_mels, T) in dB (memmaps are fine); real
            songs longer than the synthetic ones are centre-cropped to their length first.
        *_labels: (N, 2) valence, arousal on [-1, 1].
        n_boot: bootstrap resamples for the intervals.
    """
    frames = synthetic.shape[2]
    w_train = centre_crop(real_train, frames)
    f_train, f_val = band_stats(w_train), band_stats(centre_crop(real_val, frames))
    f_syn = band_stats(synthetic)
    real_probe = fit_probe(f_train, train_labels)
    penalty = real_probe[-1].alpha_ * len(f_syn) / len(f_train)  # the real probe's, per row
    syn_probe = fit_probe(f_syn, synthetic_labels, alpha=penalty)
    on_syn, on_val, syn_on_val = real_probe.predict(f_syn), real_probe.predict(f_val), syn_probe.predict(f_val)
    out: dict = {"n_real_train": len(f_train), "n_real_val": len(f_val), "n_synthetic": len(f_syn)}
    boot = np.random.default_rng([seed, 1])  # its own stream: the Frechet subset does not depend on n_boot
    val_rows = boot.integers(0, len(f_val), size=(n_boot, len(f_val)))
    syn_rows = boot.integers(0, len(f_syn), size=(n_boot, len(f_syn)))
    y_val, y_syn = np.asarray(val_labels, dtype=np.float64), np.asarray(synthetic_labels, dtype=np.float64)
    for d, dim in enumerate(DIMENSIONS):
        reference = {
            "reference": ccc(y_val[:, d], on_val[:, d]),
            "reference_interval": ccc_interval(y_val[:, d], on_val[:, d], val_rows),
        }
        out[f"label_fidelity_{dim}"] = {
            "value": ccc(y_syn[:, d], on_syn[:, d]),
            "interval": ccc_interval(y_syn[:, d], on_syn[:, d], syn_rows),
            **reference,
        }
        out[f"train_synthetic_test_real_{dim}"] = {
            "value": ccc(y_val[:, d], syn_on_val[:, d]),
            "interval": ccc_interval(y_val[:, d], syn_on_val[:, d], val_rows),
            **reference,
        }
    rng = np.random.default_rng(seed)
    subset = f_syn[rng.choice(len(f_syn), min(len(f_val), len(f_syn)), replace=False)]
    out["frechet_distance"] = {
        "value": frechet_distance(f_train, subset),
        "reference": frechet_distance(f_train, f_val),
    }
    n = f_train.shape[1] // 2  # band means, then band stds
    out["frechet_distance_dynamics"] = {
        "value": frechet_distance(f_train[:, n:], subset[:, n:]),
        "reference": frechet_distance(f_train[:, n:], f_val[:, n:]),
    }
    scaler = StandardScaler().fit(f_train)
    out["diversity"] = {
        "value": mean_pairwise_distance(scaler.transform(f_syn), seed=seed),
        "reference": mean_pairwise_distance(scaler.transform(f_train), seed=seed),
    }
    out["variety_beyond_labels"] = {
        "value": label_residual_variance(scaler.transform(f_syn), synthetic_labels),
        "reference": label_residual_variance(scaler.transform(f_train), train_labels),
    }
    out["movement_over_time"] = {"value": movement_over_time(synthetic), "reference": movement_over_time(w_train)}
    return out


READS = {
    "label_fidelity": "CCC of the real-trained probe on synthetic samples vs their conditioning labels; "
    "near the reference = labels carried",
    "train_synthetic_test_real": "CCC on real validation songs of the probe (its penalty too) trained on "
    "synthetic samples only; "
    "near the reference = useful training data",
    "frechet_distance_dynamics": "the same on the band stds alone (movement within the window), which "
    "the band levels do not set",
    "frechet_distance": "lower is closer to the real training distribution; "
    "the reference is real train vs real validation",
    "diversity": "mean pairwise feature distance; far below the reference = mode collapse",
    "variety_beyond_labels": "feature variance the labels do not explain; far below the reference = "
    "songs of one emotion all alike (the generator ignores its noise)",
    "movement_over_time": "how much band levels move within a window (over its quarters); far below the "
    "reference = samples that hold still where real songs change",
}


def quality_table(quality: dict) -> pd.DataFrame:
    """The measures as rows: measure, synthetic value, real reference, their 95% intervals (the CCC
    measures), how to read it."""
    rows = []
    for name, v in quality.items():
        if isinstance(v, dict) and "value" in v:
            base = next(k for k in READS if name.startswith(k))
            rows.append(
                {
                    "measure": name,
                    "synthetic": round(v["value"], 3),
                    "synthetic 95% interval": format_interval(v.get("interval")),
                    "real reference": round(v["reference"], 3),
                    "reference 95% interval": format_interval(v.get("reference_interval")),
                    "how to read": READS[base],
                }
            )
    return pd.DataFrame(rows)


def assess_gan(gan, synthetic, store, split, output_dir: str, seed: int = 0) -> dict:
    """Run :func:`gan_quality` on the real train / validation songs and write gan_quality.json.

    The file also records the training outcome: steps, kept step, divergence, reuse, parameter counts.
    """
    labels = store.songs.set_index("song_id")[["valence", "arousal"]]
    train_ids, val_ids = ids_of(split, "train"), ids_of(split, "val")
    quality = gan_quality(
        store.centre_windows(train_ids),
        labels.loc[train_ids].to_numpy(),
        store.centre_windows(val_ids),
        labels.loc[val_ids].to_numpy(),
        synthetic.mels,
        synthetic.labels,
        seed=seed,
    )
    quality["training"] = {
        "steps_completed": gan.steps_completed,
        "best_step": gan.best_step,
        "skipped_steps": gan.skipped_steps,
        # passes over the training songs' crops, for readers used to epochs
        "epochs_completed": round(gan.steps_completed * gan.batch_size / max(len(train_ids), 1), 1),
        "diverged": gan.diverged,
        "reused_checkpoint": gan.reused,
        "train_seconds": gan.seconds,
        "trained_seconds": gan.trained_seconds,  # this run; the run that trained it
        "generator_parameters": count_parameters(gan.generator),
        "discriminator_parameters": count_parameters(gan.discriminator),
    }
    atomic_write_json(os.path.join(output_dir, "gan_quality.json"), quality)
    return quality
