"""Model variants trained on the training songs and scored once on the same test songs.

The real-only reference (also the judge of :mod:`emovit.choice`), the synthetic-trained main
model, its ablation arms (the same ViT, split, seed and settings with a few overrides) and the
ridge baseline all come out as an :class:`Outcome`, so they are compared on exactly the same
test songs. Every ViT of a run takes the same number of optimizer steps per epoch -- one pass
over the real training songs plus the whole synthetic set -- and so, with the same epochs and
early stopping, the same training budget: "the GAN helps" is then not confounded with "more
training", and the reference can train before the gate decides what the main model uses.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emovit import distributed, torchrun, workspace
from emovit.config import Config, replace
from emovit.probe import fit_probe, opensmile_features, song_features
from emovit.results import compare, comparison_pairs, prediction_frame, score
from emovit.split import ids_of
from emovit.vit import DevicePreprocessor, build_model
from emovit.vit_train import (
    TrainResult,
    data_key,
    finished_result,
    load_best,
    make_datasets,
    predict_dataset,
    run_key,
    train_vit,
    uses_synthetic,
)


@dataclass
class Outcome:
    name: str
    predictions: pd.DataFrame  # song_id, {valence,arousal}_{true,pred} for the test songs
    metrics: dict  # emovit.metrics.with_intervals output
    seconds: float
    run: TrainResult | None = None
    best_path: str | None = None
    n_train: int = 0  # training examples (real + synthetic)
    overrides: dict | None = None  # Config overrides of an arm (None for the main model)
    description: str = ""  # what the model is when it was not trained itself (the delivered model)
    val_predictions: pd.DataFrame | None = None  # the kept checkpoint on the validation songs (the choice reads these)
    seed: int | None = None  # the ViT's training seed (None: no training seed, e.g. the ridge baselines)


def fit_and_test(
    name: str,
    cfg: Config,
    store,
    split,
    synthetic,
    standardizer,
    pretrained,
    device: str,
    best_path: str | None = None,
    last_path: str | None = None,
    steps_per_epoch: int | None = None,
) -> Outcome:
    """Build, train (or resume), reload the best epoch and score it on the validation and test songs.

    Checkpoints go to ``best_path`` / ``last_path``, by default to the cache entry
    ``vit/<name>/seed<cfg.seed>/<run key>`` (superseded entries of ``name`` and seed are pruned). ``steps_per_epoch``:
    optimizer steps per epoch (default: one pass over this model's training set). The best
    checkpoint is reloaded only if it carries this run's key.
    """
    start = time.perf_counter()
    synthetic = synthetic if uses_synthetic(cfg, synthetic) else None
    n = torchrun.processes(cfg)
    via_torchrun = n > 1 and not distributed.current().active  # several GPUs: torchrun's processes train
    model = None if via_torchrun else build_model(cfg, pretrained)  # those processes build their own
    pre = DevicePreprocessor.from_config(cfg, standardizer, pretrained)
    train_ds, val_ds, test_ds = make_datasets(store, split, synthetic, cfg)
    steps_per_epoch = steps_per_epoch or max(1, -(-len(train_ds) // cfg.vit_batch_size))
    key = run_key(cfg, data_key(store, split, synthetic), pretrained.location, steps_per_epoch)
    folder = None
    if best_path is None:
        kind = f"vit/{name}/seed{cfg.seed}"
        folder = workspace.entry(cfg, kind, key)
        best_path, last_path = (os.path.join(folder, f) for f in ("best_vit_model.pth", "last_vit_model.pth"))
    if via_torchrun:
        run, outputs = _fit_with_torchrun(
            cfg, store, split, synthetic, standardizer, pretrained, key, best_path, last_path, steps_per_epoch, n
        )
    else:
        run = train_vit(
            model, pre, train_ds, val_ds, cfg, device, key, best_path, last_path, steps_per_epoch=steps_per_epoch
        )
        model.load_state_dict(load_best(best_path, key)["state_dict"])
        outputs = {
            name_: predict_dataset(model, pre, ds, cfg, device) for name_, ds in (("val", val_ds), ("test", test_ds))
        }
    if folder:
        workspace.prune(cfg, kind, in_use=folder)
    frames = {}
    for split_name, ds in (("val", val_ds), ("test", test_ds)):
        pred, true = outputs[split_name]
        frames[split_name] = prediction_frame(ds.song_ids, song_labels(store, ds.song_ids, check=true), pred)
    predictions = frames["test"]
    return Outcome(
        name,
        predictions,
        score(predictions, cfg.n_bootstrap, cfg.seed),
        time.perf_counter() - start,
        run,
        best_path,
        len(train_ds),
        val_predictions=frames["val"],
    )


def _fit_with_torchrun(
    cfg, store, split, synthetic, standardizer, pretrained, key, best_path, last_path, steps_per_epoch, n
) -> tuple[TrainResult, dict]:
    """Train (or resume) on ``n`` torchrun processes unless a completed record and its predictions
    are there already; returns the training result and the {"val", "test"}: (pred, true) arrays
    rank 0 wrote."""
    done = finished_result(best_path, key)
    path = torchrun.predictions_path(best_path)
    saved = np.load(path) if os.path.exists(path) else None
    if done is None or os.path.exists(last_path) or saved is None or str(saved["key"]) != key:
        job = torchrun.write_job(
            os.path.dirname(best_path),
            cfg,
            store,
            split,
            synthetic,
            standardizer,
            pretrained,
            key,
            best_path,
            last_path,
            steps_per_epoch,
        )
        torchrun.launch(job, n)
        done, saved = finished_result(best_path, key), np.load(path)
    if done is None or str(saved["key"]) != key:
        raise RuntimeError(f"the torchrun training of {best_path} left no result of this run (key {key})")
    return done, {s: (saved[f"{s}_pred"], saved[f"{s}_true"]) for s in ("val", "test")}


def run_steps_per_epoch(store, split, synthetic, cfg: Config) -> int:
    """Optimizer steps per epoch of every ViT of the run: one pass over the real training songs
    plus, when synthetic data is on, the whole synthetic set -- fixed before the gate decides."""
    n = len(ids_of(split, "train")) + (len(synthetic.labels) if cfg.use_synthetic and synthetic is not None else 0)
    return max(1, -(-n // cfg.vit_batch_size))


@dataclass
class Trainer:
    """Trains and scores the run's ViTs on shared inputs: the feature store, split, synthetic set,
    train-only standardizer, pretrained weights, device, and the run's steps per epoch.

    ``fit(name, seed, **overrides)`` trains (or resumes, or reloads) the model ``cfg`` + ``overrides``
    with training seed ``seed`` (default: the first of ``cfg.training_seeds``), its checkpoints in
    the cache entry ``vit/<name>/seed<seed>/<run key>``, and scores it.
    """

    cfg: Config
    store: object
    split: pd.DataFrame
    synthetic: object
    standardizer: object
    pretrained: object
    device: str

    @property
    def steps_per_epoch(self) -> int:
        return run_steps_per_epoch(self.store, self.split, self.synthetic, self.cfg)

    def fit(self, name: str, seed: int | None = None, **overrides) -> Outcome:
        seed = self.cfg.training_seeds[0] if seed is None else seed
        outcome = fit_and_test(
            name,
            replace(self.cfg, **overrides, seed=seed),
            self.store,
            self.split,
            self.synthetic,
            self.standardizer,
            self.pretrained,
            self.device,
            steps_per_epoch=self.steps_per_epoch,
        )
        outcome.overrides = dict(overrides)
        outcome.seed = seed
        return outcome


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


def _ridge_outcome(name: str, cfg: Config, store, fit_ids, test_ids, features, start: float, description="") -> Outcome:
    """A ridge probe fitted on ``fit_ids`` and scored on ``test_ids``; ``features(ids)`` -> (len(ids), F)."""
    labels = store.songs.set_index("song_id")[["valence", "arousal"]]
    probe = fit_probe(features(fit_ids), labels.loc[fit_ids].to_numpy())
    predictions = prediction_frame(test_ids, song_labels(store, test_ids), probe.predict(features(test_ids)))
    return Outcome(
        name,
        predictions,
        score(predictions, cfg.n_bootstrap, cfg.seed),
        time.perf_counter() - start,
        n_train=len(fit_ids),
        description=description,
    )


def ridge_baseline(cfg: Config, store, split) -> Outcome:
    """Ridge on per-band mean and std of each song's whole stored clip, fitted on the training songs."""
    start = time.perf_counter()
    return _ridge_outcome(
        "ridge_baseline",
        cfg,
        store,
        ids_of(split, "train"),
        ids_of(split, "test"),
        lambda ids: song_features(store, ids),
        start,
    )


def opensmile_baseline(cfg: Config, store, split, files: dict[int, str]) -> Outcome | str:
    """Ridge on per-song mean and std of DEAM's openSMILE features, fitted on the training songs that
    have a feature file. Returns the outcome, or why it is skipped (a string): no files, or a test
    song without one (the paired comparison needs every test song)."""
    start = time.perf_counter()
    train_ids, test_ids = ids_of(split, "train"), ids_of(split, "test")
    if not files:
        return "no openSMILE feature files found"
    missing = [s for s in test_ids if s not in files]
    if missing:
        return f"{len(missing)} of {len(test_ids)} test songs have no openSMILE file"
    fit_ids = [s for s in train_ids if s in files]
    return _ridge_outcome(
        "ridge_opensmile",
        cfg,
        store,
        fit_ids,
        test_ids,
        lambda ids: opensmile_features([files[s] for s in ids]),
        start,
        description=f"{len(fit_ids)} of {len(train_ids)} training songs have an openSMILE file",
    )


def paired_differences(outcomes: dict[str, Outcome], n_boot: int, seed: int) -> dict:
    """Paired differences on the same test songs (:func:`emovit.results.comparison_pairs`: the delivered
    model, the first outcome, minus every other model; synthetic-trained minus real-only).

    Returns {"<a> - <b>": :func:`emovit.results.compare` output}.
    """
    pairs = comparison_pairs(list(outcomes))
    return {f"{a} - {b}": compare(outcomes[a].predictions, outcomes[b].predictions, n_boot, seed) for a, b in pairs}


def arm_table(outcomes: dict[str, Outcome]) -> pd.DataFrame:
    """What each model was: overrides, training examples, optimizer steps, best epoch, seconds."""
    rows = []
    for name, o in outcomes.items():
        rows.append(
            {
                "model": name,
                "overrides": o.description or ("" if not o.overrides else str(o.overrides)),
                "training examples": o.n_train,
                "optimizer steps": o.run.optimizer_steps if o.run else None,
                "steps per epoch": o.run.steps_per_epoch if o.run else None,
                "best epoch": o.run.best_epoch if o.run else None,
                "seconds": round(o.seconds, 1),
            }
        )
    return pd.DataFrame(rows)
