"""Predicting your own music (emovit.predict): windows over whole files, the curve, the song
value, the quadrant, folders with bad files, the CLI in a fresh process, the notebook section.

Fast tests use a tiny random ViT checkpoint in save_best's format (4 s windows, 32 mels,
32 x 32 images): they test shapes and plumbing, not what a model learned. Tests marked slow
use the demo checkpoint (best_vit_model.pth of the demo notebook run, the ``demo_run``
fixture), whose ViT learned tempo and loudness (test arousal CCC ~0.87).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import tiny_config

from emovit import plots
from emovit.demo_data import synthesize
from emovit.features import MelParams, extract_one, pad_frames
from emovit.predict import (
    NEUTRAL_RADIUS,
    QUADRANTS,
    Predictor,
    find_audio,
    predict,
    predict_folder,
    quadrant,
)
from emovit.vit import DevicePreprocessor, build_model, find_pretrained
from emovit.vit_train import save_best

ROOT = Path(__file__).resolve().parents[1]
SR = 22050


def _tone(seconds: float, sr: int = SR, level: float = 0.1, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    y = level * (np.sin(2 * np.pi * 220 * t) + 0.3 * rng.normal(size=t.size))
    return np.stack([y] * channels, axis=1).astype(np.float32) if channels > 1 else y.astype(np.float32)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random tiny ViT saved exactly as emovit.vit_train.save_best saves the best epoch."""
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    cfg = tiny_config(
        output_dir=str(folder),
        clip_seconds=4.0,
        clip_offset=1.0,
        random_vit_layers=1,
        image_height=32,
        image_width=32,
        num_workers=0,
    )
    model = build_model(cfg, find_pretrained(cfg))
    pre = DevicePreprocessor(
        -40.0, 15.0, (0.5,) * 3, (0.5,) * 3, (cfg.image_height, cfg.image_width), cfg.pixel_clip_std
    )
    path = folder / "best_vit_model.pth"
    save_best(model, pre, cfg, str(path), epoch=1, row={"val_ccc_mean": 0.0}, key="tiny")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_ckpt) -> Predictor:
    torch.manual_seed(0)
    return Predictor(str(tiny_ckpt), "cpu", hop_seconds=2.0)


# ---- quadrant -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "v,a,expected",
    [
        (0.5, 0.5, "happy / excited"),
        (-0.5, 0.5, "angry / tense"),
        (-0.5, -0.5, "sad / depressed"),
        (0.5, -0.5, "calm / relaxed"),
        (0.0, 0.5, "happy / excited"),
        (0.5, 0.0, "happy / excited"),  # zero counts as positive
        (-0.3, 0.0, "angry / tense"),
        (0.0, -0.3, "calm / relaxed"),
        (0.05, -0.05, "neutral"),
        (0.07, 0.07, "neutral"),  # |(v, a)| = 0.099 < 0.1
        (0.08, 0.08, "happy / excited"),
        (-0.1, 0.0, "angry / tense"),  # 0.113 and exactly 0.1: outside
        (float("nan"), 0.2, ""),
    ],
)
def test_quadrant_mapping(v, a, expected):
    assert quadrant(v, a) == expected


def test_quadrant_neutral_radius_is_a_parameter():
    assert NEUTRAL_RADIUS == 0.1
    assert quadrant(0.0, 0.0, neutral_radius=0.0) == "happy / excited"
    assert quadrant(0.3, -0.3, neutral_radius=0.5) == "neutral"
    assert set(QUADRANTS.values()) == {"happy / excited", "angry / tense", "sad / depressed", "calm / relaxed"}


# ---- the checkpoint and the windows -----------------------------------------------------------


def test_preprocessor_from_dict_round_trip():
    pre = DevicePreprocessor(-41.5, 13.25, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), size=48, clip_std=2.5)
    again = DevicePreprocessor.from_dict(pre.to_dict())
    assert again.to_dict() == pre.to_dict()
    x = torch.randn(2, 16, 100) * 15 - 40
    torch.testing.assert_close(again(x), pre(x))


