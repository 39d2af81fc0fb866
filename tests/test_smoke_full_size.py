"""Full-size smoke run: the built notebook with the kaggle preset's model and feature sizes.

ViT-B/16 from a google/vit-base-patch16-224-in21k-shaped config (hidden 768, 12 layers, 12
heads, MLP 3072, patch 16, 224 x 224; random weights) saved with ``save_pretrained`` and loaded
through ``vit_local_dir`` (the real loading path); the GAN at 128 x 1292 with its kaggle width;
ViT batch 32; 30 s clips at 128 mels -- on 24 generated songs of 30 s. Only step counts are
capped: ``vit_max_steps`` (1 optimizer step per ViT training), ``gan_steps`` 1 (one GAN step at
batch 32 on 256-frame crops; no validation check, the last step is kept) and ``num_synthetic``
32 (one sampling batch, so the ViT's first batch is a full 32).

The notebook then runs a second time on the same folders, as a user re-running it would: the
features, the GAN and the synthetic set are reused and both ViT trainings load their
full-size resume state (weights, AdamW moments, scheduler, scaler) and find them finished.

Proves shapes, memory layout, checkpoint formats and resume at the real size; the kernel's
peak host RSS and the wall time go to ``smoke_report.json`` (printed; copied to
$EMOVIT_SMOKE_REPORT when set). Timings are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import torch

from emovit.demo_data import make_demo_deam
from emovit.files import load_checkpoint
from emovit.workspace import latest_run

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "vit_with_gans_emotion_prediction.ipynb"
pytestmark = [pytest.mark.slow, pytest.mark.smoke]

VIT_B16 = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    image_size=224,
    patch_size=16,
    num_channels=3,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
)
# synthetic_dims "both": a 1-step GAN judged by a 1-step ViT would close the gate, and the run at
# size must train the synthetic-trained model too. One training seed: the loop over seeds is the
# same code at any size, and make test-old runs it with two (tests/test_notebook_e2e.py).
SMOKE_OVERRIDES = {
    "seeds": [42],
    "vit_max_steps": 1,
    "gan_steps": 1,
    "num_synthetic": 32,
    "pretrained_search_dir": "",
    "vit_model_name": "",
    "synthetic_dims": "both",
    "require_gpu": False,  # the kaggle preset stops without a GPU; this run is its sizes on the CPU
}
# Appended to the executed copy only: the kernel's own peak RSS (and its largest child's).
RSS_CELL = """import json, resource
_rss = {"kernel_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
with open(RSS_PATH, "w") as f:
    json.dump(_rss, f)
print("peak RSS", _rss)
"""


def save_vit_b16(folder: Path) -> None:
    """Random ViT-B/16 in the in21k checkpoint's layout: config.json, model.safetensors,
    preprocessor_config.json (mean = std = 0.5, as in21k declares)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(**VIT_B16), add_pooling_layer=False).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_normalize": True,
                "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "size": {"height": 224, "width": 224},
            }
        )
    )


def _run(work: Path, name: str, data: Path, outputs: Path, vit_dir: Path) -> tuple[nbformat.NotebookNode, dict]:
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    rss_path = work / f"{name}_rss.json"
    nb.cells.append(nbformat.v4.new_code_cell(f"RSS_PATH = {str(rss_path)!r}\n" + RSS_CELL))
    source = work / f"{name}_input.ipynb"
    nbformat.write(nb, str(source))
    start = time.perf_counter()
    papermill.execute_notebook(
        str(source),
        str(work / f"{name}.ipynb"),
        kernel_name="python3",
        cwd=str(work),
        progress_bar=False,
        parameters={
            "PRESET": "kaggle",
            "DATA_DIR": str(data),
            "OUTPUT_DIR": str(outputs),
            "OVERRIDES": {**SMOKE_OVERRIDES, "vit_local_dir": str(vit_dir)},
        },
    )
    seconds = time.perf_counter() - start
    return nbformat.read(str(work / f"{name}.ipynb"), as_version=4), {
        **json.loads(rss_path.read_text()),
        "wall_seconds": seconds,
    }


