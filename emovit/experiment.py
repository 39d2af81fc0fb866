"""Model variants trained on the training songs and scored once on the same test songs.

The main model (ViT on real + synthetic, with the standard augmentations), its ablation arms
(the same ViT, split, seed and settings with a few overrides, e.g. without synthetic samples)
and the ridge baseline all come out as an :class:`Outcome`, so they are compared on exactly
the same test songs. Every ViT arm takes the main model's number of optimizer steps per epoch
(and so, with the same epochs and early stopping, the same training budget): "the GAN helps"
is then not confounded with "more training".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emovit.config import Config, replace
from emovit.evaluate import prediction_frame, score
from emovit.probe import fit_probe, song_features
from emovit.split import ids_of
from emovit.vit import DevicePreprocessor, build_model
from emovit.vit_train import TrainResult, data_key, load_best, make_datasets, predict_dataset, run_key, train_vit


@dataclass
class Outcome:
    name: str
    predictions: pd.DataFrame  # song_id, {valence,arousal}_{true,pred} for the test songs
    metrics: dict  # emovit.metrics.evaluate output
    seconds: float
    run: TrainResult | None = None
    best_path: str | None = None
    n_train: int = 0  # training examples (real + synthetic)
    overrides: dict | None = None  # Config overrides of an arm (None for the main model)


def fit_and_test(name: str, cfg: Config, store, split, synthetic, standardizer, pretrained, device: str,
                 best_path: str, last_path: str, steps_per_epoch: int | None = None) -> Outcome:
    """Build, train (or resume), reload the best epoch and score it on the test songs.

    ``steps_per_epoch``: optimizer steps per epoch (default: one pass over this model's
    training set). The best checkpoint is reloaded only if it carries this run's key.
    """
    start = time.perf_counter()
    synthetic = synthetic if cfg.use_synthetic else None
    model = build_model(cfg, pretrained)
    pre = DevicePreprocessor.from_config(cfg, standardizer, pretrained)
    train_ds, val_ds, test_ds = make_datasets(store, split, synthetic, cfg)
    steps_per_epoch = steps_per_epoch or max(1, -(-len(train_ds) // cfg.vit_batch_size))
    key = run_key(cfg, data_key(store, split, synthetic), pretrained.location, steps_per_epoch)
    run = train_vit(model, pre, train_ds, val_ds, cfg, device, key, best_path, last_path,
                    steps_per_epoch=steps_per_epoch)
    model.load_state_dict(load_best(best_path, key)["state_dict"])
    pred, true = predict_dataset(model, pre, test_ds, cfg, device)
    predictions = prediction_frame(test_ds.song_ids, song_labels(store, test_ds.song_ids, check=true), pred)
    return Outcome(name, predictions, score(predictions, cfg.n_bootstrap, cfg.seed), time.perf_counter() - start,
                   run, best_path, len(train_ds))


def run_arms(main: Outcome, cfg: Config, store, split, synthetic, standardizer, pretrained, device: str) -> dict:
    """Train and score every arm of ``cfg.arms`` ({name: Config overrides}) like the main model.

    Each arm uses the same split, seed, test songs and optimizer steps per epoch as ``main``;
    its checkpoints live in ``<cache>/<name>/``. Returns {name: Outcome}.
    """
    outcomes = {}
    for name, overrides in cfg.arms.items():
        arm_cfg = replace(cfg, **overrides)
        folder = os.path.join(cfg.cache_path, name)
        outcome = fit_and_test(name, arm_cfg, store, split, synthetic, standardizer, pretrained, device,
                               best_path=os.path.join(folder, "best_vit_model.pth"),
                               last_path=os.path.join(folder, "last_vit_model.pth"),
                               steps_per_epoch=main.run.steps_per_epoch)
        outcome.overrides = dict(overrides)
        outcomes[name] = outcome
    return outcomes


def song_labels(store, song_ids, check=None) -> np.ndarray:
    """(N, 2) float64 valence, arousal of ``song_ids`` from the songs table -- the one source of
    true labels in every prediction frame, so frames of different models compare exactly.

    ``check`` (N, 2), optional: the labels a data loader carried for the same songs (float32);
    a mismatch means rows and songs went out of step, and raises.
    """
    labels = store.songs.set_index("song_id").loc[list(song_ids), ["valence", "arousal"]].to_numpy(np.float64)
    if check is not None and not np.allclose(labels, check, atol=1e-6):
        raise AssertionError("the test loader's labels are not those of its songs: rows and song ids are misaligned")
    return labels


def ridge_baseline(cfg: Config, store, split) -> Outcome:
    """Ridge on per-band mean and std of each song's whole stored clip, fitted on the training songs."""
    start = time.perf_counter()
    labels = store.songs.set_index("song_id")[["valence", "arousal"]]
    train_ids, test_ids = ids_of(split, "train"), ids_of(split, "test")
    probe = fit_probe(song_features(store, train_ids), labels.loc[train_ids].to_numpy())
    pred = probe.predict(song_features(store, test_ids))
    predictions = prediction_frame(test_ids, song_labels(store, test_ids), pred)
    return Outcome("ridge_baseline", predictions, score(predictions, cfg.n_bootstrap, cfg.seed),
                   time.perf_counter() - start, n_train=len(train_ids))


def arm_table(outcomes: dict[str, Outcome]) -> pd.DataFrame:
    """What each model was: overrides, training examples, optimizer steps, best epoch, seconds."""
    rows = []
    for name, o in outcomes.items():
        rows.append({"model": name, "overrides": "" if not o.overrides else str(o.overrides),
                     "training examples": o.n_train,
                     "optimizer steps": o.run.optimizer_steps if o.run else None,
                     "steps per epoch": o.run.steps_per_epoch if o.run else None,
                     "best epoch": o.run.best_epoch if o.run else None, "seconds": round(o.seconds, 1)})
    return pd.DataFrame(rows)
