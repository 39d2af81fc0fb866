"""Several training processes (DistributedDataParallel under torchrun, gloo on the CPU) take the
steps one process takes: the items of every global batch, the weights after N steps, the
evaluation metrics, who writes files, and resuming a run killed after an epoch."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import CUE_CLIP_SECONDS, tiny_config

from emovit import distributed, runs
from emovit import vit_train as vt
from emovit.config import replace
from emovit.files import load_checkpoint
from emovit.split import Standardizer, ids_of, split_songs
from emovit.vit import find_pretrained
from emovit.vit_train import EpochSampler, RankBatches


def test_each_rank_takes_its_part_of_every_global_batch_and_together_every_item_once(monkeypatch):
    order = EpochSampler(20, 24, seed=3, epoch=2)  # 24 items of a 20-item set: one pass and part of another
    single = list(RankBatches(order, 8, distributed.rank_slice(8, distributed.Ranks())))
    parts = [list(RankBatches(order, 8, distributed.rank_slice(8, distributed.Ranks(r, 2)))) for r in (0, 1)]
    assert len(single) == len(parts[0]) == len(parts[1]) == 3
    for k, batch in enumerate(single):  # step k: rank 0's half, then rank 1's, is the one-process batch
        assert parts[0][k] + parts[1][k] == batch and len(parts[0][k]) == 4
    assert sorted(i for p in parts for b in p for i in b) == sorted(order)  # every item of the epoch once
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        distributed.rank_slice(9, distributed.Ranks(0, 2))
    for r in (0, 1):  # evaluation: whole batches, k to rank k mod 2, each index once over both
        monkeypatch.setattr(distributed, "current", lambda r=r: distributed.Ranks(r, 2))
        assert list(vt.EvalBatches(10, 3)) == ([[0, 1, 2], [6, 7, 8]] if r == 0 else [[3, 4, 5], [9]])


def test_only_rank_zero_writes_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "current", lambda: distributed.Ranks(1, 2))
    with pytest.raises(RuntimeError, match="only rank 0 writes"):
        vt._atomic_save({"x": 1}, str(tmp_path / "x.pth"))
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def ddp_runs(cue_store, tmp_path_factory):
    """The same tiny training (cue songs, 2 epochs, SpecAugment, random crops, mixup, CCC in the loss)
    in this process, on 2 gloo ranks through the notebook's torchrun launcher, and on 2 ranks killed
    after epoch 1 and launched again."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = tiny_config(
        output_dir=str(tmp / "out"),
        clip_seconds=CUE_CLIP_SECONDS,
        clip_offset=0.0,
        vit_epochs=2,
        vit_batch_size=8,
        num_workers=0,
        image_height=32,
        image_width=64,
        random_vit_layers=1,
        head_dropout=0.0,
        mixup_alpha=0.4,
        vit_loss="mse+ccc",
        vit_lr=1e-3,
        head_lr=3e-3,
    )
    split = split_songs(cue_store.songs.song_id, 0.2, 0.2, seed=0)
    std = Standardizer.fit(cue_store.mels, cue_store.songs.set_index("song_id").loc[ids_of(split, "train"), "row"])
    steps = -(-len(ids_of(split, "train")) // 8)
    out = {}
    for name, processes, interrupt in (("one", 1, None), ("two", 2, None), ("killed", 2, "1")):
        run_cfg = replace(cfg, ddp_processes=processes, vit_max_steps=2 * steps, cache_dir=str(tmp / name))
        if interrupt:  # the first launch dies after epoch 1
            os.environ["EMOVIT_INTERRUPT_AFTER_EPOCH"] = interrupt
            # The error names the exception a training process died of, so the cell says why.
            with pytest.raises(
                RuntimeError,
                match=r"torchrun training failed \(exit 1\): \[rank\d\]: KeyboardInterrupt: simulated interruption",
            ):
                runs.fit_and_test(name, run_cfg, cue_store, split, None, std, find_pretrained(run_cfg), "cpu")
            del os.environ["EMOVIT_INTERRUPT_AFTER_EPOCH"]
        out[name] = runs.fit_and_test(name, run_cfg, cue_store, split, None, std, find_pretrained(run_cfg), "cpu")
    return cfg, out


@pytest.mark.slow
def test_two_ranks_take_the_one_process_steps(ddp_runs):
    """After 2 epochs (the smoke cap keeps the resume state, whose weights are the last step's):
    equal to the one-process weights within 2e-5 (float sums in another order: the gathered batch,
    the gradient all-reduce), and the same validation CCC per epoch within 1e-4."""
    _, out = ddp_runs
    one, two = out["one"], out["two"]
    a = load_checkpoint(one.best_path.replace("best_vit_model.pth", "last_vit_model.pth"))
    b = load_checkpoint(two.best_path.replace("best_vit_model.pth", "last_vit_model.pth"))
    assert a["optimizer_steps"] == b["optimizer_steps"] > 0
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, atol=2e-5, rtol=0, msg=name)
    for h1, h2 in zip(one.run.history, two.run.history, strict=True):
        assert h2["val_ccc_mean"] == pytest.approx(h1["val_ccc_mean"], abs=1e-4)


@pytest.mark.slow
def test_evaluation_over_two_ranks_scores_every_song_once_exactly(ddp_runs, cue_store):
    """The two-rank run's predictions (gathered from both ranks) equal the same checkpoint's
    predictions in one process exactly, each validation and test song once, in order."""
    cfg, out = ddp_runs
    two = out["two"]
    from emovit.vit import DevicePreprocessor, regressor_from_checkpoint

    state = load_checkpoint(two.best_path)
    model, pre = regressor_from_checkpoint(state), DevicePreprocessor.from_dict(state["preprocess"])
    split = split_songs(cue_store.songs.song_id, 0.2, 0.2, seed=0)
    _, val, test = vt.make_datasets(cue_store, split, None, replace(cfg, ddp_processes=1))
    for frame, ds in ((two.val_predictions, val), (two.predictions, test)):
        pred, _ = vt.predict_dataset(model, pre, ds, cfg, "cpu")
        assert list(frame.song_id) == ds.song_ids and frame.song_id.is_unique
        np.testing.assert_array_equal(frame[["valence_pred", "arousal_pred"]].to_numpy(), pred.astype(np.float64))


@pytest.mark.slow
def test_a_run_killed_after_an_epoch_resumes_to_the_same_result(ddp_runs):
    _, out = ddp_runs
    two, killed = out["two"], out["killed"]
    assert killed.run.resumed_from == 1 and two.run.resumed_from == 0
    a = load_checkpoint(two.best_path.replace("best_vit_model.pth", "last_vit_model.pth"))["state_dict"]
    b = load_checkpoint(killed.best_path.replace("best_vit_model.pth", "last_vit_model.pth"))["state_dict"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, atol=1e-6, rtol=0, msg=name)
    assert [h["val_ccc_mean"] for h in killed.run.history] == pytest.approx(
        [h["val_ccc_mean"] for h in two.run.history], abs=1e-6
    )
    files = sorted(os.listdir(os.path.dirname(two.best_path)))
    assert files == sorted(
        [
            "best_vit_model.pth",
            "best_vit_model.predictions.npz",
            "best_vit_model.result.json",
            "job.json",
            "job_songs.csv",
            "job_split.csv",
            "last_vit_model.pth",
        ]
    )  # rank 0's, once each
