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

Dynamic (2 Hz) ratings, when attached, are found the same way: a CSV whose header has ``song_id``
and ``sample_<ms>ms`` columns and whose file name says ``valence`` or ``arousal`` -- DEAM's
``dynamic (per second annotations)/{arousal,valence}.csv`` (empty cells after a song ends) and the
2013 set's ``{arousal,valence}_cont_average.csv`` (its ``*_cont_std.csv`` rater spreads are not
ratings). Values are already on [-1, 1]; the first 15 s of a song are not rated.

DEAM's openSMILE features, when attached, are ``<song_id>.csv`` files, semicolon-separated, one
row per 0.5 s frame, the first column ``frameTime`` (:func:`find_opensmile`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emovit.files import LOG

AUDIO_RE = re.compile(r"^(\d+)\.(mp3|wav)$", re.IGNORECASE)
OPENSMILE_RE = re.compile(r"^(\d+)\.csv$", re.IGNORECASE)  # DEAM's per-song openSMILE feature files
SAMPLE_RE = re.compile(r"^sample_(\d+)ms$")  # a dynamic rating column: the sample's time in ms
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
    dynamic_files: list[str] = field(default_factory=list)  # 2 Hz rating files (valence and arousal)
    dynamic_songs: int = -1  # songs of the songs table rated over time on both dimensions (-1: not read)
    dynamic_empty_cells: int = 0  # empty cells in the dynamic files (after a song ends): dropped
    dynamic_invalid_cells: int = 0  # dynamic values that are not numbers on [-1, 1]: dropped
    opensmile: dict = field(default_factory=dict)  # {song_id: path} of DEAM's openSMILE feature files
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
            ("dynamic (2 Hz) rating files", len(self.dynamic_files)),
            ("openSMILE feature files (songs)", len(self.opensmile)),
        ]
        if self.dynamic_songs >= 0:
            rows += [
                ("songs with dynamic ratings on both dimensions (used)", self.dynamic_songs),
                ("empty dynamic cells (after a song ends) dropped", self.dynamic_empty_cells),
                ("invalid dynamic cells dropped", self.dynamic_invalid_cells),
            ]
        return pd.DataFrame(rows, columns=["what", "count"])

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("skipped", "opensmile")}
        out["skipped"] = len(self.skipped)
        out["opensmile_files"] = len(self.opensmile)
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


def find_opensmile(csvs: list[str]) -> dict[int, str]:
    """{song_id: path} of DEAM's openSMILE feature files among ``csvs``: named ``<song_id>.csv`` with
    a semicolon-separated header that starts with ``frameTime`` (first path kept per song)."""
    found: dict[int, str] = {}
    for path in csvs:
        m = OPENSMILE_RE.match(os.path.basename(path))
        if not m or int(m.group(1)) in found:
            continue
        try:
            with open(path, encoding="utf-8-sig", errors="replace") as f:
                first = f.readline()
        except OSError as err:
            LOG.warning("cannot read %s: %s", path, err)
            continue
        if first.split(";")[0].strip().lower() == "frametime":
            found[int(m.group(1))] = path
    return found


def dynamic_dimension(path: str, columns: list[str]) -> str | None:
    """ "valence" or "arousal" for a 2 Hz rating file (``song_id`` and ``sample_<ms>ms`` columns, the
    dimension named once in the file name, not a ``std`` file); None for any other CSV."""
    if "song_id" not in columns or not any(SAMPLE_RE.match(c) for c in columns):
        return None
    name = os.path.basename(path).lower()
    named = [d for d in ("valence", "arousal") if d in name]
    return named[0] if len(named) == 1 and "std" not in name else None


@dataclass
class DynamicRatings:
    """DEAM's 2 Hz ratings: ``rows`` (song_id, dimension, seconds, value on [-1, 1]), one per rated
    sample, empty and invalid cells dropped, sorted by song, dimension and time."""

    rows: pd.DataFrame
    files: list[str]
    empty_cells: int = 0
    invalid_cells: int = 0

    def songs(self) -> set[int]:
        """Song ids rated on both dimensions."""
        per_song = self.rows.groupby("song_id")["dimension"].nunique()
        return set(int(s) for s in per_song[per_song == 2].index)

    def curve(self, song_id: int, dimension: str) -> tuple[np.ndarray, np.ndarray]:
        """(seconds (n,), values (n,)) of one song's rated samples on one dimension."""
        r = self.rows[(self.rows["song_id"] == song_id) & (self.rows["dimension"] == dimension)]
        return r["seconds"].to_numpy(float), r["value"].to_numpy(float)


