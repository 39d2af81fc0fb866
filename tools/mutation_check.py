#!/usr/bin/env python3
"""Mutation check: does the test suite catch deliberate evaluation leaks and protocol bugs?

Each mutation below is one small, realistic bug -- model selection on the test songs, a baseline
fitted on test songs, a standardizer fitted on every song, a cache key that forgets the split,
an unpaired "paired" bootstrap, 90% intervals, misaligned prediction rows... A leak can only
RAISE scores, so lower-bound learning tests never see one: only tests that assert the exact
protocol can. For every mutation this script copies the project to a temporary folder, applies
the mutation there (never to the working tree), rebuilds the notebook from the mutated package,
runs the tests named for it, and reports CAUGHT (the tests failed) or MISSED (they passed).

    python -m tools.mutation_check              # every mutation, with the tests named for it
    python -m tools.mutation_check --list       # what each mutation does
    python -m tools.mutation_check --only NAME  # one mutation (repeatable)
    python -m tools.mutation_check --fast       # skip the mutations only the end-to-end run can see
    python -m tools.mutation_check --json out.json

It first runs the same tests on the unmutated copy, which must pass. Time: about 1 minute per
fast mutation and 6 minutes per end-to-end one on a 2-core machine (~35 minutes in all).
Exit status 1 when any mutation is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ["tests/test_protocol.py"]
CHOICE = ["tests/test_choice.py"]
E2E = ["tests/test_notebook_e2e.py"]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str

    @property
    def slow(self) -> bool:
        return any(t in E2E for t in self.tests)


MUTATIONS = [
    Mutation(
        "selection_on_test_songs",
        "emovit/runs.py",
        "            model, pre, train_ds, val_ds, cfg, device, key, best_path, last_path, steps_per_epoch=",
        "            model, pre, train_ds, test_ds, cfg, device, key, best_path, last_path, steps_per_epoch=",
        tuple(PROTOCOL),
        "model selection and early stopping on the TEST songs",
    ),
    Mutation(
        "ridge_fit_on_train_and_test",
        "emovit/runs.py",
        'train_ids, test_ids = ids_of(split, "train"), ids_of(split, "test")',
        'train_ids, test_ids = ids_of(split, "train") + ids_of(split, "test"), ids_of(split, "test")',
        tuple(PROTOCOL),
        "the ridge baseline fitted on training + test songs",
    ),
    Mutation(
        "probe_fit_on_train_and_val",
        "emovit/probe.py",
        'train_ids, val_ids = ids_of(split, "train"), ids_of(split, "val")',
        'train_ids, val_ids = ids_of(split, "train") + ids_of(split, "val"), ids_of(split, "val")',
        tuple(PROTOCOL),
        "the notebook's validation probe fitted on training + validation songs",
    ),
    Mutation(
        "standardizer_on_all_songs",
        "emovit/split.py",
        '    train_ids = ids_of(split, "train")\n    songs = store.songs',
        '    train_ids = sorted(split["song_id"])\n    songs = store.songs',
        tuple(PROTOCOL),
        "the standardizer fitted on every song (test songs included)",
    ),
    Mutation(
        "notebook_standardizer_on_all_songs",
        "notebook/emovit_notebook.py",
        "standardizer = fit_standardizer(store, split)",
        'from emovit.split import Standardizer; standardizer = Standardizer.fit(store.mels, store.songs["row"], '
        'store.songs["frames"])',
        tuple(E2E),
        "the NOTEBOOK fits the standardizer on every song instead of calling fit_standardizer",
    ),
    Mutation(
        "guard_disabled",
        "emovit/split.py",
        "assert not leaked, ",
        "assert True or not leaked, ",
        ("tests/test_split.py", "tests/test_gan.py", "tests/test_vit.py"),
        "the train-only guard of the GAN and the ViT disabled",
    ),
    Mutation(
        "uniform_synthetic_labels",
        "emovit/gan_train.py",
        "rows = np.asarray(train_labels, np.float32)[rng.integers(0, len(train_labels), size=n)]",
        "rows = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)",
        ("tests/test_gan.py",) + tuple(PROTOCOL),
        "synthetic labels uniform on [-1, 1], not the training songs'",
    ),
    Mutation(
        "gan_monitor_on_test_songs",
        "emovit/gan_train.py",
        'val_ids = ids_of(split, "val")\n        if len(val_ids) < 3:',
        'val_ids = ids_of(split, "test")\n        if len(val_ids) < 3:',
        tuple(PROTOCOL),
        "the GAN's checkpoint chosen on TEST songs",
    ),
    Mutation(
        "labels_not_in_gan_key",
        "emovit/gan_train.py",
        '            "labels": np.round(np.asarray(labels, np.float64), 6).tolist(),\n',
        "",
        ("tests/test_gan.py",),
        "label values left out of the GAN's cache key",
    ),
    Mutation(
        "synthetic_cache_not_tied_to_weights",
        "emovit/gan_train.py",
        'stem = f"synthetic_{result.key}_{digest}_',
        'stem = f"synthetic_{result.key}_',
        ("tests/test_gan.py",),
        "the synthetic set's cache name not tied to the generator's weights",
    ),
    Mutation(
        "split_not_in_data_key",
        "emovit/vit_train.py",
        '"split": split.to_dict(orient="list"),',
        "",
        tuple(PROTOCOL),
        "the split left out of the ViT's cache key",
    ),
    Mutation(
        "labels_not_in_data_key",
        "emovit/vit_train.py",
        '"labels": labels.round(6).to_numpy().tolist(),',
        "",
        tuple(PROTOCOL),
        "label values left out of the ViT's cache key",
    ),
    Mutation(
        "mixed_precision_not_in_run_key",
        "emovit/vit_train.py",
        'NOT_TRAINING_FIELDS = (\n    "preset",',
        'NOT_TRAINING_FIELDS = (\n    "mixed_precision",\n    "preset",',
        tuple(PROTOCOL),
        "mixed_precision left out of the ViT's resume key",
    ),
    Mutation(
        "unpaired_bootstrap",
        "emovit/results.py",
        "fn(true[i, d], pa[i, d]) - fn(true[i, d], pb[i, d]) for i in idx",
        "fn(true[i, d], pa[i, d]) - fn(true[j, d], pb[j, d]) for i, j in zip(idx, idx[::-1])",
        tuple(PROTOCOL),
        "the 'paired' bootstrap resamples different songs for the two models",
    ),
    Mutation(
        "seeds_pooled_unpaired",
        "emovit/seeds.py",
        "fn(true[i, d], pa[k, i, d]) - fn(true[i, d], pb[k, i, d]) for k in",
        "fn(true[i, d], pa[k, i, d]) - fn(true[i, d], pb[(k + 1) % n_seeds, i, d]) for k in",
        (
            "tests/test_seeds.py::test_seeds_are_paired_a_model_against_itself_differs_by_exactly_zero",
            "tests/test_seeds.py::test_pooled_interval_equals_a_hand_computation",
        ),
        "the bootstrap over seeds compares seed k of one model with another seed of the other",
    ),
    Mutation(
        "intervals_90_percent",
        "emovit/metrics.py",
        '"low": float(np.nanpercentile(boots, 2.5)) if n_boot',
        '"low": float(np.nanpercentile(boots, 5.0)) if n_boot',
        tuple(PROTOCOL),
        "90% instead of 95% intervals for the test metrics",
    ),
    Mutation(
        "compare_intervals_90_percent",
        "emovit/results.py",
        '"low": float(np.percentile(diffs, 2.5))',
        '"low": float(np.percentile(diffs, 5.0))',
        tuple(PROTOCOL),
        "90% instead of 95% intervals for the paired differences",
    ),
    Mutation(
        "compare_accepts_other_labels",
        "emovit/results.py",
        "if not np.array_equal(a[columns].to_numpy(), b[columns].to_numpy()):",
        "if False:",
        tuple(PROTOCOL),
        "compare() accepts frames whose true values differ",
    ),
    Mutation(
        "prediction_rows_misaligned",
        "emovit/runs.py",
        "frames[split_name] = prediction_frame(ds.song_ids, song_labels(",
        "frames[split_name] = prediction_frame(sorted(ds.song_ids, reverse=True), song_labels(",
        tuple(PROTOCOL),
        "predictions.csv ids misaligned with their rows",
    ),
    Mutation(
        "ccc_sample_moments",
        "emovit/metrics.py",
        "cov = np.mean((x - mx) * (y - my))",
        "cov = np.sum((x - mx) * (y - my)) / (len(x) - 1)",
        ("tests/test_metrics.py",) + tuple(PROTOCOL),
        "CCC's covariance with sample (N-1) moments",
    ),
    Mutation(
        "best_scored_without_key_check",
        "emovit/vit_train.py",
        '    if state.get("key") != key:\n        raise RuntimeError(',
        "    if False:\n        raise RuntimeError(",
        tuple(PROTOCOL),
        "a best checkpoint of another run is scored",
    ),
    Mutation(
        "resume_ignores_best_key",
        "emovit/vit_train.py",
        'if state["best_epoch"] and best_key != key:',
        "if False:",
        tuple(PROTOCOL),
        "resuming keeps a best file written by another run",
    ),
    Mutation(
        "split_depends_on_other_songs",
        "emovit/split.py",
        "u = np.array([song_unit(s, seed) for s in ids])",
        "u = np.random.default_rng(seed).permutation(len(ids)) / len(ids)",
        ("tests/test_split.py",),
        "a song's split depends on which other songs decoded",
    ),
    Mutation(
        "arms_not_step_matched",
        "emovit/runs.py",
        "            steps_per_epoch=self.steps_per_epoch,",
        "            steps_per_epoch=None,",
        tuple(PROTOCOL),
        "the real-only model and the arms train for fewer optimizer steps than the main model",
    ),
    Mutation(
        "choice_on_test_songs",
        "emovit/choice.py",
        "    frame = outcome.val_predictions\n",
        "    frame = outcome.predictions\n",
        tuple(CHOICE),
        "the delivered model (and the judge's reference) chosen on TEST songs",
    ),
    Mutation(
        "hedge_takes_one_model",
        "emovit/choice.py",
        'np.mean([frames[n][f"{d}_pred"].to_numpy() for n in choice.sources[d]], axis=0)',
        'frames[choice.sources[d][0]][f"{d}_pred"].to_numpy()',
        tuple(CHOICE),
        "a dimension hedged between two models is scored from the first model's predictions, not their mean",
    ),
    Mutation(
        "nan_predictions_chosen",
        "emovit/choice.py",
        "if finite[dim] and syn[dim] > ref[dim]",
        "if syn[dim] > ref[dim]",
        tuple(CHOICE),
        "a synthetic-trained model that predicts NaN on validation songs can still be delivered",
    ),
    Mutation(
        "mask_on_real_rows",
        "emovit/vit_train.py",
        "    parts = [real_part(store, train_ids)]",
        "    parts = [real_part(store, train_ids, weight=synthetic_mask(cfg.synthetic_dims) "
        "if uses_synthetic(cfg, synthetic) else 1.0)]",
        tuple(CHOICE),
        "the gate's mask also removes a dimension from the REAL rows' loss",
    ),
    Mutation(
        "envelopes_fitted_with_val_songs",
        "emovit/gan_train.py",
        "        envelope = SongEnvelopes.fit(song_features(store, song_ids)[:, : arch.n_mels], labels, window_stds)",
        "        both = song_ids + [int(s) for s in ids_of(split, 'val')]\n"
        "        both_labels = store.songs.set_index('song_id').loc[both, ['valence', 'arousal']].to_numpy()\n"
        "        envelope = SongEnvelopes.fit(song_features(store, both)[:, : arch.n_mels], both_labels)",
        tuple(PROTOCOL),
        "the synthetic samples' band levels taken from training + validation songs",
    ),
    Mutation(
        "judge_trained_with_val_songs",
        "emovit/runs.py",
        "    train_ds, val_ds, test_ds = make_datasets(store, split, synthetic, cfg)",
        "    train_ds, val_ds, test_ds = make_datasets(store, split, synthetic, cfg, train_ids=None if "
        "cfg.use_synthetic else ids_of(split, 'train') + ids_of(split, 'val'))",
        tuple(CHOICE),
        "the real-only model (the judge) trained on training + validation songs",
    ),
    Mutation(
        "spec_augment_in_evaluation",
        "emovit/vit.py",
        "        if not self.training or spans is None:\n            return z",
        "        if spans is None:\n            return z",
        ("tests/test_augment.py",),
        "SpecAugment masks also applied in evaluation and prediction",
    ),
    Mutation(
        "no_test_time_averaging",
        "emovit/vit_train.py",
        ".view(len(y), crops, 2).mean(dim=1)",
        ".view(len(y), crops, 2)[:, 0]",
        ("tests/test_augment.py",),
        "test-time averaging silently uses the first window only",
    ),
    Mutation(
        "curves_scored_on_training_songs",
        "emovit/curves.py",
        '    test = set(split.loc[split["split"] == "test", "song_id"]) & ratings.songs()',
        '    test = set(split.loc[split["split"] != "test", "song_id"]) & ratings.songs()',
        ("tests/test_curves.py::test_only_test_songs_are_scored",),
        "emotion curves scored against the 2 Hz ratings of training and validation songs",
    ),
    Mutation(
        "window_targets_shifted_by_one_window",
        "emovit/curves.py",
        "window_targets(t, v, starts, window_seconds)",
        "window_targets(t, v, starts + window_seconds, window_seconds)",
        ("tests/test_curves.py::test_score_windows_pairs_each_window_with_its_own_targets",),
        "each window scored against the ratings of the window after it",
    ),
]


def copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", ".venv-old", "outputs", "__pycache__", ".pytest_cache", ".ruff_cache", ".whl", ".gl"
    )
    shutil.copytree(ROOT, dest, ignore=ignore)


def run_tests(folder: Path, tests: list[str]) -> tuple[int, str, float]:
    start = time.perf_counter()
    build = subprocess.run([sys.executable, "-m", "tools.build_notebook"], cwd=folder, capture_output=True, text=True)
    if build.returncode:
        return build.returncode, "notebook build failed: " + build.stderr[-300:], time.perf_counter() - start
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    failed = next((ln for ln in lines if ln.startswith("FAILED") or ln.startswith("ERROR")), lines[-1] if lines else "")
    return proc.returncode, failed[:200], time.perf_counter() - start


def apply(folder: Path, m: Mutation) -> str:
    path = folder / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(
            f"mutation {m.name}: expected exactly one occurrence of {m.old!r} in {m.file}, "
            f"found {text.count(m.old)} -- update the mutation list"
        )
    mutated = text.replace(m.old, m.new)
    if m.file.endswith(".py"):
        compile(mutated, m.file, "exec")  # a mutation must be valid Python, not a syntax error caught by accident
    path.write_text(mutated)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--only", action="append", default=[], help="run only this mutation (repeatable)")
    parser.add_argument("--fast", action="store_true", help="skip mutations that need the end-to-end notebook run")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if (not args.only or m.name in args.only) and not (args.fast and m.slow)]
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:36s} {m.file:28s} {m.why}  [tests: {', '.join(m.tests)}]")
        return 0
    unknown = set(args.only) - {m.name for m in MUTATIONS}
    if unknown:
        raise SystemExit(f"unknown mutation(s) {sorted(unknown)}; see --list")
    results = []
    with tempfile.TemporaryDirectory(prefix="emovit_mutants_") as tmp:
        folder = Path(tmp) / "project"
        copy_project(folder)
        baseline_tests = sorted({t for m in chosen for t in m.tests})
        code, detail, seconds = run_tests(folder, baseline_tests)
        print(f"baseline ({len(baseline_tests)} test files): {'pass' if code == 0 else 'FAIL'} in {seconds:.0f} s")
        if code != 0:
            print(f"the unmutated project fails its tests: {detail}")
            return 2
        for m in chosen:
            original = apply(folder, m)
            try:
                code, detail, seconds = run_tests(folder, list(m.tests))
            finally:
                (folder / m.file).write_text(original)
            verdict = "CAUGHT" if code != 0 else "MISSED"
            results.append(
                {
                    "mutation": m.name,
                    "why": m.why,
                    "verdict": verdict,
                    "tests": list(m.tests),
                    "seconds": round(seconds, 1),
                    "first failure": detail if code else "",
                }
            )
            print(f"{verdict:6s} {m.name:36s} {seconds:5.0f} s  {detail if code else ''}", flush=True)
    caught = sum(r["verdict"] == "CAUGHT" for r in results)
    print(f"\n{caught} of {len(results)} mutations caught")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
