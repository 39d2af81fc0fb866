"""Evaluation integrity, proven at the call sites the notebook uses.

Each test asserts the exact thing it guards, on a tiny pipeline built with the package's own
functions (the ones the notebook calls), so that a leak -- which can only RAISE scores and is
therefore invisible to lower-bound learning thresholds -- fails a test. `tools/mutation_check.py`
applies deliberate leaks to a copy of the project and shows that this suite catches each one.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

import emovit.runs as runs
import emovit.vit_train as vt
from emovit import gan as G
from emovit import gan_train
from emovit.config import Config, make_config, replace
from emovit.deam import discover
from emovit.demo_data import make_demo_deam
from emovit.features import extract_features
from emovit.metrics import METRICS, ccc, with_intervals
from emovit.probe import band_stats, fit_probe, song_features, validation_probe
from emovit.results import compare, prediction_frame, score
from emovit.split import Standardizer, fit_standardizer, ids_of, split_songs
from emovit.vit import find_pretrained


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """24 demo songs of 6 s, 4 s windows from 5 s clips, features, a hash split and its standardizer."""
    root = tmp_path_factory.mktemp("protocol")
    make_demo_deam(str(root / "data"), num_songs=24, seconds=6.0, seed=5)
    cfg = tiny_config(
        data_dir=str(root / "data"),
        output_dir=str(root / "out"),
        clip_seconds=4.0,
        clip_offset=1.0,
        max_clip_seconds=5.0,
        random_vit_layers=1,
        vit_epochs=3,
        gan_steps=2,
        num_synthetic=8,
        gan_sample_batch_size=4,
        arms={},
    )
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    split = split_songs(store.songs.song_id, 0.25, 0.25, seed=0)  # 13 / 4 / 7 songs
    assert min(len(ids_of(split, s)) for s in ("train", "val", "test")) >= 4
    return cfg, store, split, fit_standardizer(store, split)


def _labels(store, ids) -> np.ndarray:
    return store.songs.set_index("song_id").loc[list(ids), ["valence", "arousal"]].to_numpy()


# ---- standardizer, probe, ridge: fitted on training songs only ----------------------------


def test_notebook_standardizer_is_train_only(pipeline):
    cfg, store, split, standardizer = pipeline
    songs = store.songs.set_index("song_id")
    values = np.concatenate(
        [
            np.asarray(store.mels[songs.at[s, "row"], :, : songs.at[s, "frames"]], np.float64).ravel()
            for s in ids_of(split, "train")
        ]
    )
    assert standardizer.mean == pytest.approx(values.mean(), abs=1e-9)
    assert standardizer.std == pytest.approx(values.std(), abs=1e-9)
    everyone = Standardizer.fit(store.mels, store.songs.row, store.songs.frames)
    assert abs(everyone.mean - standardizer.mean) > 1e-6  # the test would see an all-songs fit


def test_ridge_baseline_and_validation_probe_are_fitted_on_training_songs(pipeline):
    cfg, store, split, _ = pipeline
    train_ids, val_ids, test_ids = (ids_of(split, s) for s in ("train", "val", "test"))
    train_only = fit_probe(song_features(store, train_ids), _labels(store, train_ids))
    baseline = runs.ridge_baseline(cfg, store, split)
    assert list(baseline.predictions.song_id) == test_ids
    expected = train_only.predict(song_features(store, test_ids))
    np.testing.assert_allclose(baseline.predictions[["valence_pred", "arousal_pred"]].to_numpy(), expected, atol=1e-9)
    probe, val_ccc = validation_probe(store, split)
    np.testing.assert_allclose(probe[-1].coef_, train_only[-1].coef_, atol=1e-12)
    pred = train_only.predict(song_features(store, val_ids))
    assert val_ccc == {
        d: round(ccc(_labels(store, val_ids)[:, i], pred[:, i]), 3) for i, d in enumerate(("valence", "arousal"))
    }


def test_song_features_use_only_valid_frames():
    mels = np.zeros((2, 3, 10), np.float16)
    mels[0, :, :6] = 1.0
    mels[0, :, 6:] = 50.0  # padding after 6 valid frames
    mels[1] = np.arange(10)
    feats = band_stats(mels, frames=np.array([6, 10]))
    np.testing.assert_allclose(feats[0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(feats[1, :3], 4.5)
    np.testing.assert_allclose(feats[1, 3:], np.arange(10).std(), rtol=1e-6)


# ---- GAN and synthetic labels: the training songs' ---------------------------------------


def test_gan_and_synthetic_labels_are_the_training_songs(pipeline, monkeypatch):
    cfg, store, split, standardizer = pipeline
    train_ids = ids_of(split, "train")
    gan = gan_train.train_or_load_gan(cfg, store, split, train_ids, standardizer, "cpu")
    np.testing.assert_array_equal(gan.train_labels, _labels(store, train_ids).astype(np.float32))
    seen = {}
    real_sample = gan_train.sample_labels

    def spy(train_labels, *args, **kwargs):
        seen["labels"] = np.asarray(train_labels)
        return real_sample(train_labels, *args, **kwargs)

    monkeypatch.setattr(gan_train, "sample_labels", spy)
    synthetic = gan_train.synthesize(gan, replace(cfg, cache_dir=str(cfg.cache_path) + "_spy"), "cpu")
    np.testing.assert_array_equal(seen["labels"], _labels(store, train_ids).astype(np.float32))
    lo, hi = _labels(store, train_ids).min(axis=0), _labels(store, train_ids).max(axis=0)
    assert (synthetic.labels >= lo - 1e-6).all() and (synthetic.labels <= hi + 1e-6).all()


def test_synthetic_band_levels_come_from_training_songs_only(pipeline, monkeypatch):
    """With synthetic_envelope and synthetic_dynamics 1 the envelopes are fitted on the training
    songs' clips (a spy on the features they read) and windows, and every synthetic sample's band
    means over time are the labels' fit plus one of those songs' residuals."""
    cfg, store, split, standardizer = pipeline
    train_ids = ids_of(split, "train")
    read = []
    real_features = gan_train.song_features

    def spy(store_, song_ids):
        read.append(sorted(int(s) for s in song_ids))
        return real_features(store_, song_ids)

    monkeypatch.setattr(gan_train, "song_features", spy)
    env_cfg = replace(cfg, synthetic_envelope=1.0, synthetic_dynamics=1.0, cache_dir=str(cfg.cache_path) + "_env")
    gan = gan_train.train_or_load_gan(env_cfg, store, split, train_ids, standardizer, "cpu")
    assert read == [sorted(int(s) for s in train_ids)]
    expected = song_features(store, train_ids)[:, : store.mels.shape[1]]
    design = torch.from_numpy(_labels(store, train_ids).astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(gan.envelope.residuals, expected - G.label_design(design).numpy() @ gan.envelope.coef)
    log_stds = np.log(store.centre_windows(train_ids).astype(np.float32).std(axis=2) + gan_train.STD_FLOOR_DB)
    fitted = G.label_design(design).numpy() @ gan.envelope.dyn_coef
    np.testing.assert_allclose(gan.envelope.dyn_residuals, log_stds - fitted, atol=1e-6)
    synthetic = gan_train.synthesize(gan, env_cfg, "cpu")
    levels = synthetic.mels.astype(np.float32).mean(axis=2)
    fit = G.label_design(torch.from_numpy(synthetic.labels.astype(np.float64))).numpy() @ gan.envelope.coef
    gap = np.abs((levels - fit)[:, None, :] - gan.envelope.residuals[None]).max(axis=2)  # (samples, songs)
    assert (gap.min(axis=1) < 0.1).all()  # dB; float16 storage


def test_gan_checkpoint_is_chosen_on_validation_songs_only(pipeline):
    """The GAN's monitor (which picks its kept checkpoint) reads validation songs, never test songs,
    and its probe is fitted on the training songs."""
    cfg, store, split, _ = pipeline
    train_ids, val_ids = ids_of(split, "train"), ids_of(split, "val")
    monitor = gan_train.Monitor.build(cfg, store, split, train_ids, _labels(store, train_ids).astype(np.float32))
    np.testing.assert_array_equal(monitor.val_labels, _labels(store, val_ids).astype(np.float32))
    np.testing.assert_allclose(monitor.val_features, band_stats(store.centre_windows(val_ids)), rtol=1e-6)
    train_only = fit_probe(band_stats(store.centre_windows(train_ids)), _labels(store, train_ids))
    np.testing.assert_allclose(monitor.probe[-1].coef_, train_only[-1].coef_, rtol=1e-5, atol=1e-8)


# ---- ViT: model selection sees only validation songs; rows carry their own labels --------


def test_model_selection_sees_only_validation_songs(pipeline, monkeypatch):
    cfg, store, split, standardizer = pipeline
    calls = []
    real_predict = vt.predict_dataset

    def recorder(model, pre, ds, *args, **kwargs):
        calls.append((list(ds.song_ids), list(ds.files)))
        return real_predict(model, pre, ds, *args, **kwargs)

    monkeypatch.setattr(vt, "predict_dataset", recorder)
    monkeypatch.setattr(runs, "predict_dataset", recorder)
    out = cfg.output_dir + "_selection"
    outcome = runs.fit_and_test(
        "main",
        replace(cfg, use_synthetic=False),
        store,
        split,
        None,
        standardizer,
        find_pretrained(cfg),
        "cpu",
        best_path=os.path.join(out, "best.pth"),
        last_path=os.path.join(out, "last.pth"),
    )
    assert len(calls) == cfg.vit_epochs + 2
    for ids, files in calls[:-1]:  # one validation pass per epoch and one of the kept checkpoint: real val songs
        assert ids == ids_of(split, "val") and files == [store.path]
    assert calls[-1] == (ids_of(split, "test"), [store.path])  # then the test songs, once
    history = outcome.run.history
    assert outcome.run.best_epoch == 1 + int(np.argmax([h["val_ccc_mean"] for h in history]))
    best = torch.load(os.path.join(out, "best.pth"), weights_only=True)
    assert best["epoch"] == outcome.run.best_epoch and best["val"] == history[outcome.run.best_epoch - 1]
    # predictions.csv rows: each row's true values are its own song's labels, in test order
    frame = outcome.predictions
    np.testing.assert_array_equal(frame[["valence_true", "arousal_true"]].to_numpy(), _labels(store, frame.song_id))
    assert list(frame.song_id) == ids_of(split, "test")
    assert outcome.metrics == score(frame, cfg.n_bootstrap, cfg.seed)


def test_every_model_of_a_run_takes_the_same_optimizer_steps(pipeline):
    """The real-only reference trains first, before the gate, yet with the synthetic-trained
    model's steps per epoch (one pass over real + synthetic), as does every arm."""
    cfg, store, split, standardizer = pipeline
    gan = gan_train.train_or_load_gan(cfg, store, split, ids_of(split, "train"), standardizer, "cpu")
    synthetic = gan_train.synthesize(gan, cfg, "cpu")
    cfg = replace(cfg, vit_epochs=2, output_dir=cfg.output_dir + "_arms", cache_dir=cfg.cache_path + "_arms")
    trainer = runs.Trainer(cfg, store, split, synthetic, standardizer, find_pretrained(cfg), "cpu")
    real_only = trainer.fit("vit_real_only", use_synthetic=False)
    main = trainer.fit("main", synthetic_dims="arousal")
    arm = trainer.fit("no_augment", synthetic_dims="arousal", random_crop=False, spec_augment=False)
    assert main.n_train == len(ids_of(split, "train")) + len(synthetic.labels) > real_only.n_train
    for o in (real_only, main, arm):
        assert o.run.steps_per_epoch == -(-main.n_train // cfg.vit_batch_size) == trainer.steps_per_epoch
        assert o.run.optimizer_steps == 2 * trainer.steps_per_epoch
    assert list(real_only.predictions.song_id) == list(main.predictions.song_id)
    ridge = runs.ridge_baseline(cfg, store, split)
    for other in (real_only, ridge):  # every model's frame carries the same true values: comparable
        pd.testing.assert_frame_equal(
            other.predictions[["song_id", "valence_true", "arousal_true"]],
            main.predictions[["song_id", "valence_true", "arousal_true"]],
        )
        compare(main.predictions, other.predictions, n_boot=20, seed=0)
    table = runs.arm_table({"main": main, "vit_real_only": real_only, "no_augment": arm}).set_index("model")
    assert table.loc["vit_real_only", "optimizer steps"] == table.loc["main", "optimizer steps"]
    assert "random_crop" in table.loc["no_augment", "overrides"]


def test_epoch_sampler_cycles_a_small_set():
    sampler = vt.EpochSampler(10, 25, seed=1, epoch=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 25
    counts = np.bincount(order, minlength=10)
    assert counts.min() == 2 and counts.max() == 3  # two whole passes, then part of a third
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert order == list(vt.EpochSampler(10, 25, seed=1, epoch=3))
    assert order != list(vt.EpochSampler(10, 25, seed=1, epoch=4))


# ---- keys: every cache key moves with the split, the labels and every training setting ---

# fields whose values are checked: another allowed value
CHOICES = {"auto": "both", "kaggle": "demo", "song": "crop", "nearest": "bilinear"}


def _changed(value):
    if value in CHOICES:
        return CHOICES[value]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.25 + 0.0625
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):
        return {**value, "extra": {}}
    raise TypeError(type(value))


def test_run_key_moves_with_every_training_setting():
    cfg = make_config("kaggle")
    base = vt.run_key(cfg, "data", "weights", 10)
    training = [f.name for f in dataclasses.fields(Config) if f.name not in vt.NOT_TRAINING_FIELDS]
    assert {
        "mixed_precision",
        "random_vit_hidden",
        "random_vit_layers",
        "random_vit_heads",
        "image_height",
        "spec_augment",
        "test_crops",
        "seed",
        "vit_lr",
        "use_synthetic",
    } <= set(training)
    for name in training:
        changed = dataclasses.replace(cfg, **{name: _changed(getattr(cfg, name))})
        assert vt.run_key(changed, "data", "weights", 10) != base, name
    assert vt.run_key(cfg, "other data", "weights", 10) != base
    assert vt.run_key(cfg, "data", "other weights", 10) != base
    assert vt.run_key(cfg, "data", "weights", 11) != base  # steps per epoch
    assert set(vt.NOT_TRAINING_FIELDS) <= {f.name for f in dataclasses.fields(Config)}


def test_a_model_without_synthetic_data_keeps_its_key_when_the_gan_or_the_synthetic_set_changes():
    """A GAN tweak must not retrain the real-only reference: its key leaves out every gan_* field and
    the synthetic set's fields (their effect on its length reaches it as steps per epoch), while the
    synthetic-trained model's key moves with each of them."""
    real_only = make_config("kaggle", use_synthetic=False)
    base = vt.run_key(real_only, "data", "weights", 10)
    synthetic_fields = [
        f.name for f in dataclasses.fields(Config) if f.name.startswith("gan_") or f.name in vt.SYNTHETIC_FIELDS
    ]
    assert {"gan_steps", "gan_channels", "num_synthetic", "synthetic_weight", "synthetic_dims"} <= set(synthetic_fields)
    for name in synthetic_fields:
        tweak = {name: _changed(getattr(real_only, name))}
        assert vt.run_key(dataclasses.replace(real_only, **tweak), "data", "weights", 10) == base, name
        main = make_config("kaggle")
        if name not in vt.NOT_TRAINING_FIELDS:
            assert vt.run_key(dataclasses.replace(main, **tweak), "d", "w", 10) != vt.run_key(main, "d", "w", 10), name


def test_data_key_moves_with_the_split_and_the_labels(pipeline):
    cfg, store, split, _ = pipeline
    base = vt.data_key(store, split, None)
    moved = split.copy()
    moved.loc[moved["split"] == "val", "split"] = "train"
    assert vt.data_key(store, moved, None) != base
    relabelled = dataclasses.replace(store, songs=store.songs.copy())
    relabelled.songs.loc[relabelled.songs.song_id == ids_of(split, "val")[0], "valence"] += 0.1
    assert vt.data_key(relabelled, split, None) != base

    class Synthetic:
        path = "/cache/gan/synthetic_abc.npy"

    assert vt.data_key(store, split, Synthetic()) != base


# ---- the best checkpoint carries its run key ------------------------------------------------


def test_best_file_of_another_run_is_never_scored(pipeline):
    """Run A finishes (its record says so, its resume state is gone); run B, on another split, is
    interrupted after writing its best file; re-running A must not score B's best model -- nor
    trust A's completion record, which no longer matches the best file."""
    cfg, store, split, standardizer = pipeline
    cfg = replace(cfg, use_synthetic=False, vit_epochs=1)
    out = cfg.output_dir + "_keys"
    paths = {"best_path": os.path.join(out, "best.pth"), "last_path": os.path.join(out, "last.pth")}
    pretrained = find_pretrained(cfg)
    a = runs.fit_and_test("a", cfg, store, split, None, standardizer, pretrained, "cpu", **paths)
    other_split = split_songs(store.songs.song_id, 0.25, 0.25, seed=1)
    other_std = fit_standardizer(store, other_split)
    train, val, _ = vt.make_datasets(store, other_split, None, cfg)
    from emovit.vit import DevicePreprocessor, build_model

    model = build_model(cfg, pretrained)
    pre = DevicePreprocessor.from_config(cfg, other_std, pretrained)
    assert not os.path.exists(paths["last_path"]) and os.path.exists(vt.result_path(paths["best_path"]))
    with pytest.raises(KeyboardInterrupt):
        vt.train_vit(model, pre, train, val, cfg, "cpu", "run-b", interrupt_after_epoch=1, **paths)
    assert torch.load(paths["best_path"], weights_only=True)["key"] == "run-b"
    again = runs.fit_and_test("a", cfg, store, split, None, standardizer, pretrained, "cpu", **paths)
    assert again.run.resumed_from == 0  # neither A's record nor B's resume state matches: retrained
    assert torch.load(paths["best_path"], weights_only=True)["key"] == a.run.key == again.run.key
    pd.testing.assert_frame_equal(again.predictions, a.predictions)
    vt.train_vit(build_model(cfg, pretrained), pre, train, val, cfg, "cpu", "run-b", **paths)
    with pytest.raises(RuntimeError, match="written by another run"):
        vt.load_best(paths["best_path"], a.run.key)


# ---- intervals: 95%, paired ------------------------------------------------------------------


def test_intervals_are_95_percent_percentiles():
    rng = np.random.default_rng(3)
    t = rng.uniform(-1, 1, size=(40, 2))
    p = t + rng.normal(0, 0.4, size=t.shape)
    out = with_intervals(t, p, n_boot=300, seed=9)
    idx = np.random.default_rng(9).integers(0, 40, size=(300, 40))
    for d, dim in enumerate(("valence", "arousal")):
        for name, fn in METRICS.items():
            boots = [fn(t[i, d], p[i, d]) for i in idx]
            assert out[dim][name]["low"] == pytest.approx(np.percentile(boots, 2.5), abs=1e-12)
            assert out[dim][name]["high"] == pytest.approx(np.percentile(boots, 97.5), abs=1e-12)


def test_compare_is_a_paired_percentile_interval_and_refuses_other_labels():
    rng = np.random.default_rng(4)
    t = rng.uniform(-1, 1, size=(30, 2))
    a = prediction_frame(range(30), t, t + rng.normal(0, 0.3, size=t.shape))
    b = prediction_frame(range(30), t, t + rng.normal(0, 0.5, size=t.shape))
    out = compare(a, b, n_boot=200, seed=2)
    idx = np.random.default_rng(2).integers(0, 30, size=(200, 30))
    pa, pb = a[["valence_pred", "arousal_pred"]].to_numpy(), b[["valence_pred", "arousal_pred"]].to_numpy()
    for d, dim in enumerate(("valence", "arousal")):
        diffs = [ccc(t[i, d], pa[i, d]) - ccc(t[i, d], pb[i, d]) for i in idx]  # the SAME songs for both
        assert out[dim]["ccc"]["value"] == pytest.approx(ccc(t[:, d], pa[:, d]) - ccc(t[:, d], pb[:, d]))
        assert out[dim]["ccc"]["low"] == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
        assert out[dim]["ccc"]["high"] == pytest.approx(np.percentile(diffs, 97.5), abs=1e-12)
    shifted = b.copy()
    shifted["valence_true"] = np.roll(shifted["valence_true"].to_numpy(), 1)
    with pytest.raises(ValueError, match="same true values"):
        compare(a, shifted, n_boot=10, seed=0)
    with pytest.raises(ValueError, match="same test songs"):
        compare(a, b.iloc[::-1].reset_index(drop=True), n_boot=10, seed=0)
