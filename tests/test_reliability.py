"""Reliability: a generated bad-input corpus, interruption of each stage, corrupt checkpoints.

No binary is committed: every file of the corpus is written here. Each case is either
skipped with its reason (in the data report or errors.csv) or used (resampled, mixed to
mono, padded, cropped, window moved), and the counts say so.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import tiny_config

from emovit import gan as G
from emovit import gan_train
from emovit.config import replace
from emovit.deam import discover
from emovit.features import extract_features
from emovit.split import Standardizer, ids_of, split_songs

HEADER = "song_id, valence_mean, valence_std, arousal_mean, arousal_std"


def _tone(seconds, sr, channels=1, amp=0.2, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    y = amp * np.sin(2 * np.pi * 330 * t) + 0.01 * np.random.default_rng(seed).normal(size=len(t))
    return np.stack([y, 0.5 * y], axis=1).astype(np.float32) if channels == 2 else y.astype(np.float32)


def _mp3(path, y, sr):
    sf.write(str(path), y, sr, format="MP3", subtype="MPEG_LAYER_III")


def _truncated(path):
    _mp3(path, _tone(10, 44100, seed=3), 44100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 4 // 10])


def build_corpus(root):
    """Audio and annotations for every bad-input case; returns {song_id: case}."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    writers = [
        (101, "good 10 s mp3", lambda p: _mp3(p, _tone(10, 44100), 44100)),
        (102, "zero-byte mp3", lambda p: p.write_bytes(b"")),
        (103, "truncated mp3 (first 40%)", _truncated),
        (104, "text file named .mp3", lambda p: p.write_text("this is a text file, not audio\n")),
        (
            105,
            ".wav where an mp3 was expected",
            lambda p: sf.write(str(p.with_suffix(".wav")), _tone(10, 22050), 22050),
        ),
        (106, "stereo 44.1 kHz", lambda p: _mp3(p, _tone(10, 44100, channels=2), 44100)),
        (107, "stereo 48 kHz", lambda p: _mp3(p, _tone(10, 48000, channels=2), 48000)),
        (108, "5 s clip", lambda p: _mp3(p, _tone(5, 44100), 44100)),
        (109, "10 min file (16 kHz wav)", lambda p: sf.write(str(p.with_suffix(".wav")), _tone(600, 16000), 16000)),
        (110, "silent file", lambda p: _mp3(p, np.zeros(44100 * 10, np.float32), 44100)),
        (111, "unreadable file (dangling link)", lambda p: os.symlink(root / "does-not-exist.mp3", p)),
        (112, "audio without an annotation", lambda p: _mp3(p, _tone(10, 44100), 44100)),
        (113, "annotation without audio", None),
        (114, "annotation row with NaN", lambda p: _mp3(p, _tone(10, 44100), 44100)),
        (115, "annotation outside 1-9", lambda p: _mp3(p, _tone(10, 44100), 44100)),
        (
            116,
            "stereo mp3 shorter than clip_offset (0.6 s < 1 s)",
            lambda p: _mp3(p, _tone(0.6, 44100, channels=2), 44100),
        ),
    ]
    cases = {}
    for song_id, case, write in writers:
        if write is not None:
            write(audio / f"{song_id}.mp3")
        cases[song_id] = case
    rows = [f"{i},5.{i % 10},1,4.{i % 10},1" for i in (101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 113, 116)]
    rows += ["114,,1,5,1", "115,11.0,1,5,1"]
    (root / "static_annotations_averaged_songs_1_2000.csv").write_bytes(
        ("\r\n".join([HEADER, *rows]) + "\r\n").encode()
    )
    # A second, fixed-width padded copy: 101 identical (merged), 105 with another value (conflict).
    padded = [
        "  song_id,  valence_mean,  valence_std,  arousal_mean,  arousal_std",
        f"{101:>9},{5.1:>14} ,{1:>12} ,{4.1:>13} ,{1:>11} ",
        f"{105:>9},{8.0:>14} ,{1:>12} ,{8.0:>13} ,{1:>11} ",
    ]
    (root / "copy").mkdir()
    (root / "copy" / "static_annotations_averaged_songs_1_2000.csv").write_text("\n".join(padded) + "\n")
    cases[0] = "duplicate ids across two annotation files, fixed-width padded layout"
    return cases


