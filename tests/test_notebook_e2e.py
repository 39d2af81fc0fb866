"""End to end: the built notebook runs headless under papermill on the demo preset.

One run per test session (the ``demo_run`` fixture in conftest.py, shared with
tests/test_predict.py); each test asserts on what it wrote.
"""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from emovit.config import make_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_data_stage_outputs(demo_run):
    outputs, nb = demo_run
    for name in (
        "config.json",
        "errors.csv",
        "split.csv",
        "labels_scatter.png",
        "example_spectrograms.png",
        "split_distributions.png",
    ):
        assert (outputs / name).is_file() and (outputs / name).stat().st_size > 0, name
    cfg = json.loads((outputs / "config.json").read_text())
    assert cfg["preset"] == "demo" and cfg["output_dir"] == str(outputs)
    split = pd.read_csv(outputs / "split.csv")
    assert len(split) == 120 and split.song_id.is_unique
    assert len(pd.read_csv(outputs / "errors.csv")) == 0
    root = outputs.parents[1]  # runs/<id> -> the output folder; the cache sits beside runs/, outside the results
    assert [p.name for p in root.glob("cache/features/*/mel_*.npy")] and not (outputs / "cache").exists()


def test_no_cell_errors_and_figures_inline(demo_run):
    _, nb = demo_run
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.get("outputs", []))
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert images >= 3


def test_executed_modules_are_the_tested_package(demo_run):
    """The kernel imported byte-for-byte copies of emovit/ written by the %%writefile cells."""
    _, nb = demo_run
    src = Path(re.search(r"emovit modules are written to (\S+)", _text_outputs(nb)).group(1))
    for path in (ROOT / "emovit").glob("*.py"):
        assert (src / "emovit" / path.name).read_text() == path.read_text(), path.name


def test_probe_reports_validation_ccc(demo_run):
    _, nb = demo_run
    match = re.search(r"\{'valence': ([-\d.]+), 'arousal': ([-\d.]+)\} validation CCC", _text_outputs(nb))
    assert match and float(match.group(2)) > 0.5


def test_gan_stage_outputs(demo_run):
    outputs, _ = demo_run
    for name in (
        "generator.pth",
        "discriminator.pth",
        "gan_quality.json",
        "gan_training_curves.png",
        "real_vs_synthetic.png",
        "gan_label_distributions.png",
    ):
        assert (outputs / name).is_file() and (outputs / name).stat().st_size > 0, name
    quality = json.loads((outputs / "gan_quality.json").read_text())
    steps = json.loads((outputs / "config.json").read_text())["gan_steps"]  # 600 in the demo preset
    assert quality["n_synthetic"] == 320 and quality["training"]["diverged"] is None
    assert quality["training"]["steps_completed"] == steps and quality["training"]["skipped_steps"] == 0
    assert 0 < quality["training"]["best_step"] <= steps


