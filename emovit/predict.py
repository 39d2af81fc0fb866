"""Predict the emotion of your own music -- any length, any number of files -- from
``best_vit_model.pth`` alone (no hub, no training data: the checkpoint holds the ViT config,
the weights, the feature parameters and the normalization statistics).

    predict("song.mp3", "best_vit_model.pth")  # {'valence', 'arousal', '..._1_9', 'quadrant', ...}
    table, curves = predict_folder("my_songs/", "best_vit_model.pth", return_curves=True)
    python -m emovit.predict my_songs/ --checkpoint best_vit_model.pth --csv out.csv --curves curves.csv

How a song is read (``Predictor``):
  1. The WHOLE file is decoded (mono, the checkpoint's sample rate) into one log-mel (n_mels, F)
     with the training features' ``log_mel``, rounded to float16 like the training store.
  2. Windows of the training length (T frames) slide over it every ``hop_seconds`` (default
     half a window); one last window is aligned with the end, so every second is heard:
     W = 1 + ceil((F - T - tol) / hop) windows starting at min(k * hop, F - T). The tolerance
     (1% of a window) keeps frame rounding from adding a near-duplicate window.
  3. The windows go through the device preprocessing and the model in batches: the per-window
     values are the curve; their mean is the song's value, on [-1, 1] and DEAM's 1-9 scale.
  A song shorter than one window is followed by silence (the dB floor), exactly as the training
  store reads a short clip (``padded`` in its row). The
  checkpoint's ``clip_offset`` is not used: it chose which part of a DEAM excerpt the training
  store kept; a whole song's curve starts at 0 s.

The quadrant names Russell's circumplex quadrants as music-emotion work does: V>0, A>0 "happy /
excited"; V<0, A>0 "angry / tense"; V<0, A<0 "sad / depressed"; V>0, A<0 "calm / relaxed" (zero
counts as positive). Within ``NEUTRAL_RADIUS`` (0.1 on [-1, 1], 0.4 points on 1-9, about one
standard error of a DEAM song's mean rating) it is "neutral".

A folder: every file with an audio extension librosa may read (``AUDIO_EXTENSIONS``; m4a / aac /
wma need ffmpeg), hidden files left out and counted. Every file gets one row; one that cannot be
decoded gets its reason in ``error``. The next files decode in threads while the model works.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import librosa
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from emovit.deam import to_rating_scale
from emovit.features import MelParams, log_mel, pad_frames
from emovit.files import LOG, atomic_write_csv, load_checkpoint, setup_logging
from emovit.runtime import amp_dtype, pick_device
from emovit.vit import DevicePreprocessor, regressor_from_checkpoint

AUDIO_EXTENSIONS = (
    ".mp3",
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".m4a",
    ".mp4",
    ".aac",
    ".wma",
    ".aif",
    ".aiff",
    ".aifc",
    ".au",
    ".caf",
    ".w64",
)
TAIL_TOLERANCE = 0.01  # a tail of at most this fraction of a window gets no window of its own
NEUTRAL_RADIUS = 0.1  # [-1, 1] scale; see the module docstring
QUADRANTS = {
    (True, True): "happy / excited",
    (False, True): "angry / tense",
    (False, False): "sad / depressed",
    (True, False): "calm / relaxed",
}
NEUTRAL = "neutral"
SONG_COLUMNS = [
    "path",
    "file",
    "seconds",
    "windows",
    "padded",
    "valence",
    "arousal",
    "valence_1_9",
    "arousal_1_9",
    "quadrant",
    "error",
]
CURVE_COLUMNS = ["path", "file", "window", "start_s", "end_s", "valence", "arousal", "valence_1_9", "arousal_1_9"]
EMPTY_MESSAGES = {  # decoders that raise with no message
    "NoBackendError": "no audio decoder could read it (not audio, or a format such as m4a/aac that needs ffmpeg)",
    "EOFError": "the file ended before any audio could be decoded (empty or truncated)",
}


def quadrant(valence: float, arousal: float, neutral_radius: float = NEUTRAL_RADIUS) -> str:
    """Russell quadrant of a ([-1, 1]) valence-arousal point in words, or "neutral" within
    ``neutral_radius`` of the centre (0 = no neutral zone); "" for a missing value."""
    if not (math.isfinite(valence) and math.isfinite(arousal)):
        return ""
    if math.hypot(valence, arousal) < neutral_radius:
        return NEUTRAL
    return QUADRANTS[(valence >= 0, arousal >= 0)]


@dataclass
class Decoded:
    """One file, decoded: log-mel (n_mels, F) float16 with F >= the window's frames, or an error."""

    path: str
    mel: np.ndarray | None = None
    seconds: float = math.nan
    padded: bool = False
    error: str = ""


