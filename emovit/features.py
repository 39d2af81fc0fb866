"""Log-mel spectrograms of every song's whole clip, extracted in parallel and cached on disk.

Per song the store keeps up to ``max_clip_seconds`` of mono audio at ``sample_rate`` from
``clip_offset`` on (DEAM clips are 45 s: 128 x 1938 frames), so training can draw a different
``clip_seconds`` window (the model's input, 30 s -> 128 x 1292) from each song every epoch and
evaluation can average several windows. n_fft 2048, hop 512, 128 mel bands. Power is converted
to dB against a FIXED reference (1.0), never the clip's own maximum, so loudness -- a strong
arousal cue -- survives. Silence maps to 10*log10(db_amin) dB, so the result is always finite.

The stored clip does not depend on the model's window, so changing ``clip_seconds`` reuses the
store. Each song's number of valid frames is kept (column ``frames`` of ``store.songs``); the
rest of its row is silence (the dB floor), so a window read from a song shorter than one window
is that song followed by silence, as a zero-padded waveform would be (counted as "padded").
Longer files are cropped at ``max_clip_seconds``; a file whose audio after ``clip_offset`` is
shorter than ``max_clip_seconds`` (even one shorter than the offset itself) keeps its last
``max_clip_seconds`` instead, ending where decoding ends ("shifted"). A file that cannot be
decoded is skipped with its reason in ``errors.csv`` and the run goes on -- unless more than
``max_error_fraction`` of the songs fail, which stops the run with the most common reason.

The store is one ``.npy`` file (N x n_mels x T_store, float16) memory-mapped on load, keyed by
the stored clip's parameters (``STORE_FIELDS``) and the input files (path, size, mtime), so a
re-run skips extraction. Window, crop and augmentation settings are not part of the key.
"""

from __future__ import annotations

import collections
import json
import os
import time
from dataclasses import dataclass

import librosa
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emovit import workspace
from emovit.config import Config
from emovit.files import (
    LOG,
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    file_fingerprint,
    hash_json,
    parallel_imap,
)

PARAM_FIELDS = (
    "sample_rate",
    "clip_seconds",
    "clip_offset",
    "n_fft",
    "hop_length",
    "n_mels",
    "db_amin",
    "max_clip_seconds",
)
# The fields that change what the store holds: its cache key (clip_seconds, the model's window, is not one).
STORE_FIELDS = ("sample_rate", "clip_offset", "n_fft", "hop_length", "n_mels", "db_amin", "max_clip_seconds")
STORE_VERSION = 3  # bump when the stored representation changes (3: clips independent of the window)


@dataclass(frozen=True)
class MelParams:
    """The extraction parameters that define a stored log-mel (and its cache key)."""

    sample_rate: int
    clip_seconds: float
    clip_offset: float
    n_fft: int
    hop_length: int
    n_mels: int
    db_amin: float
    max_clip_seconds: float = 0.0  # longest stored clip; 0 (checkpoints before format 2) = one window

    @classmethod
    def from_config(cls, cfg: Config) -> MelParams:
        return cls(**{k: getattr(cfg, k) for k in PARAM_FIELDS})

    @property
    def num_samples(self) -> int:
        """Samples of one model window (``clip_seconds``)."""
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def num_frames(self) -> int:
        """Frames of one model window: 1 + samples // hop (librosa's centred STFT)."""
        return 1 + self.num_samples // self.hop_length

    @property
    def max_samples(self) -> int:
        """Samples of the longest stored clip (never shorter than one window)."""
        return max(self.num_samples, int(round(self.sample_rate * self.max_clip_seconds)))

    @property
    def max_frames(self) -> int:
        """Width T_store of the feature store."""
        return 1 + self.max_samples // self.hop_length


@dataclass
class FeatureStore:
    """Log-mels of the songs that decoded.

    Attributes:
        mels: memory-mapped float16 array (N_all, n_mels, T_store); row ``songs.row`` belongs to
            a song, whose first ``songs.frames`` frames are valid (the rest repeat the last
            frame); rows of failed songs are zeros and never referenced.
        songs: the input songs table restricted to decoded songs, plus columns ``row`` and
            ``frames`` (valid frames, between one window and T_store).
        errors: DataFrame (song_id, path, reason), one row per skipped file.
        counts: {"ok", "padded", "cropped", "shifted", "failed"} song counts.
        cache_hit: True when the store was loaded instead of extracted.
        seconds: wall time of this call.
    """

    mels: np.ndarray
    songs: pd.DataFrame
    errors: pd.DataFrame
    counts: dict
    cache_hit: bool
    path: str
    seconds: float
    params: MelParams

    def song_mels(self, song_ids) -> np.ndarray:
        """(len(song_ids), n_mels, T_store) float16 copy of the given songs' whole stored clips."""
        rows = self.songs.set_index("song_id").loc[list(song_ids), "row"].to_numpy()
        order = np.argsort(rows)  # sorted reads are faster on a memmap
        out = np.empty((len(rows),) + self.mels.shape[1:], dtype=np.float16)
        out[order] = self.mels[rows[order]]
        return out

    def song_frames(self, song_ids) -> np.ndarray:
        """(len(song_ids),) valid frames of each song's stored clip."""
        return self.songs.set_index("song_id").loc[list(song_ids), "frames"].to_numpy()

    def centre_windows(self, song_ids) -> np.ndarray:
        """(len(song_ids), n_mels, num_frames) float16: each song's centre model window."""
        mels, frames = self.song_mels(song_ids), self.song_frames(song_ids)
        window = self.params.num_frames
        starts = [int(crop_starts(f, window, 1)[0]) for f in frames]
        return np.stack([m[:, s : s + window] for m, s in zip(mels, starts)]) if len(mels) else mels[:, :, :window]


