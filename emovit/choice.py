"""What the synthetic set may teach, and which model the run delivers: both decided per dimension
from training and validation songs only.

* **The gate**, before the synthetic-trained model trains. The judge is the ViT trained on the
  real training songs alone (``vit_real_only``, its epoch chosen on the validation songs; the
  run trains it anyway as the reference, so judging costs one inference pass). It predicts
  every synthetic sample; its CCC against the labels the samples were generated for, beside its
  own CCC on the real validation songs, says whether the samples carry that dimension the way
  real songs do. A dimension passes when the judge's validation CCC is above 0 and its CCC on
  the synthetic samples is at least ``synthetic_gate_ratio`` times it. The synthetic-trained
  model's loss then uses the synthetic labels of the passed dimensions only (a mask on synthetic
  rows; real rows always count on both). With no dimension passed, no second model is trained.
  Both judge CCCs are reported with 95% bootstrap intervals (samples, validation songs resampled):
  with few validation songs the denominator of the rule is loose, and the interval shows it.
* **The choice**, after it trains. Per dimension the run delivers the synthetic-trained model
  when its kept checkpoint beats the real-only one on the validation songs convincingly: a
  higher CCC, and a higher CCC on at least ``deliver_confidence`` of paired bootstrap resamples
  of the validation songs (so the bar rises where the validation set is small or the dimension
  noisy). Where it has the higher CCC and wins on at least ``deliver_hedge`` of the resamples
  but not convincingly, the mean of both models' predictions: a few validation songs cannot
  tell a real gain from luck, and the mean keeps about half of a gain while paying about half
  of a loss. Otherwise, or when its validation predictions are not all finite, the real-only
  model. ``best_vit_model.pth`` then routes each dimension to its model or models
  (:class:`emovit.vit.RoutedRegressor`; one backbone when both dimensions name the same one), and
  its test predictions are those models' columns (averaged where two are named).

Neither decision reads a test song: the gate reads the synthetic samples and the judge's
weights and validation predictions; the choice reads the two models' validation predictions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from emovit.config import Config
from emovit.files import LOG, atomic_path, hash_json
from emovit.metrics import DIMENSIONS, ccc, ccc_interval, format_interval
from emovit.results import prediction_frame, score
from emovit.runs import Outcome
from emovit.vit import DevicePreprocessor, model_from_config_dict
from emovit.vit_train import SYNTHETIC_DIMS, MelDataset, Part, load_best, predict_dataset

DELIVER_CHOICES = ("auto", "synthetic", "real_only", "mean")
DELIVERED = "delivered"  # name of the delivered model in metrics.json and the results table
DELIVERED_FORMAT = 4  # best_vit_model.pth of a delivered model: members + per-dimension lists of averaged members
CHOICE_RESAMPLES = 2000  # paired bootstrap resamples of the validation songs behind the choice
GATE_RESAMPLES = 1000  # bootstrap resamples behind the judge's reported intervals (the rule reads the values)


def val_ccc(outcome) -> dict[str, float]:
    """CCC per dimension of a ViT outcome's kept checkpoint on the validation songs."""
    frame = outcome.val_predictions
    return {dim: ccc(frame[f"{dim}_true"], frame[f"{dim}_pred"]) for dim in DIMENSIONS}


