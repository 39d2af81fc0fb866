"""Test evaluation on real held-out songs: metrics with bootstrap intervals, predictions.

CCC, Pearson r, R^2 and RMSE per dimension (see :mod:`emovit.metrics`; RMSE on the [-1, 1]
scale), each with a 95% interval from resampling test songs.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from emovit.deam import to_rating_scale
from emovit.files import atomic_write_csv, atomic_write_json
from emovit.metrics import DIMENSIONS, METRICS, with_intervals


def prediction_frame(song_ids, target: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """One row per song: song_id, valence_true, arousal_true, valence_pred, arousal_pred ([-1, 1])."""
    frame = pd.DataFrame({"song_id": list(song_ids)})
    # float64 throughout: a float32 prediction written to CSV and read back is not the same
    # float64 number, and metrics must recompute exactly from predictions.csv.
    for d, dim in enumerate(DIMENSIONS):
        frame[f"{dim}_true"] = np.asarray(target, dtype=np.float64)[:, d]
    for d, dim in enumerate(DIMENSIONS):
        frame[f"{dim}_pred"] = np.asarray(pred, dtype=np.float64)[:, d]
    return frame


def prediction_table(test: pd.DataFrame, val: pd.DataFrame | None = None, seed: int | None = None) -> pd.DataFrame:
    """predictions*.csv: the test songs' rows, then the validation songs' (column ``split``), each
    value on [-1, 1] and on DEAM's 1-9 scale (``*_1_9``); with ``seed``, a ``seed`` column (the
    model's training seed). Metrics are computed from the test rows."""
    parts = [test.assign(split="test")] + ([val.assign(split="val")] if val is not None else [])
    table = pd.concat(parts, ignore_index=True)
    for column in [c for c in table.columns if c.endswith(("_true", "_pred"))]:
        table[f"{column}_1_9"] = to_rating_scale(table[column])
    first = ["song_id", "split"] + (["seed"] if seed is not None else [])
    if seed is not None:
        table["seed"] = seed
    return table[first + [c for c in table.columns if c not in first]]


def test_rows(table: pd.DataFrame, seed: int | None = None) -> pd.DataFrame:
    """The test songs' prediction frame of a :func:`prediction_table` (as :func:`score` reads it);
    where the table has a ``seed`` column, those of ``seed`` (default: the first row's seed, the
    training seed of ``best_vit_model.pth``)."""
    rows = table[table["split"] == "test"] if "split" in table.columns else table
    if "seed" in rows.columns:
        rows = rows[rows["seed"] == (rows["seed"].iloc[0] if seed is None else seed)]
    return rows[["song_id"] + [f"{d}_{k}" for k in ("true", "pred") for d in DIMENSIONS]].reset_index(drop=True)