def crop_starts(frames: int, window: int, count: int) -> np.ndarray:
    """``count`` evenly spaced window starts within ``frames`` valid frames (int array).

    One crop is the centre one; several span the clip from its start to its end, so a 45 s
    clip with 30 s windows and 3 crops starts them at 0, 7.5 and 15 s.
    """
    room = max(int(frames) - window, 0)
    if count <= 1:
        return np.array([room // 2])
    return np.round(np.linspace(0, room, count)).astype(int)


def log_mel(y: np.ndarray, params: MelParams) -> np.ndarray:
    """Mono waveform (num_samples,) -> log-mel (n_mels, T) float32 in dB re 1.0."""
    power = librosa.feature.melspectrogram(
        y=y,
        sr=params.sample_rate,
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        n_mels=params.n_mels,
        power=2.0,
    )
    return librosa.power_to_db(power, ref=1.0, amin=params.db_amin, top_db=None).astype(np.float32)


def load_clip(path: str, params: MelParams) -> tuple[np.ndarray, str]:
    """Decode the stored clip of one file: from ``clip_offset``, up to ``max_clip_seconds``.

    The file is decoded from its start and cut in memory (not with a decoder offset: an
    offset past the end of a short file makes both of librosa's backends raise).

    Returns:
        y: float32 (n,) mono at ``sample_rate``, 0 < n <= ``max_samples`` (never padded).
        status: "ok" (a whole ``max_clip_seconds`` from the offset), "cropped" (audio continues
            past it) or "shifted" (the audio after the offset is shorter: the clip is the file's
            last ``max_clip_seconds``, or the whole file when that is shorter).

    Raises:
        ValueError / RuntimeError / OSError: the file cannot be decoded (caller records it).
    """
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    n_max = params.max_samples
    start = int(round(params.clip_offset * params.sample_rate))
    extra = params.hop_length / params.sample_rate  # read a little more to detect cropping
    full, _ = librosa.load(
        path,
        sr=params.sample_rate,
        mono=True,
        offset=0.0,
        duration=params.clip_offset + n_max / params.sample_rate + extra,
    )
    if len(full) == 0:
        raise ValueError("no audio samples decoded")
    if not np.all(np.isfinite(full)):
        raise ValueError("decoded samples are not finite")
    if len(full) - start >= n_max:
        y = full[start : start + n_max]
        status = "cropped" if len(full) - start > n_max else "ok"
    elif start > 0:
        # Ends before offset + max clip: keep the clip that ends where decoding ends (not the
        # header's duration: a truncated mp3 claims its full length).
        y, status = full[-n_max:], "shifted"
    else:
        y, status = full, "ok"
    return y.astype(np.float32, copy=False), status


def load_window(path: str, params: MelParams) -> tuple[np.ndarray, str]:
    """The first model window of a file's clip: float32 (num_samples,), zero-padded when the clip
    is shorter, and its status ("padded" for a clip shorter than one window)."""
    y, status = load_clip(path, params)
    n = params.num_samples
    if len(y) < n:
        return np.pad(y, (0, n - len(y))), "padded" if status == "ok" else status
    return y[:n], status


def extract_one(task: tuple[int, str, MelParams]) -> tuple[int, np.ndarray | None, str, str]:
    """Worker: (row, path, params) -> (row, log-mel float16 (n_mels, frames) or None, status, reason).

    ``frames`` is at most the store's width (``max_frames``); shorter clips are padded in the store.
    """
    row, path, params = task
    try:
        y, status = load_clip(path, params)
        mel = log_mel(y, params)
    except Exception as err:  # noqa: BLE001 -- any decoder failure is recorded, never fatal
        message = str(err).strip() or "no audio decoder could read the file"
        return row, None, "failed", f"{type(err).__name__}: {message}"[:300]
    return row, mel[:, : params.max_frames].astype(np.float16), status, ""


def pad_frames(mel: np.ndarray, frames: int, floor: float) -> np.ndarray:
    """(n_mels, t) -> (n_mels, frames): cropped, or followed by silence (the dB floor)."""
    if mel.shape[1] >= frames:
        return mel[:, :frames]
    return np.pad(mel, ((0, 0), (0, frames - mel.shape[1])), constant_values=floor)


def cache_key(songs: pd.DataFrame, params: MelParams) -> str:
    inputs = [[int(s), *file_fingerprint(p)] for s, p in zip(songs["song_id"], songs["audio_path"])]
    stored = {k: getattr(params, k) for k in STORE_FIELDS}
    return hash_json({"version": STORE_VERSION, "params": stored, "inputs": inputs})


def extract_features(songs: pd.DataFrame, cfg: Config, num_workers: int | None = None) -> FeatureStore:
    """Log-mels of ``songs`` (song_id, audio_path, ...), from cache when possible.

    Writes ``errors.csv`` into ``cfg.output_dir``. Raises RuntimeError when more than
    ``cfg.max_error_fraction`` of the songs fail to decode.
    """
    start = time.perf_counter()
    params = MelParams.from_config(cfg)
    songs = songs.reset_index(drop=True)
    key = cache_key(songs, params)
    folder = workspace.entry(cfg, "features", f"mel_{key}")
    path = os.path.join(folder, f"mel_{key}.npy")
    meta_path = os.path.join(folder, f"mel_{key}.json")
    cache_hit = os.path.exists(path) and os.path.exists(meta_path)
    if cache_hit:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        LOG.info("features: cache hit %s (%d songs)", path, len(songs))
    else:
        workspace.ensure_free(folder, len(songs) * params.n_mels * params.max_frames * 2, "the log-mel store")
        meta = _extract_to(path, songs, params, num_workers if num_workers is not None else cfg.num_workers)
        atomic_write_json(meta_path, meta)
    workspace.prune(cfg, "features", in_use=folder)
    mels = np.load(path, mmap_mode="r")
    status = pd.Series(meta["status"])
    errors = pd.DataFrame(meta["errors"], columns=["song_id", "path", "reason"])
    os.makedirs(cfg.output_dir, exist_ok=True)
    atomic_write_csv(os.path.join(cfg.output_dir, "errors.csv"), errors)
    ok = songs[(status != "failed").to_numpy()].copy()
    ok["row"] = ok.index.to_numpy()
    ok["frames"] = np.asarray(meta["frames"], dtype=np.int64)[ok.index.to_numpy()]
    # "padded": a clip shorter than this run's window (read with silence after it); a window-level
    # count, so it is made here and not stored with the clips
    status[(status == "ok").to_numpy() & (np.asarray(meta["frames"]) < params.num_frames)] = "padded"
    counts = {k: int((status == k).sum()) for k in ("ok", "padded", "cropped", "shifted", "failed")}
    _check_error_fraction(errors, len(songs), cfg.max_error_fraction)
    store = FeatureStore(
        mels=mels,
        songs=ok.reset_index(drop=True),
        errors=errors,
        counts=counts,
        cache_hit=cache_hit,
        path=path,
        seconds=time.perf_counter() - start,
        params=params,
    )
    LOG.info("features: %s in %.1f s", counts, store.seconds)
    return store


def _extract_to(path: str, songs: pd.DataFrame, params: MelParams, num_workers: int) -> dict:
    """Extract every song into a new .npy at ``path`` (atomically); returns the metadata."""
    n = len(songs)
    workers = num_workers or os.cpu_count() or 1
    workers = max(1, min(workers, n))
    tasks = [(i, p, params) for i, p in enumerate(songs["audio_path"])]
    status = ["failed"] * n
    frames = [0] * n
    errors = []
    LOG.info("features: extracting %d songs with %d process(es)", n, workers)
    with atomic_path(path) as tmp:
        store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, params.n_mels, params.max_frames))
        bar = tqdm(total=n, desc="log-mel", unit="song")
        floor = 10 * np.log10(params.db_amin)  # silence, in the store's dB
        _collect(parallel_imap(extract_one, tasks, workers), store, songs, status, frames, errors, bar, floor)
        bar.close()
        store.flush()
        del store
    return {
        "status": status,
        "frames": frames,
        "errors": errors,
        "params": params.__dict__,
        "song_ids": songs["song_id"].tolist(),
    }


