"""Song-level train / validation / test split and training-only standardization.

A song's split is a pure function of (song id, seed): a SHA-256 hash of "seed:song_id" mapped
to u in [0, 1) puts it in test when u < test_fraction, in validation when u < test_fraction +
val_fraction, else in training. So a song never changes split because another song failed to
decode, was added or was removed, and numbers stay comparable across runs and machines. The
price is that the set sizes are binomial around their targets (about +-15 songs of 270 on
DEAM): :func:`split_table` shows target and achieved sizes side by side. A published split
(e.g. Music2Emo's DEAM lists) can be given instead as a CSV (:func:`read_split_file`).

Validation and test hold only real songs; later stages assert that no model saw them. The
standardization statistics (one mean and one std over all valid bins of all training songs)
are an affine map, so loudness and spectral balance survive it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emovit.files import atomic_write_csv

SPLITS = ("train", "val", "test")


def song_unit(song_id: int, seed: int) -> float:
    """Deterministic u in [0, 1) for one song: the first 8 bytes of sha256("seed:song_id")."""
    digest = hashlib.sha256(f"{int(seed)}:{int(song_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_songs(song_ids, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42) -> pd.DataFrame:
    """Assign each song to train, val or test by a hash of (seed, song id).

    Returns a DataFrame (song_id, split) sorted by song_id. Each song's split depends only on
    its id, the seed and the fractions; the three sets are disjoint and cover every song.
    """
    ids = np.asarray(sorted(int(s) for s in song_ids))
    if len(set(ids)) != len(ids):
        raise ValueError("song ids must be unique to split by song")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions: val={val_fraction}, test={test_fraction}")
    if len(ids) < 3:
        raise ValueError(f"need at least 3 songs to split, got {len(ids)}")
    u = np.array([song_unit(s, seed) for s in ids])
    names = np.where(u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "val", "train"))
    frame = pd.DataFrame({"song_id": ids, "split": names})
    for name in SPLITS:
        if not (frame["split"] == name).any():
            raise ValueError(
                f"the {name} set is empty with {len(ids)} songs and seed {seed}; use more songs or larger fractions"
            )
    assert_disjoint(frame)
    return frame


def read_split_file(path: str, song_ids) -> tuple[pd.DataFrame, dict]:
    """A published split from a CSV with columns song_id and split (train / val / test).

    Returns (split restricted to ``song_ids``, counts of listed songs without data and of
    songs with data that the file does not list -- the latter are left out of the run).
    """
    listed = pd.read_csv(path, dtype={"split": str})
    listed.columns = [c.strip().lower() for c in listed.columns]
    if not {"song_id", "split"} <= set(listed.columns):
        raise ValueError(f"{path}: a split file needs columns song_id and split, found {list(listed.columns)}")
    listed["split"] = listed["split"].str.strip().str.lower().replace({"validation": "val", "valid": "val"})
    listed["song_id"] = listed["song_id"].astype(int)
    assert_disjoint(listed[["song_id", "split"]])
    have = {int(s) for s in song_ids}
    split = listed[listed["song_id"].isin(have)][["song_id", "split"]].sort_values("song_id").reset_index(drop=True)
    counts = {
        "listed_without_data": int((~listed["song_id"].isin(have)).sum()),
        "with_data_not_listed": len(have - set(listed["song_id"])),
    }
    return split, counts


def split_table(split: pd.DataFrame, val_fraction: float, test_fraction: float) -> pd.DataFrame:
    """Songs per split: achieved count and fraction beside the target ones."""
    n = len(split)
    target = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    rows = [
        {
            "split": name,
            "songs": int((split["split"] == name).sum()),
            "target songs": round(target[name] * n, 1),
            "fraction": round(float((split["split"] == name).mean()), 4),
            "target fraction": target[name],
        }
        for name in SPLITS
    ]
    return pd.DataFrame(rows)


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
    def fit(cls, mels: np.ndarray, rows, frames=None, chunk: int = 64) -> Standardizer:
        """Statistics over ``mels[rows]`` (N, n_mels, T), read in chunks (memmap-friendly).

        ``frames`` (one per row, optional): only the first ``frames[i]`` frames of row i count.
        """
        rows = np.asarray(rows)
        frames = np.full(len(rows), mels.shape[2]) if frames is None else np.asarray(frames)
        order = np.argsort(rows)
        rows, frames = rows[order], frames[order]
        total, sq, count = 0.0, 0.0, 0
        for i in range(0, len(rows), chunk):
            block = np.asarray(mels[rows[i : i + chunk]], dtype=np.float64)
            valid = np.arange(block.shape[2])[None, None, :] < frames[i : i + chunk, None, None]
            total += np.where(valid, block, 0.0).sum()
            sq += np.where(valid, np.square(block), 0.0).sum()
            count += int(valid.sum()) * block.shape[1]
        mean = total / count
        std = float(np.sqrt(max(sq / count - mean**2, 1e-12)))
        return cls(mean=float(mean), std=std)

    def __call__(self, x):
        return (x - self.mean) / self.std

    def inverse(self, x):
        return x * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}


def fit_standardizer(store, split: pd.DataFrame) -> Standardizer:
    """The run's standardizer: valid frames of the TRAINING songs of ``split`` only."""
    train_ids = ids_of(split, "train")
    songs = store.songs.set_index("song_id").loc[train_ids]
    return Standardizer.fit(store.mels, songs["row"].to_numpy(), songs["frames"].to_numpy())