def corpus_table(tmp_path):
    """Run discovery and extraction on the corpus; one row per case with what happened."""
    root = tmp_path / "corpus"
    cases = build_corpus(root)
    cfg = tiny_config(
        data_dir=str(root),
        output_dir=str(tmp_path / "out"),
        clip_seconds=6.0,
        clip_offset=1.0,
        max_clip_seconds=8.0,
        num_workers=2,
    )
    songs, report = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    with open(store.path.replace(".npy", ".json")) as f:
        meta = json.load(f)
    meta_status = dict(zip(meta["song_ids"], meta["status"]))
    errors = store.errors.set_index("song_id")["reason"].to_dict()
    skipped = {s["song_id"]: s["reason"] for s in report.skipped}
    rows = []
    for sid, case in cases.items():
        if sid == 0:
            what = (
                f"{report.duplicate_annotation_rows} identical row merged, "
                f"{report.conflicting_annotation_rows} conflicting row (first file kept)"
            )
        elif sid in errors:
            what = f"skipped: {errors[sid]}"
        elif sid in meta_status:
            what = f"used: {meta_status[sid]}"
        else:
            what = f"skipped: {skipped.get(sid, '?')}"
        rows.append({"song_id": sid or "", "case": case, "what happened": what})
    return pd.DataFrame(rows), report, store, cfg


