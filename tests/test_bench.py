"""The benchmark harness runs in quick mode so it cannot rot; it asserts figures exist and are
finite, never a time."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_produces_every_figure(tmp_path):
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    results = json.loads(out.read_text())
    expected = {
        "extraction": ["songs_per_s_1_process", "songs_per_s_bare_librosa", "overhead_ratio_vs_bare"],
        "reload": ["open_seconds", "read_all_seconds"],
        "vit": ["images_per_s_real_loader", "images_per_s_premade_tensors", "ratio"],
        "gan": [
            "train_steps_per_s_demo_arch_batch16",
            "train_steps_per_s_demo_arch_batch16_default_layout",
            "layout_speedup",
            "samples_per_s_full_arch_128x1292",
        ],
        "predict": [
            "songs_per_s_sequential",
            "songs_per_s_2_decode_threads",
            "decode_seconds_per_song",
            "log_mel_seconds_per_song",
            "model_seconds_per_song",
        ],
        "memory": ["peak_rss_mb"],
    }
    for section, keys in expected.items():
        for key in keys:
            value = results[section][key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (section, key, value)
    assert any(k.startswith("songs_per_s_") and k.endswith("_processes") for k in results["extraction"])
    assert results["machine"]["cpu"]
    projection = results["run_all_projection"]
    assert "PROJECTION" in projection["label"] and set(projection["cards"]) == {"T4", "T4 x2", "L4"}
    assert all(0 < card["optimistic_minutes"] < card["pessimistic_minutes"] for card in projection["cards"].values())
    assert "kaggle preset as is" in projection["scenarios"]


def test_results_markdown_has_a_gpu_section_only_where_gpu_check_ran(tmp_path):
    """RESULTS.md renders tools/gpu_check.py's report when benchmarks/gpu.json exists beside it, and
    says there are no GPU figures when it does not."""
    from benchmarks.bench import write_markdown

    r = {"machine": {"platform": "p", "cpu": "c", "torch": "t", "device": "cpu", "gpus": []}}
    write_markdown(r, tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "No GPU figures yet" in text and "Measured on a GPU" not in text
    report = json.loads((ROOT / "benchmarks" / "gpu.json").read_text())
    (tmp_path / "gpu.json").write_text(json.dumps(report))
    write_markdown(r, tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "No GPU figures yet" not in text and f"{report['card']['name']} (" in text
    fp16 = report["precisions"]["fp16"]
    assert f"| fp16 | {fp16['vit']['images_per_s']:.0f} |" in text
    assert f"{report['notebook']['notebook_seconds']:.0f} s" in text
    ratio = max(report["repeats"]["vit_fp16_images_per_s"]) / min(report["repeats"]["vit_fp16_images_per_s"])
    assert f"(max/min {ratio:.2f})" in text
    down = report["gan_downsample"]
    micro = down["micro"]["nhwc_mean"]["fwd_bwd_ms_all_four_shapes"]
    step = down["step"]["nhwc_mean"]
    kernel_ms, rate = step["kernel_ms_per_step_incl_setup"], step["steps_per_s"]
    row = f"| nhwc_mean | 0.0e+00 | {micro:.2f} | {kernel_ms:.1f} | {rate:.1f} |"
    assert row in text, row
    first, again = down["step"]["avg_pool2d"], down["step"]["avg_pool2d_again"]
    kernel = f"{first['kernel_ms_per_step_incl_setup']:.1f} / {again['kernel_ms_per_step_incl_setup']:.1f}"
    assert f"| {kernel} |" in text  # a variant measured twice shows both runs
