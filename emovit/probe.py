"""A linear probe on log-mel band statistics: ridge on per-band mean and std.

Used three ways: to check that the demo labels are learnable from simple audio features,
to score what GAN samples carry (label fidelity, train-on-synthetic), and as the baseline
the ViT must beat.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from emovit.metrics import DIMENSIONS, ccc
from emovit.split import ids_of


def band_stats(mels: np.ndarray, frames=None, chunk: int = 256) -> np.ndarray:
    """Log-mels (N, n_mels, T) -> features (N, 2 * n_mels): per-band mean, then std over time.

    ``frames`` (N,), optional: only the first ``frames[i]`` frames of song i count (the valid
    part of a stored clip).
    """
    out = []
    for i in range(0, len(mels), chunk):
        block = np.asarray(mels[i : i + chunk], dtype=np.float32)
        if frames is None:
            out.append(np.concatenate([block.mean(axis=2), block.std(axis=2)], axis=1))
            continue
        valid = (np.arange(block.shape[2])[None, :] < np.asarray(frames[i : i + chunk])[:, None])[:, None, :]
        n = valid.sum(axis=2)
        mean = np.where(valid, block, 0).sum(axis=2) / n
        std = np.sqrt(np.where(valid, (block - mean[:, :, None]) ** 2, 0).sum(axis=2) / n)
        out.append(np.concatenate([mean, std], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2 * mels.shape[1]), np.float32)


def song_features(store, song_ids) -> np.ndarray:
    """Band statistics (len(song_ids), 2 * n_mels) of the songs' whole stored clips (valid frames)."""
    return band_stats(store.song_mels(song_ids), store.song_frames(song_ids))


def validation_probe(store, split) -> tuple[object, dict]:
    """The notebook's first look: the probe fitted on TRAINING songs, scored on validation songs.

    Returns (fitted probe, {"valence": CCC, "arousal": CCC} on the validation songs).
    """
    labels = store.songs.set_index("song_id")[list(DIMENSIONS)]
    train_ids, val_ids = ids_of(split, "train"), ids_of(split, "val")
    probe = fit_probe(song_features(store, train_ids), labels.loc[train_ids].to_numpy())
    pred = probe.predict(song_features(store, val_ids))
    return probe, {dim: round(ccc(labels.loc[val_ids, dim], pred[:, d]), 3) for d, dim in enumerate(DIMENSIONS)}


def opensmile_features(paths: list[str]) -> np.ndarray:
    """DEAM openSMILE files -> (len(paths), 2 F): per-feature mean, then std over the song's 0.5 s
    frames (``frameTime`` left out). Every file must have the same F columns; a file that is empty
    or has a cell that is not a number raises ValueError naming it."""
    rows, columns = [], None
    for path in paths:
        frame = pd.read_csv(path, sep=";").drop(columns=["frameTime"], errors="ignore")
        if columns is None:
            columns = list(frame.columns)
        elif list(frame.columns) != columns:
            raise ValueError(f"{path}: its openSMILE columns differ from the first file's")
        values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        if len(values) == 0 or not np.isfinite(values).all():
            raise ValueError(f"{path}: empty, or a cell that is not a number")
        rows.append(np.concatenate([values.mean(axis=0), values.std(axis=0)]))
    return np.stack(rows)


def fit_probe(features: np.ndarray, labels: np.ndarray, alpha: float | None = None):
    """Standardize + ridge with the penalty chosen by efficient leave-one-out CV, or ``alpha`` if given.

    Args:
        features: (N, F) from :func:`band_stats`.
        labels: (N, 2) valence, arousal on [-1, 1].
        alpha: a fixed ridge penalty (on the summed squared error of the N rows), for a probe that
            must share another probe's penalty; None chooses it by leave-one-out CV.
    Returns a fitted scikit-learn pipeline; ``predict`` gives (M, 2); its last step's ``alpha_``
    (CV) or ``alpha`` (fixed) is the penalty used.
    """
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 25)) if alpha is None else Ridge(alpha=alpha)
    return make_pipeline(StandardScaler(), ridge).fit(features, labels)
