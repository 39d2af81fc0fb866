"""Where files go: run folders side by side, runs.csv, a zip per run, the cache rule, pruning,
free-space checks, and keys that retrain only what a tweak changes."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from emovit import workspace
from emovit.config import make_config, replace
from emovit.features import extract_features
from emovit.gan_train import SyntheticSet
from emovit.report import write_zip
from emovit.runs import Trainer
from emovit.split import Standardizer, ids_of, split_songs
from emovit.vit import find_pretrained


def test_cache_goes_outside_what_kaggle_saves(tmp_path, monkeypatch):
    cfg = make_config("kaggle", output_dir=str(tmp_path / "out"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert cfg.cache_path == str(tmp_path / "out" / "cache")
    for kind in ("Batch", "Interactive"):
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", kind)
        assert cfg.cache_path == "/kaggle/temp/emovit_cache"
    assert replace(cfg, cache_dir=str(tmp_path / "c")).cache_path == str(tmp_path / "c")  # set: always wins


def test_two_settings_leave_two_run_folders_and_each_zip_holds_only_its_run(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    base = make_config("demo", output_dir=str(tmp_path / "out"))
    assert workspace.run_id(base) == workspace.run_id(replace(base, num_workers=3, cache_keep=5))  # no result change
    other = replace(base, vit_lr=1e-4, run_name="lr")
    assert workspace.run_id(other).startswith("lr-") and workspace.run_id(other) != workspace.run_id(base)
    runs = []
    for cfg in (base, other):
        run_cfg, run = workspace.start_run(cfg)
        assert run_cfg.output_dir == run.folder == os.path.join(cfg.output_dir, "runs", run.id)
        assert run_cfg.cache_dir == os.path.join(cfg.output_dir, "cache")  # shared by every run
        torch.save({"state_dict": {"w": torch.ones(3)}}, os.path.join(run.folder, "best_vit_model.pth"))
        pd.DataFrame({"id": [run.id]}).to_csv(os.path.join(run.folder, "predictions.csv"), index=False)
        metrics = {"models": {"delivered": {d: {"ccc": {"value": 0.5}} for d in ("valence", "arousal")}}}
        workspace.update_index(run, run_cfg, "finished", metrics)
        path, members = write_zip(run.folder, run.root, run.id, {})
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            assert pd.read_csv(zf.open("predictions.csv"))["id"].tolist() == [run.id]  # this run's, no other
        assert "best_vit_model_fp16.pth" in names and "best_vit_model.pth" not in names and "PREDICT.md" in names
        assert not any(n.startswith("runs/") for n in names)
        runs.append(run)
    index = workspace.read_index(str(tmp_path / "out"))
    assert sorted(index.run_id) == sorted(r.id for r in runs) and set(index.status) == {"finished"}
    changed = index.set_index("run_id").loc[runs[1].id, "changed"]
    assert '"vit_lr": 0.0001' in changed and "output_dir" not in changed
    assert os.path.samefile(workspace.latest_run(str(tmp_path / "out")), runs[1].folder)


def _entries(cfg, kind: str, n: int) -> list[str]:
    folders = []
    for i in range(n):
        folder = workspace.entry(cfg, kind, f"e{i}")
        with open(os.path.join(folder, "data.bin"), "wb") as f:
            f.write(b"x" * 10)
        os.utime(folder, (1000 + i, 1000 + i))  # e0 is the least recently used
        folders.append(folder)
    return folders


def test_pruning_keeps_the_most_recently_used_and_never_the_current_one(tmp_path):
    cfg = make_config("demo", output_dir=str(tmp_path), cache_keep=2)
    folders = _entries(cfg, "synthetic", 5)
    deleted = workspace.prune(cfg, "synthetic", in_use=folders[0])  # the oldest, but this run's
    assert sorted(deleted) == sorted(folders[1:4])
    assert sorted(os.listdir(os.path.join(cfg.cache_path, "synthetic"))) == ["e0", "e4"]  # in use + newest other
    assert workspace.prune(cfg, "synthetic", in_use=folders[0]) == []
    assert workspace.sizes(cfg.cache_path) == {"synthetic": 20}
    folders = _entries(replace(cfg, cache_keep=1), "vit/m", 3)
    workspace.prune(replace(cfg, cache_keep=1), "vit/m")  # no entry in use: keep the newest only
    assert os.listdir(os.path.join(cfg.cache_path, "vit", "m")) == ["e2"]


def test_a_full_disk_stops_with_the_message_and_leaves_no_partial_file(small_cfg, monkeypatch):
    from emovit.deam import discover

    songs, _ = discover(small_cfg.data_dir)
    monkeypatch.setattr(workspace, "free_bytes", lambda folder: 10_000_000)  # 10 MB free
    with pytest.raises(OSError, match="not enough disk space for the log-mel store"):
        extract_features(songs, small_cfg)
    written = [os.path.join(d, f) for d, _, files in os.walk(small_cfg.cache_path) for f in files]
    assert written == []  # nothing half-written: the check comes before the store is opened
    monkeypatch.undo()
    assert extract_features(songs, small_cfg).counts["failed"] == 0


def test_a_gan_tweak_keeps_the_real_only_model_and_retrains_the_synthetic_one(cue_store, tmp_path):
    """A new synthetic set of the same size (a GAN tweak): the real-only reference is reloaded as it
    was (its key leaves the GAN out), the synthetic-trained model trains again."""
    cfg = tiny_config(
        output_dir=str(tmp_path / "out"),
        clip_seconds=1.463,
        clip_offset=0.0,
        vit_epochs=1,
        num_workers=0,
        image_height=32,
        image_width=64,
        random_vit_layers=1,
    )
    split = split_songs(cue_store.songs.song_id, 0.2, 0.2, seed=0)
    std = Standardizer.fit(cue_store.mels, cue_store.songs.set_index("song_id").loc[ids_of(split, "train"), "row"])
    rng = np.random.default_rng(0)

    def synthetic(name: str, gan_steps: int) -> tuple[SyntheticSet, object]:
        path = tmp_path / f"{name}.npy"
        np.save(path, rng.normal(-45, 5, (8, 32, 64)).astype(np.float16))
        s = SyntheticSet(
            np.load(path, mmap_mode="r"), rng.uniform(-0.8, 0.8, (8, 2)).astype(np.float32), str(path), False, 0.0
        )
        return s, replace(cfg, gan_steps=gan_steps)

    fits = {}
    for name, steps in (("before", 600), ("after", 900)):
        syn, run_cfg = synthetic(name, steps)
        trainer = Trainer(run_cfg, cue_store, split, syn, std, find_pretrained(run_cfg), "cpu")
        fits[name] = (trainer.fit("vit_real_only", use_synthetic=False), trainer.fit("main", synthetic_dims="both"))
    (ref_a, main_a), (ref_b, main_b) = fits["before"], fits["after"]
    assert ref_b.run.key == ref_a.run.key and ref_b.best_path == ref_a.best_path
    assert ref_b.run.seconds == ref_a.run.seconds  # the stored record of the first training: nothing retrained
    assert main_b.run.key != main_a.run.key and main_b.best_path != main_a.best_path