def test_hop_defaults_to_half_a_window(tiny_ckpt):
    frame = 512 / SR
    for hop in (None, 0, 0.0):
        p = Predictor(str(tiny_ckpt), hop_seconds=hop)
        assert p.hop_frames == round(2.0 / frame) == 86 and p.hop_seconds == pytest.approx(86 * frame)
    assert Predictor(str(tiny_ckpt), hop_seconds=1.0).hop_frames == 43
    with pytest.raises(ValueError, match="hop_seconds"):
        Predictor(str(tiny_ckpt), hop_seconds=-1.0)


def test_window_starts_hand_computed(tiny):
    """4 s windows = 173 frames, hop 86 frames; tail tolerance round(0.01 * 173) = 2 frames."""
    assert tiny.window_frames == 173 and tiny.hop_frames == 86 and tiny.tail_tolerance == 2
    # 11.3 s: 1 + 249165 // 512 = 487 frames -> last start 314: 0, 86, 172, 258, then end-aligned 314
    assert tiny.window_starts(487).tolist() == [0, 86, 172, 258, 314]
    assert tiny.window_starts(173).tolist() == [0]  # exactly one window
    assert tiny.window_starts(173 + 86).tolist() == [0, 86]  # the hop lands on the end
    assert tiny.window_starts(173 + 86 + 2).tolist() == [0, 86]  # a 2-frame tail: within tolerance
    assert tiny.window_starts(173 + 86 + 3).tolist() == [0, 86, 89]  # 3 frames: one end-aligned window
    with pytest.raises(ValueError, match="shorter than one window"):
        tiny.window_starts(172)


@pytest.mark.parametrize(
    "seconds,hop", [(4.0, 2.0), (5.0, 2.0), (11.3, 2.0), (20.0, 2.0), (20.0, 1.5), (17.0, 4.0), (3.0, 2.0)]
)
def test_curve_length_matches_file_length_and_hop(tiny_ckpt, tmp_path, seconds, hop):
    path = tmp_path / "song.wav"
    sf.write(path, _tone(seconds, sr=44100), 44100)  # resampled to the checkpoint's 22,050 Hz
    predictor = Predictor(str(tiny_ckpt), hop_seconds=hop)
    song = predictor.predict_file(str(path))
    frames = 1 + int(round(seconds * SR)) // 512
    window, step = 173, int(round(hop * SR / 512))
    covered = max(frames - window - 2, 0)  # 2 frames of tolerance
    assert len(song.values) == 1 + math.ceil(covered / step)
    assert song.seconds == pytest.approx(seconds, abs=1e-3)
    assert song.starts[0] == 0.0 and np.all(np.diff(song.starts) > 0)
    np.testing.assert_allclose(np.diff(song.starts)[:-1], step * 512 / SR)  # the regular hop, then the end
    last_end = song.starts[-1] + 4.0
    assert (seconds - 2.1 * 512 / SR <= last_end <= seconds + 512 / SR) if seconds >= 4.0 else song.padded
    curve = song.curve()
    assert list(curve["window"]) == list(range(len(song.values)))
    assert np.all(curve["end_s"] <= seconds + 1e-9)


def test_song_value_is_the_mean_of_its_windows(tiny_ckpt, tmp_path):
    for i, seconds in enumerate((9.0, 14.5)):
        sf.write(tmp_path / f"s{i}.wav", _tone(seconds, level=0.05 * (i + 1), seed=i), SR)
    table, curves = predict_folder(str(tmp_path), str(tiny_ckpt), progress=False, return_curves=True)
    assert list(table["windows"]) == [4, 7] and len(curves) == 11  # 388 and 625 frames, 173-frame windows
    for row in table.itertuples():
        song = curves[curves["path"] == row.path]
        assert row.valence == pytest.approx(song["valence"].mean(), abs=1e-6)
        assert row.arousal == pytest.approx(song["arousal"].mean(), abs=1e-6)
        assert row.valence_1_9 == pytest.approx(row.valence * 4 + 5)
        assert row.arousal_1_9 == pytest.approx(row.arousal * 4 + 5)
        assert row.quadrant == quadrant(row.valence, row.arousal)
    np.testing.assert_allclose(curves["arousal_1_9"], curves["arousal"] * 4 + 5)