@dataclass
class SongPrediction:
    """A song's curve: ``starts`` (W,) window start seconds, ``values`` (W, 2) valence, arousal on
    [-1, 1]; the song's value is their mean. No windows when ``error`` says why."""

    path: str
    seconds: float
    starts: np.ndarray
    values: np.ndarray
    window_seconds: float
    padded: bool = False
    error: str = ""

    @property
    def valence(self) -> float:
        return float(self.values[:, 0].mean()) if len(self.values) else math.nan

    @property
    def arousal(self) -> float:
        return float(self.values[:, 1].mean()) if len(self.values) else math.nan

    def row(self, neutral_radius: float = NEUTRAL_RADIUS) -> dict:
        """One row of the songs table (``SONG_COLUMNS``)."""
        v, a = self.valence, self.arousal
        return {
            "path": self.path,
            "file": os.path.basename(self.path),
            "seconds": self.seconds,
            "windows": len(self.values),
            "padded": self.padded,
            "valence": v,
            "arousal": a,
            "valence_1_9": float(to_rating_scale(v)),
            "arousal_1_9": float(to_rating_scale(a)),
            "quadrant": quadrant(v, a, neutral_radius),
            "error": self.error,
        }

    def curve(self) -> pd.DataFrame:
        """The per-window curve (``CURVE_COLUMNS``), one row per window."""
        v, a = self.values[:, 0].astype(float), self.values[:, 1].astype(float)
        return pd.DataFrame(
            {
                "path": self.path,
                "file": os.path.basename(self.path),
                "window": np.arange(len(self.values)),
                "start_s": self.starts,
                "end_s": np.minimum(self.starts + self.window_seconds, self.seconds),
                "valence": v,
                "arousal": a,
                "valence_1_9": to_rating_scale(v),
                "arousal_1_9": to_rating_scale(a),
            },
            columns=CURVE_COLUMNS,
        )


