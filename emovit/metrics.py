"""Regression metrics for valence and arousal, with bootstrap confidence intervals.

CCC (Lin's concordance correlation coefficient) over the whole set, with POPULATION (1/N)
moments:  CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2).
CCC and Pearson r do not depend on the label scale; RMSE is reported on the [-1, 1] scale
(multiply by 4 for DEAM's 1-9 scale). R^2 is 1 - SS_res / SS_tot of the predictions.
"""

from __future__ import annotations

import numpy as np

DIMENSIONS = ("valence", "arousal")


def ccc(y_true, y_pred) -> float:
    """Concordance correlation coefficient of two 1-D arrays (population moments)."""
    x = np.asarray(y_true, dtype=np.float64)
    y = np.asarray(y_pred, dtype=np.float64)
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def pearson(y_true, y_pred) -> float:
    x = np.asarray(y_true, dtype=np.float64)
    y = np.asarray(y_pred, dtype=np.float64)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def r2(y_true, y_pred) -> float:
    x = np.asarray(y_true, dtype=np.float64)
    y = np.asarray(y_pred, dtype=np.float64)
    ss_tot = np.sum((x - x.mean()) ** 2)
    return float(1 - np.sum((x - y) ** 2) / ss_tot) if ss_tot > 0 else 0.0


def rmse(y_true, y_pred) -> float:
    x = np.asarray(y_true, dtype=np.float64)
    y = np.asarray(y_pred, dtype=np.float64)
    return float(np.sqrt(np.mean((x - y) ** 2)))


METRICS = {"ccc": ccc, "pearson_r": pearson, "r2": r2, "rmse": rmse}


def with_intervals(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every metric per dimension with a bootstrap 95% interval (songs resampled).

    Args:
        y_true, y_pred: (N, 2) arrays, columns valence and arousal on [-1, 1].
    Returns:
        {"valence": {"ccc": {"value", "low", "high"}, ...}, "arousal": {...},
         "mean_ccc": float, "n": N}
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    out: dict = {"n": int(len(y_true))}
    for d, dim in enumerate(DIMENSIONS):
        out[dim] = {}
        for name, fn in METRICS.items():
            boots = np.array([fn(y_true[i, d], y_pred[i, d]) for i in idx]) if n_boot else np.array([np.nan])
            out[dim][name] = {
                "value": fn(y_true[:, d], y_pred[:, d]),
                "low": float(np.nanpercentile(boots, 2.5)) if n_boot else float("nan"),
                "high": float(np.nanpercentile(boots, 97.5)) if n_boot else float("nan"),
            }
    out["mean_ccc"] = float(np.mean([out[d]["ccc"]["value"] for d in DIMENSIONS]))
    return out


def ccc_interval(y_true: np.ndarray, y_pred: np.ndarray, rows: np.ndarray) -> list[float]:
    """95% percentile bootstrap interval [low, high] of the CCC of 1-D arrays (N,), over the
    resampled row indices ``rows`` (B, N). Passing the same ``rows`` to two predictions of the same
    songs makes their intervals paired."""
    boots = [ccc(y_true[i], y_pred[i]) for i in rows]
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def format_interval(interval) -> str:
    """[low, high] -> "[+0.123, +0.456]"; "" where a measure has no interval."""
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""
