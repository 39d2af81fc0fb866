"""A synthetic DEAM: songs whose valence and arousal are learnable from their audio.

``make_demo_deam(root)`` writes a folder with DEAM's real layout and file quirks:
``DEAM_audio/MEMD_audio/<id>.mp3`` and the two static annotation CSVs (leading spaces in
the header, CRLF, the 13-column 2000-2058 file with its ``valence_ max_mean`` column).

Each song has a latent (valence, arousal) drawn like DEAM's labels (centred, correlated).
The audio encodes them the way music does, with noise so that the task is not trivial.
Two styles (``style=``), so that a model is not tuned to one generator:

``"demo"`` (default): mono wavetable chords and noise-burst percussion, written as mono mp3.
    arousal -> tempo (70-160 bpm), onset density, loudness (-26 to -8 dBFS), brightness
               (number of harmonics);
    valence -> mode (major vs minor third, by a logistic in valence) and register.
``"band"``: a stereo band -- drum kit (sine-sweep kick, noise snare, hi-hat), soft chord pads
    (a fixed, dark timbre: brightness carries no label) and a bass line -- written as stereo mp3.
    arousal -> tempo (60-170 bpm), note density (hi-hat 8ths/16ths, bass notes per beat),
               drum intensity (snare/hat level against the pads) and level (-28 to -10 dBFS);
    valence -> mode of the chords (major vs minor, by a logistic in valence) and register
               (pad and bass octave).
The annotated mean rating is the latent mapped to 1-9 plus rater noise (std 0.6 on 1-9).
Everything is deterministic given ``seed`` (each song has its own generator).

``dynamic=True`` gives each song an emotion that moves: its last third is rendered at arousal
a + 2d and the rest at a - d (d ~ U(-0.25, 0.25), so the time mean stays the static latent a; the
same seed keeps key, mode and timbre), and writes DEAM's 2 Hz files (``dynamic (per second
annotations)/{valence,arousal}.csv``, rated from 15 s, rater noise std 0.05) -- so the curve
scoring of :mod:`emovit.curves` can be tested end to end. Off by default: the demo's songs and
every number measured on them stay as they were.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from emovit.files import LOG, atomic_path, atomic_write_text, parallel_imap

AUDIO_DIR = os.path.join("DEAM_audio", "MEMD_audio")
ANNOTATION_DIR = os.path.join("DEAM_Annotations", "annotations", "annotations averaged per song", "song_level")
DYNAMIC_DIR = os.path.join(
    "DEAM_Annotations", "annotations", "annotations averaged per song", "dynamic (per second annotations)"
)
FIRST_RATED_SECONDS = 15.0  # DEAM does not rate a song's first 15 s
FILE_1_2000 = "static_annotations_averaged_songs_1_2000.csv"
FILE_2000_2058 = "static_annotations_averaged_songs_2000_2058.csv"
MARKER = ".emovit_demo.json"
TABLE_SIZE = 2048  # samples in one period of the wavetable


def latent_labels(num_songs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Song ids (sorted, some above 2000) and latent valence, arousal in [-0.9, 0.9]."""
    rng = np.random.default_rng(seed)
    n_late = max(1, num_songs // 20)
    late = rng.choice(np.arange(2001, 2059), size=min(n_late, 58), replace=False)
    early = rng.choice(np.arange(2, 2001), size=num_songs - len(late), replace=False)
    ids = np.sort(np.concatenate([early, late]))
    arousal = np.clip(rng.normal(0.0, 0.4, num_songs), -0.9, 0.9)
    valence = np.clip(0.4 * arousal + rng.normal(0.0, 0.35, num_songs), -0.9, 0.9)
    return ids, valence, arousal


def synthesize(valence: float, arousal: float, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """One song: float32 mono waveform (seconds * sample_rate,) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    a01, v01 = (arousal + 1) / 2, (valence + 1) / 2
    bpm = 70 + 90 * a01 + rng.normal(0, 5)
    beat = 60.0 / bpm
    harmonics = 2 + int(round(10 * a01 + rng.normal(0, 1)))
    gain = 10 ** ((-26 + 18 * a01 + rng.normal(0, 1.5)) / 20)
    major = rng.random() < 1 / (1 + np.exp(-6 * valence))
    root_midi = 45 + 14 * v01 + rng.normal(0, 1.5)

    # Wavetable with `harmonics` partials, amplitude 1/k: brighter with more arousal.
    phase = np.arange(TABLE_SIZE) / TABLE_SIZE
    table = sum(np.sin(2 * np.pi * k * phase) / k for k in range(1, max(harmonics, 1) + 1))
    table = (table / np.max(np.abs(table))).astype(np.float32)

    # Chord progression: a new chord every bar (4 beats), roots within the key.
    steps = [0, 5, 7, 9] if major else [0, 5, 7, 8]
    third = 4 if major else 3
    bar = 4 * beat
    chord_index = np.minimum((t / bar).astype(int), int(seconds / bar) + 1)
    roots = root_midi + np.asarray(steps)[rng.integers(0, 4, size=chord_index.max() + 1)]
    root = roots[chord_index]
    tones = np.zeros(n, dtype=np.float32)
    for interval in (0, third, 7):
        freq = 440.0 * 2 ** ((root + interval - 69) / 12)
        ph = np.cumsum(freq / sample_rate) % 1.0
        tones += table[(ph * TABLE_SIZE).astype(int) % TABLE_SIZE]
    tones /= 3

    # Percussion: decaying noise bursts on every beat, on off-beats too when aroused.
    per_beat = 1 + int(a01 > 0.5) + int(a01 > 0.8)
    onsets = np.arange(0, seconds, beat / per_beat)
    burst_len = int(0.08 * sample_rate)
    burst = (rng.normal(0, 1, burst_len) * np.exp(-np.arange(burst_len) / (0.015 * sample_rate))).astype(np.float32)
    drums = np.zeros(n + burst_len, dtype=np.float32)
    for onset in (onsets * sample_rate).astype(int):
        drums[onset : onset + burst_len] += burst
    y = gain * (0.7 * tones + (0.15 + 0.35 * a01) * drums[:n])
    y += rng.normal(0, 1e-3, n)  # a little noise floor
    return np.clip(y, -0.99, 0.99).astype(np.float32)


def _tone(freq: np.ndarray | float, n: int, sample_rate: int, kind: str) -> np.ndarray:
    """(n,) float32 oscillator at ``freq`` Hz (scalar or per sample): "sine", "soft" (3 partials)."""
    ph = np.cumsum(np.broadcast_to(np.asarray(freq, np.float64), (n,)) / sample_rate) % 1.0
    if kind == "sine":
        return np.sin(2 * np.pi * ph).astype(np.float32)
    return ((np.sin(2 * np.pi * ph) + 0.3 * np.sin(4 * np.pi * ph) + 0.1 * np.sin(6 * np.pi * ph)) / 1.4).astype(
        np.float32
    )


def synthesize_band(valence: float, arousal: float, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """One "band" song: float32 stereo waveform (seconds * sample_rate, 2) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    a01, v01 = (arousal + 1) / 2, (valence + 1) / 2
    bpm = 60 + 110 * a01 + rng.normal(0, 6)
    beat = 60.0 / bpm
    major = rng.random() < 1 / (1 + np.exp(-6 * valence))
    key = 36 + 12 * v01 + rng.normal(0, 1.0)  # bass register (MIDI); pads sit 2 octaves higher
    gain = 10 ** ((-28 + 18 * a01 + rng.normal(0, 1.5)) / 20)
    drive = 0.2 + 0.8 * a01 + rng.normal(0, 0.05)  # drum intensity against the pads
    t = np.arange(n) / sample_rate

    # Chord pads: a chord per bar (I-vi-IV-V in major, i-VI-iv-v in minor), slow attack.
    degrees = [0, 9, 5, 7] if major else [0, 8, 5, 7]
    third = 4 if major else 3
    bar = 4 * beat
    bars = int(seconds / bar) + 2
    roots = key + 24 + np.asarray(degrees)[np.arange(bars) % 4] + 12 * (rng.random(bars) < 0.15)
    chord = np.minimum((t / bar).astype(int), bars - 1)
    pads = np.zeros(n, np.float32)
    for interval in (0, third, 7, 12):
        pads += _tone(440.0 * 2 ** ((roots[chord] + interval - 69) / 12), n, sample_rate, "soft")
    envelope = np.minimum(1.0, (t % bar) / (0.3 * bar)).astype(np.float32)  # swell at each chord
    pads *= envelope / 4

    # Bass: the chord root, 1 note per beat when calm, 2 or 4 when aroused; plucked decay.
    per_beat = 1 + int(a01 > 0.4) + 2 * int(a01 > 0.75)
    step = beat / per_beat
    note = (t / step).astype(int)
    bass_freq = 440.0 * 2 ** ((roots[chord] - 24 + 12 * (note % 2 == 1) * (a01 > 0.6) - 69) / 12)
    bass = _tone(bass_freq, n, sample_rate, "soft") * np.exp(-(t % step) / (0.4 * step)).astype(np.float32)

    # Drum kit: kick on beats 1 and 3, snare on 2 and 4, hi-hat on 8ths (16ths when aroused).
    drums = np.zeros(n + sample_rate, np.float32)
    k_len, s_len, h_len = int(0.25 * sample_rate), int(0.18 * sample_rate), int(0.05 * sample_rate)
    kt = np.arange(k_len) / sample_rate
    kick = (np.sin(2 * np.pi * np.cumsum(50 + 100 * np.exp(-kt / 0.03)) / sample_rate) * np.exp(-kt / 0.12)).astype(
        np.float32
    )
    snare = (rng.normal(0, 1, s_len) * np.exp(-np.arange(s_len) / (0.05 * sample_rate))).astype(np.float32)
    hat = np.diff(rng.normal(0, 1, h_len + 1)).astype(np.float32) * np.exp(
        -np.arange(h_len) / (0.01 * sample_rate)
    ).astype(np.float32)
    hats_per_beat = 2 if a01 < 0.55 else 4
    for i, onset in enumerate(np.arange(0, seconds, beat)):
        s = int(onset * sample_rate)
        if i % 2 == 0:
            drums[s : s + k_len] += kick
        else:
            drums[s : s + s_len] += 0.8 * drive * snare
        for j in range(hats_per_beat):
            h = s + int(j * beat / hats_per_beat * sample_rate)
            drums[h : h + h_len] += 0.3 * drive * hat
    drums = drums[:n]

    left = 0.5 * pads + 0.6 * bass + 0.7 * drive * drums
    right = 0.7 * pads + 0.6 * bass + 0.5 * drive * drums
    y = gain * 2.5 * np.stack([left, right], axis=1) + rng.normal(0, 1e-3, (n, 2))
    return np.clip(y, -0.99, 0.99).astype(np.float32)


STYLES = {"demo": synthesize, "band": synthesize_band}


def arousal_segments(arousal: np.ndarray, seconds: float, seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The dynamic songs' arousal over time: (change time in s, arousal before (n,), after (n,)).
    Before: a - d for the first two thirds; after: a + 2d (time mean a), clipped to [-0.95, 0.95]."""
    d = np.random.default_rng(seed + 4243).uniform(-0.25, 0.25, len(arousal))
    return seconds * 2 / 3, np.clip(arousal - d, -0.95, 0.95), np.clip(arousal + 2 * d, -0.95, 0.95)


def _render(style: str, valence: float, arousal, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """One song; ``arousal`` a float, or (change seconds, before, after) for a song whose arousal moves
    (two renders with the same seed, joined with a 20 ms crossfade)."""
    if not isinstance(arousal, tuple):
        return STYLES[style](valence, arousal, seconds, sample_rate, seed)
    change, before, after = arousal
    fade = int(0.02 * sample_rate)
    head = STYLES[style](valence, before, change + fade / sample_rate, sample_rate, seed)
    tail = STYLES[style](valence, after, seconds - change, sample_rate, seed)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32).reshape((-1,) + (1,) * (tail.ndim - 1))
    joined = head[-fade:] * (1 - ramp) + tail[:fade] * ramp
    return np.concatenate([head[:-fade], joined, tail[fade:]])[: int(round(seconds * sample_rate))]


def _write_song(task: tuple) -> str:
    path, valence, arousal, seconds, sample_rate, seed = task[:6]
    style = task[6] if len(task) > 6 else "demo"
    y = _render(style, valence, arousal, seconds, sample_rate, seed)
    with atomic_path(path) as tmp:
        sf.write(tmp, y, sample_rate, format="MP3", subtype="MPEG_LAYER_III")
    return path


def annotation_table(ids: np.ndarray, valence: np.ndarray, arousal: np.ndarray, seed: int) -> pd.DataFrame:
    """Mean ratings on DEAM's 1-9 scale (latent * 4 + 5 + rater noise, std 0.6), one decimal."""
    rng = np.random.default_rng(seed + 7919)
    v = np.clip(np.round(5 + 4 * valence + rng.normal(0, 0.6, len(ids)), 1), 1, 9)
    a = np.clip(np.round(5 + 4 * arousal + rng.normal(0, 0.6, len(ids)), 1), 1, 9)
    std = np.round(rng.uniform(0.5, 1.8, size=(len(ids), 2)), 2)
    return pd.DataFrame(
        {"song_id": ids, "valence_mean": v, "valence_std": std[:, 0], "arousal_mean": a, "arousal_std": std[:, 1]}
    )


def _csv_text(header: list[str], rows: list[list]) -> str:
    """DEAM's style: leading space after each comma in the header, CRLF line endings."""
    lines = [", ".join(header)] + [",".join(_fmt(x) for x in r) for r in rows]
    return "\r\n".join(lines) + "\r\n"


def _fmt(x) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    text = f"{float(x):g}"
    return text


def write_annotations(root: str, table: pd.DataFrame) -> None:
    folder = os.path.join(root, ANNOTATION_DIR)
    early = table[table["song_id"] <= 2000]
    late = table[table["song_id"] > 2000]
    cols = ["song_id", "valence_mean", "valence_std", "arousal_mean", "arousal_std"]
    atomic_write_text(os.path.join(folder, FILE_1_2000), _csv_text(cols, early[cols].values.tolist()))
    header = [
        "song_id",
        "valence_mean",
        "valence_std",
        "valence_ max_mean",
        "valence_max_std",
        "valence_min_mean",
        "valence_min_std",
        "arousal_mean",
        "arousal_std",
        "arousal_max_mean",
        "arousal_max_std",
        "arousal_min_mean",
        "arousal_min_std",
    ]
    rows = []
    for r in late.itertuples():
        vmax, vmin = min(r.valence_mean + 1.5, 9), max(r.valence_mean - 1.5, 1)
        amax, amin = min(r.arousal_mean + 1.5, 9), max(r.arousal_mean - 1.5, 1)
        rows.append(
            [
                r.song_id,
                r.valence_mean,
                r.valence_std,
                vmax,
                1.0,
                vmin,
                1.0,
                r.arousal_mean,
                r.arousal_std,
                amax,
                1.0,
                amin,
                1.0,
            ]
        )
    atomic_write_text(os.path.join(folder, FILE_2000_2058), _csv_text(header, rows))


def dynamic_tables(ids, valence, before, after, change: float, seconds: float, seed: int) -> dict[str, pd.DataFrame]:
    """DEAM's 2 Hz layout per dimension: song_id, sample_15000ms, ... (values on [-1, 1], 4 decimals)."""
    times = np.arange(FIRST_RATED_SECONDS, seconds - 1e-9, 0.5)
    rng = np.random.default_rng(seed + 6007)
    curves = {
        "valence": np.repeat(np.asarray(valence, float)[:, None], len(times), axis=1),
        "arousal": np.where(times[None, :] < change, np.asarray(before)[:, None], np.asarray(after)[:, None]),
    }
    columns = [f"sample_{int(round(t * 1000))}ms" for t in times]
    out = {}
    for dim, curve in curves.items():
        values = np.round(np.clip(curve + rng.normal(0, 0.05, curve.shape), -1, 1), 4)
        out[dim] = pd.concat([pd.DataFrame({"song_id": ids}), pd.DataFrame(values, columns=columns)], axis=1)
    return out


def make_demo_deam(
    root: str,
    num_songs: int = 120,
    seconds: float = 30.0,
    seed: int = 0,
    sample_rate: int = 44100,
    num_workers: int = 0,
    style: str = "demo",
    dynamic: bool = False,
) -> pd.DataFrame:
    """Write a synthetic DEAM under ``root`` (skipped when the same one is already there).

    ``style``: "demo" (mono wavetable songs) or "band" (stereo drums + pads + bass); see the
    module docstring for the cues each uses. ``dynamic``: arousal moves within each song and the
    2 Hz rating files are written. Returns the truth table: song_id, latent valence and arousal on
    [-1, 1] (the time mean), audio_path.
    """
    if style not in STYLES:
        raise ValueError(f"Unknown demo style {style!r}; choose one of {sorted(STYLES)}")
    ids, valence, arousal = latent_labels(num_songs, seed)
    spec = {"num_songs": num_songs, "seconds": seconds, "seed": seed, "sample_rate": sample_rate, "version": 2}
    if style != "demo":  # the demo style keeps its old marker, so existing folders stay valid
        spec["style"] = style
    if dynamic:
        spec["dynamic"] = True
    audio_dir = os.path.join(root, AUDIO_DIR)
    paths = [os.path.join(audio_dir, f"{i}.mp3") for i in ids]
    truth = pd.DataFrame({"song_id": ids, "valence": valence, "arousal": arousal, "audio_path": paths})
    marker = os.path.join(root, MARKER)
    if os.path.exists(marker) and all(os.path.exists(p) for p in paths):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == spec:
                LOG.info("demo data: already at %s (%d songs)", root, num_songs)
                return truth
    os.makedirs(audio_dir, exist_ok=True)
    write_annotations(root, annotation_table(ids, valence, arousal, seed))
    moving = [float(a) for a in arousal]
    if dynamic:
        change, before, after = arousal_segments(arousal, seconds, seed)
        moving = [(change, float(b), float(a)) for b, a in zip(before, after)]
        for dim, table in dynamic_tables(ids, valence, before, after, change, seconds, seed).items():
            atomic_write_text(os.path.join(root, DYNAMIC_DIR, f"{dim}.csv"), table.to_csv(index=False))
    tasks = [
        (p, float(v), a, seconds, sample_rate, seed * 100_003 + int(i), style)
        for p, v, a, i in zip(paths, valence, moving, ids)
    ]
    bar = tqdm(total=len(tasks), desc="demo songs", unit="song")
    for _ in parallel_imap(_write_song, tasks, num_workers):
        bar.update(1)
    bar.close()
    atomic_write_text(marker, json.dumps(spec, sort_keys=True))
    LOG.info("demo data: wrote %d songs to %s", num_songs, root)
    return truth


if __name__ == "__main__":  # python -m emovit.demo_data ROOT [--songs N] [--seed S] [--style band]
    parser = argparse.ArgumentParser(description="Write a synthetic DEAM-layout data set (all cores).")
    parser.add_argument("root", help="folder to write (skipped when the same set is already there)")
    parser.add_argument("--songs", type=int, default=120, help="number of songs (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="labels and audio seed (default 0)")
    parser.add_argument("--style", default="demo", choices=sorted(STYLES), help="generator (default demo)")
    args = parser.parse_args()
    make_demo_deam(args.root, num_songs=args.songs, seed=args.seed, style=args.style)
