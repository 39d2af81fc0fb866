"""Find DEAM below a folder and build one songs table.

DEAM reaches users in several shapes: the full Kaggle dataset (audio and annotations),
annotation-only uploads, a user's own flat folder, and since 2026 Kaggle mounts datasets
two levels deeper (``/kaggle/input/datasets/<owner>/<slug>/``). So nothing here relies on
a path: audio is any ``<song_id>.mp3`` (or ``.wav``) below the root, and an annotation file
is any CSV whose header names ``song_id``, ``valence_mean`` and ``arousal_mean``.

Header quirks handled: leading spaces in names, a space inside ``valence_ max_mean``, CRLF,
fixed-width padded values, the 5-column ``static_annots_2058.csv`` trim, and several attached
copies of the same file (de-duplicated by song id).

Labels: DEAM static means on the 1-9 scale map to [-1, 1] by (x - 5) / 4.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emovit.files import LOG

AUDIO_RE = re.compile(r"^(\d+)\.(mp3|wav)$", re.IGNORECASE)
REQUIRED_COLUMNS = ("song_id", "valence_mean", "arousal_mean")
KAGGLE_DATASETS = (
    "imsparsh/deam-mediaeval-dataset-emotional-analysis-in-music (audio + annotations)",
    "static-annotations-1-2000 and static-annots-2058 (annotation-only uploads)",
)
MAX_ANNOTATION_BYTES = 20_000_000  # CSVs larger than this are not song-level annotation files


def to_unit_scale(x: np.ndarray | pd.Series | float) -> np.ndarray | pd.Series | float:
    """Map DEAM's 1-9 rating scale to [-1, 1]: (x - 5) / 4."""
    return (x - 5.0) / 4.0


def to_rating_scale(x: np.ndarray | pd.Series | float) -> np.ndarray | pd.Series | float:
    """Inverse of :func:`to_unit_scale`: [-1, 1] back to DEAM's 1-9 scale."""
    return x * 4.0 + 5.0


def normalize_column(name: str) -> str:
    """``' valence_ max_mean'`` -> ``'valence_max_mean'``; ``'SongId'`` stays ``'songid'``."""
    return re.sub(r"\s+", "", str(name)).lower()


@dataclass
class DataReport:
    """What discovery found; every count a user might ask about."""

    root: str
    annotation_files: list[str] = field(default_factory=list)
    audio_files: int = 0
    annotated: int = 0  # distinct songs with a valid annotation
    with_audio: int = 0  # annotated songs that also have audio (the songs table)
    annotated_no_audio: int = 0
    audio_no_annotation: int = 0
    duplicate_audio: int = 0  # extra files for a song id already found (first path kept)
    duplicate_annotation_rows: int = 0  # identical rows from attached copies, merged
    conflicting_annotation_rows: int = 0  # same id, different values: first file kept
    invalid_annotation_rows: int = 0  # NaN or outside 1-9: skipped
    skipped: list[dict] = field(default_factory=list)  # (song_id, path, reason) per skip

    def table(self) -> pd.DataFrame:
        """The counts as a two-column table for display."""
        rows = [
            ("annotation files", len(self.annotation_files)),
            ("audio files", self.audio_files),
            ("annotated songs", self.annotated),
            ("annotated with audio (used)", self.with_audio),
            ("annotated but no audio", self.annotated_no_audio),
            ("audio but no annotation", self.audio_no_annotation),
            ("duplicate audio files ignored", self.duplicate_audio),
            ("duplicate annotation rows merged", self.duplicate_annotation_rows),
            ("conflicting annotation rows (first kept)", self.conflicting_annotation_rows),
            ("invalid annotation rows skipped", self.invalid_annotation_rows),
        ]
        return pd.DataFrame(rows, columns=["what", "count"])

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "skipped"}
        out["skipped"] = len(self.skipped)
        return out


def scan(root: str) -> tuple[dict[int, list[str]], list[str]]:
    """Walk ``root`` once. Returns ({song_id: [audio paths, sorted]}, [csv paths, sorted])."""
    audio: dict[int, list[str]] = {}
    csvs: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            m = AUDIO_RE.match(name)
            path = os.path.join(folder, name)
            if m:
                audio.setdefault(int(m.group(1)), []).append(path)
            elif name.lower().endswith(".csv"):
                csvs.append(path)
    # mp3 before wav for the same id (DEAM's own format), then by path.
    for paths in audio.values():
        paths.sort(key=lambda p: (not p.lower().endswith(".mp3"), p))
    return audio, sorted(csvs)


def read_header(path: str) -> list[str]:
    """Normalized column names of a CSV's first line ([] when unreadable or too big)."""
    try:
        if os.path.getsize(path) > MAX_ANNOTATION_BYTES:
            return []
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            first = f.readline()
    except OSError as err:
        LOG.warning("cannot read %s: %s", path, err)
        return []
    return [normalize_column(c) for c in first.strip().split(",")]


def is_annotation_header(columns: list[str]) -> bool:
    return all(c in columns for c in REQUIRED_COLUMNS)


def read_annotations(path: str) -> pd.DataFrame:
    """One static annotation file -> (song_id, valence_mean, arousal_mean, source) rows.

    Values may be padded with spaces or empty; anything that is not a number becomes NaN
    (reported and skipped by :func:`merge_annotations`).
    """
    raw = pd.read_csv(path, dtype=str, skipinitialspace=True, encoding="utf-8-sig")
    raw.columns = [normalize_column(c) for c in raw.columns]
    out = pd.DataFrame({c: pd.to_numeric(raw[c].str.strip(), errors="coerce") for c in REQUIRED_COLUMNS})
    out["source"] = path
    return out


