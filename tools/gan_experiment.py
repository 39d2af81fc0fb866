#!/usr/bin/env python3
"""Reproduce the GAN quality table on a generated DEAM: features + split + GAN + assessment.

Runs the notebook's own functions (no re-implementation) on the demo preset's sizes
(n_mels 64, 10 s clips at offset 5 s, 120 songs of 30 s, 84 training songs) for one data
generator style and seed, and prints / writes ``gan_quality.json`` plus the GAN's seconds.

    OMP_NUM_THREADS=1 python -m tools.gan_experiment --style demo --seed 42
    OMP_NUM_THREADS=1 python -m tools.gan_experiment --style band --seed 42 --set gan_steps=1500
    OMP_NUM_THREADS=1 python -m tools.gan_experiment --style band --seed 7 --eval-songs 150
    OMP_NUM_THREADS=1 python -m tools.gan_experiment --style band --seed 7 --gan-seed 1 --tag g1

``--eval-songs N`` also scores the GAN on N songs generated with seed + 1000 ("heldout" columns):
the same generator, songs that nothing was trained or chosen on, and ten times the validation
set, so a CCC moves less between settings and the Frechet distance is less biased by the
sample size (with 14 songs its real-vs-real reference is 4-5x the one with 150).

``--checkpoint-draws K`` (with ``--eval-songs``) keeps the EMA weights of every monitor check and
scores each on K fresh draws of the synthetic set (labels, noise and borrowed band levels drawn
anew) against the held-out songs: how the checkpoints differ, and how much one draw moves a reading.

Data sets are written once under ``--work`` (default outputs/gan_experiment) and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--style", default="demo", help="make_demo_deam style: demo or band")
    parser.add_argument("--seed", type=int, default=42, help="data, split and GAN seed")
    parser.add_argument("--songs", type=int, default=120)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "gan_experiment")
    parser.add_argument("--tag", default="", help="suffix of the output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--eval-songs",
        type=int,
        default=0,
        help="also score on N extra songs of the same generator (another seed), used for nothing else: "
        "the 14 validation songs make every CCC noisy",
    )
    parser.add_argument(
        "--vit-judge",
        action="store_true",
        help="also judge the synthetic set with the real-only ViT (trained once per data set, cached)",
    )
    parser.add_argument(
        "--gan-seed",
        type=int,
        default=None,
        help="seed of the GAN's training only (initial weights, crops, augmentation); the data, split, "
        "synthetic labels, band-level draws and probes keep --seed, so runs differ by the GAN alone",
    )
    parser.add_argument(
        "--checkpoint-draws",
        type=int,
        default=0,
        metavar="K",
        help="with --eval-songs: score every monitor check's EMA weights on K draws of the synthetic set "
        "against the held-out songs (the GAN must be trained in this run, not reused)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="Config override")
    args = parser.parse_args(argv)
    if args.checkpoint_draws and not args.eval_songs:
        parser.error("--checkpoint-draws needs --eval-songs (the checks are scored on the held-out songs)")

    import torch

    torch.set_num_threads(args.threads)
    from emovit.config import make_config, replace
    from emovit.deam import discover
    from emovit.demo_data import make_demo_deam
    from emovit.features import extract_features
    from emovit.files import setup_logging
    from emovit.gan_quality import assess_gan, gan_quality, quality_table
    from emovit.gan_train import synthesize, train_or_load_gan
    from emovit.split import Standardizer, ids_of, split_songs

    setup_logging()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: _value(v) for k, v in overrides.items()}
    data = args.work / f"data_{args.style}_{args.seed}_{args.songs}"
    out = args.work / f"run_{args.style}_{args.seed}{'_' + args.tag if args.tag else ''}"
    cfg = make_config(
        "demo",
        data_dir=str(data),
        output_dir=str(out),
        seed=args.seed,
        cache_dir=str(args.work / "cache"),
        num_workers=1,
        **{"cache_keep": 64, **overrides},  # one cache serves every style, seed and held-out set
    )
    style = {} if args.style == "demo" else {"style": args.style}
    make_demo_deam(str(data), num_songs=args.songs, seconds=cfg.demo_song_seconds, seed=args.seed, **style)
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    split = split_songs(store.songs["song_id"], cfg.val_fraction, cfg.test_fraction, cfg.seed)
    train_ids = ids_of(split, "train")
    standardizer = Standardizer.fit(store.mels, store.songs.set_index("song_id").loc[train_ids, "row"])
    start, cpu0 = time.perf_counter(), time.process_time()
    gan_cfg = cfg if args.gan_seed is None else replace(cfg, seed=args.gan_seed)
    snapshots = []
    if args.checkpoint_draws:  # copy the EMA weights the monitor reads at each check; training is untouched
        import copy

        from emovit import gan_train

        monitor_evaluate = gan_train.Monitor.evaluate

        def keep_weights(monitor, gen, *a, **k):
            snapshots.append(copy.deepcopy(gen.state_dict()))
            return monitor_evaluate(monitor, gen, *a, **k)

        gan_train.Monitor.evaluate = keep_weights
        try:
            gan = train_or_load_gan(gan_cfg, store, split, train_ids, standardizer, "cpu")
        finally:
            gan_train.Monitor.evaluate = monitor_evaluate
        if gan.reused:
            raise SystemExit("--checkpoint-draws: the GAN was reused from --work's cache; use another --work")
    else:
        gan = train_or_load_gan(gan_cfg, store, split, train_ids, standardizer, "cpu")
    stage_gan, cpu_gan = time.perf_counter() - start, time.process_time() - cpu0
    synthetic = synthesize(gan, cfg, "cpu")
    stage = time.perf_counter() - start
    quality = assess_gan(gan, synthetic, store, split, cfg.output_dir, seed=cfg.seed)
    heldout = None
    if args.eval_songs:
        # Same generator and style, another seed: the same distribution, but songs no model and no
        # choice in this pipeline ever saw. Only the measures, never training or checkpoint choice.
        eval_data = args.work / f"data_{args.style}_{args.seed + 1000}_{args.eval_songs}"
        make_demo_deam(
            str(eval_data), num_songs=args.eval_songs, seconds=cfg.demo_song_seconds, seed=args.seed + 1000, **style
        )
        eval_songs, _ = discover(str(eval_data))
        eval_store = extract_features(eval_songs, cfg)
        eval_ids = list(eval_store.songs["song_id"])
        labels = store.songs.set_index("song_id")[["valence", "arousal"]]
        eval_labels = eval_store.songs.set_index("song_id").loc[eval_ids, ["valence", "arousal"]].to_numpy()
        heldout = gan_quality(
            store.centre_windows(train_ids),
            labels.loc[train_ids].to_numpy(),
            eval_store.centre_windows(eval_ids),
            eval_labels,
            synthetic.mels,
            synthetic.labels,
            seed=cfg.seed,
        )
    checkpoints = []
    if snapshots:
        draws = args.checkpoint_draws
        checkpoints = checkpoint_draws(gan, snapshots, cfg, store, train_ids, eval_store, eval_ids, draws)
    judge = None
    if args.vit_judge:  # the notebook's judge: a ViT trained on the real training songs only
        from emovit.choice import judge_synthetic
        from emovit.runs import Trainer
        from emovit.vit import find_pretrained

        judge_cfg = replace(cfg, cache_dir=str(args.work / f"judge_{args.style}_{args.seed}"))
        trainer = Trainer(judge_cfg, store, split, synthetic, standardizer, find_pretrained(judge_cfg), "cpu")
        judgement = judge_synthetic(trainer.fit("vit_real_only", use_synthetic=False), synthetic, judge_cfg, "cpu")
        judge = {
            "synthetic": judgement.synthetic_ccc,
            "val": judgement.val_ccc,
            "ratio": {d: judgement.synthetic_ccc[d] / judgement.val_ccc[d] for d in judgement.val_ccc},
        }
        print("ViT judge:", json.dumps(judge))
    table = quality_table(quality)
    table["ratio"] = (table["synthetic"] / table["real reference"]).round(2)
    if heldout is not None:
        held = quality_table(heldout)
        table["heldout synthetic"], table["heldout reference"] = held["synthetic"], held["real reference"]
        table["heldout ratio"] = (held["synthetic"] / held["real reference"]).round(2)
    print(table.drop(columns="how to read").to_string(index=False))
    summary = {
        "style": args.style,
        "seed": args.seed,
        "gan_seed": args.seed if args.gan_seed is None else args.gan_seed,
        "overrides": overrides,
        "train_songs": len(train_ids),
        "gan_train_seconds": gan.seconds,
        "gan_stage_seconds_train": stage_gan,
        "gan_train_cpu_seconds": cpu_gan,  # process CPU time: comparable under a shared machine
        "gan_stage_seconds_train_and_sample": stage,
        "torch_threads": torch.get_num_threads(),
        "vit_judge": judge,
        "checkpoints": checkpoints,
        "table": table.drop(columns="how to read").to_dict(orient="records"),
    }
    (out / "experiment.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "table"}))
    return 0


MEASURES = ("train_synthetic_test_real_valence", "train_synthetic_test_real_arousal", "frechet_distance")


def checkpoint_draws(gan, snapshots, cfg, store, train_ids, eval_store, eval_ids, draws: int) -> list[dict]:
    """Held-out ratios (TSTR valence / arousal, Frechet) of every check's EMA weights over ``draws``
    draws of ``cfg.num_synthetic`` samples, as the synthetic set makes them: one row per check with
    each measure's mean and standard deviation over the draws."""
    import numpy as np

    from emovit.gan_quality import gan_quality
    from emovit.gan_train import generate, lend_levels, sample_labels

    labels = store.songs.set_index("song_id")[["valence", "arousal"]]
    real_train, train_labels = store.centre_windows(train_ids), labels.loc[train_ids].to_numpy()
    real_eval = eval_store.centre_windows(eval_ids)
    eval_labels = eval_store.songs.set_index("song_id").loc[eval_ids, ["valence", "arousal"]].to_numpy()
    keep = {k: v.clone() for k, v in gan.generator.state_dict().items()}  # loading a check overwrites these tensors
    rows = []
    for step, weights in zip((h["step"] for h in gan.history), snapshots):
        gan.generator.load_state_dict(weights)
        gan.generator.eval()
        readings = []
        for k in range(draws):
            y = sample_labels(gan.train_labels, cfg.num_synthetic, cfg.synthetic_label_jitter, cfg.seed + 100 + k)
            batch = cfg.gan_sample_batch_size
            mels = generate(gan.generator, y, gan.standardizer, "cpu", batch, seed=cfg.seed + 200 + k)
            rng = np.random.default_rng(cfg.seed + 300 + k)
            mels = lend_levels(gan, mels, y, cfg.synthetic_envelope, rng, cfg.synthetic_dynamics)
            q = gan_quality(real_train, train_labels, real_eval, eval_labels, mels, y, seed=k)
            readings.append({m: q[m]["value"] / q[m]["reference"] for m in MEASURES})
        row = {"step": step, "kept": step == gan.best_step}
        for m in readings[0]:
            values = [r[m] for r in readings]
            row[m] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        rows.append(row)
        print(
            f"check {step}{' (kept)' if row['kept'] else ''}: held-out ratios over {draws} draws -- "
            + ", ".join(f"{m} {row[m]['mean']:.2f} +- {row[m]['std']:.2f}" for m in readings[0])
        )
    gan.generator.load_state_dict(keep)
    return rows


if __name__ == "__main__":
    sys.exit(main())