def test_short_file_is_padded_exactly_as_in_training(tiny, tmp_path):
    """A 3 s file (window 4 s): one window, the same log-mel as the training store reads for that
    file (offset 0: the whole file, then silence -- the dB floor), hence the same prediction."""
    path = tmp_path / "short.wav"
    sf.write(path, _tone(3.0), SR)
    decoded = tiny.decode(str(path))
    assert decoded.padded and decoded.seconds == pytest.approx(3.0) and decoded.mel.shape == (32, 173)
    train_params = MelParams(**{**tiny.params.__dict__, "clip_offset": 0.0})
    _, stored, status, _ = extract_one((0, str(path), train_params))
    assert status == "ok" and stored.shape[1] < 173  # the clip as stored: 3 s, no padding
    train_mel = pad_frames(stored, 173, 10 * np.log10(train_params.db_amin)).astype(np.float16)
    np.testing.assert_array_equal(decoded.mel, train_mel)
    # the training extraction with the checkpoint's own offset (1 s) keeps the whole file too
    _, shifted, status, _ = extract_one((0, str(path), tiny.params))
    assert status == "shifted"
    np.testing.assert_array_equal(shifted, stored)
    with torch.no_grad():
        expected = tiny.model(tiny.pre(torch.from_numpy(train_mel).unsqueeze(0))).numpy()
    np.testing.assert_allclose(tiny.predict_decoded(decoded).values, expected, atol=1e-6)


def test_each_window_is_the_model_on_that_slice_of_the_song(tiny, tmp_path):
    path = tmp_path / "song.wav"
    sf.write(path, _tone(10.0, seed=3) * np.linspace(0.1, 2, int(10 * SR), dtype=np.float32), SR)
    decoded = tiny.decode(str(path))
    song = tiny.predict_decoded(decoded)
    starts = tiny.window_starts(decoded.mel.shape[1])
    windows = np.stack([decoded.mel[:, s : s + 173] for s in starts])
    with torch.no_grad():
        expected = tiny.model(tiny.pre(torch.from_numpy(windows))).numpy()
    np.testing.assert_allclose(song.values, expected, atol=1e-6)
    np.testing.assert_allclose(song.starts, starts * 512 / SR)


def test_a_steady_file_gives_a_flat_curve_and_a_changing_one_does_not(tiny, tmp_path):
    """Plumbing: a tone whose period divides the STFT hop (22,050 / 512 * 10 Hz) makes every
    STFT frame identical, so every window inside the song is the same input and must give the
    same values; only the first and last windows hold a frame that sees the STFT's zero
    padding beyond the song. The same tone rising in level moves the curve (random tiny model:
    measured range 0.005 / 0.011 for valence / arousal; threshold 1e-3)."""
    t = np.arange(int(12 * SR)) / SR
    steady = (0.1 * np.sin(2 * np.pi * (SR / 512 * 10) * t)).astype(np.float32)
    sf.write(tmp_path / "steady.wav", steady, SR, subtype="FLOAT")
    sf.write(tmp_path / "rising.wav", steady * np.linspace(0.01, 8, t.size, dtype=np.float32), SR, subtype="FLOAT")
    flat = tiny.predict_file(str(tmp_path / "steady.wav")).values
    rising = tiny.predict_file(str(tmp_path / "rising.wav")).values
    assert len(flat) == 5
    np.testing.assert_allclose(flat[1:-1], np.broadcast_to(flat[1], flat[1:-1].shape), atol=1e-6)
    assert np.ptp(rising, axis=0).max() > 1e-3


# ---- folders, bad files, the CLI -----------------------------------------------------------


