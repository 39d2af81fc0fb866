"""Conditional GAN: shapes, conditioning, train-only guard, NaN recovery, checkpoints, labels."""

import numpy as np
import pandas as pd
import pytest
import torch

from emovit import gan as G
from emovit import gan_train
from emovit.config import make_config
from emovit.deam import discover
from emovit.features import extract_features
from emovit.split import Standardizer, ids_of, split_songs


@pytest.mark.parametrize("n_mels,frames", [(64, 431), (128, 1292)])
def test_shapes_demo_and_full_size(n_mels, frames):
    arch = G.GanArch(n_mels=n_mels, frames=frames, z_dim=16, channels=4)
    gen, disc = G.Generator(arch), G.Discriminator(arch)
    x = gen(torch.randn(2, 16), torch.rand(2, 2) * 2 - 1)
    assert x.shape == (2, 1, n_mels, frames)
    assert x.min() >= arch.out_low and x.max() <= arch.out_high
    assert disc(x, torch.zeros(2, 2)).shape == (2,)


def test_bad_n_mels_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 16"):
        G.Generator(G.GanArch(n_mels=40, frames=100))


def test_conditioning_changes_the_output():
    torch.manual_seed(0)
    gen = G.Generator(G.GanArch(n_mels=32, frames=64, z_dim=8, channels=4))
    with torch.no_grad():  # give the label path non-zero weights, as training does
        for m in gen.modules():
            if isinstance(m, G.ConditionalBatchNorm):
                m.affine.weight.normal_(0, 0.5)
    gen.eval()
    z = torch.randn(4, 8)
    low, high = gen(z, torch.full((4, 2), -0.8)), gen(z, torch.full((4, 2), 0.8))
    assert (low - high).abs().mean() > 0.01


def test_sample_labels_follow_the_training_distribution():
    rng = np.random.default_rng(0)
    train = np.clip(rng.normal([0.1, -0.2], [0.2, 0.3], size=(300, 2)), -0.7, 0.6).astype(np.float32)
    labels = gan_train.sample_labels(train, 3200, jitter=0.05, seed=1)
    assert labels.shape == (3200, 2)
    assert (labels.min(axis=0) >= train.min(axis=0)).all() and (labels.max(axis=0) <= train.max(axis=0)).all()
    np.testing.assert_allclose(labels.mean(axis=0), train.mean(axis=0), atol=0.03)
    np.testing.assert_allclose(labels.std(axis=0), train.std(axis=0), atol=0.03)
    np.testing.assert_array_equal(labels, gan_train.sample_labels(train, 3200, jitter=0.05, seed=1))


@pytest.fixture
def tiny_setup(small_demo, tmp_path):
    cfg = make_config("demo", data_dir=str(small_demo), output_dir=str(tmp_path / "out"), clip_seconds=2.0,
                      clip_offset=0.0, n_mels=32, num_workers=1, gan_epochs=2, gan_batch_size=4,
                      gan_channels=4, gan_z_dim=8, num_synthetic=10, gan_sample_batch_size=4)
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    split = split_songs(store.songs.song_id, 0.2, 0.2, seed=0)
    train = ids_of(split, "train")
    rows = store.songs.set_index("song_id").loc[train, "row"]
    return cfg, store, split, train, Standardizer.fit(store.mels, rows)


def test_validation_or_test_song_fires_the_guard(tiny_setup):
    cfg, store, split, train, std = tiny_setup
    for held in (ids_of(split, "val")[0], ids_of(split, "test")[0]):
        with pytest.raises(AssertionError, match="validation/test song"):
            gan_train.train_or_load_gan(cfg, store, split, train + [held], std, "cpu")


def test_checkpoint_roundtrip_reuse_and_same_samples(tiny_setup):
    cfg, store, split, train, std = tiny_setup
    first = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert not first.reused and len(first.history) == 2 and first.diverged is None
    for name in ("generator.pth", "discriminator.pth"):
        ckpt = torch.load(f"{cfg.output_dir}/{name}", weights_only=True)
        assert {"state_dict", "arch", "standardizer", "train_labels", "key"} <= set(ckpt)
    again = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert again.reused and again.key == first.key
    labels = gan_train.sample_labels(first.train_labels, 6, 0.05, seed=3)
    a = gan_train.generate(first.generator, labels, std, "cpu", batch_size=4, seed=7)
    b = gan_train.generate(again.generator, labels, std, "cpu", batch_size=4, seed=7)
    assert a.shape == (6, 32, cfg.num_frames) and a.dtype == np.float16
    np.testing.assert_array_equal(a, b)
    synthetic = gan_train.synthesize(again, cfg, "cpu")
    assert synthetic.mels.shape == (10, 32, cfg.num_frames) and isinstance(synthetic.mels, np.memmap)
    assert np.isfinite(np.asarray(synthetic.mels, np.float32)).all()
    assert gan_train.synthesize(again, cfg, "cpu").reused
    # Fewer training songs -> a different key -> trained again, not reused.
    assert not gan_train.train_or_load_gan(cfg, store, split, train[:-1], std, "cpu").reused


def test_nan_loss_restores_last_finite_weights(tiny_setup, monkeypatch):
    cfg, store, split, train, std = tiny_setup
    cfg.gan_epochs = 3
    calls = {"n": 0}
    real_loss = G.d_hinge_loss
    steps_per_epoch = len(train) // cfg.gan_batch_size

    def flaky(real, fake):
        calls["n"] += 1
        loss = real_loss(real, fake)
        return loss * float("nan") if calls["n"] > steps_per_epoch else loss  # NaN from epoch 2 on

    monkeypatch.setattr(G, "d_hinge_loss", flaky)
    result = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert result.diverged == {"epoch": 2, "step": 0, "restored_epoch": 1}
    assert len(result.history) == 1
    assert all(torch.isfinite(p).all() for p in result.generator.parameters())
    assert all(torch.isfinite(p).all() for p in result.discriminator.parameters())
    saved = torch.load(f"{cfg.output_dir}/generator.pth", weights_only=True)
    assert saved["diverged"]["restored_epoch"] == 1


def test_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "generator.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="generator.pth"):
        gan_train.load_gan(str(path), str(path), "cpu")


def test_frame_table_of_quality(tmp_path):
    from emovit.gan_quality import frechet_distance, mean_pairwise_distance, quality_table

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 3)), rng.normal(1.0, 1.0, size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(3.0, abs=0.5)  # |mu diff|^2 = 3, same covariance
    assert mean_pairwise_distance(np.zeros((10, 3))) == 0
    table = quality_table({"diversity": {"value": 1.0, "reference": 2.0}, "n_real_val": 3})
    assert isinstance(table, pd.DataFrame) and list(table.measure) == ["diversity"]
