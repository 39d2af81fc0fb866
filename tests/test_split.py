import numpy as np
import pandas as pd
import pytest

from emovit.split import (
    Standardizer,
    assert_disjoint,
    assert_only_train,
    ids_of,
    read_split_file,
    save_split,
    song_unit,
    split_songs,
    split_table,
)


def _deam_ids(real_deam_dir) -> np.ndarray:
    """The 1802 real DEAM song ids when the annotation files are here, else 2..1803."""
    if real_deam_dir is None:
        return np.arange(2, 1804)
    frames = [pd.read_csv(p, skipinitialspace=True) for p in sorted((real_deam_dir / "annotations").glob("*.csv"))]
    return np.sort(np.concatenate([f["song_id"].to_numpy() for f in frames]))


def test_split_is_disjoint_complete_and_sized():
    from conftest import real_deam_dir

    ids = _deam_ids(real_deam_dir())
    split = split_songs(ids, 0.15, 0.15, seed=42)
    assert sorted(split.song_id) == list(ids)
    sets = [set(ids_of(split, s)) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    # Binomial sizes: within 4 standard deviations (~ +-60 / +-15 / +-15 songs) of 70 / 15 / 15%.
    n = len(ids)
    for size, p in zip((len(s) for s in sets), (0.7, 0.15, 0.15)):
        assert abs(size - n * p) < 4 * np.sqrt(n * p * (1 - p)), (size, n * p)
    table = split_table(split, 0.15, 0.15).set_index("split")
    assert table.loc["test", "songs"] == len(sets[2]) and table.loc["test", "target songs"] == round(0.15 * n, 1)
    assert table["songs"].sum() == n


def test_a_songs_split_never_depends_on_other_songs():
    """Removing songs (e.g. ones that failed to decode) moves no other song between splits."""
    ids = np.arange(2, 1804)
    full = split_songs(ids, 0.15, 0.15, seed=42).set_index("song_id")["split"]
    rng = np.random.default_rng(0)
    for dropped in ([ids[0]], [ids[900]], rng.choice(ids, 300, replace=False)):
        kept = np.setdiff1d(ids, dropped)
        part = split_songs(kept, 0.15, 0.15, seed=42).set_index("song_id")["split"]
        pd.testing.assert_series_equal(part, full.loc[kept])
    # ... and it is the documented pure function of (seed, song id).
    for sid in (2, 3, 1000, 1803):
        u = song_unit(sid, 42)
        assert full.loc[sid] == ("test" if u < 0.15 else "val" if u < 0.30 else "train")


def test_split_is_deterministic_and_seeded():
    ids = list(range(100))
    a = split_songs(ids, 0.2, 0.1, seed=1)
    b = split_songs(list(reversed(ids)), 0.2, 0.1, seed=1)
    c = split_songs(ids, 0.2, 0.1, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_split_file_reproduces_a_published_split(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("song_id,split\n2,train\n3,validation\n4,test\n5,train\n99,test\n")
    split, counts = read_split_file(str(path), [2, 3, 4, 5, 6])
    assert split.values.tolist() == [[2, "train"], [3, "val"], [4, "test"], [5, "train"]]
    assert counts == {"listed_without_data": 1, "with_data_not_listed": 1}
    (tmp_path / "bad.csv").write_text("id,set\n2,train\n")
    with pytest.raises(ValueError, match="song_id and split"):
        read_split_file(str(tmp_path / "bad.csv"), [2])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unique"):
        split_songs([1, 1, 2, 3], 0.2, 0.2)
    with pytest.raises(ValueError, match="fractions"):
        split_songs(range(10), 0.6, 0.5)


def test_assertions_fire_on_leaks():
    split = split_songs(range(20), 0.2, 0.2, seed=0)
    assert_only_train(ids_of(split, "train"), split, "gan")
    with pytest.raises(AssertionError, match="validation/test"):
        assert_only_train(ids_of(split, "train") + ids_of(split, "test")[:1], split, "gan")
    with pytest.raises(AssertionError):
        assert_disjoint(pd.concat([split, split.head(1).assign(split="test")]))


def test_split_csv(tmp_path):
    split = split_songs(range(10), 0.2, 0.2, seed=0)
    pd.testing.assert_frame_equal(pd.read_csv(save_split(split, str(tmp_path))), split)


def test_standardizer_uses_given_rows_only():
    rng = np.random.default_rng(0)
    mels = rng.normal(-40, 10, size=(10, 4, 50)).astype(np.float16)
    mels[5:] += 100  # "held-out" songs with very different statistics
    s = Standardizer.fit(mels, rows=[0, 1, 2, 3, 4])
    train = mels[:5].astype(np.float64)
    assert s.mean == pytest.approx(train.mean()) and s.std == pytest.approx(train.std())
    # Only the valid frames of each row count (the rest of a stored clip is padding).
    frames = np.array([50, 20, 50, 10, 50])
    masked = Standardizer.fit(mels, rows=[3, 1, 0, 2, 4], frames=frames[[3, 1, 0, 2, 4]])
    valid = np.concatenate([mels[i, :, :f].astype(np.float64).ravel() for i, f in enumerate(frames)])
    assert masked.mean == pytest.approx(valid.mean()) and masked.std == pytest.approx(valid.std())
    z = s(mels[:5].astype(np.float32))
    assert abs(z.mean()) < 1e-4 and z.std() == pytest.approx(1, abs=1e-3)
    np.testing.assert_allclose(s.inverse(z), mels[:5].astype(np.float32), atol=1e-3)