class Predictor:
    """A loaded checkpoint. ``decode`` (CPU, thread-safe) and ``predict_decoded`` (device) are
    the two halves of ``predict_file``; call the object with a path for the song-level dict.

    Args:
        checkpoint: ``best_vit_model.pth`` (format of ``emovit.vit_train.save_best``).
        device: "cpu", "cuda", "cuda:1", ...; mixed precision on a GPU as in training.
        hop_seconds: seconds between windows; None or 0 = half the checkpoint's window.
        batch_size: windows per forward pass.
    """

    def __init__(self, checkpoint: str, device: str = "cpu", hop_seconds: float | None = None, batch_size: int = 32):
        state = load_checkpoint(checkpoint)
        self.checkpoint = checkpoint
        self.params = MelParams(**state["mel_params"])
        self.model = regressor_from_checkpoint(state)
        self.pre = DevicePreprocessor.from_dict(state["preprocess"])
        self.device = device
        self.model.to(device).eval()
        self.pre.to(device)
        self.amp = amp_dtype(device)
        self.batch_size = batch_size
        self.window_frames = self.params.num_frames
        self.frame_seconds = self.params.hop_length / self.params.sample_rate
        hop = hop_seconds if hop_seconds else self.params.clip_seconds / 2
        if hop < 0:
            raise ValueError(f"hop_seconds must be positive (or 0 for half a window), got {hop_seconds}")
        self.hop_frames = max(1, int(round(hop / self.frame_seconds)))
        self.hop_seconds = self.hop_frames * self.frame_seconds
        self.tail_tolerance = max(1, int(round(TAIL_TOLERANCE * self.window_frames)))  # frames
        self.timings = {"decode": 0.0, "log_mel": 0.0, "model": 0.0}  # seconds spent, summed over calls
        self._lock = threading.Lock()

    def decode(self, path: str) -> Decoded:
        """Decode a whole file into its log-mel; never raises for a bad file (see ``error``)."""
        t0 = time.perf_counter()
        try:
            if os.path.getsize(path) == 0:
                raise ValueError("empty file (0 bytes)")
            y, _ = librosa.load(path, sr=self.params.sample_rate, mono=True)
            if len(y) == 0:
                raise ValueError("no audio samples decoded")
            if not np.all(np.isfinite(y)):
                raise ValueError("decoded samples are not finite")
            seconds = len(y) / self.params.sample_rate
            padded = len(y) < self.params.num_samples
            t1 = time.perf_counter()
            mel = log_mel(y, self.params)
            if padded:  # shorter than one window: silence after it, as the training store reads it
                mel = pad_frames(mel, self.window_frames, 10 * np.log10(self.params.db_amin))
            mel = mel.astype(np.float16)  # the training store's precision
        except Exception as err:  # noqa: BLE001 -- any decoder failure is that file's row, never fatal
            return Decoded(path, error=_reason(err))
        self._add(decode=t1 - t0, log_mel=time.perf_counter() - t1)
        return Decoded(path, mel, seconds, padded)

    def window_starts(self, frames: int) -> np.ndarray:
        """Start frames (W,) of the windows over a log-mel of ``frames`` >= window frames."""
        last = frames - self.window_frames
        if last < 0:
            raise ValueError(f"log-mel of {frames} frames is shorter than one window ({self.window_frames})")
        tail = max(last - self.tail_tolerance, 0)
        count = 1 + -(-tail // self.hop_frames)
        return np.minimum(np.arange(count) * self.hop_frames, last)

    @torch.no_grad()
    def predict_mel(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log-mel (n_mels, F) -> (window start seconds (W,), values (W, 2) valence, arousal)."""
        t0 = time.perf_counter()
        starts = self.window_starts(mel.shape[1])
        full = torch.from_numpy(np.ascontiguousarray(mel)).to(self.device, non_blocking=True)
        out = np.empty((len(starts), 2), dtype=np.float32)
        kind = self.device.split(":")[0]
        for i in range(0, len(starts), self.batch_size):
            batch = torch.stack([full[:, s : s + self.window_frames] for s in starts[i : i + self.batch_size]])
            with torch.autocast(device_type=kind, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                out[i : i + len(batch)] = self.model(self.pre(batch)).float().cpu().numpy()
        self._add(model=time.perf_counter() - t0)
        return starts * self.frame_seconds, out

    def predict_decoded(self, decoded: Decoded) -> SongPrediction:
        if decoded.mel is None:
            return SongPrediction(
                decoded.path,
                decoded.seconds,
                np.zeros(0),
                np.zeros((0, 2), np.float32),
                self.params.clip_seconds,
                error=decoded.error,
            )
        starts, values = self.predict_mel(decoded.mel)
        return SongPrediction(
            decoded.path, decoded.seconds, starts, values, self.params.clip_seconds, padded=decoded.padded
        )

    def predict_file(self, path: str) -> SongPrediction:
        return self.predict_decoded(self.decode(path))

    def __call__(self, audio_path: str) -> dict:
        """Song-level dict: valence, arousal ([-1, 1]), valence_1_9, arousal_1_9, quadrant,
        seconds, windows. Raises ValueError when the file cannot be decoded."""
        song = self.predict_file(audio_path)
        if song.error:
            raise ValueError(f"cannot predict {audio_path}: {song.error}")
        row = song.row()
        return {
            k: row[k] for k in ("valence", "arousal", "valence_1_9", "arousal_1_9", "quadrant", "seconds", "windows")
        }

    def _add(self, **seconds: float) -> None:
        with self._lock:
            for k, v in seconds.items():
                self.timings[k] += v


def _reason(err: BaseException) -> str:
    name = type(err).__name__
    message = str(err).strip() or EMPTY_MESSAGES.get(name, "the file could not be decoded")
    return f"{name}: {message}"[:300]


def predict(audio_path: str, checkpoint: str, device: str = "cpu", hop_seconds: float | None = None) -> dict:
    """Valence and arousal of a whole file on the [-1, 1] and the 1-9 scales, plus its quadrant,
    length in seconds and number of windows (see ``Predictor.__call__``)."""
    return Predictor(checkpoint, device=device, hop_seconds=hop_seconds)(audio_path)


def find_audio(folder_or_files: str | os.PathLike | Iterable) -> list[str]:
    """Audio files to predict: folders are searched recursively (sorted; ``AUDIO_EXTENSIONS``,
    hidden files left out); files named explicitly are kept whatever they are or whether they
    exist (their row will say why they fail)."""
    items = [folder_or_files] if isinstance(folder_or_files, (str, os.PathLike)) else list(folder_or_files)
    found, ignored = [], collections.Counter()
    for item in map(str, items):
        if not os.path.isdir(item):
            found.append(item)
            continue
        for folder, dirs, files in os.walk(item, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                ext = os.path.splitext(name)[1].lower()
                if name.startswith("."):
                    ignored["hidden"] += 1
                elif ext in AUDIO_EXTENSIONS:
                    found.append(os.path.join(folder, name))
                else:
                    ignored[ext or "(no extension)"] += 1
    if ignored:
        LOG.info(
            "predict: left out %d non-audio or hidden file(s) in the folder(s): %s",
            sum(ignored.values()),
            dict(ignored.most_common(8)),
        )
    return found


def predict_many(
    paths: list[str], predictor: Predictor, workers: int | None = None, progress: bool = True
) -> list[SongPrediction]:
    """One ``SongPrediction`` per path, in order. ``workers`` threads decode the next files
    while the model runs (0 = decode in this thread). None: min(4, CPU cores) on a GPU, where
    the model waits for decoding; 1 on the CPU, where decoding and the model share the cores
    (on the 2-core CPU of ``make bench`` 1 or 2 threads measured no better than 0 -- within
    noise -- and 1 keeps a GPU busy)."""
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if predictor.device.startswith("cuda") else 1
    start = time.perf_counter()
    results = []
    bar = tqdm(total=len(paths), desc="predict", unit="song", disable=not progress)
    for decoded in _decoded(paths, predictor, workers):
        results.append(predictor.predict_decoded(decoded))
        bar.set_postfix_str(os.path.basename(decoded.path)[-30:], refresh=False)
        bar.update(1)
    bar.close()
    failed = sum(bool(r.error) for r in results)
    LOG.info(
        "predict: %d file(s), %d could not be decoded, %.2f songs/s",
        len(results),
        failed,
        len(results) / max(time.perf_counter() - start, 1e-9),
    )
    return results


def _decoded(paths: list[str], predictor: Predictor, workers: int) -> Iterator[Decoded]:
    """``predictor.decode`` over ``paths`` in order, at most 2 * workers files ahead."""
    if workers <= 0:
        yield from map(predictor.decode, paths)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="emovit-decode") as pool:
        pending = collections.deque()
        todo = iter(paths)
        for path in todo:
            pending.append(pool.submit(predictor.decode, path))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(predictor.decode, nxt))
            yield done


def songs_table(results: list[SongPrediction], neutral_radius: float = NEUTRAL_RADIUS) -> pd.DataFrame:
    """One row per file (``SONG_COLUMNS``)."""
    return pd.DataFrame([r.row(neutral_radius) for r in results], columns=SONG_COLUMNS)


def curves_table(results: list[SongPrediction]) -> pd.DataFrame:
    """One row per window of every decoded file (``CURVE_COLUMNS``)."""
    curves = [r.curve() for r in results if not r.error]
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)


def predict_folder(
    folder_or_files,
    checkpoint: str | Predictor,
    device: str = "cpu",
    hop_seconds: float | None = None,
    workers: int | None = None,
    progress: bool = True,
    neutral_radius: float = NEUTRAL_RADIUS,
    return_curves: bool = False,
):
    """Predict every audio file of a folder (recursively), a file, or a list of either.

    ``checkpoint``: a path or an already loaded ``Predictor`` (then ``device`` and
    ``hop_seconds`` are its own). Returns the songs table, or (songs, curves) with
    ``return_curves``. A file that cannot be decoded is a row with its reason in ``error``.
    """
    predictor = (
        checkpoint
        if isinstance(checkpoint, Predictor)
        else Predictor(checkpoint, device=device, hop_seconds=hop_seconds)
    )
    paths = find_audio(folder_or_files)
    if not paths:
        LOG.warning("predict: no audio files in %s", folder_or_files)
    results = predict_many(paths, predictor, workers=workers, progress=progress)
    table = songs_table(results, neutral_radius)
    return (table, curves_table(results)) if return_curves else table


def write_tables(
    table: pd.DataFrame, curves: pd.DataFrame | None, csv_path: str | None, curves_path: str | None
) -> list[str]:
    """Write the songs table and the curves as CSV (atomically); returns the paths written."""
    written = []
    for frame, path in ((table, csv_path), (curves, curves_path)):
        if path and frame is not None:
            written.append(atomic_write_csv(path, frame))
    return written


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The songs table for reading: file, length, windows, rounded values, quadrant, error."""
    cols = ["file", "seconds", "windows", "valence", "arousal", "valence_1_9", "arousal_1_9", "quadrant", "error"]
    return table[cols].round({"seconds": 1, "valence": 3, "arousal": 3, "valence_1_9": 2, "arousal_1_9": 2})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emovit.predict",
        description="Valence, arousal and Russell quadrant of audio files (any length) from best_vit_model.pth.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="best_vit_model.pth written by the notebook")
    parser.add_argument("--csv", help="write one row per file here")
    parser.add_argument("--curves", help="write one row per window (the curves over time) here")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument(
        "--hop",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between windows (default: half the checkpoint's window)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: min(4, cores) on a GPU, 1 on the CPU)"
    )
    parser.add_argument(
        "--neutral-radius",
        type=float,
        default=NEUTRAL_RADIUS,
        help=f"'neutral' within this distance of the centre, [-1, 1] scale (default {NEUTRAL_RADIUS})",
    )
    args = parser.parse_args(argv)
    setup_logging()
    predictor = Predictor(args.checkpoint, device=args.device or pick_device(), hop_seconds=args.hop)
    LOG.info(
        "predict: %s on %s, %.1f s windows every %.2f s",
        args.checkpoint,
        predictor.device,
        predictor.params.clip_seconds,
        predictor.hop_seconds,
    )
    table, curves = predict_folder(
        args.paths, predictor, workers=args.workers, neutral_radius=args.neutral_radius, return_curves=True
    )
    for path in write_tables(table, curves, args.csv, args.curves):
        LOG.info("predict: wrote %s", path)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        print(display_table(table).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
