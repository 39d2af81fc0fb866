"""The gate (which synthetic labels the main model's loss uses) and the delivered model (which model
predicts each dimension): the mask on synthetic rows, the rules, the routed checkpoint, and that
both decisions read training and validation songs only.

The judge tests train a small ViT on the cue data set (conftest.cue_feature_store), whose labels
set visible cues, and show the gate on three synthetic sets: an ideal generator (real training
windows with their own labels) -> both dimensions pass; the same windows with shuffled valence
labels -> valence gated off; a GAN trained with its valence input shuffled -> valence gated off.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CUE_CLIP_SECONDS, tiny_config

import emovit.choice as choice_mod
import emovit.vit_train as vt
from emovit import gan_train
from emovit.choice import DELIVERED, Choice, choose_models, deliver, dims_of, gate, judge_synthetic
from emovit.config import replace
from emovit.gan_train import SyntheticSet
from emovit.metrics import ccc, with_intervals
from emovit.runs import Outcome, Trainer
from emovit.split import Standardizer, ids_of, split_songs
from emovit.vit import RoutedRegressor, find_pretrained, regressor_from_checkpoint
from emovit.vit_train import loss_fn, make_datasets


def _cfg(tmp_path, **overrides):
    """Demo config sized for the cue data: 32 mels, 64-frame windows, a 1-layer ViT on 32 x 64 images."""
    values = dict(
        output_dir=str(tmp_path / "out"),
        clip_seconds=CUE_CLIP_SECONDS,
        clip_offset=0.0,
        random_vit_layers=1,
        image_height=32,
        image_width=64,
        vit_epochs=12,
        vit_batch_size=8,
        vit_lr=1e-3,
        head_lr=3e-3,
        early_stop_patience=12,
        spec_augment=False,
        n_bootstrap=20,
        gan_steps=150,
        gan_eval_every=50,
        gan_batch_size=16,
        gan_crop_frames=32,
        num_synthetic=8,
        num_workers=0,
        gan_sample_batch_size=64,
    )
    values.update(overrides)
    return tiny_config(**values)


def _synthetic_set(path, mels: np.ndarray, labels: np.ndarray) -> SyntheticSet:
    """A synthetic set on disk like synthesize() writes one: (n, n_mels, T) float16 dB + (n, 2) labels."""
    np.save(path, mels.astype(np.float16))
    return SyntheticSet(np.load(path, mmap_mode="r"), labels.astype(np.float32), str(path), False, 0.0)


# ---- the mask: a gated dimension gets no gradient from synthetic rows -----------------------------


@pytest.mark.parametrize("kind", ["mse", "ccc", "mse+ccc"])
@pytest.mark.parametrize("dims", ["valence", "arousal", "both"])
def test_mask_removes_the_gated_dimensions_gradient_from_synthetic_rows_only(cue_store, tmp_path, kind, dims):
    """Items from make_datasets (real songs, then synthetic rows) through loss_fn: d loss / d pred is
    exactly 0 on a synthetic row's gated dimension, and nonzero everywhere else -- real rows keep both."""
    cfg = _cfg(tmp_path, synthetic_dims=dims, vit_loss=kind, random_crop=False)
    split = split_songs(cue_store.songs.song_id, 0.2, 0.2, seed=0)
    rng = np.random.default_rng(0)
    synthetic = _synthetic_set(tmp_path / "syn.npy", rng.normal(-45, 5, (6, 32, 64)), rng.uniform(-0.8, 0.8, (6, 2)))
    train, _, _ = make_datasets(cue_store, split, synthetic, cfg)
    n_real = len(ids_of(split, "train"))
    assert len(train) == n_real + 6 and train.n_real == n_real
    items = [train[i] for i in (0, 1, 2, n_real, n_real + 1, n_real + 2)]
    y = torch.stack([it[1] for it in items])
    w = torch.stack([it[2] for it in items])
    pred = torch.tensor(rng.normal(0, 0.5, (6, 2)), dtype=torch.float32, requires_grad=True)
    loss_fn(kind, pred, y, w).backward()
    grad = pred.grad.abs()
    mask = {"valence": (1, 0), "arousal": (0, 1), "both": (1, 1)}[dims]
    assert (grad[:3] > 0).all(), grad  # real rows: both dimensions
    for d in range(2):
        if mask[d]:
            assert (grad[3:, d] > 0).all(), (d, grad)
        else:
            assert (grad[3:, d] == 0).all(), (d, grad)
    np.testing.assert_array_equal(w[:3].numpy(), 1.0)
    np.testing.assert_array_equal(w[3:].numpy(), np.tile(np.array(mask) * cfg.synthetic_weight, (3, 1)))


