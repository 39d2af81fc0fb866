"""The Run All projection's FLOP counts (benchmarks/projection.py) against hand-computed oracles."""

from pathlib import Path

import pytest

from benchmarks import projection
from emovit.config import make_config, replace

ROOT = Path(__file__).resolve().parents[1]


def vit_b16_forward_flops() -> int:
    """Matmul FLOPs (2 per multiply-add) of one 224 x 224 image through ViT-B/16 + the 2-output head:
    patch embedding 196 x 768 x (3*16*16); per layer Q, K, V, O (8 N d^2), scores and weighted sum
    (4 N^2 d), MLP (4 N d m); N = 197 tokens, d = 768, m = 3072, 12 layers."""
    n, d, m = 197, 768, 3072
    patch = 2 * 196 * 768 * (3 * 16 * 16)
    layer = 8 * n * d * d + 4 * n * n * d + 4 * n * d * m
    return patch + 12 * layer + 2 * d * 2


def test_vit_flops_match_the_hand_count():
    vit = projection.vit_flops(2)
    assert vit["forward_flops_per_image"] == vit_b16_forward_flops()
    assert vit["parameters"] == pytest.approx(85.8e6, rel=0.01)
    # backward = 2x forward for every matmul except the patch embedding (no input gradient needed)
    assert vit["train_step_flops"] == pytest.approx(3 * 2 * vit_b16_forward_flops(), rel=0.01)


@pytest.mark.slow
def test_gan_flops_scale_with_batch():
    cfg = replace(make_config("kaggle"), gan_batch_size=8)
    one = projection.gan_flops(cfg, batch=1)
    two = projection.gan_flops(cfg, batch=2)
    assert abs(one["step_flops"] - (one["d_step_flops"] + one["g_step_flops"])) <= 1
    assert two["step_flops"] == pytest.approx(one["step_flops"], rel=0.01)  # both scaled to batch 8: linear
    assert one["d_step_flops"] > 0 and one["g_step_flops"] > 0 and one["sample_flops"] > 0
    assert one["crop_frames"] == cfg.gan_crop_frames and one["batch"] == 8


def test_gan_flops_are_counted_once_per_gan_setting(monkeypatch):
    """The count is cached on the GAN's fields only: a change elsewhere reuses it, a change of the
    GAN's width or of the counted batch counts again, and a caller's copy cannot alter the cache."""
    counted = []
    count = projection._count_gan_flops
    monkeypatch.setattr(projection, "_GAN_FLOPS", {})
    monkeypatch.setattr(projection, "_count_gan_flops", lambda cfg, batch: counted.append(batch) or count(cfg, batch))
    cfg = make_config("demo")
    first = projection.gan_flops(cfg)
    assert projection.gan_flops(replace(cfg, vit_epochs=3, seeds=[1, 2], num_synthetic=7)) == first
    step = first["step_flops"]
    first["step_flops"] = 0
    assert projection.gan_flops(cfg)["step_flops"] == step > 0 and counted == [2]
    wider = projection.gan_flops(replace(cfg, gan_channels=2 * cfg.gan_channels))
    assert counted == [2, 2] and wider["step_flops"] > 2 * step
    assert projection.gan_flops(cfg, batch=1)["step_flops"] == pytest.approx(step, rel=0.01)  # scaled: linear
    assert counted == [2, 2, 1]


def test_preset_counts_of_the_kaggle_preset():
    c = projection.preset_counts(make_config("kaggle"))
    assert (c["train_songs"], c["val_songs"], c["test_songs"]) == (1262, 270, 270)
    assert c["vit_steps_per_epoch"] == -(-(1262 + 3200) // 32) == 140
    assert c["vit_steps_total"] == c["vit_trainings"] * make_config("kaggle").vit_epochs * 140
    assert c["gan_steps"] == make_config("kaggle").gan_steps
    fewer = projection.preset_counts(replace(make_config("kaggle"), vit_epochs=5, num_synthetic=0))
    assert fewer["vit_steps_per_epoch"] == 40 and fewer["vit_steps_total"] == fewer["vit_trainings"] * 200


@pytest.mark.slow
def test_projection_minutes_are_ordered():
    p = projection.project(make_config("kaggle"), extraction_songs_per_s_per_core=25.0)
    assert "PROJECTION" in p["label"]
    for row in p["cards"].values():
        assert 0 < row["optimistic_minutes"] < row["pessimistic_minutes"]
    assert p["cards"]["L4"]["pessimistic_minutes"] < p["cards"]["T4"]["pessimistic_minutes"]
    assert p["cards"]["T4 x2"]["pessimistic_minutes"] < p["cards"]["T4"]["pessimistic_minutes"]


def test_each_training_seed_trains_every_vit_again():
    one = projection.preset_counts(make_config("kaggle"))
    three = projection.preset_counts(make_config("kaggle", seeds=[42, 1, 2]))
    assert (one["training_seeds"], three["training_seeds"]) == (1, 3)
    assert three["vit_trainings"] == 3 * one["vit_trainings"]
    assert three["vit_steps_total"] == 3 * one["vit_steps_total"] == 3 * one["vit_steps_per_seed"]
    assert three["eval_images_total"] - one["eval_images_total"] == 2 * one["eval_images_per_seed"]


@pytest.mark.slow
def test_an_extra_seed_costs_what_the_projection_says():
    """The stated minutes per extra seed are the difference between the two- and one-seed projections."""
    one = projection.project(make_config("kaggle"), extraction_songs_per_s_per_core=25.0)
    two = projection.project(make_config("kaggle", seeds=[42, 1]), extraction_songs_per_s_per_core=25.0)
    for card, row in one["cards"].items():
        for bound in ("optimistic", "pessimistic"):
            extra = row[f"{bound}_minutes_per_extra_seed"]
            assert extra > 0
            assert two["cards"][card][f"{bound}_minutes"] - row[f"{bound}_minutes"] == pytest.approx(extra, rel=1e-9)
