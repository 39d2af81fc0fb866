"""One model variant trained on the training songs and scored once on the test songs.

The main model (ViT on real + synthetic), its ablation (the same ViT, split, seed and
settings without synthetic samples) and the ridge baseline all come out as an
:class:`Outcome`, so they are compared on exactly the same test songs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from emovit.config import Config
from emovit.evaluate import prediction_frame, score
from emovit.io import load_checkpoint
from emovit.probe import band_stats, fit_probe
from emovit.split import ids_of
from emovit.vit import DevicePreprocessor, build_model
from emovit.vit_train import TrainResult, data_key, make_datasets, predict_dataset, run_key, train_vit


@dataclass
class Outcome:
    name: str
    predictions: pd.DataFrame  # song_id, {valence,arousal}_{true,pred} for the test songs
    metrics: dict  # emovit.metrics.evaluate output
    seconds: float
    run: TrainResult | None = None
    best_path: str | None = None
    n_train: int = 0  # training examples (real + synthetic)


def fit_and_test(name: str, cfg: Config, store, split, synthetic, standardizer, pretrained, device: str,
                 best_path: str, last_path: str) -> Outcome:
    """Build, train (or resume), reload the best epoch and score it on the test songs."""
    start = time.perf_counter()
    synthetic = synthetic if cfg.use_synthetic else None
    model = build_model(cfg, pretrained)
    pre = DevicePreprocessor(standardizer.mean, standardizer.std, pretrained.image_mean, pretrained.image_std,
                             cfg.image_size, cfg.pixel_clip_std)
    train_ds, val_ds, test_ds = make_datasets(store, split, synthetic, cfg)
    key = run_key(cfg, data_key(store, split, synthetic), pretrained.location)
    run = train_vit(model, pre, train_ds, val_ds, cfg, device, key, best_path, last_path)
    model.load_state_dict(load_checkpoint(best_path)["state_dict"])
    pred, true = predict_dataset(model, pre, test_ds, cfg, device)
    predictions = prediction_frame(ids_of(split, "test"), true, pred)
    return Outcome(name, predictions, score(predictions, cfg.n_bootstrap, cfg.seed), time.perf_counter() - start,
                   run, best_path, len(train_ds))


def ridge_baseline(cfg: Config, store, split) -> Outcome:
    """Ridge on per-band mean and std of the log-mel, fitted on the training songs."""
    start = time.perf_counter()
    labels = store.songs.set_index("song_id")[["valence", "arousal"]]
    train_ids, test_ids = ids_of(split, "train"), ids_of(split, "test")
    probe = fit_probe(band_stats(store.song_mels(train_ids)), labels.loc[train_ids].to_numpy())
    pred = probe.predict(band_stats(store.song_mels(test_ids)))
    predictions = prediction_frame(test_ids, labels.loc[test_ids].to_numpy(), pred)
    return Outcome("ridge_baseline", predictions, score(predictions, cfg.n_bootstrap, cfg.seed),
                   time.perf_counter() - start, n_train=len(train_ids))