def _text(nb) -> str:
    return "\n".join(
        o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    data, vit_dir, outputs = work / "deam", work / "vit-base-patch16-224-in21k", work / "outputs"
    t0 = time.perf_counter()
    make_demo_deam(str(data), num_songs=24, seconds=30.0, seed=11, dynamic=True)  # with 2 Hz files
    save_vit_b16(vit_dir)
    setup_seconds = time.perf_counter() - t0
    first_nb, first = _run(work, "first", data, outputs, vit_dir)
    second_nb, second = _run(work, "second", data, outputs, vit_dir)
    report = {
        "first_run": first,
        "second_run": second,
        "setup_seconds": setup_seconds,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    (work / "smoke_report.json").write_text(json.dumps(report, indent=2))
    if os.environ.get("EMOVIT_SMOKE_REPORT"):
        shutil.copy(work / "smoke_report.json", os.environ["EMOVIT_SMOKE_REPORT"])
    print("full-size smoke run:", json.dumps(report))
    return Path(latest_run(str(outputs))), first_nb, second_nb, report


def test_every_output_is_written(smoke):
    outputs, first_nb, _, _ = smoke
    code = [c for c in first_nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.get("outputs", []))
    expected = (
        "config.json",
        "errors.csv",
        "split.csv",
        "labels_scatter.png",
        "example_spectrograms.png",
        "split_distributions.png",
        "generator.pth",
        "discriminator.pth",
        "gan_quality.json",
        "gan_training_curves.png",
        "real_vs_synthetic.png",
        "gan_label_distributions.png",
        "best_vit_model.pth",
        "metrics.json",
        "predictions.csv",
        "vit_training_curves.png",
        "test_predictions_scatter.png",
        "va_plane.png",
        "ablation_comparison.png",
        "predictions_vit_real_only.csv",
        "predictions_vit_real_plus_synthetic.csv",
        "predictions_ridge_baseline.csv",
        "run_summary.json",
        "test_curves.csv",
        "test_curves_vs_ratings.png",
    )
    for name in expected + ("best_vit_model_fp16.pth",):
        assert (outputs / name).is_file() and (outputs / name).stat().st_size > 0, name
    with zipfile.ZipFile(outputs.parents[1] / "vit_output.zip") as zf:  # at the output root, beside runs/
        names = set(zf.namelist())
        assert set(expected) - {"best_vit_model.pth"} <= names and "best_vit_model.pth" not in names
        half = zf.getinfo("best_vit_model_fp16.pth").file_size
        assert half == (outputs / "best_vit_model_fp16.pth").stat().st_size
        assert half < 0.6 * (outputs / "best_vit_model.pth").stat().st_size
    cfg = json.loads((outputs / "config.json").read_text())
    assert cfg["preset"] == "kaggle" and cfg["vit_batch_size"] == 32 and cfg["n_mels"] == 128
    assert cfg["clip_seconds"] == 30.0 and cfg["gan_channels"] == 32 and cfg["vit_max_steps"] == 1
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert metrics["vit"]["weights"] == "local_dir"  # the real loading path, not the random fallback
    split = pd.read_csv(outputs / "split.csv")
    scored = pd.read_csv(outputs / "test_curves.csv")
    assert set(scored["song_id"]) == set(split.loc[split["split"] == "test", "song_id"])  # every test song is rated
    assert metrics["curves"]["scores"]["arousal"]["songs"] == scored["song_id"].nunique()
    predictions = pd.read_csv(outputs / "predictions.csv")
    assert len(predictions) == int((split["split"] != "train").sum())  # every validation and test song once


def test_checkpoints_load_with_weights_only_at_full_size(smoke):
    outputs, _, _, _ = smoke
    best = torch.load(outputs / "best_vit_model.pth", map_location="cpu", weights_only=True)
    vc = best["vit_config"]
    assert (vc["hidden_size"], vc["num_hidden_layers"], vc["num_attention_heads"], vc["intermediate_size"]) == (
        768,
        12,
        12,
        3072,
    )
    assert sum(v.numel() for k, v in best["state_dict"].items()) > 85_000_000
    assert all(v.dtype == torch.float32 for v in best["state_dict"].values() if v.is_floating_point())
    gen = torch.load(outputs / "generator.pth", map_location="cpu", weights_only=True)
    assert (gen["arch"]["n_mels"], gen["arch"]["frames"], gen["arch"]["channels"]) == (128, 1292, 32)
    torch.load(outputs / "discriminator.pth", map_location="cpu", weights_only=True)
    (state,) = (outputs.parents[1] / "cache" / "vit" / "vit_real_plus_synthetic").glob("seed42/*/last_vit_model.pth")
    last = load_checkpoint(str(state))
    assert last["scheduler"]["last_epoch"] == 1 and last["epoch"] == 1  # capped after one optimizer step
    assert len(last["optimizer"]["state"]) > 100  # AdamW moments for every parameter tensor


def test_rerun_resumes_at_full_size(smoke):
    outputs, _, second_nb, _ = smoke
    text = _text(second_nb)
    code = [c for c in second_nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.get("outputs", []))
    assert "GAN: reusing" in text
    # the real-only and the synthetic-trained model
    assert len(re.findall(r"ViT: resuming after epoch 1 from", text)) == 2
    assert "training had already finished" in text
    summary = json.loads((outputs / "run_summary.json").read_text())
    assert summary["timings_seconds"]["total_run"] > 0


def test_peak_rss_is_reported(smoke):
    _, _, _, report = smoke
    for run in ("first_run", "second_run"):
        assert report[run]["kernel_peak_rss_mb"] > 0 and report[run]["wall_seconds"] > 0