@pytest.mark.learning
def test_gan_learns_labels_on_demo_data(demo_run):
    """Learning test: synthetic spectrograms carry the labels they were conditioned on, and a
    probe trained on them alone works on real songs.

    Reference = the same ridge probe (trained on real training songs) scored on real
    validation songs. The notebook run itself (make validate, commit 0e4a8fd, 2 threads; demo
    preset: 600 steps of 256-frame crops at batch 8) measured label fidelity 1.12x (valence) / 1.02x
    (arousal), train-synthetic-test-real 0.79x / 0.93x, Frechet 1.43x, diversity 0.83x.
    tools/gan_experiment.py runs of the same settings on four generator x seed data sets (one
    thread; docs/experiments.md section 1) gave, on the 14 validation songs, TSTR arousal
    0.64x-0.96x, and on 150 held-out songs fidelity 0.66x-0.93x / 0.80x-1.02x and TSTR arousal
    0.61x-0.91x (TSTR there with a penalty chosen by CV among the samples, which reads lower; with
    the shared penalty gan_quality uses, six GANs read 0.93x-1.01x on the held-out songs). Thread
    count changes the trajectory, and 14 validation songs make every CCC noisy (TSTR valence ranged
    0.32x-0.98x), so the thresholds leave margin and TSTR valence is not asserted. Asserted:
    fidelity above half the reference for valence and 0.7x for arousal; TSTR arousal above 0.4x;
    Frechet below 2.5x; diversity within 0.4-1.5x (no mode collapse, not noise). An unconditioned or
    collapsed generator scores near 0 on the first three; a noise generator fails the last two.
    """
    outputs, _ = demo_run
    q = json.loads((outputs / "gan_quality.json").read_text())
    arousal, valence = q["label_fidelity_arousal"], q["label_fidelity_valence"]
    assert arousal["value"] > 0.7 * arousal["reference"], arousal
    assert valence["value"] > 0.5 * valence["reference"], valence
    tstr = q["train_synthetic_test_real_arousal"]
    assert tstr["value"] > 0.4 * tstr["reference"], tstr
    assert q["frechet_distance"]["value"] < 2.5 * q["frechet_distance"]["reference"], q["frechet_distance"]
    assert 0.4 < q["diversity"]["value"] / q["diversity"]["reference"] < 1.5, q["diversity"]


def test_vit_stage_outputs(demo_run):
    outputs, nb = demo_run
    cache = outputs.parents[1] / "cache"
    seeds = json.loads((outputs / "config.json").read_text())["seeds"]
    for model in ("vit_real_only", "vit_real_plus_synthetic"):  # checkpoints: caches, not outputs
        assert sorted(p.name for p in (cache / "vit" / model).iterdir()) == sorted(f"seed{s}" for s in seeds)
        entries = list((cache / "vit" / model / f"seed{seeds[0]}").iterdir())  # one folder per training seed
        assert len(entries) == 1 and (entries[0] / "best_vit_model.pth").is_file(), model
        assert (entries[0] / "best_vit_model.result.json").is_file(), model  # completed ...
        assert not (entries[0] / "last_vit_model.pth").exists(), model  # ... so its resume state is gone
    for name in (
        "best_vit_model.pth",
        "metrics.json",
        "predictions.csv",
        "vit_training_curves.png",
        "test_predictions_scatter.png",
        "va_plane.png",
    ):
        assert (outputs / name).is_file() and (outputs / name).stat().st_size > 0, name
    split = pd.read_csv(outputs / "split.csv")
    predictions = pd.read_csv(outputs / "predictions.csv")
    for name in ("test", "val"):  # the delivered model on the real test songs, then the validation songs
        first = predictions[(predictions.split == name) & (predictions.seed == seeds[0])]
        assert list(first.song_id) == sorted(split[split.split == name].song_id)
    assert set(predictions.split) == {"test", "val"}
    assert set(predictions.seed) == set(seeds)  # the main pass trains one seed, make test-old two (tests/conftest.py)
    np.testing.assert_allclose(predictions.valence_pred_1_9, predictions.valence_pred * 4 + 5)
    np.testing.assert_allclose(predictions.arousal_true_1_9, predictions.arousal_true * 4 + 5)
    metrics = json.loads((outputs / "metrics.json").read_text())
    vit = metrics["models"]["delivered"]
    results = json.loads((outputs / "run_summary.json").read_text())["results"]
    assert results[0]["model"] == results[1]["model"] == "ViT delivered (per-dimension validation choice)"
    assert metrics["protocol"]["interval"] == "95% bootstrap percentile"
    for dim in ("valence", "arousal"):
        for name in ("ccc", "pearson_r", "r2", "rmse"):
            v = vit[dim][name]
            assert v["low"] <= v["value"] <= v["high"], (dim, name, v)
    assert metrics["vit"]["weights"] == "random"  # the demo preset says so
    assert metrics["protocol"]["n_test"] == len(predictions.query("split == 'test' and seed == @seeds[0]"))
    # the "Your own music" cell: tests/test_predict.py::test_notebook_section_writes_both_csvs_and_figures