def prob_better(a: pd.DataFrame, b: pd.DataFrame, n_boot: int = CHOICE_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """{dim: share of paired bootstrap resamples of the songs in which model a's CCC beats b's}.

    a, b: prediction frames of the same songs (song_id, {dim}_true, {dim}_pred); both models are
    scored on the same resampled songs, so the share measures their difference, not two noises.
    """
    if list(a["song_id"]) != list(b["song_id"]):
        raise ValueError("prob_better needs predictions for the same songs in the same order")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    out = {}
    for dim in DIMENSIONS:
        t, pa, pb = (f[c].to_numpy() for f, c in ((a, f"{dim}_true"), (a, f"{dim}_pred"), (b, f"{dim}_pred")))
        out[dim] = float(np.mean([ccc(t[i], pa[i]) > ccc(t[i], pb[i]) for i in idx]))
    return out


@dataclass
class Judgement:
    """The judge's reading of the synthetic set and the gate it sets, per dimension."""

    synthetic_ccc: dict  # {dim: CCC of the judge on synthetic samples vs their conditioning labels}
    val_ccc: dict  # {dim: CCC of the judge on the real validation songs}
    passed: dict  # {dim: bool} by the rule
    ratio: float  # synthetic_gate_ratio
    dims: str  # the synthetic_dims the run trains with (the rule's, or the user's when forced)
    forced: bool  # synthetic_dims was set (not "auto") or use_synthetic is off: the rule is reported, not applied
    n_samples: int
    judge: str = "vit_real_only"
    # {dim: 95% bootstrap interval [low, high]} of synthetic_ccc (samples resampled) and of val_ccc
    # (validation songs resampled); reported beside the values, which are what the rule reads
    synthetic_interval: dict = dataclasses.field(default_factory=dict)
    val_interval: dict = dataclasses.field(default_factory=dict)

    @property
    def any(self) -> bool:
        """Whether the synthetic-trained model uses any synthetic label."""
        return any(SYNTHETIC_DIMS[self.dims])

    def table(self) -> pd.DataFrame:
        mask = dict(zip(DIMENSIONS, SYNTHETIC_DIMS[self.dims]))
        return pd.DataFrame(
            [
                {
                    "dimension": dim,
                    "judge CCC on synthetic": round(self.synthetic_ccc[dim], 3),
                    "synthetic 95% interval": format_interval(self.synthetic_interval.get(dim)),
                    "judge CCC on real validation": round(self.val_ccc[dim], 3),
                    "validation 95% interval": format_interval(self.val_interval.get(dim)),
                    "ratio": round(self.synthetic_ccc[dim] / self.val_ccc[dim], 2)
                    if self.val_ccc[dim]
                    else float("nan"),
                    f"passes (>= {self.ratio:g}x)": self.passed[dim],
                    "synthetic labels used": bool(mask[dim]),
                }
                for dim in DIMENSIONS
            ]
        )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "rule": f"pass when judge CCC on synthetic >= {self.ratio:g} x judge CCC on real "
            "validation songs, and the latter > 0",
        }


def gate(synthetic_ccc: dict, val_ccc: dict, ratio: float) -> dict[str, bool]:
    """{dim: passed}: the judge hears the dimension on real songs (val CCC > 0) and hears it in the
    synthetic samples at least ``ratio`` times as well."""
    return {d: bool(val_ccc[d] > 0 and synthetic_ccc[d] >= ratio * val_ccc[d]) for d in DIMENSIONS}


def dims_of(passed: dict[str, bool]) -> str:
    """The ``synthetic_dims`` value of a per-dimension gate."""
    return {(True, True): "both", (True, False): "valence", (False, True): "arousal", (False, False): "none"}[
        (passed["valence"], passed["arousal"])
    ]


def judge_synthetic(judge, synthetic, cfg: Config, device: str) -> Judgement:
    """Score every synthetic sample with the real-only ViT and set the gate (module docstring).

    ``judge``: the :class:`emovit.runs.Outcome` of the real-only model (its kept checkpoint
    and training history); ``synthetic``: the :class:`emovit.gan_train.SyntheticSet`, mels
    (n, n_mels, T) dB and labels (n, 2). With ``cfg.synthetic_dims`` other than "auto" the
    reading is still made and reported, and the user's value is kept; with ``use_synthetic`` off
    it is "none".
    """
    if cfg.synthetic_dims != "auto" and cfg.synthetic_dims not in SYNTHETIC_DIMS:
        raise ValueError(
            f"synthetic_dims must be 'auto' or one of {sorted(SYNTHETIC_DIMS)}, got {cfg.synthetic_dims!r}"
        )
    state = load_best(judge.best_path, judge.run.key)
    model = model_from_config_dict(state["vit_config"])
    model.load_state_dict(state["state_dict"])
    model.to(device)
    pre = DevicePreprocessor.from_dict(state["preprocess"]).to(device)
    n = len(synthetic.labels)
    part = Part(
        synthetic.path, np.arange(n), np.asarray(synthetic.labels, np.float32), 1.0, np.full(n, synthetic.mels.shape[2])
    )
    pred, labels = predict_dataset(model, pre, MelDataset([part], synthetic.mels.shape[2], "centre"), cfg, device)
    on_synthetic = {dim: ccc(labels[:, d], pred[:, d]) for d, dim in enumerate(DIMENSIONS)}
    on_val = val_ccc(judge)
    boot = np.random.default_rng([cfg.seed, 2])  # the intervals say how firm each reading is; the rule reads values
    syn_rows = boot.integers(0, n, size=(GATE_RESAMPLES, n))
    val = judge.val_predictions
    val_rows = boot.integers(0, len(val), size=(GATE_RESAMPLES, len(val)))
    syn_interval = {dim: ccc_interval(labels[:, d], pred[:, d], syn_rows) for d, dim in enumerate(DIMENSIONS)}
    val_interval = {
        dim: ccc_interval(val[f"{dim}_true"].to_numpy(), val[f"{dim}_pred"].to_numpy(), val_rows) for dim in DIMENSIONS
    }
    passed = gate(on_synthetic, on_val, cfg.synthetic_gate_ratio)
    forced = cfg.synthetic_dims != "auto" or not cfg.use_synthetic
    dims = ("none" if not cfg.use_synthetic else cfg.synthetic_dims) if forced else dims_of(passed)
    result = Judgement(
        on_synthetic, on_val, passed, cfg.synthetic_gate_ratio, dims, forced, n, judge.name, syn_interval, val_interval
    )
    LOG.info(
        "judge: CCC on synthetic %s vs real validation %s -> synthetic labels used: %s%s",
        {d: round(v, 3) for d, v in on_synthetic.items()},
        {d: round(v, 3) for d, v in on_val.items()},
        result.dims,
        " (forced by synthetic_dims)" if forced else "",
    )
    return result


