"""Training seeds: the pooled paired interval over songs and seeds, the spread, the per-seed rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emovit import metrics as M
from emovit import results
from emovit.config import make_config
from emovit.runs import Outcome
from emovit.seeds import model_spread, per_seed_table, pooled_compare, seed_predictions, seeds_table, summarize

N_SONGS = 14


def _frames(n_seeds: int, noise: float, offset: int = 0) -> list[pd.DataFrame]:
    """One model's test frames for ``n_seeds`` seeds: the truth plus seed-specific noise."""
    truth = np.random.default_rng(0).uniform(-1, 1, size=(N_SONGS, 2))
    frames = []
    for k in range(n_seeds):
        pred = truth + np.random.default_rng(100 + offset + k).normal(0, noise, size=truth.shape)
        frames.append(results.prediction_frame(np.arange(N_SONGS) + 1, truth, pred))
    return frames


def test_pooled_interval_equals_a_hand_computation():
    a, b = _frames(3, 0.3), _frames(3, 0.6, offset=50)
    n_boot, seed = 40, 7
    got = pooled_compare(a, b, n_boot, seed)
    # by hand: the documented draws (songs, then seeds), the drawn seeds' differences averaged
    rng = np.random.default_rng(seed)
    songs = rng.integers(0, N_SONGS, size=(n_boot, N_SONGS))
    seeds = rng.integers(0, 3, size=(n_boot, 3))
    true = a[0][["valence_true", "arousal_true"]].to_numpy()
    for d, dim in enumerate(("valence", "arousal")):
        pa = [f[f"{dim}_pred"].to_numpy() for f in a]
        pb = [f[f"{dim}_pred"].to_numpy() for f in b]
        for name, fn in M.METRICS.items():
            per_seed = [fn(true[:, d], pa[k]) - fn(true[:, d], pb[k]) for k in range(3)]
            boots = []
            for r in range(n_boot):
                i = songs[r]
                boots.append(sum(fn(true[i, d], pa[k][i]) - fn(true[i, d], pb[k][i]) for k in seeds[r]) / 3)
            v = got[dim][name]
            assert v["per_seed"] == pytest.approx(per_seed, abs=1e-12)
            assert v["value"] == pytest.approx(np.mean(per_seed), abs=1e-12)
            assert v["low"] == pytest.approx(np.percentile(boots, 2.5), abs=1e-12)
            assert v["high"] == pytest.approx(np.percentile(boots, 97.5), abs=1e-12)


def test_seeds_are_paired_a_model_against_itself_differs_by_exactly_zero():
    """Seed k of one model is compared with seed k of the other: two copies of a model whose
    seeds differ a lot have a zero difference in every resample. Drawing the two models' seeds
    independently (unpaired) would give a wide interval around zero instead."""
    a = _frames(3, 0.5)
    pooled = pooled_compare(a, [f.copy() for f in a], 200, 0)
    for dim in ("valence", "arousal"):
        for v in pooled[dim].values():
            assert v["value"] == 0 and v["low"] == 0 and v["high"] == 0, v


def test_one_seed_pools_to_the_paired_song_bootstrap():
    a, b = _frames(1, 0.3), _frames(1, 0.6, offset=50)
    pooled, single = pooled_compare(a, b, 300, 3), results.compare(a[0], b[0], 300, 3)
    for dim in ("valence", "arousal"):
        for name, v in single[dim].items():
            assert {k: pooled[dim][name][k] for k in ("value", "low", "high")} == pytest.approx(v, abs=1e-12)


def test_pooled_compare_refuses_frames_of_other_songs():
    a, b = _frames(2, 0.3), _frames(2, 0.3, offset=9)
    b[1] = b[1].iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="same test songs"):
        pooled_compare(a, b, 10, 0)
    with pytest.raises(ValueError, match="same number of seeds"):
        pooled_compare(a, b[:1], 10, 0)


def test_model_spread_is_mean_and_sample_sd_over_seeds():
    frames = _frames(3, 0.4)
    spread = model_spread(frames)["arousal"]["ccc"]
    values = [M.ccc(f["arousal_true"], f["arousal_pred"]) for f in frames]
    assert spread["per_seed"] == pytest.approx(values)
    assert spread["mean"] == pytest.approx(sum(values) / 3)
    assert spread["sd"] == pytest.approx(np.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / 2))
    assert model_spread(frames[:1])["arousal"]["ccc"]["sd"] is None  # one seed: no spread (and valid JSON)