def _labels(demo_root) -> pd.DataFrame:
    from emovit.deam import discover

    return discover(str(demo_root))[0].set_index("song_id")[["valence", "arousal"]]


def _read_exact(path) -> pd.DataFrame:
    """The test rows of a predictions CSV with every float parsed by Python's float(), which inverts
    the repr that to_csv wrote. pandas < 3's default C parser can land 1 ulp off (Kaggle's pandas
    2.2.3 did on CI), and "recomputes exactly" is a claim about the file, not about a parser."""
    from emovit.results import test_rows

    columns = pd.read_csv(path, nrows=0).columns
    return test_rows(pd.read_csv(path, converters={c: float for c in columns if c not in ("song_id", "split")}))


def test_every_prediction_row_carries_its_own_songs_labels_and_metrics_recompute(demo_run, demo_root):
    """Row-level truths: each predictions*.csv row holds its own song's annotated labels (order
    matters), and every stored metric recomputes exactly from the file."""
    from emovit.results import compare, score

    outputs, _ = demo_run
    labels = _labels(demo_root)
    metrics = json.loads((outputs / "metrics.json").read_text())
    config = json.loads((outputs / "config.json").read_text())
    frames = {"delivered": _read_exact(outputs / "predictions.csv")}
    frames.update({k: _read_exact(outputs / f"predictions_{k}.csv") for k in metrics["models"] if k not in frames})
    for name, frame in frames.items():
        np.testing.assert_allclose(
            frame[["valence_true", "arousal_true"]].to_numpy(),
            labels.loc[frame.song_id].to_numpy(),
            atol=1e-6,
            err_msg=name,
        )
        recomputed = json.loads(json.dumps(score(frame, config["n_bootstrap"], config["seed"])))
        assert recomputed == metrics["models"][name], name
    for pair, stored in metrics["differences"].items():
        a, b = pair.split(" - ")
        diff = json.loads(json.dumps(compare(frames[a], frames[b], config["n_bootstrap"], config["seed"])))
        assert diff == stored, pair
    # the delivered model's columns are those of the model the choice named (the mean of two), per dimension
    for dim, sources in metrics["choice"]["sources"].items():
        expected = np.mean([frames[s][f"{dim}_pred"].to_numpy() for s in sources], axis=0)
        np.testing.assert_allclose(frames["delivered"][f"{dim}_pred"], expected, rtol=0, atol=1e-12)


def test_every_training_seed_is_trained_predicted_and_summarised(demo_run):
    """With several training seeds (make test-old trains two): every ViT once per seed, each
    seed's rows in every predictions file, each seed's choice, and the spread in the prose."""
    outputs, nb = demo_run
    seeds = json.loads((outputs / "config.json").read_text())["seeds"]
    if len(seeds) < 2:
        pytest.skip("this run trains one seed (the learning thresholds were measured so); make test-old trains two")
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert metrics["seeds"]["seeds"] == seeds and not metrics["seeds"]["incomplete"]
    split = pd.read_csv(outputs / "split.csv")
    held_out = int((split["split"] != "train").sum())  # the validation and test songs, once per seed
    for name in ("predictions.csv", "predictions_vit_real_only.csv", "predictions_vit_real_plus_synthetic.csv"):
        table = pd.read_csv(outputs / name)
        assert table.groupby("seed").size().to_dict() == {s: held_out for s in seeds}, name
    assert set(metrics["seeds"]["choices"]) == {str(s) for s in seeds}
    assert (outputs / "seed_spread.png").stat().st_size > 0
    assert f"per seed {' / '.join(map(str, seeds))}" in _text_outputs(nb)


