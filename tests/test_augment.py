"""Learning more from few songs: random crops, SpecAugment, mixup, test-time averaging, other input shapes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import tiny_config

from emovit import vit_train as vt
from emovit.config import replace
from emovit.deam import discover
from emovit.features import crop_starts, extract_features
from emovit.predict import Predictor
from emovit.split import fit_standardizer, ids_of, split_songs
from emovit.vit import IN21K_DEFAULT, DevicePreprocessor, SpecAugment, build_model, find_pretrained
from emovit.vit_train import MelDataset, augmented_examples, make_datasets, mixup, predict_dataset, train_vit


@pytest.fixture
def setup(small_demo, tmp_path):
    """12 demo songs of 6 s: 5 s clips (offset 1 s), 2 s windows -> crops have room to move."""
    cfg = tiny_config(
        data_dir=str(small_demo),
        output_dir=str(tmp_path / "out"),
        clip_seconds=2.0,
        clip_offset=1.0,
        max_clip_seconds=5.0,
        random_vit_layers=1,
        vit_epochs=2,
        n_bootstrap=20,
    )
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    split = split_songs(store.songs.song_id, 0.25, 0.25, seed=0)
    return cfg, store, split, fit_standardizer(store, split)


def test_spec_augment_masks_in_training_mode_only():
    torch.manual_seed(0)
    pre = DevicePreprocessor(
        -40.0,
        10.0,
        *IN21K_DEFAULT,
        size=(64, 64),
        spec_augment=SpecAugment(freq_masks=1, freq_mask_max=8, time_masks=1, time_mask_max_fraction=0.25),
    )
    plain = DevicePreprocessor(-40.0, 10.0, *IN21K_DEFAULT, size=(64, 64))
    mel = torch.randn(16, 32, 80) * 10 - 40
    pre.eval()
    torch.testing.assert_close(pre(mel), plain(mel))  # eval: never masked
    pre.train()
    torch.testing.assert_close(pre(mel), plain(mel))  # training without spans: never masked
    augment = pre.spec_augment
    z = (mel - -40.0) / 10.0
    spans = pre.sample_spans(16, 32, 80, torch.Generator().manual_seed(1))
    assert spans.shape == (16, 2, 2)  # (items, 1 frequency + 1 time mask, (start, width))
    assert (spans[:, 0, 1] <= 8).all() and (spans[:, 1, 1] <= 20).all()
    assert torch.equal(spans, pre.sample_spans(16, 32, 80, torch.Generator().manual_seed(1)))  # the generator's
    pre.eval()
    torch.testing.assert_close(pre(mel, spans), plain(mel))  # eval: never masked, spans or not
    pre.train()
    masked = augment(z, spans)
    hit = masked != z
    assert hit.any() and (masked[hit] == 0).all()  # masks set the mean level (0 after standardization)
    for item in masked == 0:  # contiguous bands / spans no wider than the maxima
        full_rows = item.all(dim=1).sum().item()
        full_cols = item.all(dim=0).sum().item()
        assert full_rows <= 8 and full_cols <= 20
    assert not torch.equal(pre(mel, spans), plain(mel))
    for i in range(16):  # exactly the sampled bands and frames are masked
        (fs, fw), (ts, tw) = spans[i].tolist()
        rows = torch.zeros(32, dtype=torch.bool)
        rows[fs : fs + fw] = True
        cols = torch.zeros(80, dtype=torch.bool)
        cols[ts : ts + tw] = True
        assert torch.equal(masked[i] == 0, rows[:, None] | cols[None, :])


def test_dataset_items_are_never_masked_and_evaluation_never_augments(setup):
    """Masks live only on the device preprocessing path: items equal the stored windows, and
    predict_dataset puts the preprocessor in eval mode whatever mode it was left in."""
    cfg, store, split, std = setup
    train, val, _ = make_datasets(store, split, None, cfg)
    mel, y, w = train[0]
    part = train.parts[0]
    start = train.starts(0)[0]
    np.testing.assert_array_equal(mel.numpy(), np.asarray(store.mels[part.rows[0], :, start : start + train.window]))
    found = find_pretrained(cfg)
    model = build_model(cfg, found)
    pre = DevicePreprocessor.from_config(cfg, std, found)
    pre.train()
    first = predict_dataset(model, pre, val, cfg, "cpu")[0]
    pre.train()
    np.testing.assert_array_equal(first, predict_dataset(model, pre, val, cfg, "cpu")[0])


def test_the_notebooks_augmented_batch_is_masked_like_training_and_leaves_eval_mode(setup):
    """augmented_examples (the notebook's figure of one batch): the first items of the epoch, masked
    with the spans of that epoch's first step, the preprocessor back in eval mode."""
    cfg, store, split, std = setup
    train, _, _ = make_datasets(store, split, None, cfg)
    pre = DevicePreprocessor.from_config(cfg, std, find_pretrained(cfg))
    images, labels = augmented_examples(train, pre, cfg, "cpu", count=4)
    assert images.shape == (4, 3, cfg.image_height, cfg.image_width) and labels.shape == (4, 2)
    assert not pre.training
    mel, _, _ = next(iter(vt._loader(train, replace(cfg, vit_batch_size=4, loader_workers=0), "cpu", 1, samples=4)))
    plain = pre(mel).numpy()
    spans = pre.sample_spans(4, mel.shape[1], mel.shape[2], vt.step_generator(cfg.seed, 1, 0))
    pre.train()
    np.testing.assert_allclose(images, pre(mel, spans).numpy(), atol=1e-6)
    assert not np.allclose(images, plain)  # masked


def test_random_crops_differ_between_epochs_and_repeat_within_one(setup):
    cfg, store, split, _ = setup
    train, _, _ = make_datasets(store, split, None, cfg)
    assert train.mode == "random"
    frames = train.parts[0].frames
    assert (frames > train.window).all()
    train.epoch = 1
    first = [int(train.starts(i)[0]) for i in range(len(train))]
    assert first == [int(train.starts(i)[0]) for i in range(len(train))]  # a resumed epoch redraws the same
    train.epoch = 2
    second = [int(train.starts(i)[0]) for i in range(len(train))]
    assert sum(a != b for a, b in zip(first, second)) >= len(train) // 2
    assert all(0 <= s <= f - train.window for s, f in zip(first + second, np.concatenate([frames, frames])))
    centre, _, _ = make_datasets(store, split, None, replace(cfg, random_crop=False))
    assert [int(centre.starts(i)[0]) for i in range(len(centre))] == [(f - centre.window) // 2 for f in frames]


def test_test_time_averaging_equals_a_hand_average(setup):
    cfg, store, split, std = setup
    _, val, test = make_datasets(store, split, None, cfg)
    assert test.mode == "crops" and test.crops == 3 and test.song_ids == ids_of(split, "test")
    found = find_pretrained(cfg)
    model = build_model(cfg, found).eval()
    pre = DevicePreprocessor.from_config(cfg, std, found).eval()
    pred, true = predict_dataset(model, pre, test, cfg, "cpu")
    np.testing.assert_array_equal(pred, predict_dataset(model, pre, test, cfg, "cpu")[0])  # deterministic
    songs = store.songs.set_index("song_id")
    window = store.params.num_frames
    for k, sid in enumerate(test.song_ids):
        row = np.asarray(store.mels[songs.at[sid, "row"]], dtype=np.float32)
        starts = crop_starts(songs.at[sid, "frames"], window, 3)
        assert len(set(starts.tolist())) == 3  # three different windows
        with torch.no_grad():
            outs = [model(pre(torch.from_numpy(row[None, :, s : s + window]))) for s in starts]
        np.testing.assert_allclose(pred[k], torch.cat(outs).mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(true[k], songs.loc[sid, ["valence", "arousal"]].to_numpy(np.float32))
    one = make_datasets(store, split, None, replace(cfg, test_crops=1))[2]
    assert one.crops == 1 and one[0][0].shape == (1, cfg.n_mels, window)


def test_mixup_alpha_zero_is_the_identity_and_mixes_convexly():
    # Item i is the constant i, and so are its labels: a mixed item must equal its mixed label.
    mel = torch.arange(8.0)[:, None, None].expand(8, 4, 10).clone()
    y, w = torch.arange(8.0)[:, None].expand(8, 2).clone(), torch.linspace(0.5, 1.0, 8)
    whole = slice(0, 8)
    out = mixup(mel, y, w, 0.0, torch.Generator().manual_seed(1), whole)
    assert out[0] is mel and out[1] is y and out[2] is w
    m2, y2, w2 = mixup(mel, y, w, 0.4, torch.Generator().manual_seed(1), whole)
    assert not torch.equal(m2, mel)
    m3, _, _ = mixup(mel, y, w, 0.4, torch.Generator().manual_seed(1), whole)
    assert torch.equal(m2, m3)  # the step's generator decides the partners and lambda, nothing else
    torch.testing.assert_close(m2[:, 0, 0], y2[:, 0])  # same lambda and partner for spectrogram and label
    torch.testing.assert_close(m2.amax(dim=(1, 2)), m2.amin(dim=(1, 2)))  # a convex blend of two constants
    assert (w2 >= 0.5 - 1e-6).all() and (w2 <= 1.0 + 1e-6).all()


def test_other_input_shape_trains_and_reloads_from_the_checkpoint(setup):
    """128 x 512 (close to a spectrogram's own aspect) through interpolated position embeddings."""
    cfg, store, split, std = setup
    cfg = replace(cfg, image_height=128, image_width=512, vit_epochs=1)
    train, val, test = make_datasets(store, split, None, cfg)
    found = find_pretrained(cfg)
    model = build_model(cfg, found)
    pre = DevicePreprocessor.from_config(cfg, std, found)
    assert pre(torch.zeros(2, cfg.n_mels, store.params.num_frames)).shape == (2, 3, 128, 512)
    best = os.path.join(cfg.output_dir, "best.pth")
    train_vit(model, pre, train, val, cfg, "cpu", "shape", best, os.path.join(cfg.output_dir, "last.pth"))
    state = torch.load(best, weights_only=True)
    assert (state["preprocess"]["height"], state["preprocess"]["width"]) == (128, 512)
    predictor = Predictor(best)
    assert (predictor.pre.height, predictor.pre.width) == (128, 512)
    audio = store.songs.set_index("song_id").at[ids_of(split, "test")[0], "audio_path"]
    out = predictor(audio)
    assert np.isfinite([out["valence"], out["arousal"]]).all()
    with pytest.raises(ValueError, match="multiples of 16"):
        DevicePreprocessor(0.0, 1.0, *IN21K_DEFAULT, size=(100, 224))


def test_pretrained_224_backbone_takes_128_by_512(tmp_path, setup):
    """A backbone saved at 224 x 224 (the real loading path) runs 128 x 512 inputs."""
    from transformers import ViTConfig, ViTModel

    cfg, _, _, _ = setup
    folder = tmp_path / "vit"
    ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=224,
            patch_size=16,
        )
    ).save_pretrained(folder)
    cfg = replace(cfg, vit_local_dir=str(folder), allow_random_vit=False, image_height=128, image_width=512)
    model = build_model(cfg, find_pretrained(cfg))
    assert model(torch.zeros(2, 3, 128, 512)).shape == (2, 2)
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 2)


def test_centre_dataset_of_one_window_clips():
    """A store exactly one window wide: every mode gives that window."""
    import tempfile

    from emovit.vit_train import Part

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.npy")
        np.save(path, np.arange(2 * 3 * 5, dtype=np.float16).reshape(2, 3, 5))
        part = Part(path, np.array([1, 0]), np.zeros((2, 2), np.float32), 1.0, np.array([5, 5]), [7, 8])
        for mode in ("random", "centre", "crops"):
            ds = MelDataset([part], window=5, mode=mode, crops=2)
            mel = ds[0][0].numpy()
            expected = np.arange(15, 30, dtype=np.float16).reshape(3, 5)
            np.testing.assert_array_equal(mel[0] if mode == "crops" else mel, expected)
