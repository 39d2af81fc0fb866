import numpy as np
import pandas as pd
import pytest

from emovit.split import Standardizer, assert_disjoint, assert_only_train, ids_of, save_split, split_songs


def test_split_is_disjoint_complete_and_sized():
    ids = np.arange(2, 1804)
    split = split_songs(ids, 0.15, 0.15, seed=42)
    assert sorted(split.song_id) == list(ids)
    sets = [set(ids_of(split, s)) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    sizes = [len(s) for s in sets]
    assert sizes == [1260, 271, 271]  # 70 / 15 / 15 of 1802


def test_split_is_deterministic_and_seeded():
    ids = list(range(100))
    a = split_songs(ids, 0.2, 0.1, seed=1)
    b = split_songs(list(reversed(ids)), 0.2, 0.1, seed=1)
    c = split_songs(ids, 0.2, 0.1, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


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
    z = s(mels[:5].astype(np.float32))
    assert abs(z.mean()) < 1e-4 and z.std() == pytest.approx(1, abs=1e-3)
    np.testing.assert_allclose(s.inverse(z), mels[:5].astype(np.float32), atol=1e-3)