def score(predictions: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Metrics dict of :func:`emovit.metrics.with_intervals` for a prediction frame."""
    true = predictions[[f"{d}_true" for d in DIMENSIONS]].to_numpy()
    pred = predictions[[f"{d}_pred" for d in DIMENSIONS]].to_numpy()
    return with_intervals(true, pred, n_boot=n_boot, seed=seed)


def metrics_table(results: dict[str, dict]) -> pd.DataFrame:
    """{model name: metrics} -> one row per (model, dimension), cells "value [low, high]"."""
    rows = []
    for model, m in results.items():
        for dim in DIMENSIONS:
            row = {"model": model, "dimension": dim}
            for name, v in m[dim].items():
                row[name] = f"{v['value']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"
            rows.append(row)
    return pd.DataFrame(rows)


def write_results(output_dir: str, metrics: dict, predictions: pd.DataFrame) -> None:
    """metrics.json and predictions.csv (a :func:`prediction_table`), atomically."""
    atomic_write_json(os.path.join(output_dir, "metrics.json"), metrics)
    atomic_write_csv(os.path.join(output_dir, "predictions.csv"), predictions)


def compare(a: pd.DataFrame, b: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Metric differences a - b on the same test songs, with a paired bootstrap 95% interval.

    Both frames must hold the same songs (same order) with the same true values. The same
    resampled song sets are used for both models, so the interval reflects the difference,
    not two separate noises. The interval is the 2.5th-97.5th percentile of the resampled
    differences.
    """
    if list(a["song_id"]) != list(b["song_id"]):
        raise ValueError("compare() needs predictions for the same test songs in the same order")
    columns = [f"{d}_true" for d in DIMENSIONS]
    if not np.array_equal(a[columns].to_numpy(), b[columns].to_numpy()):
        raise ValueError("compare() needs the same true values in both frames: they hold different labels")
    true = a[columns].to_numpy()
    pa = a[[f"{d}_pred" for d in DIMENSIONS]].to_numpy()
    pb = b[[f"{d}_pred" for d in DIMENSIONS]].to_numpy()
    idx = np.random.default_rng(seed).integers(0, len(true), size=(n_boot, len(true)))
    out: dict = {}
    for d, dim in enumerate(DIMENSIONS):
        out[dim] = {}
        for name, fn in METRICS.items():
            diffs = np.array([fn(true[i, d], pa[i, d]) - fn(true[i, d], pb[i, d]) for i in idx])
            out[dim][name] = {
                "value": fn(true[:, d], pa[:, d]) - fn(true[:, d], pb[:, d]),
                "low": float(np.percentile(diffs, 2.5)),
                "high": float(np.percentile(diffs, 97.5)),
            }
    return out


def comparison_pairs(names: list[str]) -> list[tuple[str, str]]:
    """The pairs the results compare: the delivered model (first) minus every other model, and the
    GAN's own effect, synthetic-trained minus real-only, when both exist."""
    first = names[0]
    pairs = [(first, k) for k in names[1:]]
    if {"vit_real_plus_synthetic", "vit_real_only"} <= set(names) and first != "vit_real_plus_synthetic":
        pairs.append(("vit_real_plus_synthetic", "vit_real_only"))
    return pairs


MODEL_LABELS = {
    "delivered": "ViT delivered (per-dimension validation choice)",
    "vit_real_plus_synthetic": "ViT, real + GAN + augmentations",
    "vit_real_only": "ViT, real only (no GAN)",
    "vit_no_augment": "ViT, real + GAN, no crops / SpecAugment / averaging",
    "ridge_baseline": "ridge on band statistics",
    "ridge_opensmile": "ridge on DEAM's openSMILE features (mean, std)",
}


def results_table(models: dict[str, dict], differences: dict[str, dict]) -> pd.DataFrame:
    """Models and their differences as rows; cells "value [95% interval]"."""
    named = {MODEL_LABELS.get(k, k): v for k, v in models.items()}
    named.update({f"difference: {k}": v for k, v in differences.items()})
    return metrics_table(named)


# Published numbers beside ours, each with its protocol. Their metrics differ from our CCC (R^2
# penalizes bias and scale like CCC does, but on another scale; Pearson r ignores both), so they
# are listed as published, never converted.
REFERENCES = (
    {
        "source": "Music2Emo (Kang & Herremans 2025, arXiv:2502.03979)",
        "data": "DEAM, static song-level ratings",
        "protocol": "their split: 1261 train / 271 val / 270 test songs (split lists in their repository)",
        "metric": "R^2",
        "valence": 0.518,
        "arousal": 0.623,
    },
    {
        "source": "Meta-analysis of 34 MER studies 2014-2024 (Eerola & Anderson, ACM Computing Surveys)",
        "data": "many data sets (DEAM among them), each study's own protocol",
        "protocol": "the best model of each study, pooled",
        "metric": "Pearson r",
        "valence": 0.67,
        "arousal": 0.81,
    },
    {
        "source": "DEAM's raters, songs 2-1000 (computed here from DEAM's static file; >= 10 raters per song: "
        "Soleymani et al. 2013, 1000 songs for emotional analysis of music)",
        "data": "DEAM static ratings of its 2013 set (744 songs): each song's rating mean and std over raters",
        "protocol": "not a model's score: how reliable the averaged ratings every model is scored against are "
        "(one-way random-effects ICC from each song's rating std, taken as a sample std)",
        "metric": "ICC(1,10)",
        "valence": 0.86,
        "arousal": 0.85,
    },
)


def references_table() -> pd.DataFrame:
    """:data:`REFERENCES` for display: source, data, protocol, metric, valence, arousal."""
    return pd.DataFrame(list(REFERENCES))