def read_dynamic(path: str, dimension: str) -> tuple[pd.DataFrame, int, int]:
    """One 2 Hz file -> (rows song_id, dimension, seconds, value; empty cells; invalid cells).

    A cell that is empty (DEAM: after the song ended) or blank is dropped and counted as empty; one
    that is not a number, or a number outside [-1, 1], is dropped and counted as invalid."""
    raw = pd.read_csv(path, dtype=str, skipinitialspace=True, encoding="utf-8-sig", keep_default_na=False)
    raw.columns = [normalize_column(c) for c in raw.columns]
    times = {c: int(m.group(1)) / 1000.0 for c in raw.columns if (m := SAMPLE_RE.match(c))}
    cells = raw[list(times)].apply(lambda col: col.str.strip())
    empty = cells == ""
    values = cells.apply(lambda col: pd.to_numeric(col, errors="coerce"))
    invalid = ~empty & (values.isna() | (values.abs() > 1.0))
    ids = pd.to_numeric(raw["song_id"].str.strip(), errors="coerce")
    keep = ~(empty | invalid) & ids.notna().to_numpy()[:, None]
    song_idx, col_idx = np.nonzero(keep.to_numpy())
    rows = pd.DataFrame(
        {
            "song_id": ids.to_numpy()[song_idx].astype(int),
            "dimension": dimension,
            "seconds": np.array(list(times.values()))[col_idx],
            "value": values.to_numpy(float)[song_idx, col_idx],
        }
    )
    return rows, int(empty.to_numpy().sum()), int(invalid.to_numpy().sum())


def load_dynamic(report: DataReport, songs: pd.DataFrame) -> DynamicRatings | None:
    """Read the dynamic files discovery found (None when there are none) and count, on ``report``,
    the songs of ``songs`` rated on both dimensions. Several copies of a file: the first file's
    sample wins for a (song, dimension, time)."""
    if not report.dynamic_files:
        report.dynamic_songs = 0
        return None
    parts, empty, invalid = [], 0, 0
    for path in report.dynamic_files:
        rows, e, i = read_dynamic(path, dynamic_dimension(path, read_header(path)))
        parts.append(rows)
        empty, invalid = empty + e, invalid + i
    rows = pd.concat(parts, ignore_index=True).drop_duplicates(["song_id", "dimension", "seconds"], keep="first")
    rows = rows.sort_values(["song_id", "dimension", "seconds"]).reset_index(drop=True)
    ratings = DynamicRatings(rows, list(report.dynamic_files), empty, invalid)
    report.dynamic_songs = len(ratings.songs() & set(songs["song_id"]))
    report.dynamic_empty_cells, report.dynamic_invalid_cells = empty, invalid
    LOG.info(
        "dynamic ratings: %d files, %d of the songs rated on both dimensions", len(ratings.files), report.dynamic_songs
    )
    return ratings


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


def rater_reliability(path: str, raters: int, song_ids=None) -> dict:
    """How far DEAM's raters agree, from a static annotation file's per-song mean and std.

    DEAM ships each song's rating mean and standard deviation over its raters (1-9 scale), not the
    single ratings; with ``raters`` per song, a one-way random-effects ANOVA follows from them:
    MS_between = k var(means) (sample variance over songs), MS_within = mean(std^2).
    Returns {dim: {"icc_1": one rater's agreement with the others, ICC(1) = (MSB - MSW) / (MSB +
    (k - 1) MSW); "icc_1k": the reliability of the k-rater mean a model is scored against,
    ICC(1,k) = (MSB - MSW) / MSB; "songs": n}}. The file's std is taken as the sample (n - 1)
    standard deviation (DEAM does not say; a population std would understate MSW by (k - 1) / k).
    More raters than ``raters`` raise both values. ``song_ids``: the songs to use (default all).
    """
    raw = pd.read_csv(path, dtype=str, skipinitialspace=True, encoding="utf-8-sig")
    raw.columns = [normalize_column(c) for c in raw.columns]
    table = raw.apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce")).dropna(subset=["song_id"])
    if song_ids is not None:
        table = table[table["song_id"].isin(list(song_ids))]
    out = {}
    for dim in ("valence", "arousal"):
        rows = table[[f"{dim}_mean", f"{dim}_std"]].dropna()
        between = raters * rows[f"{dim}_mean"].var(ddof=1)
        within = float(np.mean(rows[f"{dim}_std"] ** 2))
        out[dim] = {
            "icc_1": float((between - within) / (between + (raters - 1) * within)),
            "icc_1k": float((between - within) / between),
            "songs": int(len(rows)),
        }
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
    headers = {p: read_header(p) for p in csvs}
    report.annotation_files = [p for p in csvs if is_annotation_header(headers[p])]
    report.dynamic_files = [p for p in csvs if dynamic_dimension(p, headers[p])]
    report.opensmile = find_opensmile(csvs)
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