def _outcomes(seed: int, offset: int) -> dict[str, Outcome]:
    names = ("delivered", "vit_real_plus_synthetic", "vit_real_only")
    out = {}
    for i, name in enumerate(names):
        frame = _frames(1, 0.2 + 0.2 * i, offset=offset + i)[0]
        out[name] = Outcome(name, frame, M.with_intervals(*_truth_pred(frame), n_boot=0), 1.0, seed=seed)
        out[name].val_predictions = frame.head(4)
    return out


def _truth_pred(frame):
    return frame[["valence_true", "arousal_true"]].to_numpy(), frame[["valence_pred", "arousal_pred"]].to_numpy()


def test_two_seeds_give_two_rows_per_model_and_every_seed_in_the_predictions():
    by_seed = {42: _outcomes(42, 0), 7: _outcomes(7, 10)}
    rows = per_seed_table(by_seed)
    assert rows.groupby("model").size().to_dict() == {"delivered": 2, "vit_real_only": 2, "vit_real_plus_synthetic": 2}
    assert set(rows["seed"]) == {42, 7}
    assert list(dict.fromkeys(rows["model"])) == list(by_seed[42])  # the figure's order: delivered first
    summary = summarize(by_seed, 50, 0)
    assert summary["seeds"] == [42, 7] and not summary["incomplete"]
    assert set(summary["differences"]) == {
        "delivered - vit_real_plus_synthetic",
        "delivered - vit_real_only",
        "vit_real_plus_synthetic - vit_real_only",
    }
    assert len(summary["models"]["delivered"]["valence"]["ccc"]["per_seed"]) == 2
    table = seeds_table(summary)
    assert len(table) == 2 * (3 + 3) and table.columns[3] == "per seed 42 / 7"
    predictions = seed_predictions(by_seed, "delivered")
    assert list(predictions.columns[:3]) == ["song_id", "split", "seed"]
    assert predictions["seed"].tolist() == [42] * (N_SONGS + 4) + [7] * (N_SONGS + 4)  # test + val rows per seed
    ridge = Outcome("ridge_baseline", by_seed[42]["vit_real_only"].predictions, {}, 0.0)  # no training seed
    ridge.val_predictions = by_seed[42]["vit_real_only"].val_predictions
    once = seed_predictions(
        {42: {**by_seed[42], "ridge_baseline": ridge}, 7: {**by_seed[7], "ridge_baseline": ridge}}, "ridge_baseline"
    )
    assert "seed" not in once.columns and len(once) == N_SONGS + 4  # written once, not once per seed
    # test_rows: the first seed's (the training seed of best_vit_model.pth), or the one asked for
    pd.testing.assert_frame_equal(results.test_rows(predictions), by_seed[42]["delivered"].predictions)
    pd.testing.assert_frame_equal(results.test_rows(predictions, seed=7), by_seed[7]["delivered"].predictions)


def test_seeds_config():
    assert make_config("kaggle").training_seeds == [42]  # one seed on Kaggle: each extra one trains every ViT again
    assert make_config("kaggle", seed=3).training_seeds == [3]
    assert make_config("demo").training_seeds == [42, 1, 2]
    for bad in ([1, 1], ["1"], [True], [-1]):
        with pytest.raises(ValueError, match="seeds must be distinct non-negative integers"):
            make_config("kaggle", seeds=bad)


def test_the_synthetic_experiment_trains_its_vits_with_each_runs_seed(tmp_path):
    """tools.synthetic_experiment compares models over training seeds: each run's seed must reach
    the ViTs, not only the GAN (the demo preset's own seeds list would train every ViT with 42),
    while the data and split stay at the data seed."""
    import argparse

    from tools.synthetic_experiment import experiment_config

    args = argparse.Namespace(work=tmp_path, style="band", data_seed=42, songs=120, gan_tag="")
    for seed in (1, 2, 3):
        cfg = experiment_config(args, seed, {"synthetic_weight": 0.5})
        assert (cfg.seed, cfg.training_seeds, cfg.synthetic_weight) == (seed, [seed], 0.5)
        assert cfg.data_dir == str(tmp_path / "data_band_42_120")
        assert cfg.cache_dir == str(tmp_path / f"cache_band_base_seed{seed}")