def test_loss_with_per_dimension_weights_matches_the_scalar_form_and_skips_empty_dimensions():
    rng = np.random.default_rng(1)
    p, t = (torch.tensor(rng.normal(size=(16, 2)), dtype=torch.float32) for _ in range(2))
    w = torch.tensor(rng.uniform(0.2, 1, 16), dtype=torch.float32)
    for kind in ("mse", "ccc", "mse+ccc"):
        torch.testing.assert_close(loss_fn(kind, p, t, w), loss_fn(kind, p, t, w[:, None].expand(16, 2)))
    only_arousal = torch.stack([torch.zeros(16), w], dim=1)  # an all-synthetic batch, valence gated off
    expected = float(((p[:, 1] - t[:, 1]) ** 2 * w).sum() / w.sum())
    assert float(loss_fn("mse", p, t, only_arousal)) == pytest.approx(expected, rel=1e-5)
    assert float(loss_fn("mse", p, t, torch.zeros(16, 2))) == 0.0


def test_synthetic_epochs_draw_real_songs_only_afterwards(cue_store, tmp_path):
    cfg = _cfg(tmp_path, synthetic_dims="both", synthetic_epochs=2, loader_workers=0, random_crop=False)
    split = split_songs(cue_store.songs.song_id, 0.2, 0.2, seed=0)
    rng = np.random.default_rng(0)
    synthetic = _synthetic_set(tmp_path / "syn.npy", rng.normal(-45, 5, (40, 32, 64)), rng.uniform(-0.8, 0.8, (40, 2)))
    train, _, _ = make_datasets(cue_store, split, synthetic, cfg)
    for epoch, any_synthetic in ((1, True), (2, True), (3, False), (4, False)):
        order = [i for batch in vt._loader(train, cfg, "cpu", epoch, samples=len(train)).batch_sampler for i in batch]
        assert len(order) == len(train)
        assert (max(order) >= train.n_real) == any_synthetic, epoch