def test_models_used_the_train_only_standardizer(demo_run):
    """The statistics inside best_vit_model.pth are those of the training songs of split.csv,
    recomputed here from the run's own feature cache."""
    import torch

    outputs, _ = demo_run
    split = pd.read_csv(outputs / "split.csv")
    npy = next(p for p in (outputs.parents[1] / "cache" / "features").glob("*/mel_*.npy"))
    meta = json.loads(npy.with_suffix(".json").read_text())
    rows = {sid: i for i, sid in enumerate(meta["song_ids"])}
    mels = np.load(npy, mmap_mode="r")
    train = split.query("split == 'train'").song_id
    values = np.concatenate(
        [np.asarray(mels[rows[s], :, : meta["frames"][rows[s]]], np.float64).ravel() for s in train]
    )
    pre = torch.load(outputs / "best_vit_model.pth", weights_only=True)["preprocess"]
    assert pre["mel_mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert pre["mel_std"] == pytest.approx(values.std(), abs=1e-6)


@pytest.mark.learning
def test_vit_learns_on_demo_data(demo_run):
    """Learning test: the delivered model (the tiny random ViT, CPU) predicts held-out real test songs.

    It guards the whole training path -- a model that learned nothing scores a CCC near 0 on both
    dimensions -- and asserts on the delivered model, which takes the synthetic-trained model on a
    dimension only where validation prefers it, so the synthetic set's swings reach it less.
    Measured (docs/experiments.md section 5 lists every run): the default notebook run gives the same
    numbers on every repeat at a given thread count and stack, so the spread comes from threads,
    stacks and seeds (data, split and weights). Seeds 42 and 1-4 at 1 thread and 42 at 2: delivered
    valence 0.29-0.84, arousal 0.84-0.93; over every configuration measured the lowest readings are
    valence 0.18 and arousal 0.77. With 24 test songs a CCC's 95% interval spans about +-0.3, so
    the thresholds sit below the lowest run: arousal > 0.7 (the learning signal), valence > 0 (its
    cues -- mode, register -- are the harder half and swing with the initial weights like another
    seed).
    """
    outputs, _ = demo_run
    delivered = json.loads((outputs / "metrics.json").read_text())["models"]["delivered"]
    assert delivered["arousal"]["ccc"]["value"] > 0.7, delivered["arousal"]
    assert delivered["valence"]["ccc"]["value"] > 0.0, delivered["valence"]


def test_ablation_and_baseline_rows_are_finite(demo_run):
    outputs, _ = demo_run
    metrics = json.loads((outputs / "metrics.json").read_text())
    arms = tuple(json.loads((outputs / "config.json").read_text())["arms"])
    assert arms in ((), tuple(make_config("demo").arms))  # none, or the demo's (make test-old)
    vits = ("vit_real_plus_synthetic", "vit_real_only", *arms)
    assert set(metrics["models"]) == {"delivered", *vits, "ridge_baseline"}
    assert set(metrics["differences"]) == {f"delivered - {k}" for k in (*vits, "ridge_baseline")} | {
        "vit_real_plus_synthetic - vit_real_only"
    }  # the GAN's own effect, with the choice switched off
    steps = {row["model"]: row["steps per epoch"] for row in metrics["arms"]}
    assert len({steps[k] for k in vits}) == 1  # every ViT step-matched
    for block in (*metrics["models"].values(), *metrics["differences"].values()):
        for dim in ("valence", "arousal"):
            for v in block[dim].values():
                assert all(np.isfinite([v["value"], v["low"], v["high"]])) and v["low"] <= v["high"]
    for name in (
        "ablation_comparison.png",
        "augmented_batch.png",
        "predictions_vit_real_only.csv",
        "predictions_ridge_baseline.csv",
        *(f"predictions_{k}.csv" for k in arms),
    ):
        assert (outputs / name).is_file(), name
    summary = json.loads((outputs / "run_summary.json").read_text())
    assert {"features", "gan_training", *vits, "total_run"} <= set(summary["timings_seconds"])
    split = pd.read_csv(outputs / "split.csv")
    assert summary["counts"]["per_split"] == split["split"].value_counts().to_dict()
    models = len(vits) + 2  # the delivered model, the ViTs, the ridge
    assert len(summary["results"]) == 2 * (2 * models)  # models and as many differences, x 2 dimensions


def test_zip_holds_this_run_and_the_code_and_nothing_else(demo_run):
    """vit_output.zip (at the output root): every file of this run's folder but the fp32 checkpoint
    (its float16 copy instead), the emovit package's source, requirements.txt and PREDICT.md."""
    outputs, _ = demo_run
    root = outputs.parents[1]
    on_disk = sorted(
        p.relative_to(outputs).as_posix() for p in outputs.rglob("*") if p.is_file() and p.name != "best_vit_model.pth"
    )
    code = sorted(f"emovit/{p.name}" for p in (ROOT / "emovit").glob("*.py"))
    with zipfile.ZipFile(root / "vit_output.zip") as zf:
        assert zf.testzip() is None  # every member reads back with a valid CRC
        assert sorted(zf.namelist()) == sorted(on_disk + code)
        for name in on_disk:
            assert zf.read(name) == (outputs / name).read_bytes(), name
        for name in code:
            assert zf.read(name) == (ROOT / name).read_bytes(), name
    assert {"best_vit_model_fp16.pth", "PREDICT.md", "requirements.txt", "run_summary.json"} <= set(on_disk)
    half = os.path.getsize(outputs / "best_vit_model_fp16.pth")
    assert half < 0.6 * os.path.getsize(outputs / "best_vit_model.pth")


def test_the_card_the_stack_and_the_run_are_on_record(demo_run):
    outputs, _ = demo_run
    metrics = json.loads((outputs / "metrics.json").read_text())
    summary = json.loads((outputs / "run_summary.json").read_text())
    for env in (metrics["environment"], summary["environment"]):
        assert env["device"] == "cpu" and env["gpu_count"] == 0 and env["precision"] == "fp32"
        assert {"torch", "transformers", "numpy", "sklearn", "python", "cuda"} <= set(env)
    assert set(summary["cache_mb"]) >= {"features", "gan", "synthetic", "vit"}
    index = pd.read_csv(outputs.parents[1] / "runs.csv", dtype={"run_id": str})
    row = index.set_index("run_id").loc[metrics["run_id"]]
    assert row.status == "finished" and row.folder == f"runs/{metrics['run_id']}"
    assert row.valence_ccc == pytest.approx(metrics["models"]["delivered"]["valence"]["ccc"]["value"], abs=1e-4)
    quality = json.loads((outputs / "gan_quality.json").read_text())
    assert quality["training"]["reused_checkpoint"] is False and quality["training"]["train_seconds"] > 0


def test_the_zip_predicts_from_a_fresh_unzip(demo_run, demo_root, tmp_path):
    """Unzip into an empty folder and run the prediction command line there, in a fresh process that
    imports the unzipped emovit (not this repository's)."""
    outputs, _ = demo_run
    work = tmp_path / "unzipped"
    with zipfile.ZipFile(outputs.parents[1] / "vit_output.zip") as zf:
        zf.extractall(work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [sys.executable, "-c", "import emovit; print(emovit.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().parent == (work / "emovit").resolve()
    song = next((demo_root / "DEAM_audio" / "MEMD_audio").glob("*.mp3"))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "emovit.predict",
            str(song),
            "--checkpoint",
            "best_vit_model_fp16.pth",
            "--csv",
            "out.csv",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    table = pd.read_csv(work / "out.csv")
    assert len(table) == 1 and np.isfinite(table[["valence", "arousal"]].to_numpy()).all()
    from emovit.predict import predict

    exact = predict(str(song), str(outputs / "best_vit_model.pth"))  # the fp32 weights, this repository's code
    assert table.valence[0] == pytest.approx(exact["valence"], abs=0.02)
    assert table.arousal[0] == pytest.approx(exact["arousal"], abs=0.02)


def test_validation_report_matches_the_runs_metrics(demo_run, tmp_path):
    outputs, _ = demo_run
    report = tmp_path / "report.md"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "validate.py"),
            "--skip-checks",
            "--no-readme",
            "--run-dir",
            str(outputs),
            "--out",
            str(report),
        ],
        check=True,
        cwd=ROOT,
    )
    text = report.read_text()
    metrics = json.loads((outputs / "metrics.json").read_text())
    from emovit.results import MODEL_LABELS

    for model in ("delivered", "vit_real_plus_synthetic", "ridge_baseline"):
        label = MODEL_LABELS[model]
        for dim in ("valence", "arousal"):
            c = metrics["models"][model][dim]["ccc"]
            row = f"| {label} | {dim} | {c['value']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] |"
            assert row in text, row
    quality = json.loads((outputs / "gan_quality.json").read_text())
    assert f"| label_fidelity_arousal | {quality['label_fidelity_arousal']['value']:.3f} |" in text
    tstr = quality["train_synthetic_test_real_valence"]
    (low, high), (ref_low, ref_high) = tstr["interval"], tstr["reference_interval"]
    row = (
        f"| train_synthetic_test_real_valence | {tstr['value']:.3f} | [{low:+.3f}, {high:+.3f}] "
        f"| {tstr['reference']:.3f} | [{ref_low:+.3f}, {ref_high:+.3f}] |"
    )
    assert row in text, row
    gate = metrics["gate"]  # the judge's two readings of valence, each with its interval
    (low, high), (val_low, val_high) = gate["synthetic_interval"]["valence"], gate["val_interval"]["valence"]
    row = (
        f"| valence | {gate['synthetic_ccc']['valence']:+.3f} [{low:+.3f}, {high:+.3f}] "
        f"| {gate['val_ccc']['valence']:+.3f} [{val_low:+.3f}, {val_high:+.3f}] | {gate['passed']['valence']} |"
    )
    assert row in text, row