def test_the_validation_report_shows_the_seeds_table():
    from tools.validate import _seeds_section

    summary = summarize({42: _outcomes(42, 0), 7: _outcomes(7, 10)}, 20, 0)
    lines = _seeds_section({"seeds": summary})
    assert lines[1] == "## Demo run: 2 training seeds"
    delivered = next(r for r in lines if r.startswith("| ViT delivered") and "| valence |" in r)
    spread = summary["models"]["delivered"]["valence"]["ccc"]
    assert f"{spread['mean']:+.3f} +- {spread['sd']:.3f}" in delivered
    assert _seeds_section({"seeds": summarize({42: _outcomes(42, 0)}, 20, 0)}) == []  # one seed: no section


def test_a_failed_check_in_the_validation_report_names_the_failing_tests():
    """validate keeps one line per check; for a failed pytest run it must say which tests failed."""
    import sys

    from tools.validate import run_check

    script = "print('FAILED tests/test_x.py::test_y - AssertionError: no'); print('1 failed, 3 passed'); exit(1)"
    result = run_check("test suite", [sys.executable, "-c", script])
    assert result["result"] == "FAIL (exit 1)"
    assert result["detail"] == "1 failed, 3 passed: FAILED tests/test_x.py::test_y"
    assert run_check("ok", [sys.executable, "-c", "print('3 passed')"])["detail"] == "3 passed"


class _SpyTrainer:
    """Records every fit: (name, seed, overrides); returns an outcome with a checkpoint path."""

    def __init__(self):
        self.fits = []

    def fit(self, name, seed=None, **overrides):
        self.fits.append((name, seed, overrides))
        frame = _frames(1, 0.3)[0]
        return Outcome(name, frame, {}, 0.0, best_path=f"/cache/vit/{name}/seed{seed}/k/best_vit_model.pth", seed=seed)


class _Judgement:
    def __init__(self, dims):
        self.dims, self.any = dims, dims != "none"


def test_an_extra_seed_trains_every_vit_with_that_seed_and_the_first_seeds_gate(monkeypatch):
    from emovit import seeds

    delivered = []
    monkeypatch.setattr(seeds, "choose_models", lambda main, ref, cfg: ("choice", main, ref, cfg.seed))
    monkeypatch.setattr(
        seeds,
        "deliver",
        lambda choice, outcomes, path, n_boot, seed: (
            delivered.append((choice, path, seed))
            or Outcome("delivered", outcomes["vit_real_only"].predictions, {}, 0.0, seed=seed)
        ),
    )
    cfg = make_config("demo")  # one ready-made arm, vit_no_augment
    trainer = _SpyTrainer()
    outcomes, choice = seeds.train_seed(trainer, 7, _Judgement("arousal"), cfg)
    assert list(outcomes) == ["delivered", "vit_real_only", "vit_real_plus_synthetic", "vit_no_augment"]
    assert [(n, s) for n, s, _ in trainer.fits] == [
        ("vit_real_only", 7),
        ("vit_real_plus_synthetic", 7),
        ("vit_no_augment", 7),
    ]
    assert trainer.fits[0][2] == {"use_synthetic": False}
    assert trainer.fits[1][2] == {"synthetic_dims": "arousal"}  # the first seed's gate, not a new judge
    assert trainer.fits[2][2] == {"synthetic_dims": "arousal", **cfg.arms["vit_no_augment"]}
    (made, path, seed) = delivered[0]
    # the choice's validation bootstrap and the delivered model's test bootstrap use the run's seed, as
    # the first training seed's do
    assert made[3] == cfg.seed and seed == cfg.seed and made[1] is outcomes["vit_real_plus_synthetic"]
    assert path == "/cache/vit/vit_real_only/seed7/k/delivered_vit_model.pth"  # the cache, not the run folder
    # the gate closed every dimension: no synthetic-trained model, the real-only one is delivered
    trainer = _SpyTrainer()
    outcomes, _ = seeds.train_seed(trainer, 3, _Judgement("none"), make_config("demo", arms={}))
    assert [n for n, _, _ in trainer.fits] == ["vit_real_only"] and delivered[-1][0][1] is None
