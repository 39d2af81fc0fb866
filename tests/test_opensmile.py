"""DEAM's openSMILE features: found beside the audio, read as per-song mean and std, a ridge baseline."""

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from emovit.deam import discover, find_opensmile
from emovit.probe import opensmile_features
from emovit.runs import opensmile_baseline
from emovit.split import split_songs

COLUMNS = ["F0final_sma_stddev", "pcm_RMSenergy_sma_amean", "pcm_zcr_sma_amean", "audspec_lengthL1norm_sma_amean"]


def _write_features(folder: Path, song_id: int, values: np.ndarray) -> Path:
    """One file of DEAM's format: semicolon-separated, frameTime first, one row per 0.5 s frame."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [";".join(["frameTime", *COLUMNS[: values.shape[1]]])]
    lines += [";".join([f"{0.5 * k:.1f}", *(f"{x:.6f}" for x in row)]) for k, row in enumerate(values)]
    path = folder / f"{song_id}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_discovery_finds_feature_files_and_reads_them_as_mean_and_std(tmp_path):
    (tmp_path / "audio").mkdir()
    for s in (2, 3):
        (tmp_path / "audio" / f"{s}.mp3").write_bytes(b"\xff\xfb")
    (tmp_path / "static_annotations_averaged_songs_1_2000.csv").write_text(
        "song_id, valence_mean, valence_std, arousal_mean, arousal_std\r\n2,5,1,5,1\r\n3,6,1,4,1\r\n"
    )
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 4)), rng.normal(size=(5, 4))
    _write_features(tmp_path / "DEAM_features" / "features", 2, a)
    _write_features(tmp_path / "DEAM_features" / "features", 3, b)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "7.csv").write_text("song_id,x\n7,1\n")  # a numbered CSV that is not openSMILE
    _, report = discover(str(tmp_path))
    assert sorted(report.opensmile) == [2, 3]
    assert report.to_dict()["opensmile_files"] == 2 and "opensmile" not in report.to_dict()
    got = opensmile_features([report.opensmile[2], report.opensmile[3]])
    np.testing.assert_allclose(got[0], np.concatenate([a.mean(0), a.std(0)]), atol=1e-6)
    np.testing.assert_allclose(got[1], np.concatenate([b.mean(0), b.std(0)]), atol=1e-6)


def test_a_broken_feature_file_is_named(tmp_path):
    good = _write_features(tmp_path, 2, np.ones((3, 4)))
    bad = tmp_path / "3.csv"
    bad.write_text("frameTime;" + ";".join(COLUMNS) + "\n0.0;1;2;x;4\n")
    with pytest.raises(ValueError, match="3.csv"):
        opensmile_features([str(good), str(bad)])
    assert find_opensmile([str(good), str(bad)]) == {2: str(good), 3: str(bad)}


def test_the_baseline_fits_on_training_songs_and_scores_every_test_song(cue_store, tmp_path):
    songs = cue_store.songs
    split = split_songs(songs.song_id, 0.2, 0.2, seed=0)
    rng = np.random.default_rng(1)
    files = {}
    for s, v, a in zip(songs.song_id, songs.valence, songs.arousal):
        frames = rng.normal(0, 0.3, (10, 4)) + np.array([v, a, v - a, 0.0])  # features that carry the labels
        files[int(s)] = str(_write_features(tmp_path / "features", int(s), frames))
    cfg = tiny_config(output_dir=str(tmp_path / "out"), n_bootstrap=50)
    test_ids = list(split.loc[split.split == "test", "song_id"])
    train_ids = list(split.loc[split.split == "train", "song_id"])
    assert opensmile_baseline(cfg, cue_store, split, {}) == "no openSMILE feature files found"
    partial = {s: p for s, p in files.items() if s != test_ids[0]}
    assert "1 of" in opensmile_baseline(cfg, cue_store, split, partial)
    without_one_train = {s: p for s, p in files.items() if s != train_ids[0]}
    out = opensmile_baseline(cfg, cue_store, split, without_one_train)
    assert list(out.predictions["song_id"]) == test_ids and out.n_train == len(train_ids) - 1
    assert out.metrics["valence"]["ccc"]["value"] > 0.8 and out.metrics["arousal"]["ccc"]["value"] > 0.8
    truth = songs.set_index("song_id").loc[test_ids]
    np.testing.assert_allclose(out.predictions["valence_true"], truth["valence"], atol=1e-6)
