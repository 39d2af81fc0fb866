"""Log-mel extraction: real DEAM clips, fixed dB reference, padding/cropping, cache, errors."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emovit.config import make_config, replace
from emovit.deam import discover
from emovit.features import MelParams, crop_starts, extract_features, load_clip, load_window, log_mel


def _wav(path, y, sr=22050):
    sf.write(str(path), np.asarray(y, dtype=np.float32), sr)
    return str(path)


def _songs(paths):
    return pd.DataFrame(
        {"song_id": range(1, len(paths) + 1), "audio_path": [str(p) for p in paths], "valence": 0.0, "arousal": 0.0}
    )


def test_real_clips_keep_the_whole_45_s(real_deam, tmp_path):
    """DEAM's 45.06 s clips: 45 s stored (128 x 1938), of which the model sees 30 s windows (1292)."""
    cfg = make_config("kaggle", output_dir=str(tmp_path), num_workers=1)
    songs, _ = discover(str(real_deam))
    store = extract_features(songs, cfg)
    assert store.mels.shape == (4, 128, 1938) and store.mels.dtype == np.float16
    assert store.params.num_frames == 1292 and list(store.songs.frames) == [1938] * 4
    mels = np.asarray(store.mels, dtype=np.float32)
    assert np.isfinite(mels).all()
    assert store.counts == {"ok": 0, "padded": 0, "cropped": 4, "shifted": 0, "failed": 0}  # 45.06 s > 45 s
    assert -100.0 <= mels.min() and mels.max() < 60.0  # dB re 1.0, floor 10*log10(1e-10)
    assert len(store.errors) == 0
    assert store.centre_windows(songs.song_id[:2]).shape == (2, 128, 1292)
    np.testing.assert_array_equal(store.centre_windows([songs.song_id[0]])[0], mels[0, :, 323 : 323 + 1292])


def test_fixed_reference_keeps_loudness():
    """Per-clip max normalisation would make these equal; a fixed reference keeps 20 dB."""
    params = MelParams(22050, 2.0, 0.0, 2048, 512, 64, 1e-10)
    t = np.arange(44100) / 22050
    loud, quiet = (a * np.sin(2 * np.pi * 440 * t).astype(np.float32) for a in (0.5, 0.05))
    diff = log_mel(loud, params).max() - log_mel(quiet, params).max()
    assert diff == pytest.approx(20.0, abs=0.1)