def _collect(results, store, songs, status, frames, errors, bar, floor: float) -> None:
    first = time.perf_counter()
    for done, (row, mel, st, reason) in enumerate(results, start=1):
        status[row] = st
        if mel is None:
            errors.append([int(songs.at[row, "song_id"]), songs.at[row, "audio_path"], reason])
            LOG.warning("skipped song %s (%s): %s", songs.at[row, "song_id"], songs.at[row, "audio_path"], reason)
        else:
            frames[row] = mel.shape[1]
            store[row] = pad_frames(mel, store.shape[2], floor)
        if done == min(32, bar.total):
            rate = done / max(time.perf_counter() - first, 1e-9)
            LOG.info("features: ~%.1f songs/s, ETA for the stage %.0f s", rate, (bar.total - done) / rate)
        bar.update(1)


def _check_error_fraction(errors: pd.DataFrame, total: int, limit: float) -> None:
    if total and len(errors) / total > limit:
        common = collections.Counter(r.split(":")[0] for r in errors["reason"]).most_common(3)
        example = errors.iloc[0]
        raise RuntimeError(
            f"{len(errors)} of {total} songs could not be decoded (limit {limit:.0%}). "
            f"Most common errors: {common}. First: song {example.song_id} ({example.path}): "
            f"{example.reason}. See errors.csv in the output folder."
        )