def test_auto_must_be_resolved_before_a_training_set_is_built(cue_store, tmp_path):
    split = split_songs(cue_store.songs.song_id, 0.2, 0.2, seed=0)
    synthetic = _synthetic_set(tmp_path / "syn.npy", np.zeros((2, 32, 64)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="resolved by the judge"):
        make_datasets(cue_store, split, synthetic, _cfg(tmp_path))
    with pytest.raises(ValueError, match="synthetic_dims must be one of"):
        _cfg(tmp_path, synthetic_dims="valance")


# ---- the rules -------------------------------------------------------------------------------------


def test_gate_rule():
    val = {"valence": 0.5, "arousal": 0.9}
    assert gate({"valence": 0.25, "arousal": 0.2}, val, 0.5) == {"valence": True, "arousal": False}
    assert gate({"valence": 0.24, "arousal": 0.9}, val, 0.5) == {"valence": False, "arousal": True}
    # a judge that hears nothing on real songs cannot vouch for the samples
    assert gate({"valence": 0.5, "arousal": 0.5}, {"valence": 0.0, "arousal": -0.1}, 0.5) == {
        "valence": False,
        "arousal": False,
    }
    assert [dims_of({"valence": v, "arousal": a}) for v, a in ((1, 1), (1, 0), (0, 1), (0, 0))] == [
        "both",
        "valence",
        "arousal",
        "none",
    ]


def _outcome(name: str, val: pd.DataFrame) -> Outcome:
    """An outcome whose test predictions and test metrics cannot be read: the choice must not need them."""
    return Outcome(name, predictions=_Unreadable(), metrics=_Unreadable(), seconds=0.0, val_predictions=val)


def _val_frame(truth: np.ndarray, noise: tuple[float, float], seed: int) -> pd.DataFrame:
    pred = truth + np.random.default_rng(seed).normal(0, 1, truth.shape) * np.asarray(noise)
    return pd.DataFrame(
        {
            "song_id": np.arange(len(truth)),
            "valence_true": truth[:, 0],
            "arousal_true": truth[:, 1],
            "valence_pred": pred[:, 0],
            "arousal_pred": pred[:, 1],
        }
    )


class _Unreadable:
    """Test-song results: any use fails the test (the choice reads validation predictions only)."""

    def __getattr__(self, name):
        raise AssertionError("the choice read test-song results")

    def __getitem__(self, key):
        raise AssertionError("the choice read test-song results")


def test_choice_takes_a_dimension_from_the_synthetic_model_only_when_validation_says_so_convincingly(tmp_path):
    truth = np.random.default_rng(0).uniform(-0.8, 0.8, (40, 2))
    real = _outcome("vit_real_only", _val_frame(truth, (0.5, 0.2), seed=1))
    syn_frame = _val_frame(truth, (0.1, 0.2), seed=1)  # far better on valence, the same arousal predictions
    syn = _outcome("vit_real_plus_synthetic", syn_frame)
    cfg = _cfg(tmp_path)
    c = choose_models(syn, real, cfg)
    assert c.sources == {"valence": ["vit_real_plus_synthetic"], "arousal": ["vit_real_only"]}  # ties: real-only
    assert c.prob_better["valence"] > 0.99 and c.prob_better["arousal"] == 0.0
    assert c.val_ccc["valence"]["vit_real_plus_synthetic"] == pytest.approx(
        ccc(syn_frame.valence_true, syn_frame.valence_pred)
    )
    assert c.table().set_index("dimension")["delivered from"].to_dict() == {
        "valence": "vit_real_plus_synthetic",
        "arousal": "vit_real_only",
    }

    # a little better (0.05 of the way to the truth, plus noise): better on more than half of the
    # resamples but not on 80% -> the mean of both; a tiny step (0.002): under half -> real-only
    def nudged(step: float) -> Outcome:
        frame = syn_frame.copy()
        frame["arousal_pred"] = (
            real.val_predictions["arousal_pred"]
            + step * (truth[:, 1] - real.val_predictions["arousal_pred"])
            + np.random.default_rng(5).normal(0, 0.05, 40)
        )
        return _outcome("vit_real_plus_synthetic", frame)

    tiny = choose_models(nudged(0.002), real, cfg)
    assert 0 < tiny.prob_better["arousal"] < 0.5 and tiny.sources["arousal"] == ["vit_real_only"]
    slight = choose_models(nudged(0.05), real, cfg)
    assert 0.5 <= slight.prob_better["arousal"] < 0.8, slight.prob_better
    assert slight.sources["arousal"] == ["vit_real_plus_synthetic", "vit_real_only"]
    said = slight.table().set_index("dimension").loc["arousal", "delivered from"]
    assert said == "mean of vit_real_plus_synthetic and vit_real_only"
    assert choice_mod.describe("vit_real_only") == "vit_real_only"  # a metrics.json with one name per dimension
    assert "mean of both" in slight.to_dict()["rule"]
    for forced, names in (
        ("synthetic", ["vit_real_plus_synthetic"]),
        ("real_only", ["vit_real_only"]),
        ("mean", ["vit_real_plus_synthetic", "vit_real_only"]),
    ):
        got = choose_models(syn, real, replace(cfg, deliver=forced))
        assert got.sources == {"valence": names, "arousal": names} and forced in got.to_dict()["rule"]
    alone = choose_models(None, real, replace(cfg, deliver="synthetic"))
    assert alone.sources == {d: ["vit_real_only"] for d in ("valence", "arousal")}
    assert "no synthetic-trained model" in alone.note
    assert alone.to_dict()["rule"] == alone.note  # not "forced by deliver='synthetic'": nothing was chosen


def test_a_synthetic_model_that_predicts_nan_on_validation_songs_is_never_chosen(tmp_path):
    """NaN predictions score CCC 0, which beats a negative real-only CCC: the rule must not take them."""
    truth = np.random.default_rng(0).uniform(-0.8, 0.8, (40, 2))
    real_frame = _val_frame(truth, (0.5, 0.2), seed=1)
    real_frame["valence_pred"] = -real_frame["valence_pred"]  # a negative validation CCC
    real = _outcome("vit_real_only", real_frame)
    syn_frame = _val_frame(truth, (0.1, 0.1), seed=2)
    syn_frame.loc[3, "valence_pred"] = np.nan
    syn = _outcome("vit_real_plus_synthetic", syn_frame)
    c = choose_models(syn, real, _cfg(tmp_path))
    assert c.val_ccc["valence"]["vit_real_plus_synthetic"] > c.val_ccc["valence"]["vit_real_only"]
    assert c.sources == {"valence": ["vit_real_only"], "arousal": ["vit_real_plus_synthetic"]}
    assert "non-finite valence" in c.note


BOTH = ["vit_real_plus_synthetic", "vit_real_only"]


@pytest.mark.parametrize(
    ("better", "syn_higher", "expected"),
    [
        (0.95, True, ["vit_real_plus_synthetic"]),
        (0.80, True, ["vit_real_plus_synthetic"]),  # at the confidence bar
        (0.95, False, ["vit_real_only"]),  # most resamples, but a lower validation CCC: no lean
        (0.60, False, ["vit_real_only"]),
        (0.79, True, BOTH),
        (0.50, True, BOTH),  # at the hedge bar
        (0.49, True, ["vit_real_only"]),
        (0.00, False, ["vit_real_only"]),
    ],
)
def test_the_choice_rule_in_each_zone_of_the_validation_evidence(tmp_path, monkeypatch, better, syn_higher, expected):
    """With a higher validation CCC: the synthetic-trained model at >= deliver_confidence, the mean
    of both at >= deliver_hedge; else the real-only model. P(better) fixed, the CCCs from frames."""
    truth = np.random.default_rng(0).uniform(-0.8, 0.8, (40, 2))
    real = _outcome("vit_real_only", _val_frame(truth, (0.3, 0.3), seed=1))
    syn = _outcome("vit_real_plus_synthetic", _val_frame(truth, (0.1, 0.1) if syn_higher else (0.6, 0.6), seed=2))
    monkeypatch.setattr(choice_mod, "prob_better", lambda a, b, seed=0: {"valence": better, "arousal": better})
    c = choose_models(syn, real, _cfg(tmp_path))
    assert all((c.val_ccc[d][syn.name] > c.val_ccc[d][real.name]) == syn_higher for d in ("valence", "arousal"))
    assert c.sources == {"valence": expected, "arousal": expected}
    none_hedged = choose_models(syn, real, replace(_cfg(tmp_path), deliver_hedge=0.8))
    if expected == BOTH and better < 0.8:
        assert none_hedged.sources["valence"] == ["vit_real_only"]  # hedge = confidence: the mean never taken


def test_config_refuses_a_hedge_above_the_confidence(tmp_path):
    with pytest.raises(ValueError, match="deliver_hedge <= deliver_confidence"):
        replace(_cfg(tmp_path), deliver_hedge=0.9)
    with pytest.raises(ValueError, match="deliver must be one of"):
        replace(_cfg(tmp_path), deliver="average")


def test_prob_better_is_a_paired_bootstrap():
    truth = np.random.default_rng(2).uniform(-1, 1, (12, 2))
    a, b = _val_frame(truth, (0.3, 0.3), seed=3), _val_frame(truth, (0.3, 0.3), seed=4)
    got = choice_mod.prob_better(a, b, n_boot=50, seed=9)
    idx = np.random.default_rng(9).integers(0, 12, size=(50, 12))
    for dim in ("valence", "arousal"):
        t, pa, pb = a[f"{dim}_true"].to_numpy(), a[f"{dim}_pred"].to_numpy(), b[f"{dim}_pred"].to_numpy()
        assert got[dim] == np.mean([ccc(t[i], pa[i]) > ccc(t[i], pb[i]) for i in idx])
    with pytest.raises(ValueError, match="same songs"):
        choice_mod.prob_better(a, b.iloc[::-1])


# ---- the judge and the delivered checkpoint, on a trained ViT ---------------------------------------


@pytest.fixture(scope="module")
def judged(cue_store, tmp_path_factory):
    """A real-only ViT trained on the cue songs (the judge) and the trainer that made it."""
    tmp = tmp_path_factory.mktemp("judge")
    cfg = _cfg(tmp)
    split = split_songs(cue_store.songs.song_id, 0.2, 0.2, seed=0)
    std = Standardizer.fit(cue_store.mels, cue_store.songs.set_index("song_id").loc[ids_of(split, "train"), "row"])
    trainer = Trainer(cfg, cue_store, split, None, std, find_pretrained(cfg), "cpu")
    reference = trainer.fit("vit_real_only", use_synthetic=False)
    return cfg, split, std, trainer, reference


def _training_windows(store, split, copies: int = 4):
    """The ideal generator: centre windows of the training songs, with their own labels."""
    ids = ids_of(split, "train") * copies
    labels = store.songs.set_index("song_id").loc[ids, ["valence", "arousal"]].to_numpy(np.float32)
    return store.centre_windows(ids), labels


def test_the_gate_opens_for_samples_that_carry_the_labels_and_closes_for_shuffled_valence(judged, cue_store, tmp_path):
    cfg, split, _, _, reference = judged
    hears = choice_mod.val_ccc(reference)
    assert hears["valence"] > 0.4 and hears["arousal"] > 0.6, hears  # the judge learned both cues
    mels, labels = _training_windows(cue_store, split)
    ideal = judge_synthetic(reference, _synthetic_set(tmp_path / "ideal.npy", mels, labels), cfg, "cpu")
    assert ideal.dims == "both" and not ideal.forced, ideal.table()
    shuffled = labels.copy()
    shuffled[:, 0] = np.random.default_rng(0).permutation(shuffled[:, 0])
    judgement = judge_synthetic(reference, _synthetic_set(tmp_path / "shuffled.npy", mels, shuffled), cfg, "cpu")
    assert judgement.dims == "arousal", judgement.table()
    assert judgement.synthetic_ccc["arousal"] == pytest.approx(ideal.synthetic_ccc["arousal"])
    # The intervals: the shuffled valence reading lies wholly below the carried one; the validation
    # interval is the judge's own (the same whatever the samples) and wider on 12 songs than on 144 samples.
    assert judgement.synthetic_interval["valence"][1] < ideal.synthetic_interval["valence"][0]
    assert judgement.val_interval == ideal.val_interval
    frame = reference.val_predictions  # an independent bootstrap of the same 12 songs agrees with it
    cols = [[f"{d}_{k}" for d in ("valence", "arousal")] for k in ("true", "pred")]
    independent = with_intervals(frame[cols[0]].to_numpy(), frame[cols[1]].to_numpy(), n_boot=4000, seed=123)
    for dim in ("valence", "arousal"):
        low, high = ideal.val_interval[dim]
        assert low < ideal.val_ccc[dim] < high
        ref = independent[dim]["ccc"]
        # 0.15: twice the largest Monte Carlo gap seen between 1000- and 4000-resample intervals here
        assert abs(low - ref["low"]) < 0.15 and abs(high - ref["high"]) < 0.15, (low, high, ref)
        assert ideal.synthetic_interval[dim][1] - ideal.synthetic_interval[dim][0] < high - low
    row = ideal.table().set_index("dimension").loc["arousal"]
    assert row["validation 95% interval"] == f"[{low:+.3f}, {high:+.3f}]"
    forced = judge_synthetic(
        reference, _synthetic_set(tmp_path / "f.npy", mels, shuffled), replace(cfg, synthetic_dims="both"), "cpu"
    )
    assert forced.dims == "both" and forced.forced and forced.passed == judgement.passed


@pytest.mark.slow
def test_a_gan_with_its_valence_input_shuffled_is_gated_off_on_valence(judged, cue_store, tmp_path):
    """The GAN learns from training songs whose valence labels were permuted: its samples for a
    valence carry no valence cue, and the judge closes valence (arousal stays open)."""
    cfg, split, std, _, reference = judged
    train = ids_of(split, "train")
    songs = cue_store.songs.copy()
    pos = songs.index[songs.song_id.isin(train)]
    songs.loc[pos, "valence"] = np.random.default_rng(3).permutation(songs.loc[pos, "valence"].to_numpy())
    scrambled = dataclasses.replace(cue_store, songs=songs)
    gan_cfg = replace(cfg, output_dir=str(tmp_path / "gan"), num_synthetic=200)
    gan = gan_train.train_or_load_gan(gan_cfg, scrambled, split, train, std, "cpu")
    judgement = judge_synthetic(reference, gan_train.synthesize(gan, gan_cfg, "cpu"), cfg, "cpu")
    assert judgement.dims == "arousal", judgement.table()


def test_choice_and_gate_read_training_and_validation_songs_only(judged, cue_store, tmp_path, monkeypatch):
    """Spy on every prediction pass: the judge predicts synthetic rows only; its validation CCC is that
    of its validation predictions (validation songs); the choice needs no test result (_Unreadable)."""
    cfg, split, _, trainer, reference = judged
    passes = []
    real = vt.predict_dataset

    def spy(model, pre, ds, *args, **kwargs):
        passes.append((ds.song_ids, ds.files))
        return real(model, pre, ds, *args, **kwargs)

    monkeypatch.setattr(choice_mod, "predict_dataset", spy)
    mels, labels = _training_windows(cue_store, split, copies=1)
    synthetic = _synthetic_set(tmp_path / "syn.npy", mels, labels)
    judgement = judge_synthetic(reference, synthetic, cfg, "cpu")
    assert passes == [([], [synthetic.path])]  # synthetic samples only: no real song of any split
    assert list(reference.val_predictions.song_id) == ids_of(split, "val")
    row = reference.run.history[reference.run.best_epoch - 1]  # the kept epoch's validation pass
    assert judgement.val_ccc == pytest.approx({"valence": row["val_ccc_valence"], "arousal": row["val_ccc_arousal"]})
    blind = _outcome("vit_real_only", reference.val_predictions)
    other = _outcome("vit_real_plus_synthetic", reference.val_predictions.assign(valence_pred=0.0))
    choose_models(other, blind, cfg)  # raises if it touched test predictions or test metrics


def test_the_judge_trains_on_training_songs_and_selects_on_validation_songs(judged, cue_store, monkeypatch, tmp_path):
    cfg, split, std, _, _ = judged
    seen = {}
    real = vt.train_vit

    def spy(model, pre, train_ds, val_ds, *args, **kwargs):
        seen["train"], seen["val"] = train_ds.song_ids, val_ds.song_ids
        seen["files"] = train_ds.files
        return real(model, pre, train_ds, val_ds, *args, **kwargs)

    monkeypatch.setattr("emovit.runs.train_vit", spy)
    synthetic = _synthetic_set(tmp_path / "syn.npy", np.zeros((4, 32, 64)), np.zeros((4, 2)))
    trainer = Trainer(
        replace(cfg, output_dir=str(tmp_path / "o"), vit_epochs=1),
        cue_store,
        split,
        synthetic,
        std,
        find_pretrained(cfg),
        "cpu",
    )
    trainer.fit("vit_real_only", use_synthetic=False)
    assert seen["train"] == ids_of(split, "train") and seen["val"] == ids_of(split, "val")
    assert seen["files"] == [cue_store.path]  # no synthetic rows either


def test_delivered_checkpoint_routes_each_dimension_to_the_chosen_model(judged, cue_store, tmp_path):
    """Two trained models, valence from one and arousal from the other: best_vit_model.pth rebuilt by
    the prediction path gives, on the same images, each member's own column; the delivered test
    predictions are the members' columns; one source -> one backbone; a dimension that names both
    is their mean, in the checkpoint and in the predictions."""
    cfg, split, _, trainer, reference = judged
    other = trainer.fit("other", seed=7)  # another trained model on the same inputs
    outcomes = {"vit_real_only": reference, "other": other}
    c = Choice({"valence": ["other"], "arousal": ["vit_real_only"]}, {}, {}, "auto", 0.8, 0.5)
    path = str(tmp_path / "best_vit_model.pth")
    delivered = deliver(c, outcomes, path, n_boot=20, seed=0)
    assert delivered.name == DELIVERED
    np.testing.assert_array_equal(delivered.predictions["valence_pred"], other.predictions["valence_pred"])
    np.testing.assert_array_equal(delivered.predictions["arousal_pred"], reference.predictions["arousal_pred"])
    state = torch.load(path, weights_only=True)
    model = regressor_from_checkpoint(state).eval()
    assert isinstance(model, RoutedRegressor) and state["members"] == ["other", "vit_real_only"]
    pixels = torch.randn(5, 3, 32, 64)
    members = [regressor_from_checkpoint(torch.load(o.best_path, weights_only=True)).eval() for o in (other, reference)]
    with torch.no_grad():
        out, a, b = model(pixels), members[0](pixels), members[1](pixels)
    torch.testing.assert_close(out[:, 0], a[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1], b[:, 1], rtol=0, atol=0)
    single = deliver(
        Choice({"valence": ["other"], "arousal": ["other"]}, {}, {}, "auto", 0.8, 0.5),
        outcomes,
        str(tmp_path / "single.pth"),
        n_boot=20,
        seed=0,
    )
    assert torch.load(single.best_path, weights_only=True)["members"] == ["other"]
    pd.testing.assert_frame_equal(single.predictions, other.predictions)
    assert ccc(delivered.predictions.valence_true, delivered.predictions.valence_pred) == pytest.approx(
        delivered.metrics["valence"]["ccc"]["value"]
    )
    assert os.path.getsize(single.best_path) < os.path.getsize(path)
    hedged = deliver(
        Choice({"valence": ["other"], "arousal": ["other", "vit_real_only"]}, {}, {}, "auto", 0.8, 0.5),
        outcomes,
        str(tmp_path / "hedged.pth"),
        n_boot=20,
        seed=0,
    )
    np.testing.assert_array_equal(hedged.predictions["valence_pred"], other.predictions["valence_pred"])
    mean = (other.predictions["arousal_pred"] + reference.predictions["arousal_pred"]).to_numpy() / 2
    np.testing.assert_allclose(hedged.predictions["arousal_pred"], mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        hedged.val_predictions["arousal_pred"],
        (other.val_predictions["arousal_pred"] + reference.val_predictions["arousal_pred"]).to_numpy() / 2,
        rtol=0,
        atol=1e-12,
    )
    assert hedged.description == "valence from other, arousal from mean of other and vit_real_only"
    state = torch.load(hedged.best_path, weights_only=True)
    assert state["members"] == ["other", "vit_real_only"] and state["sources"] == [[0], [0, 1]]
    with torch.no_grad():
        out = regressor_from_checkpoint(state).eval()(pixels)
    torch.testing.assert_close(out[:, 0], a[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1], (a[:, 1] + b[:, 1]) / 2, rtol=1e-6, atol=1e-6)


def test_members_with_different_preprocessing_are_not_combined(judged, tmp_path):
    """Every member runs on the first member's pixels: a checkpoint whose pixel scaling differs is refused."""
    _, _, _, trainer, reference = judged
    other = trainer.fit("other", seed=7)
    state = torch.load(other.best_path, weights_only=True)
    state["preprocess"]["clip_std"] = 2.0
    path = str(tmp_path / "other_clip2.pth")
    torch.save(state, path)
    outcomes = {"vit_real_only": reference, "other": dataclasses.replace(other, best_path=path)}
    c = Choice({"valence": ["other"], "arousal": ["vit_real_only"]}, {}, {}, "auto", 0.8, 0.5)
    with pytest.raises(ValueError, match="differ in preprocess"):
        deliver(c, outcomes, str(tmp_path / "best.pth"), n_boot=20, seed=0)


def test_routed_regressor_reads_single_member_routes_and_refuses_empty_ones():
    """A format-3 checkpoint names one member index per dimension: the same as a list of one."""
    members = [torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)]
    x = torch.randn(4, 3)
    with torch.no_grad():
        old, new = RoutedRegressor(members, (1, 0))(x), RoutedRegressor(members, ([1], [0]))(x)
        want = torch.stack([members[1](x)[:, 0], members[0](x)[:, 1]], 1)
    torch.testing.assert_close(old, want, rtol=0, atol=0)
    torch.testing.assert_close(new, want, rtol=0, atol=0)
    for bad in (([], [0]), ([0], [2]), ([0],)):
        with pytest.raises(ValueError, match="sources must name members"):
            RoutedRegressor(members, bad)
