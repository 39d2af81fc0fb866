"""Song-level train / validation / test split and training-only standardization.

Splitting is by song (each DEAM song has one window, so by row), seeded, with scikit-learn.
Validation and test hold only real songs; later stages assert that no model saw them.
The standardization statistics (one mean and one std over all bins of all training
songs) are an affine map, so loudness and spectral balance survive it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from emovit.io import atomic_write_csv

SPLITS = ("train", "val", "test")


def split_songs(song_ids, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42) -> pd.DataFrame:
    """Assign each song to train, val or test.

    Returns a DataFrame (song_id, split) sorted by song_id. Same inputs and seed give the
    same split; the three sets are disjoint and cover every song.
    """
    ids = np.asarray(sorted(int(s) for s in song_ids))
    if len(set(ids)) != len(ids):
        raise ValueError("song ids must be unique to split by song")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions: val={val_fraction}, test={test_fraction}")
    if len(ids) < 3:
        raise ValueError(f"need at least 3 songs to split, got {len(ids)}")
    rest, test = train_test_split(ids, test_size=test_fraction, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed + 1)
    frame = pd.DataFrame(
        {"song_id": np.concatenate([train, val, test]),
         "split": ["train"] * len(train) + ["val"] * len(val) + ["test"] * len(test)}
    )
    frame = frame.sort_values("song_id").reset_index(drop=True)
    assert_disjoint(frame)
    return frame


def assert_disjoint(split: pd.DataFrame) -> None:
    """Raise AssertionError unless every song is in exactly one split."""
    counts = split.groupby("song_id")["split"].nunique()
    shared = counts[counts > 1].index.tolist()
    assert not shared, f"songs in more than one split: {shared[:10]}"
    assert split["song_id"].is_unique, "a song appears twice in the split table"
    assert set(split["split"]) <= set(SPLITS), f"unknown split names {set(split['split']) - set(SPLITS)}"


def ids_of(split: pd.DataFrame, name: str) -> list[int]:
    """Song ids of one split, sorted."""
    return sorted(split.loc[split["split"] == name, "song_id"].astype(int).tolist())


def assert_only_train(song_ids, split: pd.DataFrame, stage: str) -> None:
    """Raise AssertionError if any of ``song_ids`` is a validation or test song."""
    held_out = set(ids_of(split, "val")) | set(ids_of(split, "test"))
    leaked = sorted(set(int(s) for s in song_ids) & held_out)
    assert not leaked, f"{stage}: {len(leaked)} validation/test song(s) reached training: {leaked[:10]}"


def save_split(split: pd.DataFrame, output_dir: str) -> str:
    return atomic_write_csv(os.path.join(output_dir, "split.csv"), split)


@dataclass
class Standardizer:
    """x -> (x - mean) / std with scalars from the training songs only."""

    mean: float
    std: float

    @classmethod
    def fit(cls, mels: np.ndarray, rows, chunk: int = 64) -> Standardizer:
        """Statistics over ``mels[rows]`` (N, n_mels, T), read in chunks (memmap-friendly)."""
        rows = np.sort(np.asarray(rows))
        total, sq, count = 0.0, 0.0, 0
        for i in range(0, len(rows), chunk):
            block = np.asarray(mels[rows[i:i + chunk]], dtype=np.float64)
            total += block.sum()
            sq += np.square(block).sum()
            count += block.size
        mean = total / count
        std = float(np.sqrt(max(sq / count - mean**2, 1e-12)))
        return cls(mean=float(mean), std=std)

    def __call__(self, x):
        return (x - self.mean) / self.std

    def inverse(self, x):
        return x * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}