def describe(names: list[str] | str) -> str:
    """A dimension's source for people: one model's name, or "mean of a and b". A bare name (a
    metrics.json written before dimensions could name two models) is that model."""
    if isinstance(names, str):
        return names
    return names[0] if len(names) == 1 else "mean of " + " and ".join(names)


@dataclass
class Choice:
    """Which model or models predict each dimension of the delivered model, and the evidence."""

    sources: dict  # {dim: [model names]}: one model, or two whose predictions are averaged
    val_ccc: dict  # {dim: {model name: validation CCC of its kept checkpoint}}
    prob_better: dict  # {dim: share of paired validation resamples where the synthetic-trained model wins}
    deliver: str  # Config.deliver: "auto" applies the rule, the others force a model
    confidence: float  # Config.deliver_confidence
    hedge: float  # Config.deliver_hedge
    note: str = ""

    def table(self) -> pd.DataFrame:
        rows = []
        for dim in DIMENSIONS:
            rows.append(
                {
                    "dimension": dim,
                    **{f"val CCC {k}": round(v, 3) for k, v in self.val_ccc[dim].items()},
                    "P(synthetic-trained better)": self.prob_better.get(dim),
                    "delivered from": describe(self.sources[dim]),
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        rule = (
            f"per dimension, the synthetic-trained model when it has the higher validation CCC and beats the "
            f"real-only model's on at least {self.confidence:g} of paired bootstrap resamples of the validation "
            f"songs; the mean of both models' predictions when it has the higher CCC and beats it on at least "
            f"{self.hedge:g}; else the "
            "real-only model"
        )
        if not self.prob_better:  # no synthetic-trained model: nothing was chosen between
            rule = self.note
        elif self.deliver != "auto":
            rule = f"forced by deliver={self.deliver!r}"
        return {**asdict(self), "rule": rule}


def choose_models(synthetic_trained, real_only, cfg: Config) -> Choice:
    """The per-dimension choice between the synthetic-trained and the real-only model.

    Reads the two models' predictions on the validation songs only (``val_predictions``).
    ``synthetic_trained`` may be None (no synthetic data, or the gate closed every dimension):
    then the real-only model is delivered whatever ``cfg.deliver`` says, with a note.
    """
    if cfg.deliver not in DELIVER_CHOICES:
        raise ValueError(f"deliver must be one of {DELIVER_CHOICES}, got {cfg.deliver!r}")
    ref = val_ccc(real_only)
    if synthetic_trained is None:
        note = "no synthetic-trained model in this run: the real-only model is delivered"
        return Choice(
            {d: [real_only.name] for d in DIMENSIONS},
            {d: {real_only.name: ref[d]} for d in DIMENSIONS},
            {},
            cfg.deliver,
            cfg.deliver_confidence,
            cfg.deliver_hedge,
            note,
        )
    syn = val_ccc(synthetic_trained)
    better = prob_better(synthetic_trained.val_predictions, real_only.val_predictions, seed=cfg.seed)
    options = {
        "synthetic": [synthetic_trained.name],
        "real_only": [real_only.name],
        "mean": [synthetic_trained.name, real_only.name],
    }
    frame = synthetic_trained.val_predictions
    finite = {dim: bool(np.isfinite(frame[f"{dim}_pred"].to_numpy(dtype=float)).all()) for dim in DIMENSIONS}
    sources = {}
    for dim in DIMENSIONS:
        pick = cfg.deliver
        if pick == "auto":
            pick = "real_only"
            if finite[dim] and syn[dim] > ref[dim] and better[dim] >= cfg.deliver_hedge:
                pick = "synthetic" if better[dim] >= cfg.deliver_confidence else "mean"
        sources[dim] = options[pick]
    broken = [dim for dim in DIMENSIONS if not finite[dim]]
    note = ""
    if broken:
        note = f"the synthetic-trained model predicted non-finite {' and '.join(broken)} on validation songs"
        if cfg.deliver == "auto":
            note += ": the real-only model answers there"
    val = {d: {synthetic_trained.name: syn[d], real_only.name: ref[d]} for d in DIMENSIONS}
    return Choice(sources, val, better, cfg.deliver, cfg.deliver_confidence, cfg.deliver_hedge, note)


def deliver(choice: Choice, outcomes: dict, path: str, n_boot: int, seed: int):
    """The delivered model: ``best_vit_model.pth`` at ``path`` and its test outcome.

    The checkpoint holds the source models' weights (one per distinct model named) and routes each
    dimension to its models; its test predictions are the sources' columns, averaged where a
    dimension names two (the numbers the routed model computes, up to float rounding). Returns an
    :class:`emovit.runs.Outcome` named "delivered".
    """
    names = list(dict.fromkeys(n for d in DIMENSIONS for n in choice.sources[d]))  # distinct, valence's first
    states = [load_best(outcomes[n].best_path, outcomes[n].run.key) for n in names]
    for other in states[1:]:
        for field in ("vit_config", "preprocess", "mel_params", "test_crops"):
            if field == "preprocess":
                same = all(
                    other[field][k] == states[0][field][k]
                    for k in ("mel_mean", "mel_std", "image_mean", "image_std", "height", "width", "clip_std")
                )
            else:
                same = other[field] == states[0][field]
            if not same:
                raise ValueError(f"cannot combine {names}: their checkpoints differ in {field}")
    sources = [[names.index(n) for n in choice.sources[d]] for d in DIMENSIONS]
    combined = {f"members.{i}.{k}": v for i, s in enumerate(states) for k, v in s["state_dict"].items()}
    key = hash_json({"members": [s["key"] for s in states], "sources": sources})
    state = {
        **{k: states[0][k] for k in ("vit_config", "preprocess", "mel_params", "test_crops", "config")},
        "format": DELIVERED_FORMAT,
        "state_dict": combined,
        "members": names,
        "sources": sources,
        "key": key,
        "member_keys": [s["key"] for s in states],
        "epochs": [s["epoch"] for s in states],
        "choice": choice.to_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)

    def routed(attribute: str) -> pd.DataFrame:  # the sources' columns of one prediction frame
        frames = {n: getattr(outcomes[n], attribute) for n in names}
        base = frames[names[0]]
        for frame in frames.values():
            if list(frame["song_id"]) != list(base["song_id"]):
                raise ValueError(f"the models' {attribute} are not for the same songs")
        pred = np.stack(
            [np.mean([frames[n][f"{d}_pred"].to_numpy() for n in choice.sources[d]], axis=0) for d in DIMENSIONS],
            axis=1,
        )
        return prediction_frame(base["song_id"], base[[f"{d}_true" for d in DIMENSIONS]].to_numpy(), pred)

    predictions = routed("predictions")
    said = {d: describe(choice.sources[d]) for d in DIMENSIONS}
    LOG.info("delivered: valence from %s, arousal from %s -> %s", said["valence"], said["arousal"], path)
    return Outcome(
        DELIVERED,
        predictions,
        score(predictions, n_boot, seed),
        0.0,
        None,
        path,
        description=f"valence from {said['valence']}, arousal from {said['arousal']}",
        val_predictions=routed("val_predictions"),
        seed=outcomes[names[0]].seed,
    )
