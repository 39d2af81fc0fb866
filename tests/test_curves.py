"""DEAM's 2 Hz ratings: discovery of both layouts, window targets, curve metrics, test songs only."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emovit import curves
from emovit.deam import DataReport, DynamicRatings, discover, dynamic_dimension, load_dynamic, read_header
from emovit.demo_data import DYNAMIC_DIR, make_demo_deam

STATIC = "song_id, valence_mean, valence_std, arousal_mean, arousal_std\r\n"


def _tree(root: Path, ids) -> None:
    """A DEAM tree discovery accepts: a static annotation file and (undecodable) audio files."""
    (root / "audio").mkdir(parents=True)
    for s in ids:
        (root / "audio" / f"{s}.mp3").write_bytes(b"\xff\xfb")  # discovery never decodes
    rows = "".join(f"{s},5,1,5,1\r\n" for s in ids)
    (root / "static_annotations_averaged_songs_1_2000.csv").write_text(STATIC + rows)


def _dynamic_csv(ids, columns_ms, cells) -> str:
    head = "song_id," + ",".join(f"sample_{ms}ms" for ms in columns_ms)
    return "\n".join([head, *(f"{s}," + ",".join(row) for s, row in zip(ids, cells))]) + "\n"


def test_discovery_finds_deams_layout_with_empty_cells_after_a_song_ends(tmp_path):
    _tree(tmp_path, [2, 3, 2001])
    folder = tmp_path / DYNAMIC_DIR
    folder.mkdir(parents=True)
    ms = [15000, 15500, 16000, 16500]
    cells = [["0.1", "0.2", "", ""], ["-0.5", "-0.4", "-0.3", "abc"], ["0.3", "0.3", "0.4", "1.5"]]
    (folder / "arousal.csv").write_text(_dynamic_csv([2, 3, 2001], ms, cells))
    (folder / "valence.csv").write_text(_dynamic_csv([2, 3], ms, [["0", "0", "0", "0"]] * 2))
    songs, report = discover(str(tmp_path))
    assert sorted(Path(p).name for p in report.dynamic_files) == ["arousal.csv", "valence.csv"]
    ratings = load_dynamic(report, songs)
    assert report.dynamic_songs == 2  # 2001 has no valence curve
    assert report.dynamic_empty_cells == 2 and report.dynamic_invalid_cells == 2  # "abc" and 1.5
    t, v = ratings.curve(2, "arousal")
    np.testing.assert_allclose(t, [15.0, 15.5])
    np.testing.assert_allclose(v, [0.1, 0.2])
    t, v = ratings.curve(3, "arousal")
    np.testing.assert_allclose(t, [15.0, 15.5, 16.0])
    np.testing.assert_allclose(v, [-0.5, -0.4, -0.3])
    table = report.table().set_index("what")["count"]
    assert table["dynamic (2 Hz) rating files"] == 2
    assert table["songs with dynamic ratings on both dimensions (used)"] == 2


def test_discovery_finds_the_2013_layout_and_ignores_its_std_files(tmp_path):
    _tree(tmp_path, [2, 3])
    ms = [15000, 15500]
    for name in ("arousal_cont_average.csv", "valence_cont_average.csv", "arousal_cont_std.csv"):
        (tmp_path / "dyn" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "dyn" / name).write_text(_dynamic_csv([2, 3], ms, [["0.1", "0.2"], ["0.3", "0.4"]]))
    songs, report = discover(str(tmp_path))
    assert sorted(Path(p).name for p in report.dynamic_files) == [
        "arousal_cont_average.csv",
        "valence_cont_average.csv",
    ]
    assert load_dynamic(report, songs).songs() == {2, 3}


def test_no_dynamic_files_is_none_and_counted(tmp_path):
    _tree(tmp_path, [2])
    songs, report = discover(str(tmp_path))
    assert report.dynamic_files == [] and load_dynamic(report, songs) is None and report.dynamic_songs == 0


def test_real_2013_dynamic_files(real_deam):
    folder = real_deam / "annotations" / "dynamic"
    files = sorted(str(p) for p in folder.glob("*.csv"))
    assert [dynamic_dimension(p, read_header(p)) for p in files] == ["arousal", "valence"]
    report = DataReport(root=str(folder), dynamic_files=files)
    ratings = load_dynamic(report, pd.DataFrame({"song_id": [2, 3, 4, 5, 1]}))
    assert len(ratings.songs()) == 744 and report.dynamic_songs == 4  # song 1 is not in DEAM
    assert report.dynamic_empty_cells == 0 and report.dynamic_invalid_cells == 0
    per_song = ratings.rows.groupby(["song_id", "dimension"]).size()
    assert (per_song == 61).all()  # 15 s to 45 s at 2 Hz
    t, v = ratings.curve(2, "valence")
    assert t[0] == 15.0 and t[-1] == 45.0 and np.all(np.abs(v) <= 1)


def _ratings(rows: list[tuple]) -> DynamicRatings:
    return DynamicRatings(pd.DataFrame(rows, columns=["song_id", "dimension", "seconds", "value"]), files=[])


def test_window_targets_are_the_mean_rating_inside_each_window():
    t = np.arange(15.0, 30.0, 0.5)  # a demo song's ratings: 15 s to 29.5 s
    v = np.sin(t)
    v_missing = v.copy()
    keep = np.ones(len(t), bool)
    keep[[3, 4]] = False  # two empty cells
    starts = np.array([0.0, 5.0, 10.0, 12.5, 20.0])
    got = curves.window_targets(t[keep], v_missing[keep], starts, 10.0)
    assert np.isnan(got[0])  # [0, 10): nothing rated yet
    assert np.isnan(got[1])  # [5, 15): 15.0 is the window's end, not inside it
    assert got[2] == pytest.approx(np.mean([x for x, s, k in zip(v, t, keep) if 10 <= s < 20 and k]))
    assert got[3] == pytest.approx(np.mean([x for x, s, k in zip(v, t, keep) if 12.5 <= s < 22.5 and k]))
    assert got[4] == pytest.approx(np.mean(v[(t >= 20) & (t < 30)]))


def test_score_windows_pairs_each_window_with_its_own_targets():
    t = np.arange(15.0, 30.0, 0.5)
    ratings = _ratings([(7, "valence", s, 0.5) for s in t] + [(7, "arousal", s, -0.8 if s < 20 else 0.4) for s in t])
    starts = np.array([0.0, 6.0, 12.0, 18.0, 20.0])
    curve = pd.DataFrame(
        {
            "path": "x.mp3",
            "window": np.arange(5),
            "start_s": starts,
            "end_s": starts + 10,
            "valence": 0.1,
            "arousal": 0.2,
        }
    )
    table = curves.score_windows(curve, {"x.mp3": 7}, ratings, 10.0)
    assert list(table.columns) == curves.TABLE_COLUMNS and (table["song_id"] == 7).all()
    want = [np.nan, -0.8, (10 * -0.8 + 4 * 0.4) / 14, (4 * -0.8 + 16 * 0.4) / 20, 0.4]
    np.testing.assert_allclose(table["arousal_target"], want)
    np.testing.assert_allclose(table["valence_target"], [np.nan, 0.5, 0.5, 0.5, 0.5])


def test_curve_metrics_equal_a_hand_computation():
    rng = np.random.default_rng(0)
    rows = []
    for sid, n in ((1, 6), (2, 5), (3, 2)):  # song 3: too few windows for an r
        for w in range(n):
            rows.append((sid, w, rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1)))
    table = pd.DataFrame(rows, columns=["song_id", "window", "valence", "arousal", "valence_target", "arousal_target"])
    table.loc[0, "arousal_target"] = np.nan  # a window before the first rating
    m = curves.curve_metrics(table)
    for dim in ("valence", "arousal"):
        scored = table[table[f"{dim}_target"].notna()]
        per_song = [g for _, g in scored.groupby("song_id")]
        rmse = np.mean([np.sqrt(np.mean((g[dim] - g[f"{dim}_target"]) ** 2)) for g in per_song])
        r = np.mean([np.corrcoef(g[dim], g[f"{dim}_target"])[0, 1] for g in per_song if len(g) >= 3])
        x, y = scored[f"{dim}_target"].to_numpy(), scored[dim].to_numpy()
        ccc = 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
        assert m[dim]["rmse_per_song"] == pytest.approx(rmse)
        assert m[dim]["pearson_r_per_song"] == pytest.approx(r)
        assert m[dim]["ccc_windows"] == pytest.approx(ccc)
        assert m[dim]["songs_with_r"] == 2 and m[dim]["songs_without_r"] == 1
    assert m["arousal"]["windows_scored"] == 12 and m["arousal"]["windows_without_rating"] == 1


def test_only_test_songs_are_scored(monkeypatch):
    songs = pd.DataFrame({"song_id": [1, 2, 3, 4, 5], "audio_path": [f"{i}.mp3" for i in range(1, 6)]})
    split = pd.DataFrame({"song_id": [1, 2, 3, 4, 5], "split": ["train", "val", "test", "test", "test"]})
    ratings = _ratings([(s, d, 15.0, 0.1) for s in (1, 2, 3, 4) for d in ("valence", "arousal")])  # 5: not rated
    seen = []

    def spy(paths, predictor, return_curves):
        seen.extend(paths)
        rows = pd.DataFrame({"path": paths, "error": ""})
        curve = pd.DataFrame(
            {"path": paths, "window": 0, "start_s": 10.0, "end_s": 20.0, "valence": 0.0, "arousal": 0.0}
        )
        return rows, curve

    monkeypatch.setattr(curves, "predict_folder", spy)

    class Predictor:  # what score_test_songs reads of one
        class params:
            clip_seconds = 10.0

    table, _ = curves.score_test_songs(Predictor(), songs, split, ratings)
    assert seen == ["3.mp3", "4.mp3"] and sorted(table["song_id"]) == [3, 4]


@pytest.mark.slow
def test_the_demo_checkpoint_scores_curves_of_a_dynamic_demo_set(demo_run, tmp_path):
    """The real path: the demo run's checkpoint predicts a generated set whose arousal moves within
    each song and whose 2 Hz files the discovery finds; every window after 15 s gets a target."""
    from emovit.predict import Predictor

    outputs, _ = demo_run
    root = tmp_path / "dynamic"
    make_demo_deam(str(root), num_songs=6, seconds=30.0, seed=5, dynamic=True)
    songs, report = discover(str(root))
    ratings = load_dynamic(report, songs)
    assert report.dynamic_songs == 6
    split = pd.DataFrame({"song_id": songs["song_id"], "split": "test"})
    predictor = Predictor(str(outputs / "best_vit_model.pth"), hop_seconds=2.0)
    table, rows = curves.score_test_songs(predictor, songs, split, ratings)
    assert (rows["error"] == "").all() and table["song_id"].nunique() == 6
    rated = table["end_s"] > 15.0  # a window ending after the first rating holds one
    assert table.loc[rated, ["valence_target", "arousal_target"]].notna().all().all()
    assert table.loc[~rated, "arousal_target"].isna().all()
    m = curves.curve_metrics(table)
    assert all(np.isfinite(m[d]["rmse_per_song"]) and np.isfinite(m[d]["ccc_windows"]) for d in m)
    shutil.rmtree(root)
