"""ViT stage: weight discovery through the real loading path, preprocessing, loss, leakage
guard, resume, NaN handling, checkpoints and predict() in a fresh process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from transformers import ViTConfig, ViTModel

import emovit.vit_train as vt
from emovit.config import make_config, replace
from emovit.deam import discover
from emovit.features import extract_features
from emovit.files import load_checkpoint
from emovit.metrics import ccc
from emovit.runtime import gpu_compatibility_problem
from emovit.split import Standardizer, ids_of, split_songs
from emovit.vit import IMAGENET_1K, DevicePreprocessor, build_model, find_pretrained, image_stats
from emovit.vit_train import loss_fn, make_datasets, param_groups, train_vit, weighted_ccc

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=224,
    patch_size=16,
    num_channels=3,
)


def _save_tiny_vit(folder: Path, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> ViTModel:
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(**TINY))
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "image_mean": list(mean),
                "image_std": list(std),
                "size": {"height": 224, "width": 224},
            }
        )
    )
    return model


def test_attached_model_is_found_and_loaded_with_from_pretrained(tmp_path):
    saved = _save_tiny_vit(tmp_path / "input" / "models" / "google" / "vit-in21k" / "1", mean=(0.4, 0.5, 0.6))
    (tmp_path / "input" / "deam" / "x").mkdir(parents=True)  # unrelated folders are ignored
    cfg = make_config("kaggle", pretrained_search_dir=str(tmp_path / "input"), vit_model_name="")
    found = find_pretrained(cfg)
    assert found.source == "kaggle_input" and found.location.endswith("vit-in21k/1")
    assert found.image_mean == (0.4, 0.5, 0.6) and found.image_std == (0.5, 0.5, 0.5)
    model = build_model(cfg, found)
    for name, tensor in saved.state_dict().items():
        if not name.startswith("pooler"):
            torch.testing.assert_close(model.backbone.state_dict()[name], tensor)


def test_local_dir_comes_first(tmp_path):
    _save_tiny_vit(tmp_path / "mine")
    _save_tiny_vit(tmp_path / "input" / "other")
    cfg = make_config("kaggle", vit_local_dir=str(tmp_path / "mine"), pretrained_search_dir=str(tmp_path / "input"))
    assert find_pretrained(cfg).source == "local_dir"
    assert image_stats(str(tmp_path / "mine"), "imagenet-1k") == IMAGENET_1K


def test_nothing_reachable_names_the_three_options(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config(
        "kaggle",
        pretrained_search_dir=str(tmp_path),
        vit_local_dir=str(tmp_path / "nope"),
        vit_model_name="google/vit-base-patch16-224-in21k-not-cached",
    )
    with pytest.raises(RuntimeError) as err:
        find_pretrained(cfg)
    msg = str(err.value)
    assert "vit_local_dir" in msg and str(tmp_path) in msg and "Internet on" in msg and "allow_random_vit" in msg
    random = find_pretrained(replace(cfg, allow_random_vit=True))
    assert random.source == "random"


@pytest.mark.parametrize(
    "capability,arch,ok",
    [
        ((6, 0), ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "compute_90"], False),  # P100 on Kaggle's torch
        ((7, 5), ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90"], True),  # T4
        ((8, 9), ["sm_75", "sm_80", "sm_86", "sm_90"], True),  # L4 runs sm_86 kernels
        ((10, 0), ["sm_80", "sm_90", "compute_90"], True),  # newer GPU JITs the PTX
        ((6, 0), ["sm_60", "sm_70"], True),
    ],
)
def test_gpu_compatibility_check(capability, arch, ok):
    problem = gpu_compatibility_problem(capability, arch, "Tesla P100" if capability == (6, 0) else "gpu")
    assert (problem is None) == ok
    if not ok:
        assert "T4" in problem and "L4" in problem and "6.0" in problem


def test_device_preprocessing_shapes_and_exact_values():
    pre = DevicePreprocessor(mel_mean=-40.0, mel_std=10.0, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    mel = torch.full((2, 64, 431), -25.0, dtype=torch.float16)  # z = 1.5 -> pixel (1.5 + 3) / 6 = 0.75
    out = pre(mel)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, (0.75 - 0.5) / 0.5))
    pre1k = DevicePreprocessor(-40.0, 10.0, *IMAGENET_1K)
    out1k = pre1k(torch.full((1, 64, 431), -100.0))  # z = -6 -> clipped to pixel 0
    for c in range(3):
        torch.testing.assert_close(out1k[0, c], torch.full((224, 224), -IMAGENET_1K[0][c] / IMAGENET_1K[1][c]))
    ramp = torch.linspace(-70, -10, 431).expand(1, 64, 431)
    assert pre(ramp)[0, 0, 0, 0] < pre(ramp)[0, 0, 0, -1]  # time runs along the width


def test_weighted_ccc_and_losses():
    rng = np.random.default_rng(0)
    t = torch.tensor(rng.normal(size=(64, 2)), dtype=torch.float32)
    p = t * 0.5 + torch.tensor(rng.normal(0, 0.3, size=(64, 2)), dtype=torch.float32)
    w = torch.ones(64)
    torch.testing.assert_close(weighted_ccc(p, t, w)[0].item(), ccc(t[:, 0], p[:, 0]), atol=1e-5, rtol=0)
    assert loss_fn("mse+ccc", p, t, w) == pytest.approx(float(loss_fn("mse", p, t, w) + loss_fn("ccc", p, t, w)))
    with pytest.raises(ValueError, match="vit_loss"):
        loss_fn("l1", p, t, w)


@pytest.fixture
def vit_setup(small_demo, tmp_path):
    cfg = tiny_config(
        data_dir=str(small_demo), output_dir=str(tmp_path / "out"), clip_seconds=2.0, clip_offset=0.0, vit_epochs=4
    )
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    split = split_songs(store.songs.song_id, 0.25, 0.25, seed=0)
    rows = store.songs.set_index("song_id").loc[ids_of(split, "train"), "row"]
    std = Standardizer.fit(store.mels, rows)
    return cfg, store, split, std


def _paths(cfg):
    return {
        "best_path": os.path.join(cfg.output_dir, "best_vit_model.pth"),
        "last_path": os.path.join(cfg.output_dir, "last_vit_model.pth"),
    }


def _fresh(cfg, std):
    torch.manual_seed(0)
    found = find_pretrained(cfg)
    return build_model(cfg, found), DevicePreprocessor(std.mean, std.std, found.image_mean, found.image_std)


def test_layer_decay_groups(vit_setup):
    cfg, _, _, std = vit_setup
    model, _ = _fresh(replace(cfg, vit_layer_decay=0.5, vit_lr=1e-3, head_lr=1e-2), std)
    lrs = sorted({g["lr"] for g in param_groups(model, replace(cfg, vit_layer_decay=0.5, vit_lr=1e-3, head_lr=1e-2))})
    assert lrs == pytest.approx([1e-3 * 0.5**2, 1e-3 * 0.5, 1e-3, 1e-2])  # embeddings, layer 1, layer 2 + norm, head


def test_training_data_guard_and_real_only_evaluation(vit_setup):
    cfg, store, split, _ = vit_setup
    with pytest.raises(AssertionError, match="validation/test song"):
        make_datasets(store, split, None, cfg, train_ids=ids_of(split, "train") + ids_of(split, "test")[:1])
    train, val, test = make_datasets(store, split, None, cfg)
    row_to_id = dict(zip(store.songs.row, store.songs.song_id))
    for ds, name in ((val, "val"), (test, "test")):
        assert ds.files == [store.path]  # real store only, never a synthetic file
        assert [row_to_id[r] for r in ds.parts[0].rows] == ds.song_ids == ids_of(split, name)
    assert len(train) == len(ids_of(split, "train"))


def test_resume_after_interruption_matches_uninterrupted_run(vit_setup):
    """Same seed on the CPU: identical weights (tolerance 1e-6) and epoch count."""
    cfg, store, split, std = vit_setup
    train, val, _ = make_datasets(store, split, None, cfg)
    full_cfg = replace(cfg, output_dir=cfg.output_dir + "_full")
    full_model, pre = _fresh(full_cfg, std)
    full = train_vit(full_model, pre, train, val, full_cfg, "cpu", key="k", **_paths(full_cfg))
    model, pre = _fresh(cfg, std)
    with pytest.raises(KeyboardInterrupt):
        train_vit(model, pre, train, val, cfg, "cpu", key="k", interrupt_after_epoch=2, **_paths(cfg))
    assert load_checkpoint(_paths(cfg)["last_path"])["epoch"] == 2  # the resume state of the interrupted run
    model, pre = _fresh(cfg, std)  # a re-run of the notebook cell starts from a fresh model
    resumed = train_vit(model, pre, train, val, cfg, "cpu", key="k", **_paths(cfg))
    assert resumed.resumed_from == 2 and len(resumed.history) == len(full.history) == 4
    a, b = full_model.state_dict(), model.state_dict()  # the final weights of both
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
    assert [h["val_ccc_mean"] for h in full.history] == pytest.approx([h["val_ccc_mean"] for h in resumed.history])
    # completed: the resume state is gone, a small record says so, and a re-run has nothing to do
    assert not os.path.exists(_paths(cfg)["last_path"]) and os.path.exists(vt.result_path(_paths(cfg)["best_path"]))
    again = train_vit(*_fresh(cfg, std), train, val, cfg, "cpu", key="k", **_paths(cfg))
    assert again.resumed_from == 2 and again.history == resumed.history and again.best_epoch == resumed.best_epoch
    other = train_vit(*_fresh(cfg, std), train, val, replace(cfg, vit_epochs=1), "cpu", key="other", **_paths(cfg))
    assert other.resumed_from == 0  # other settings never resume from this checkpoint


def test_nan_losses_are_skipped_then_stop_with_best_intact(vit_setup, monkeypatch):
    cfg, store, split, std = vit_setup
    train, val, _ = make_datasets(store, split, None, cfg)
    real = vt.loss_fn
    calls = {"n": 0}

    def sometimes_nan(kind, pred, target, weight):
        calls["n"] += 1
        loss = real(kind, pred, target, weight)
        return loss * float("nan") if calls["n"] % 3 == 0 or calls["n"] > 12 else loss

    monkeypatch.setattr(vt, "loss_fn", sometimes_nan)
    cfg = replace(cfg, max_skipped_steps=3, vit_epochs=6)
    with pytest.raises(RuntimeError, match="non-finite loss.*best_vit_model.pth"):
        train_vit(*_fresh(cfg, std), train, val, cfg, "cpu", key="nan", **_paths(cfg))
    best = load_checkpoint(os.path.join(cfg.output_dir, "best_vit_model.pth"))
    assert all(torch.isfinite(v).all() for v in best["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_best_checkpoint_and_predict_in_a_fresh_process(vit_setup):
    cfg, store, split, std = vit_setup
    train, val, _ = make_datasets(store, split, None, cfg)
    cfg = replace(cfg, vit_epochs=1)
    train_vit(*_fresh(cfg, std), train, val, cfg, "cpu", key="p", **_paths(cfg))
    best_path = os.path.join(cfg.output_dir, "best_vit_model.pth")
    state = torch.load(best_path, weights_only=True)
    assert {"state_dict", "vit_config", "preprocess", "mel_params", "config"} <= set(state)
    audio = store.songs.set_index("song_id").loc[ids_of(split, "test")[0], "audio_path"]
    code = f"import json, sys; from emovit.predict import predict; print(json.dumps(predict({audio!r}, {best_path!r})))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"valence", "arousal", "valence_1_9", "arousal_1_9"} <= set(result)  # predict() may add keys
    assert result["valence_1_9"] == pytest.approx(result["valence"] * 4 + 5)
    from emovit.predict import Predictor

    assert Predictor(best_path)(audio)["arousal"] == pytest.approx(result["arousal"], abs=1e-5)


def test_corrupt_resume_checkpoint_names_the_file_or_retrains(vit_setup):
    cfg, store, split, std = vit_setup
    train, val, _ = make_datasets(store, split, None, cfg)
    cfg = replace(cfg, vit_epochs=1)
    paths = _paths(cfg)
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(paths["last_path"], "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    with pytest.raises(RuntimeError, match=r"last_vit_model\.pth.*retrain_bad_checkpoints"):
        train_vit(*_fresh(cfg, std), train, val, cfg, "cpu", key="c", **paths)
    result = train_vit(
        *_fresh(cfg, std), train, val, replace(cfg, retrain_bad_checkpoints=True), "cpu", key="c", **paths
    )
    assert result.resumed_from == 0 and len(result.history) == 1
    assert not os.path.exists(paths["last_path"]) and result.key == "c"  # trained to completion
