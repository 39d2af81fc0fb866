"""Discovery and annotation parsing: the real DEAM files and fabricated Kaggle layouts."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emovit.deam import discover, normalize_column, rater_reliability, read_annotations, to_rating_scale, to_unit_scale

BIG = "deam-mediaeval-dataset-emotional-analysis-in-music"
SONG_LEVEL = "DEAM_Annotations/annotations/annotations averaged per song/song_level"
F1 = "static_annotations_averaged_songs_1_2000.csv"
F2 = "static_annotations_averaged_songs_2000_2058.csv"


def test_label_scale_roundtrip():
    assert to_unit_scale(1.0) == -1.0 and to_unit_scale(9.0) == 1.0 and to_unit_scale(5.0) == 0.0
    x = np.linspace(1, 9, 17)
    np.testing.assert_allclose(to_rating_scale(to_unit_scale(x)), x)


def test_normalize_column_handles_deam_quirks():
    assert normalize_column(" valence_ max_mean") == "valence_max_mean"
    assert normalize_column(" arousal_mean ") == "arousal_mean"


def test_real_annotation_files_parse(real_deam):
    a = read_annotations(str(real_deam / "annotations" / F1))
    b = read_annotations(str(real_deam / "annotations" / F2))
    assert len(a) == 1744 and a["song_id"].between(2, 2000).all()
    assert len(b) == 58 and b["song_id"].between(2001, 2058).all()
    both = pd.concat([a, b])
    assert both["song_id"].is_unique and len(both) == 1802
    for col in ("valence_mean", "arousal_mean"):
        assert both[col].notna().all() and both[col].between(1, 9).all()
    # song 2's row in the real file: 2,3.1,0.94,3,0.63
    row = a.set_index("song_id").loc[2]
    assert (row.valence_mean, row.arousal_mean) == (3.1, 3.0)


def test_real_deam_folder(real_deam):
    songs, report = discover(str(real_deam))
    assert report.annotated == 1802
    assert list(songs["song_id"]) == [2, 3, 4, 5]
    assert report.with_audio == 4 and report.annotated_no_audio == 1798 and report.audio_no_annotation == 0
    assert songs["valence"].between(-1, 1).all() and songs["arousal"].between(-1, 1).all()
    assert songs.set_index("song_id").loc[2, "valence"] == pytest.approx((3.1 - 5) / 4)


# ---- fabricated layouts ---------------------------------------------------------------


def _labels(n=30, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.sort(
        np.concatenate([rng.choice(np.arange(2, 2001), n - 5, replace=False), [2001, 2010, 2020, 2030, 2058]])
    )
    return pd.DataFrame(
        {"song_id": ids, "v": np.round(rng.uniform(1.5, 8.5, n), 1), "a": np.round(rng.uniform(1.5, 8.5, n), 1)}
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())


def _file1(lab, padded=False):
    early = lab[lab.song_id <= 2000]
    if padded:  # the fixed-width copies in circulation
        head = "  song_id,  valence_mean,  valence_std,  arousal_mean,  arousal_std"
        rows = [f"{s:>9},{v:>14} ,{0.5:>12} ,{a:>13} ,{0.5:>11} " for s, v, a in early.itertuples(index=False)]
    else:
        head = "song_id, valence_mean, valence_std, arousal_mean, arousal_std"
        rows = [f"{s},{v:g},0.5,{a:g},0.5" for s, v, a in early.itertuples(index=False)]
    return "\r\n".join([head, *rows]) + "\r\n"


def _file2(lab, trim=False):
    late = lab[lab.song_id > 2000]
    if trim:  # Kaggle's static_annots_2058.csv: 5 columns
        head = "song_id, valence_mean, valence_std, arousal_mean, arousal_std"
        rows = [f"{s},{v:g},0.9,{a:g},0.8" for s, v, a in late.itertuples(index=False)]
    else:
        head = (
            "song_id, valence_mean, valence_std, valence_ max_mean, valence_max_std, valence_min_mean, "
            "valence_min_std, arousal_mean, arousal_std, arousal_max_mean, arousal_max_std, "
            "arousal_min_mean, arousal_min_std"
        )
        rows = [f"{s},{v:g},0.9,9,1,1,1,{a:g},0.8,9,1,1,1" for s, v, a in late.itertuples(index=False)]
    return "\r\n".join([head, *rows]) + "\r\n"


def _audio(folder: Path, ids, ext="mp3"):
    folder.mkdir(parents=True, exist_ok=True)
    for s in ids:
        (folder / f"{s}.{ext}").write_bytes(b"\xff\xfb")  # discovery never decodes


def _big_dataset(base: Path, lab, audio_ids):
    _write(base / SONG_LEVEL / F1, _file1(lab))
    _write(base / SONG_LEVEL / F2, _file2(lab))
    _audio(base / "DEAM_audio" / "MEMD_audio", audio_ids)


def _expect(songs, lab, audio_ids):
    want = lab[lab.song_id.isin(audio_ids)].sort_values("song_id")
    assert list(songs.song_id) == list(want.song_id)
    np.testing.assert_allclose(songs.valence, (want.v - 5) / 4)
    np.testing.assert_allclose(songs.arousal, (want.a - 5) / 4)


def test_three_kaggle_datasets_attached_together(tmp_path):
    """2026 layout: /kaggle/input/datasets/<owner>/<slug>/...; the copies de-duplicate."""
    lab = _labels()
    audio_ids = list(lab.song_id[:-3]) + [1999 if 1999 not in set(lab.song_id) else 1998]
    root = tmp_path / "input"
    _big_dataset(root / "datasets" / "imsparsh" / BIG, lab, audio_ids)
    _write(root / "datasets" / "someone" / "static-annotations-1-2000" / F1, _file1(lab, padded=True))
    _write(root / "datasets" / "other" / "static-annots-2058" / "static_annots_2058.csv", _file2(lab, trim=True))
    songs, report = discover(str(root))
    _expect(songs, lab, audio_ids)
    assert len(report.annotation_files) == 4
    assert report.annotated == len(lab)
    assert report.duplicate_annotation_rows == len(lab)  # each song appears in two files
    assert report.conflicting_annotation_rows == 0
    assert report.annotated_no_audio == 3 and report.audio_no_annotation == 1
    assert report.with_audio == len(lab) - 3


def test_only_the_big_dataset(tmp_path):
    lab = _labels(seed=1)
    _big_dataset(tmp_path / BIG, lab, lab.song_id)
    songs, report = discover(str(tmp_path))
    _expect(songs, lab, lab.song_id)
    assert report.duplicate_annotation_rows == 0 and report.with_audio == len(lab)


def test_flat_folder_with_wav_and_padded_file(tmp_path):
    lab = _labels(seed=2)
    _write(tmp_path / F1, _file1(lab, padded=True))
    _write(tmp_path / "static_annots_2058.csv", _file2(lab, trim=True))
    _audio(tmp_path, lab.song_id[:10], ext="wav")
    _audio(tmp_path, lab.song_id[10:], ext="mp3")
    _audio(tmp_path / "copy", lab.song_id[:2], ext="mp3")  # a second copy of two songs
    songs, report = discover(str(tmp_path))
    _expect(songs, lab, lab.song_id)
    assert report.duplicate_audio == 2
    assert songs.set_index("song_id").audio_path.str.endswith(".mp3").loc[lab.song_id[:2]].all()  # mp3 preferred


def test_invalid_and_conflicting_rows_are_reported(tmp_path):
    text = (
        "song_id, valence_mean, valence_std, arousal_mean, arousal_std\r\n"
        "2,3.1,1,3,1\r\n3,,1,4,1\r\n4,9.5,1,4,1\r\n5,5,1,5,1\r\n"
    )
    _write(tmp_path / "a" / F1, text)
    _write(tmp_path / "b" / F1, text.replace("5,5,1,5,1", "5,6,1,5,1"))
    _audio(tmp_path / "audio", [2, 3, 4, 5])
    songs, report = discover(str(tmp_path))
    assert list(songs.song_id) == [2, 5]
    assert songs.set_index("song_id").loc[5, "valence"] == 0.0  # first file wins
    assert report.invalid_annotation_rows == 4  # NaN and 9.5, in both copies
    assert report.conflicting_annotation_rows == 1
    reasons = {(r["song_id"], r["reason"]) for r in report.skipped}
    assert (3, "annotation: missing value") in reasons and (4, "annotation: outside 1-9") in reasons


def test_nothing_found_says_where_and_what_to_attach(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        discover(str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and "imsparsh/deam-mediaeval-dataset-emotional-analysis-in-music" in msg
    _write(tmp_path / F1, _file1(_labels()))
    with pytest.raises(FileNotFoundError, match="no audio files"):
        discover(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(str(tmp_path / "missing"))


def test_rater_reliability_is_the_one_way_anova_of_the_per_song_means_and_stds(tmp_path):
    """ICC(1) and ICC(1,k) by hand from MS_between = k var(means) and MS_within = mean(std^2), on a
    file in DEAM's layout (leading spaces in the header, padded numbers)."""
    means_v, stds_v = np.array([3.0, 5.0, 7.5, 6.0]), np.array([1.0, 2.0, 1.5, 0.5])
    means_a, stds_a = np.array([2.0, 4.0, 4.5, 8.0]), np.array([1.2, 1.0, 2.0, 1.0])
    lines = ["song_id, valence_mean, valence_std, arousal_mean, arousal_std"]
    lines += [
        f"{i + 2}, {mv:g} , {sv:g}, {ma:g}, {sa:g}"
        for i, (mv, sv, ma, sa) in enumerate(zip(means_v, stds_v, means_a, stds_a))
    ]
    path = tmp_path / "static.csv"
    path.write_text("\r\n".join(lines) + "\r\n")
    got = rater_reliability(str(path), raters=10)
    for dim, means, stds in (("valence", means_v, stds_v), ("arousal", means_a, stds_a)):
        msb = 10 * np.var(means, ddof=1)
        msw = np.mean(stds**2)
        assert got[dim]["icc_1k"] == pytest.approx((msb - msw) / msb)
        assert got[dim]["icc_1"] == pytest.approx((msb - msw) / (msb + 9 * msw))
        assert got[dim]["songs"] == 4
    assert rater_reliability(str(path), raters=10, song_ids=[2, 3])["valence"]["songs"] == 2
    more = rater_reliability(str(path), raters=20)  # a stated minimum of raters gives lower bounds
    assert more["valence"]["icc_1k"] > got["valence"]["icc_1k"] and more["valence"]["icc_1"] > got["valence"]["icc_1"]


def test_the_raters_reference_row_is_what_the_real_file_gives(real_deam):
    from emovit.results import REFERENCES

    (row,) = [r for r in REFERENCES if r["source"].startswith("DEAM's raters")]
    got = rater_reliability(str(real_deam / "annotations" / F1), raters=10, song_ids=range(1001))
    assert got["valence"]["songs"] == 744 and row["metric"] == "ICC(1,10)"
    assert (round(got["valence"]["icc_1k"], 2), round(got["arousal"]["icc_1k"], 2)) == (row["valence"], row["arousal"])
