"""Emotion over time, checked against DEAM's 2 Hz ratings (the MediaEval "Emotion in Music" task).

The model is trained on whole-song ratings; its curve is the per-window prediction of
:class:`emovit.predict.Predictor` over the whole audio file (windows of the training length
``T`` seconds every ``curve_hop_seconds``; window k covers [s_k, s_k + T)). Each window's target is
the mean of the song's 2 Hz samples with s_k <= t < s_k + T, per dimension; a window holding no
rated sample (DEAM leaves each song's first 15 s unrated, and a song's cells end with it) gets no
target and is left out of the scores, counted.

Scores per dimension, the way MediaEval reported them: RMSE and Pearson r per song, averaged over
songs (r only for a song with at least ``MIN_WINDOWS_FOR_R`` scored windows whose predicted and
target curves both vary; the others are counted), and a CCC over every scored window of every
song pooled (it rewards the song level as much as the movement within a song). Only test songs
are scored: the model chose nothing on them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emovit.deam import DynamicRatings
from emovit.metrics import DIMENSIONS, ccc, pearson
from emovit.predict import predict_folder

MIN_WINDOWS_FOR_R = 3  # a Pearson r over fewer scored windows says nothing about a curve's shape
TABLE_COLUMNS = ["song_id", "window", "start_s", "end_s", *DIMENSIONS, *(f"{d}_target" for d in DIMENSIONS)]


def window_targets(seconds: np.ndarray, values: np.ndarray, starts: np.ndarray, window_seconds: float) -> np.ndarray:
    """Mean rating inside each window: seconds, values (n,) the rated samples; starts (W,) window
    starts in seconds. Returns (W,), NaN for a window without a rated sample."""
    seconds, values = np.asarray(seconds, float), np.asarray(values, float)
    inside = (seconds[None, :] >= starts[:, None]) & (seconds[None, :] < starts[:, None] + window_seconds)
    count = inside.sum(axis=1)
    total = (inside * values[None, :]).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def score_windows(
    curves: pd.DataFrame, song_ids: dict[str, int], ratings: DynamicRatings, window_seconds: float
) -> pd.DataFrame:
    """Window targets beside a curves table of :func:`emovit.predict.curves_table` (path, window,
    start_s, end_s, valence, arousal): ``song_ids`` maps each path to its song id; ``window_seconds``
    is the model's window (a song's last window may end early at the song's end). Returns
    ``TABLE_COLUMNS``."""
    tables = []
    for path, song in curves.groupby("path", sort=False):
        song = song.sort_values("window")
        starts = song["start_s"].to_numpy(float)
        table = song[["window", "start_s", "end_s", *DIMENSIONS]].copy()
        table.insert(0, "song_id", song_ids[path])
        for dim in DIMENSIONS:
            t, v = ratings.curve(song_ids[path], dim)
            table[f"{dim}_target"] = window_targets(t, v, starts, window_seconds)
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    return pd.concat(tables, ignore_index=True)[TABLE_COLUMNS].sort_values(["song_id", "window"], ignore_index=True)


def score_test_songs(predictor, songs: pd.DataFrame, split: pd.DataFrame, ratings: DynamicRatings):
    """The delivered model's curves on the TEST songs rated over time, beside their window targets.

    songs: song_id, audio_path; split: song_id, split. Returns (``TABLE_COLUMNS`` frame, the
    songs table of :func:`emovit.predict.predict_folder` -- a song that cannot be decoded is a row
    there with its reason, and has no windows)."""
    test = set(split.loc[split["split"] == "test", "song_id"]) & ratings.songs()
    chosen = songs[songs["song_id"].isin(test)].sort_values("song_id")
    table, curves = predict_folder(list(chosen["audio_path"]), predictor, return_curves=True)
    song_ids = dict(zip(chosen["audio_path"], chosen["song_id"].astype(int)))
    return score_windows(curves, song_ids, ratings, predictor.params.clip_seconds), table


def curve_metrics(table: pd.DataFrame) -> dict:
    """Per dimension: rmse_per_song (mean over songs), pearson_r_per_song (mean over the songs that
    have one), ccc_windows (all scored windows pooled), and the counts behind them."""
    out: dict = {}
    for dim in DIMENSIONS:
        scored = table[table[f"{dim}_target"].notna()]
        rmses, rs, no_r = [], [], 0
        for _, song in scored.groupby("song_id"):
            pred, target = song[dim].to_numpy(float), song[f"{dim}_target"].to_numpy(float)
            rmses.append(float(np.sqrt(np.mean((pred - target) ** 2))))
            if len(song) >= MIN_WINDOWS_FOR_R and pred.std() > 0 and target.std() > 0:
                rs.append(pearson(target, pred))
            else:
                no_r += 1
        out[dim] = {
            "rmse_per_song": float(np.mean(rmses)) if rmses else float("nan"),
            "pearson_r_per_song": float(np.mean(rs)) if rs else float("nan"),
            "ccc_windows": ccc(scored[f"{dim}_target"], scored[dim]) if len(scored) else float("nan"),
            "songs": int(scored["song_id"].nunique()),
            "songs_with_r": len(rs),
            "songs_without_r": no_r,
            "windows_scored": int(len(scored)),
            "windows_without_rating": int(table[f"{dim}_target"].isna().sum()),
        }
    return out


def metrics_table(metrics: dict) -> pd.DataFrame:
    """:func:`curve_metrics` as one row per dimension, for display."""
    return pd.DataFrame(
        [
            {
                "dimension": dim,
                "RMSE per song (mean)": round(m["rmse_per_song"], 3),
                "Pearson r per song (mean)": round(m["pearson_r_per_song"], 3),
                "CCC over windows": round(m["ccc_windows"], 3),
                "songs": m["songs"],
                "songs without r": m["songs_without_r"],
                "windows scored": m["windows_scored"],
                "windows without a rating": m["windows_without_rating"],
            }
            for dim, m in metrics.items()
        ]
    )