def _messy_folder(root: Path) -> Path:
    folder = root / "my songs"
    (folder / "album").mkdir(parents=True)
    sf.write(folder / "good.wav", _tone(9.0), SR)
    sf.write(folder / "album" / "stereo 48k.flac", _tone(6.0, sr=48000, channels=2, seed=1), 48000)
    sf.write(folder / "album" / "song.ogg", _tone(5.0, seed=2), SR, format="OGG", subtype="VORBIS")
    sf.write(folder / "three seconds.mp3", _tone(3.0, sr=44100, seed=4), 44100, format="MP3", subtype="MPEG_LAYER_III")
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "not audio.mp3").write_text("this is a text file, not an mp3\n")
    (folder / "cover.jpg").write_bytes(b"\xff\xd8\xff")  # not an audio extension: left out
    (folder / "._good.wav").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata: hidden, left out
    return folder


def test_find_audio_searches_folders_and_keeps_named_files(tmp_path):
    folder = _messy_folder(tmp_path)
    found = [os.path.relpath(p, folder) for p in find_audio(str(folder))]
    assert found == [
        "empty.mp3",
        "good.wav",
        "not audio.mp3",
        "three seconds.mp3",
        "album/song.ogg",
        "album/stereo 48k.flac",
    ]
    named = find_audio([str(folder / "cover.jpg"), str(tmp_path / "missing.wav")])
    assert named == [str(folder / "cover.jpg"), str(tmp_path / "missing.wav")]