def _kaggle_preset_stops(demo_root: Path, tmp_path: Path, overrides: dict) -> tuple[str, str, Path]:
    """Run the built notebook with the kaggle preset until it fails: (the error, the source of the
    cell that raised it, the output folder the run was given)."""
    import papermill

    out = tmp_path / "outputs"
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(
            str(ROOT / "vit_with_gans_emotion_prediction.ipynb"),
            str(tmp_path / "run.ipynb"),
            kernel_name="python3",
            cwd=str(tmp_path),
            progress_bar=False,
            parameters={"PRESET": "kaggle", "DATA_DIR": str(demo_root), "OUTPUT_DIR": str(out), "OVERRIDES": overrides},
        )
    nb = nbformat.read(str(tmp_path / "run.ipynb"), as_version=4)
    failed = next(c for c in nb.cells if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    return str(err.value), failed.source, out


def test_without_reachable_weights_the_run_stops_in_the_setup_cell(demo_root, tmp_path):
    """No local folder, nothing under the search folder, no hub name, no random ViT allowed: the
    setup cell stops with what to attach -- before any data is read or any GPU time is spent."""
    overrides = {"vit_model_name": "", "pretrained_search_dir": str(tmp_path / "nothing"), "require_gpu": False}
    error, cell, out = _kaggle_preset_stops(demo_root, tmp_path, overrides)
    assert "No ViT weights reachable" in error and "Add Input" in error
    assert "pretrained = find_pretrained(cfg)" in cell  # the setup cell
    assert not out.exists()  # no run folder, no cache, no features


def test_the_kaggle_preset_without_a_gpu_stops_in_the_setup_cell(demo_root, tmp_path, monkeypatch):
    """Kaggle starts a notebook with no accelerator: the kaggle preset then stops in the setup cell
    and says where to switch a GPU on, instead of training a ViT-B/16 for days on the CPU; nothing is
    written. (``CUDA_VISIBLE_DEVICES=""`` hides any GPU from the kernel, so this holds on every machine.)"""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    error, cell, out = _kaggle_preset_stops(demo_root, tmp_path, {})
    assert "No GPU is visible" in error and "Accelerator" in error
    assert "check_gpu(cfg.require_gpu)" in cell  # the setup cell
    assert not out.exists()  # no run folder, no cache, no features
