"""Training seeds: every ViT of a run trained once per seed, on one split and one synthetic set.

One training run's test CCC moves with its seed (the head's initial weights, the crops, the
SpecAugment masks, the batch order) by as much as the models differ, and the paired bootstrap
over the test songs of one run measures song sampling only. With ``Config.seeds`` every ViT of
the run -- the real-only reference, the synthetic-trained model, the validation choice between
them and the arms -- trains once per seed. The split, the GAN and its synthetic set use
``Config.seed`` and are shared: the spread is the ViTs' training noise given one GAN. The gate's
decision is the first seed's judge's, so every seed trains the same model on the same data.

Reported per model and dimension: the mean and sample standard deviation (n - 1) over seeds and
each seed's value. Per pair of models: each seed's difference, and the pooled difference -- the
mean over seeds of the per-seed difference -- with a 95% interval from a bootstrap that resamples
test songs AND seeds, the same songs and the same seeds for both models: seed k of one model is
paired with seed k of the other (same crops, batch order and head initialisation), as song i is
with song i. Deterministic models (the ridge baselines) give the same predictions for every seed.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from emovit.choice import choose_models, deliver
from emovit.config import Config
from emovit.metrics import DIMENSIONS, METRICS
from emovit.results import MODEL_LABELS, comparison_pairs, prediction_table


def train_seed(trainer, seed: int, judgement, cfg: Config, path: str | None = None) -> tuple[dict, object]:
    """Every ViT of the run with training seed ``seed``, as the notebook trains the first seed's.

    The real-only reference; the synthetic-trained model on ``judgement.dims`` (when the gate
    passed a dimension); the per-dimension validation choice between them, its delivered
    checkpoint written to ``path`` (default: ``delivered_vit_model.pth`` in the seed's real-only
    cache folder -- only the first seed's goes to the run folder); the arms of ``cfg.arms``.
    Returns ({name: Outcome}, "delivered" first, and the :class:`emovit.choice.Choice`).
    """
    reference = trainer.fit("vit_real_only", seed=seed, use_synthetic=False)
    main = trainer.fit("vit_real_plus_synthetic", seed=seed, synthetic_dims=judgement.dims) if judgement.any else None
    outcomes = {"vit_real_only": reference} | ({"vit_real_plus_synthetic": main} if main is not None else {})
    choice = choose_models(main, reference, cfg)  # its validation bootstrap as the first seed's
    path = path or os.path.join(os.path.dirname(reference.best_path), "delivered_vit_model.pth")
    delivered = deliver(choice, outcomes, path, cfg.n_bootstrap, cfg.seed)
    outcomes = {delivered.name: delivered, **outcomes}
    for name, overrides in cfg.arms.items():
        outcomes[name] = trainer.fit(name, seed=seed, synthetic_dims=judgement.dims, **overrides)
    return outcomes, choice


def _arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(true, pred), each (N, 2) float64, of a prediction frame."""
    true = frame[[f"{d}_true" for d in DIMENSIONS]].to_numpy(np.float64)
    pred = frame[[f"{d}_pred" for d in DIMENSIONS]].to_numpy(np.float64)
    return true, pred


def _aligned(frames: list[pd.DataFrame]) -> np.ndarray:
    """The (N, 2) true values shared by ``frames``; raises unless every frame holds the same songs
    in the same order with the same labels."""
    true, _ = _arrays(frames[0])
    for frame in frames[1:]:
        if list(frame["song_id"]) != list(frames[0]["song_id"]) or not np.array_equal(_arrays(frame)[0], true):
            raise ValueError("every seed's predictions must be for the same test songs, in order, with the same labels")
    return true


def pooled_compare(a: list[pd.DataFrame], b: list[pd.DataFrame], n_boot: int, seed: int) -> dict:
    """The difference a - b pooled over training seeds, with a bootstrap over test songs and seeds.

    Args:
        a, b: per seed (the same order in both), the two models' test prediction frames; all hold
            the same N songs in the same order.
    Returns:
        {dim: {metric: {"value", "low", "high", "per_seed"}}}: ``value`` = mean over the S seeds
        of metric(a_k) - metric(b_k); ``per_seed`` = those S differences (show them: with few seeds,
        resampling seeds understates the training noise -- 3 seeds give 10 distinct sets); ``low``/``high`` = the
        2.5th/97.5th percentiles over ``n_boot`` resamples. A resample draws N song indices, then
        S seed indices, with replacement (``default_rng(seed)``: all the songs' draws, (n_boot, N),
        then all the seeds', (n_boot, S)), and averages the drawn seeds' differences on the drawn
        songs -- the same songs and seeds for a and b. With one seed this is
        :func:`emovit.results.compare`'s interval exactly.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"pooled_compare needs the same number of seeds per model, got {len(a)} and {len(b)}")
    true = _aligned(list(a) + list(b))
    pa = np.stack([_arrays(f)[1] for f in a])  # (S, N, 2)
    pb = np.stack([_arrays(f)[1] for f in b])
    n_seeds, n_songs = len(a), len(true)
    rng = np.random.default_rng(seed)
    songs = rng.integers(0, n_songs, size=(n_boot, n_songs))
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    out: dict = {}
    for d, dim in enumerate(DIMENSIONS):
        out[dim] = {}
        for name, fn in METRICS.items():
            per_seed = [fn(true[:, d], pa[k, :, d]) - fn(true[:, d], pb[k, :, d]) for k in range(n_seeds)]
            boots = np.empty(n_boot)
            for r in range(n_boot):
                i = songs[r]
                diff = {k: fn(true[i, d], pa[k, i, d]) - fn(true[i, d], pb[k, i, d]) for k in set(seeds[r].tolist())}
                boots[r] = np.mean([diff[k] for k in seeds[r]])
            out[dim][name] = {
                "value": float(np.mean(per_seed)),
                "low": float(np.percentile(boots, 2.5)) if n_boot else float("nan"),
                "high": float(np.percentile(boots, 97.5)) if n_boot else float("nan"),
                "per_seed": [float(v) for v in per_seed],
            }
    return out


def model_spread(frames: list[pd.DataFrame]) -> dict:
    """{dim: {metric: {"mean", "sd", "per_seed"}}} of one model's test frames, one per seed
    (sd: sample standard deviation, n - 1; None with one seed)."""
    true = _aligned(frames)
    out: dict = {}
    for d, dim in enumerate(DIMENSIONS):
        out[dim] = {}
        for name, fn in METRICS.items():
            values = [fn(true[:, d], _arrays(f)[1][:, d]) for f in frames]
            out[dim][name] = {
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "per_seed": [float(v) for v in values],
            }
    return out


def summarize(by_seed: dict[int, dict], n_boot: int, seed: int) -> dict:
    """metrics.json's "seeds": {"seeds", "models": {name: :func:`model_spread`}, "differences":
    {"a - b": :func:`pooled_compare`}} over ``by_seed`` = {training seed: {name: Outcome}}; models
    missing from a seed are left out (their names in "incomplete")."""
    seeds = list(by_seed)
    first = by_seed[seeds[0]]
    names = [n for n in first if all(n in o for o in by_seed.values())]
    frames = {n: [by_seed[s][n].predictions for s in seeds] for n in names}
    return {
        "seeds": seeds,
        "gan_and_split_seed": "shared: the split, the GAN and the synthetic set use Config.seed",
        "models": {n: model_spread(frames[n]) for n in names},
        "differences": {
            f"{a} - {b}": pooled_compare(frames[a], frames[b], n_boot, seed) for a, b in comparison_pairs(names)
        },
        "interval": "95% percentile bootstrap over test songs and training seeds, paired",
        "incomplete": [n for n in first if n not in names],
    }


def _sd(values: list[float]) -> str:
    return f"{np.std(values, ddof=1):.3f}" if len(values) > 1 else "n/a"


def seeds_table(summary: dict, metric: str = "ccc") -> pd.DataFrame:
    """One row per (model or difference, dimension): mean +- sd over seeds, each seed's value, and
    for differences the pooled 95% interval over songs and seeds."""
    seeds = summary["seeds"]
    rows = []
    for name, m in summary["models"].items():
        for dim in DIMENSIONS:
            v = m[dim][metric]
            rows.append(
                {
                    "model": MODEL_LABELS.get(name, name),
                    "dimension": dim,
                    f"{metric} mean +- sd": f"{v['mean']:+.3f} +- {_sd(v['per_seed'])}",
                    "per seed " + " / ".join(map(str, seeds)): " / ".join(f"{x:+.3f}" for x in v["per_seed"]),
                    "pooled 95% interval": "",
                }
            )
    for name, m in summary["differences"].items():
        for dim in DIMENSIONS:
            v = m[dim][metric]
            rows.append(
                {
                    "model": f"difference: {name}",
                    "dimension": dim,
                    f"{metric} mean +- sd": f"{v['value']:+.3f} +- {_sd(v['per_seed'])}",
                    "per seed " + " / ".join(map(str, seeds)): " / ".join(f"{x:+.3f}" for x in v["per_seed"]),
                    "pooled 95% interval": f"[{v['low']:+.3f}, {v['high']:+.3f}]",
                }
            )
    return pd.DataFrame(rows)


def per_seed_table(by_seed: dict[int, dict]) -> pd.DataFrame:
    """One row per (model, training seed): its test CCC per dimension, models in the first seed's
    order (deterministic models repeat)."""
    models = list(next(iter(by_seed.values())))
    rows = [
        {"model": name, "seed": s, **{d: outcomes[name].metrics[d]["ccc"]["value"] for d in DIMENSIONS}}
        for name in models
        for s, outcomes in by_seed.items()
        if name in outcomes
    ]
    return pd.DataFrame(rows)


def seed_predictions(by_seed: dict[int, dict], name: str) -> pd.DataFrame:
    """predictions*.csv of model ``name`` over every seed: each seed's :func:`prediction_table`
    with a ``seed`` column, the first seed's rows first; a model without a training seed (the
    ridge baselines) once, without the column."""
    outcomes = [o[name] for o in by_seed.values() if name in o]
    if all(o.seed is None for o in outcomes):
        return prediction_table(outcomes[0].predictions, outcomes[0].val_predictions)
    return pd.concat(
        [prediction_table(o[name].predictions, o[name].val_predictions, seed=s) for s, o in by_seed.items()],
        ignore_index=True,
    )