def test_folder_with_bad_files_gives_every_file_a_row(tiny_ckpt, tmp_path):
    folder = _messy_folder(tmp_path)
    missing = str(tmp_path / "missing.wav")
    table = predict_folder([str(folder), missing], str(tiny_ckpt), progress=False).set_index("file")
    assert len(table) == 7 and list(table.columns) == [
        "path",
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
    assert table.loc["empty.mp3", "error"] == "ValueError: empty file (0 bytes)"
    assert table.loc["not audio.mp3", "error"].startswith("NoBackendError: no audio decoder could read it")
    assert table.loc["missing.wav", "error"].startswith("FileNotFoundError")
    for bad in ("empty.mp3", "not audio.mp3", "missing.wav"):
        assert table.loc[bad, "windows"] == 0 and np.isnan(table.loc[bad, "valence"]) and not table.loc[bad, "quadrant"]
    good = table[table["error"] == ""]
    assert sorted(good.index) == ["good.wav", "song.ogg", "stereo 48k.flac", "three seconds.mp3"]
    assert good["valence"].notna().all() and good["quadrant"].str.len().gt(0).all()
    short = table.loc["three seconds.mp3"]
    assert short["padded"] and short["windows"] == 1 and short["seconds"] == pytest.approx(3.0, abs=0.06)
    assert table.loc["stereo 48k.flac", "seconds"] == pytest.approx(6.0, abs=1e-3)
    assert table.loc["good.wav", "windows"] == 4


def test_decoding_threads_change_nothing(tiny, tmp_path):
    folder = _messy_folder(tmp_path)
    sequential = predict_folder(str(folder), tiny, workers=0, progress=False, return_curves=True)
    threaded = predict_folder(str(folder), tiny, workers=3, progress=False, return_curves=True)
    for a, b in zip(sequential, threaded):
        pd.testing.assert_frame_equal(a, b)


def test_predict_keeps_its_keys_and_refuses_a_bad_file(tiny_ckpt, tmp_path):
    sf.write(tmp_path / "a.wav", _tone(9.0), SR)
    result = predict(str(tmp_path / "a.wav"), str(tiny_ckpt))
    assert set(result) == {"valence", "arousal", "valence_1_9", "arousal_1_9", "quadrant", "seconds", "windows"}
    assert result["valence_1_9"] == pytest.approx(result["valence"] * 4 + 5) and result["windows"] == 4
    (tmp_path / "b.mp3").write_text("no")
    with pytest.raises(ValueError, match=r"cannot predict .*b\.mp3: (NoBackendError|EOFError): "):
        predict(str(tmp_path / "b.mp3"), str(tiny_ckpt))


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m emovit.predict`` in a fresh process, offline, from a folder holding only the
    checkpoint (the package is found through PYTHONPATH)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "emovit.predict", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _check_cli_outputs(run: subprocess.CompletedProcess, out: Path, n_files: int, bad: set[str]) -> pd.DataFrame:
    assert run.returncode == 0, run.stderr[-3000:]
    table = pd.read_csv(out / "songs.csv", keep_default_na=False, na_values=[""])
    curves = pd.read_csv(out / "curves.csv")
    assert len(table) == n_files
    assert set(table.loc[table["error"].notna(), "file"]) == bad
    assert len(curves) == table["windows"].sum()
    assert set(curves["file"]) == set(table.loc[table["error"].isna(), "file"])
    for name in table["file"]:
        assert name in run.stdout  # the printed table
    return table


@pytest.mark.slow
def test_cli_in_a_fresh_process_with_only_the_checkpoint(tiny_ckpt, tmp_path):
    folder = _messy_folder(tmp_path)
    work = tmp_path / "fresh"
    work.mkdir()
    shutil.copy(tiny_ckpt, work / "model.pth")
    run = _run_cli(
        [
            str(folder),
            str(tmp_path / "missing.wav"),
            "--checkpoint",
            "model.pth",
            "--csv",
            "songs.csv",
            "--curves",
            "curves.csv",
            "--device",
            "cpu",
            "--hop",
            "1.0",
        ],
        work,
    )
    table = _check_cli_outputs(run, work, 7, {"empty.mp3", "not audio.mp3", "missing.wav"})
    assert table.set_index("file").loc["good.wav", "windows"] == 1 + math.ceil((388 - 173 - 2) / 43)


def test_cli_without_a_checkpoint_is_a_usage_error(tmp_path):
    run = _run_cli(["song.mp3"], tmp_path)
    assert run.returncode == 2 and "--checkpoint" in run.stderr


def test_prediction_figures(tiny_ckpt, tmp_path):
    folder = _messy_folder(tmp_path)
    table, curves = predict_folder(str(folder), str(tiny_ckpt), progress=False, return_curves=True)
    fig = plots.songs_va_plane(table, str(tmp_path), QUADRANTS, NEUTRAL_RADIUS)
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and "valence-arousal" in ax.get_title()
    assert {t.get_text() for t in ax.texts} >= set(QUADRANTS.values())
    fig = plots.emotion_curves(curves, str(tmp_path), max_songs=3)
    assert len(fig.axes) == 3 and all(a.get_ylabel() for a in fig.axes) and fig.axes[-1].get_xlabel()
    for name in ("my_songs_va_plane.png", "my_emotion_curves.png"):
        assert (tmp_path / name).stat().st_size > 1000


# ---- with the demo checkpoint (slow: the demo notebook run) -----------------------------------


def _song(valence: float, arousal: float, seconds: float, seed: int) -> np.ndarray:
    return synthesize(valence, arousal, seconds, 44100, seed)


@pytest.mark.slow
def test_notebook_section_writes_both_csvs_and_figures(demo_run):
    outputs, nb = demo_run
    table = pd.read_csv(outputs / "my_predictions.csv", keep_default_na=False, na_values=[""])
    curves = pd.read_csv(outputs / "my_curves.csv")
    split = pd.read_csv(outputs / "split.csv")
    assert len(table) == 6 and table["error"].isna().all()  # predict_dir empty: 6 test songs
    test_ids = set(split.query("split == 'test'")["song_id"])
    assert {int(Path(p).stem) for p in table["path"]} <= test_ids
    assert (table["windows"] == 5).all() and len(curves) == 30  # 30 s songs, 10 s windows every 5 s
    assert sorted(set(curves["start_s"].round(2))) == [0.0, 4.99, 9.98, 14.98, 19.97]
    for name in ("my_songs_va_plane.png", "my_emotion_curves.png"):
        assert (outputs / name).stat().st_size > 10_000, name
    with zipfile.ZipFile(outputs.parents[1] / "vit_output.zip") as zf:
        assert {"my_predictions.csv", "my_curves.csv", "my_songs_va_plane.png", "my_emotion_curves.png"} <= set(
            zf.namelist()
        )
    cell = next(c for c in nb.cells if c.cell_type == "code" and "predict_folder(my_songs" in c.source)
    assert not any(o.get("output_type") == "error" for o in cell.outputs)
    assert sum("image/png" in o.get("data", {}) for o in cell.outputs) == 2


@pytest.mark.slow
@pytest.mark.learning
def test_demo_model_flat_curve_for_a_steady_song_and_rising_arousal_when_it_gets_louder_and_faster(demo_run, tmp_path):
    """Learning test on the demo checkpoint (10 s windows every 5 s).

    steady: 60 s of one demo song (valence 0.2, arousal -0.2: constant tempo, loudness and
    brightness). rising: 30 s at arousal -0.7 (quiet, ~85 bpm, dull), then 30 s at +0.7 (loud,
    ~145 bpm, bright), same valence. Measured with a demo run's checkpoint (2-core CPU), these
    seeds and two other seed/label sets: steady arousal range 0.069 (others 0.052, 0.105);
    rising: first-half windows -0.43..-0.33, second-half windows +0.85..+0.86, jump of the
    half means +1.24 (others +1.72, +1.34). Thresholds: a steady song's range below 0.25
    (over twice the largest measured); every second-half window above every first-half
    window, and half means at least 0.5 apart (under half the smallest measured jump). A
    model that ignored the audio moves by 0 and fails the second; one that reacted to
    nothing but chance fluctuations fails the first.
    """
    outputs, _ = demo_run
    sf.write(tmp_path / "steady.mp3", _song(0.2, -0.2, 60.0, seed=11), 44100, format="MP3", subtype="MPEG_LAYER_III")
    rising = np.concatenate([_song(0.0, -0.7, 30.0, seed=12), _song(0.0, 0.7, 30.0, seed=13)])
    sf.write(tmp_path / "rising.mp3", rising, 44100, format="MP3", subtype="MPEG_LAYER_III")
    predictor = Predictor(str(outputs / "best_vit_model.pth"))
    steady = predictor.predict_file(str(tmp_path / "steady.mp3"))
    assert len(steady.values) == 11
    assert np.ptp(steady.values[:, 1]) < 0.25, steady.values[:, 1]
    song = predictor.predict_file(str(tmp_path / "rising.mp3"))
    first = song.values[song.starts + 10 <= 30.05, 1]  # windows inside the first half
    second = song.values[song.starts >= 29.95, 1]  # windows inside the second half
    assert len(first) == 5 and len(second) == 5
    assert second.min() > first.max(), song.values[:, 1]
    assert second.mean() - first.mean() > 0.5, (first, second)


@pytest.mark.slow
def test_cli_with_the_demo_checkpoint_in_a_fresh_process(demo_run, tmp_path):
    outputs, _ = demo_run
    folder = _messy_folder(tmp_path)  # the 3 s mp3 is shorter than the demo's 10 s window
    sf.write(folder / "demo song.mp3", _song(0.5, 0.5, 25.0, seed=5), 44100, format="MP3", subtype="MPEG_LAYER_III")
    work = tmp_path / "fresh"
    work.mkdir()
    shutil.copy(outputs / "best_vit_model.pth", work / "best_vit_model.pth")
    run = _run_cli(
        [str(folder), "--checkpoint", "best_vit_model.pth", "--csv", "songs.csv", "--curves", "curves.csv"], work
    )
    table = _check_cli_outputs(run, work, 7, {"empty.mp3", "not audio.mp3"}).set_index("file")
    assert table.loc["three seconds.mp3", "padded"] and table.loc["three seconds.mp3", "windows"] == 1
    assert table.loc["demo song.mp3", "windows"] == 4  # 25 s: 0, 5, 10, 15 s (the last frame within tolerance)
