"""`make gpu-check` (tools/gpu_check.py) runs in --dry mode on the CPU, so it cannot rot: both
precision paths (forced fp16 + GradScaler, bf16), finite losses, a checkpoint in
best_vit_model.pth's format read back by Predictor on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--dry", "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["card"]["name"].startswith("none")
    assert set(report["precisions"]) == {"fp16", "bf16"}
    for row in report["precisions"].values():
        assert row["gan"]["losses_finite"] and row["vit"]["losses_finite"]
        assert row["gan"]["steps_per_s"] > 0 and row["vit"]["images_per_s"] > 0
        assert row["gan"]["sample_finite"] and row["gan"]["sample_shape"] == [2, 1, 16, 64]  # full length
        assert row["vit"]["parameter_dtypes"] == ["torch.float32"]
        assert row["gan"]["memory_format"] == "channels_last"  # the layout gan_train trains in
    ckpt = report["precisions"]["fp16"]["checkpoint"]
    assert ckpt["loader"] == "emovit.predict.Predictor" and ckpt["match"] and ckpt["max_abs_diff_vs_device_fp32"] < 2e-3


@pytest.mark.slow
def test_achieved_tflops_use_the_projection_counts():
    """At full size: one step/s of ViT-B/16 at batch 32 is its 3.36 TFLOP per step (projection.py)."""
    out = gpu_check.achieved({"steps_per_s": 1.0}, {"steps_per_s": 2.0}, gpu_check.FULL, peak_tflops=65.0)
    assert 3.3 < out["vit_tflops"] < 3.45 and out["vit_mfu"] == out["vit_tflops"] / 65.0
    from benchmarks import projection
    from emovit.config import make_config

    gan_step = projection.gan_flops(make_config("kaggle"))["step_flops"]
    assert out["gan_tflops"] == 2 * gan_step / 1e12 and out["gan_mfu"] == out["gan_tflops"] / 65.0


def test_run_results_read_the_one_run_folder(tmp_path):
    """The notebook writes its summary and metrics in runs/<run id>/, not at the output folder's top."""
    with pytest.raises(RuntimeError, match="expected one finished run"):
        gpu_check.run_results(tmp_path)
    for run, value in (("a1", 1), ("b2", 2)):
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "metrics.json").write_text(json.dumps({"v": value}))
    (tmp_path / "runs" / "a1" / "run_summary.json").write_text(json.dumps({"timings_seconds": {"gan": 9}}))
    summary, metrics = gpu_check.run_results(tmp_path)  # b2 never finished: no summary
    assert summary == {"timings_seconds": {"gan": 9}} and metrics == {"v": 1}
    (tmp_path / "runs" / "b2" / "run_summary.json").write_text("{}")
    with pytest.raises(RuntimeError, match="found"):
        gpu_check.run_results(tmp_path)


def test_random_vit_folder_loads_through_the_notebooks_local_dir_path(tmp_path):
    """The notebook check's weights on a machine with no hub: a saved folder that find_pretrained takes
    from vit_local_dir, with the in21k image statistics and the requested sizes."""
    from emovit.config import make_config
    from emovit.vit import build_model, find_pretrained

    folder = gpu_check.random_vit_folder(tmp_path / "vit", gpu_check.DRY)
    cfg = make_config("kaggle", vit_local_dir=str(folder), pretrained_search_dir="", vit_model_name="")
    pretrained = find_pretrained(cfg)
    assert pretrained.source == "local_dir" and pretrained.location == str(folder)
    assert tuple(pretrained.image_mean) == (0.5, 0.5, 0.5) and tuple(pretrained.image_std) == (0.5, 0.5, 0.5)
    backbone = build_model(cfg, pretrained).backbone
    assert backbone.config.hidden_size == gpu_check.DRY["vit"]["hidden_size"]
    saved = gpu_check.vit_model(gpu_check.DRY).backbone.state_dict()  # the same seed: the same weights
    assert all(torch.equal(v, saved[k]) for k, v in backbone.state_dict().items())