def test_silence_short_and_long_files(tmp_path):
    params = MelParams(22050, 2.0, 0.0, 2048, 512, 32, 1e-10)
    silent = _wav(tmp_path / "1.wav", np.zeros(22050 * 3))
    short = _wav(tmp_path / "2.wav", 0.1 * np.ones(22050 // 2))
    long = _wav(tmp_path / "3.wav", 0.1 * np.random.default_rng(0).normal(size=22050 * 5))
    y, status = load_window(silent, params)
    mel = log_mel(y, params)
    assert status == "cropped" and np.isfinite(mel).all() and mel.min() == pytest.approx(-100.0)
    y, status = load_window(short, params)
    assert status == "padded" and len(y) == params.num_samples and (y[22050 // 2 + 10 :] == 0).all()
    y, status = load_window(long, params)
    assert status == "cropped" and len(y) == params.num_samples


def test_whole_clip_up_to_max_and_shifted_to_the_end_when_shorter(tmp_path):
    params = MelParams(22050, 2.0, 1.0, 2048, 512, 32, 1e-10, max_clip_seconds=4.0)
    ramp = np.linspace(-0.5, 0.5, 22050 * 4)  # 4 s: from offset 1 s only 3 s remain (< max 4 s)
    y, status = load_clip(_wav(tmp_path / "1.wav", ramp), params)
    assert status == "shifted" and len(y) == 4 * 22050  # the file's last 4 s: all of it
    np.testing.assert_allclose(y[:100], ramp[:100], atol=1e-4)
    long = np.tile(ramp, 2)  # 8 s: from the offset, cropped at 1 + 4 s
    y, status = load_clip(_wav(tmp_path / "2.wav", long), params)
    assert status == "cropped" and len(y) == params.max_samples == 4 * 22050
    np.testing.assert_allclose(y[:100], long[22050:22150], atol=1e-4)
    assert params.max_frames == 1 + 4 * 22050 // 512 and params.num_frames == 1 + 2 * 22050 // 512


def test_window_moves_earlier_when_file_ends_before_offset(tmp_path):
    params = MelParams(22050, 2.0, 3.0, 2048, 512, 32, 1e-10)
    path = _wav(tmp_path / "1.wav", np.linspace(-0.5, 0.5, 22050 * 4))  # 4 s < 3 + 2
    y, status = load_window(path, params)
    assert status == "shifted" and len(y) == params.num_samples
    assert y[-1] == pytest.approx(0.5, abs=1e-3)  # the window ends at the file's end


def test_file_shorter_than_the_offset_is_used_whole(tmp_path):
    """A 1 s file with a 3 s offset: decoding with an offset past the end raised in both backends;
    now the whole file is the clip (counted as shifted); a window of it is zero-padded."""
    params = MelParams(22050, 2.0, 3.0, 2048, 512, 32, 1e-10, max_clip_seconds=4.0)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)
    path = _wav(tmp_path / "1.wav", tone)
    y, status = load_clip(path, params)
    assert status == "shifted" and len(y) == 22050
    np.testing.assert_allclose(y, tone, atol=1e-3)
    y, status = load_window(path, params)
    assert status == "shifted" and len(y) == params.num_samples and (y[22050:] == 0).all()


def test_the_store_does_not_depend_on_the_window_and_pads_short_songs_with_silence(tmp_path):
    """A new clip_seconds reuses the store (windows are cut from whole stored clips); a song shorter
    than the window is stored as itself, read with silence (the dB floor) after it, counted padded."""
    rng = np.random.default_rng(0)
    paths = [
        _wav(tmp_path / "1.wav", 0.1 * rng.normal(size=22050)),  # 1 s
        _wav(tmp_path / "2.wav", 0.1 * rng.normal(size=22050 * 5)),
    ]  # 5 s
    cfg = make_config(
        "demo", output_dir=str(tmp_path / "out"), clip_seconds=2.0, clip_offset=0.0, max_clip_seconds=4.0, num_workers=1
    )
    store = extract_features(_songs(paths), cfg)
    assert store.counts == {"ok": 0, "padded": 1, "cropped": 1, "shifted": 0, "failed": 0}
    frames = store.songs["frames"].tolist()
    assert frames == [1 + 22050 // 512, store.params.max_frames]
    row = np.asarray(store.mels[0], np.float32)
    assert (row[:, frames[0] :] == np.float32(np.float16(10 * np.log10(cfg.db_amin)))).all()
    wider = extract_features(_songs(paths), replace(cfg, clip_seconds=3.0))
    assert wider.cache_hit and wider.path == store.path


def test_crop_starts_are_evenly_spaced():
    assert crop_starts(1938, 1292, 1).tolist() == [323]  # the centre window
    assert crop_starts(1938, 1292, 3).tolist() == [0, 323, 646]  # start, centre, end
    assert crop_starts(1292, 1292, 3).tolist() == [0, 0, 0]  # a clip of exactly one window
    assert crop_starts(1000, 1292, 2).tolist() == [0, 0]  # never negative


def test_cache_hit_and_miss(small_cfg):
    songs, _ = discover(small_cfg.data_dir)
    first = extract_features(songs, small_cfg)
    again = extract_features(songs, small_cfg)
    assert not first.cache_hit and again.cache_hit and again.path == first.path
    np.testing.assert_array_equal(np.asarray(first.mels), np.asarray(again.mels))
    changed = extract_features(songs, replace(small_cfg, n_mels=16))
    assert not changed.cache_hit and changed.mels.shape[1] == 16
    for training_setting in (
        {"random_crop": False},
        {"spec_augment": False},
        {"test_crops": 1},
        {"mixup_alpha": 0.4},
        {"image_height": 128, "image_width": 512},
    ):
        # Crops and augmentation are training settings: the feature cache is reused.
        assert extract_features(songs, replace(small_cfg, **training_setting)).path == first.path
    assert extract_features(songs, replace(small_cfg, max_clip_seconds=4.5)).path != first.path
    os.utime(songs.audio_path[0], ns=(1, 1))  # an input file changed
    assert not extract_features(songs, small_cfg).cache_hit


def test_parallel_equals_serial(small_cfg, tmp_path):
    songs, _ = discover(small_cfg.data_dir)
    serial = extract_features(songs, small_cfg)
    parallel = extract_features(songs, replace(small_cfg, cache_dir=str(tmp_path / "c2")), num_workers=2)
    assert not parallel.cache_hit
    np.testing.assert_array_equal(np.asarray(serial.mels), np.asarray(parallel.mels))


def test_corrupt_files_are_skipped_and_listed(small_cfg, tmp_path):
    songs, _ = discover(small_cfg.data_dir)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(songs.audio_path[0], bad / "7001.mp3")
    (bad / "7002.mp3").write_bytes(b"")
    (bad / "7003.mp3").write_text("this is not audio")
    extra = pd.DataFrame(
        {
            "song_id": [7002, 7003],
            "audio_path": [str(bad / "7002.mp3"), str(bad / "7003.mp3")],
            "valence": 0.0,
            "arousal": 0.0,
        }
    )
    store = extract_features(pd.concat([songs, extra], ignore_index=True), small_cfg)
    assert store.counts["failed"] == 2 and len(store.songs) == len(songs)
    errors = pd.read_csv(os.path.join(small_cfg.output_dir, "errors.csv"))
    assert list(errors.song_id) == [7002, 7003]
    assert errors.reason[0] == "ValueError: empty file (0 bytes)"
    assert errors.reason[1]  # the decoder's own message
    assert set(store.songs.song_id) == set(songs.song_id)
    assert np.isfinite(np.asarray(store.song_mels(songs.song_id), dtype=np.float32)).all()


def test_too_many_failures_stop_the_run(tmp_path):
    paths = [tmp_path / f"{i}.mp3" for i in range(1, 5)]
    for p in paths[:3]:
        p.write_bytes(b"")
    _wav(paths[3].with_suffix(".wav"), np.zeros(22050))
    cfg = make_config("demo", output_dir=str(tmp_path / "out"), clip_seconds=1.0, clip_offset=0.0, num_workers=1)
    songs = _songs(paths[:3] + [paths[3].with_suffix(".wav")])
    with pytest.raises(RuntimeError, match=r"3 of 4 songs could not be decoded.*ValueError"):
        extract_features(songs, cfg)
    assert os.path.exists(tmp_path / "out" / "errors.csv")