@pytest.mark.slow
def test_bad_input_corpus(tmp_path):
    table, report, store, cfg = corpus_table(tmp_path)
    what = dict(zip(table.song_id, table["what happened"]))
    print("\n" + table.to_string(index=False))
    assert what[101] == "used: cropped"
    assert what[102] == "skipped: ValueError: empty file (0 bytes)"
    assert what[103] == "used: shifted"  # header says 10 s, 3.8 s decode: window ends where decoding ends
    assert what[104].startswith("skipped: ")
    assert what[105] == "used: cropped" and what[106] == "used: cropped" and what[107] == "used: cropped"
    assert what[108] == "used: shifted"  # 5 s < offset 1 + 8 s: the whole file, read with silence after it
    assert what[116] == "used: shifted"  # shorter than the offset: the whole file (was NoBackendError)
    assert what[109] == "used: cropped"
    assert what[110] == "used: cropped"
    assert what[111].startswith("skipped: FileNotFoundError")
    assert what[112] == "skipped: audio without annotation"
    assert what[113] == "skipped: annotation without audio"
    assert what[114] == "skipped: audio without annotation" and what[115] == "skipped: audio without annotation"
    reasons = {(s["song_id"], s["reason"]) for s in report.skipped}
    assert (114, "annotation: missing value") in reasons and (115, "annotation: outside 1-9") in reasons
    assert report.annotated == 13 and report.with_audio == 12 and report.annotated_no_audio == 1
    assert report.audio_no_annotation == 3 and report.invalid_annotation_rows == 2
    assert report.duplicate_annotation_rows == 1 and report.conflicting_annotation_rows == 1
    assert store.counts["failed"] == 3 and len(store.songs) == 9
    assert store.counts == {"ok": 0, "padded": 0, "cropped": 6, "shifted": 3, "failed": 3}
    frames = store.songs.set_index("song_id")["frames"]
    assert frames[108] == 1 + int(5.0 * cfg.sample_rate) // cfg.hop_length  # all of the 5 s file
    assert frames[116] < cfg.num_frames  # 0.6 s: shorter than one window, silence after it
    assert frames[101] == 1 + int(8.0 * cfg.sample_rate) // cfg.hop_length  # the whole 8 s clip
    # Conflicts keep the first file in path order ("copy/..." sorts first) and report the other.
    assert store.songs.set_index("song_id").loc[105, "valence"] == pytest.approx((8.0 - 5) / 4)
    assert (105, "annotation: conflicts with an earlier file") in reasons
    mels = np.asarray(store.song_mels(store.songs.song_id), dtype=np.float32)
    assert mels.shape == (9, 32, 1 + int(8.0 * cfg.sample_rate) // cfg.hop_length) and np.isfinite(mels).all()
    errors = pd.read_csv(os.path.join(cfg.output_dir, "errors.csv"))
    assert sorted(errors.song_id) == [102, 104, 111] and errors.reason.str.len().gt(0).all()


# ---- interruption -----------------------------------------------------------------------


def test_feature_extraction_interrupted_then_rerun(small_demo, tmp_path, monkeypatch):
    cfg = tiny_config(data_dir=str(small_demo), output_dir=str(tmp_path / "a"), clip_seconds=2.0, clip_offset=0.0)
    songs, _ = discover(cfg.data_dir)
    clean = np.asarray(extract_features(songs, cfg).mels)
    cfg_b = replace(cfg, output_dir=str(tmp_path / "b"))
    import emovit.features as F

    real, calls = F.extract_one, {"n": 0}

    def dies_on_the_fifth(task):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated interruption during feature extraction")
        return real(task)

    monkeypatch.setattr(F, "extract_one", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        extract_features(songs, cfg_b)
    folder = os.path.join(cfg_b.cache_path, "features")
    assert not [f for f in os.listdir(folder) if f.endswith(".npy") and not f.startswith(".")]  # no half store
    monkeypatch.setattr(F, "extract_one", real)
    again = extract_features(songs, cfg_b)
    assert not again.cache_hit
    np.testing.assert_array_equal(np.asarray(again.mels), clean)


@pytest.fixture
def gan_setup(small_demo, tmp_path):
    cfg = tiny_config(
        data_dir=str(small_demo), output_dir=str(tmp_path / "out"), clip_seconds=2.0, clip_offset=0.0, gan_steps=3
    )
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    split = split_songs(store.songs.song_id, 0.2, 0.2, seed=0)
    train = ids_of(split, "train")
    std = Standardizer.fit(store.mels, store.songs.set_index("song_id").loc[train, "row"])
    return cfg, store, split, train, std


@pytest.mark.slow
def test_gan_interrupted_then_rerun_matches_uninterrupted(gan_setup, monkeypatch):
    """The GAN restarts its (short) training; seeded on the CPU it ends with the same weights."""
    cfg, store, split, train, std = gan_setup
    full = gan_train.train_or_load_gan(
        replace(cfg, output_dir=cfg.output_dir + "_full"), store, split, train, std, "cpu"
    )
    real, calls = G.g_hinge_loss, {"n": 0}

    def dies(scores):
        calls["n"] += 1
        if calls["n"] == 2:  # in the second step
            raise KeyboardInterrupt("simulated interruption during GAN training")
        return real(scores)

    monkeypatch.setattr(G, "g_hinge_loss", dies)
    with pytest.raises(KeyboardInterrupt):
        gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert not os.path.exists(os.path.join(cfg.output_dir, "generator.pth"))
    monkeypatch.setattr(G, "g_hinge_loss", real)
    again = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    for (name, a), b in zip(full.generator.state_dict().items(), again.generator.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


# ---- corrupt checkpoints ----------------------------------------------------------------


@pytest.mark.slow
def test_corrupt_gan_checkpoint_names_the_file_or_retrains(gan_setup):
    cfg, store, split, train, std = gan_setup
    first = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    path = os.path.join(cfg.cache_path, "gan", first.key, "generator.pth")  # the copy later runs load
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(RuntimeError, match=r"generator\.pth.*retrain_bad_checkpoints"):
        gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    result = gan_train.train_or_load_gan(replace(cfg, retrain_bad_checkpoints=True), store, split, train, std, "cpu")
    assert not result.reused and result.steps_completed == cfg.gan_steps
    torch.load(path, weights_only=True)  # rewritten, whole