def merge_annotations(frames: list[pd.DataFrame], report: DataReport) -> pd.DataFrame:
    """Concatenate annotation rows, drop invalid ones, de-duplicate by song id.

    Returns one row per song: song_id (int), valence_mean, arousal_mean (1-9 scale).
    """
    if not frames:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    rows = pd.concat(frames, ignore_index=True)
    values = rows[["valence_mean", "arousal_mean"]]
    bad = rows["song_id"].isna() | values.isna().any(axis=1) | ((values < 1) | (values > 9)).any(axis=1)
    for _, r in rows[bad].iterrows():
        sid = "" if pd.isna(r["song_id"]) else int(r["song_id"])
        reason = "annotation: missing value" if r[list(REQUIRED_COLUMNS)].isna().any() else "annotation: outside 1-9"
        report.skipped.append({"song_id": sid, "path": r["source"], "reason": reason})
    report.invalid_annotation_rows = int(bad.sum())
    rows = rows[~bad].copy()
    rows["song_id"] = rows["song_id"].astype(int)
    # Identical copies (the same file attached twice, or the 5-column trim beside the full
    # file) merge silently but are counted; differing values keep the first file's row.
    exact = rows.drop_duplicates(subset=["song_id", "valence_mean", "arousal_mean"])
    report.duplicate_annotation_rows = len(rows) - len(exact)
    first = exact.drop_duplicates(subset=["song_id"], keep="first")
    report.conflicting_annotation_rows = len(exact) - len(first)
    for _, r in exact[exact.duplicated(subset=["song_id"], keep="first")].iterrows():
        report.skipped.append(
            {"song_id": int(r["song_id"]), "path": r["source"], "reason": "annotation: conflicts with an earlier file"}
        )
    return first.sort_values("song_id").reset_index(drop=True)[list(REQUIRED_COLUMNS)]


def discover(root: str) -> tuple[pd.DataFrame, DataReport]:
    """Find DEAM below ``root``.

    Returns:
        songs: DataFrame sorted by song_id with columns song_id (int), audio_path (str),
            valence, arousal (floats on [-1, 1]).
        report: a :class:`DataReport` with the counts.

    Raises:
        FileNotFoundError: when no audio, no annotation file, or no song with both is found;
            the message lists where it looked and which Kaggle datasets to attach.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(_missing_message(root, f"the folder {root!r} does not exist"))
    audio, csvs = scan(root)
    report = DataReport(root=root)
    report.annotation_files = [p for p in csvs if is_annotation_header(read_header(p))]
    report.audio_files = sum(len(p) for p in audio.values())
    report.duplicate_audio = sum(len(p) - 1 for p in audio.values())
    for paths in audio.values():
        for extra in paths[1:]:
            LOG.info("duplicate audio for one song id, using %s, ignoring %s", paths[0], extra)

    if not report.annotation_files:
        raise FileNotFoundError(
            _missing_message(
                root, f"no static annotation CSV (with song_id, valence_mean, arousal_mean) among {len(csvs)} CSV files"
            )
        )
    if not audio:
        raise FileNotFoundError(_missing_message(root, "no audio files named <song_id>.mp3 or <song_id>.wav"))

    labels = merge_annotations([read_annotations(p) for p in report.annotation_files], report)
    annotated = set(labels["song_id"])
    report.annotated = len(annotated)
    report.annotated_no_audio = len(annotated - set(audio))
    report.audio_no_annotation = len(set(audio) - annotated)
    for sid in sorted(set(audio) - annotated):
        report.skipped.append({"song_id": sid, "path": audio[sid][0], "reason": "audio without annotation"})
    for sid in sorted(annotated - set(audio)):
        report.skipped.append({"song_id": sid, "path": "", "reason": "annotation without audio"})

    songs = labels[labels["song_id"].isin(audio)].copy()
    if songs.empty:
        raise FileNotFoundError(
            _missing_message(
                root, f"{len(annotated)} annotated songs and {len(audio)} audio files, but no song id has both"
            )
        )
    songs["audio_path"] = [audio[s][0] for s in songs["song_id"]]
    songs["valence"] = to_unit_scale(songs["valence_mean"].astype(float))
    songs["arousal"] = to_unit_scale(songs["arousal_mean"].astype(float))
    songs = songs[["song_id", "audio_path", "valence", "arousal"]].reset_index(drop=True)
    report.with_audio = len(songs)
    LOG.info(
        "DEAM under %s: %d annotated songs, %d with audio, %d annotated but no audio, %d audio but no annotation",
        root,
        report.annotated,
        report.with_audio,
        report.annotated_no_audio,
        report.audio_no_annotation,
    )
    return songs, report


def _missing_message(root: str, what: str) -> str:
    datasets = "\n".join(f"  - {d}" for d in KAGGLE_DATASETS)
    return (
        f"DEAM not found: {what}.\n"
        f"Looked recursively under: {os.path.abspath(root)}\n"
        "On Kaggle, attach (Add Input -> Datasets):\n"
        f"{datasets}\n"
        "Locally, point data_dir at a folder holding <song_id>.mp3 files and the static "
        "annotation CSVs (static_annotations_averaged_songs_1_2000.csv, ..._2000_2058.csv)."
    )
