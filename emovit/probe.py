"""A linear probe on log-mel band statistics: ridge on per-band mean and std.

Used three ways: to check that the demo labels are learnable from simple audio features,
to score what GAN samples carry (label fidelity, train-on-synthetic), and as the baseline
the ViT must beat.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def band_stats(mels: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Log-mels (N, n_mels, T) -> features (N, 2 * n_mels): per-band mean, then std over time."""
    out = []
    for i in range(0, len(mels), chunk):
        block = np.asarray(mels[i:i + chunk], dtype=np.float32)
        out.append(np.concatenate([block.mean(axis=2), block.std(axis=2)], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2 * mels.shape[1]), np.float32)


def fit_probe(features: np.ndarray, labels: np.ndarray):
    """Standardize + ridge with the penalty chosen by efficient leave-one-out CV.

    Args:
        features: (N, F) from :func:`band_stats`.
        labels: (N, 2) valence, arousal on [-1, 1].
    Returns a fitted scikit-learn pipeline; ``predict`` gives (M, 2).
    """
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 25)))
    return model.fit(features, labels)
