"""Conditional GAN: shapes, conditioning, train-only guard, NaN handling, no D-step graph, fp32
pooling, checkpoints (EMA, stale architectures), cache keys, and a learning test."""

import math
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from emovit import gan as G
from emovit import gan_train
from emovit.config import make_config, replace
from emovit.deam import discover
from emovit.features import extract_features
from emovit.split import Standardizer, ids_of, split_songs


@pytest.mark.parametrize("n_mels,frames", [(64, 431), (128, 1292)])
def test_shapes_crops_and_full_length(n_mels, frames):
    arch = G.GanArch(n_mels=n_mels, frames=frames, z_dim=16, channels=4)
    gen, disc = G.Generator(arch), G.Discriminator(arch)
    y = torch.rand(2, 2) * 2 - 1
    x = gen(torch.randn(2, 16), y)
    assert x.shape == (2, 1, n_mels, frames)
    assert x.min() >= arch.out_low and x.max() <= arch.out_high
    crop = gen(torch.randn(2, 16), y, frames=128)  # training crops: the same weights, any length
    assert crop.shape == (2, 1, n_mels, 128)
    assert disc(x, y).shape == disc(crop, y).shape == (2,)


@pytest.mark.parametrize("n_mels,z_dim,channels", [(64, 32, 8), (128, 128, 32)])  # the demo and kaggle sizes
def test_discriminator_at_least_as_large_as_generator(n_mels, z_dim, channels):
    arch = G.GanArch(n_mels=n_mels, frames=1292, z_dim=z_dim, channels=channels)
    assert G.count_parameters(G.Discriminator(arch)) >= G.count_parameters(G.Generator(arch))


def test_band_moments_exact():
    x = torch.tensor([[[[1.0, 3.0], [2.0, 2.0]]]])  # (1, 1, 2 bands, 2 frames)
    assert torch.allclose(G.band_moments(x), torch.tensor([[2.0, 2.0, 2.0**0.5, 0.0]]))


def test_band_statistics_branch_of_the_discriminator():
    """gan_d_band_stats: D's features gain widths[-1] columns read from each band's mean / std
    over time, so two inputs that differ only in a band's time variance score differently."""
    torch.manual_seed(0)
    arch = G.GanArch(n_mels=32, frames=64, z_dim=8, channels=4, d_band_stats=True)
    disc, plain = G.Discriminator(arch).eval(), G.Discriminator(G.GanArch(n_mels=32, frames=64, z_dim=8, channels=4))
    assert disc.features_dim == plain.features_dim + 8 * 4
    assert G.count_parameters(disc) >= G.count_parameters(G.Generator(arch))
    x, y = torch.randn(2, 1, 32, 64), torch.rand(2, 2)
    assert disc.features(x).shape == (2, disc.features_dim) and disc(x, y).dtype == torch.float32
    stats = disc.features(x)[:, plain.features_dim :]
    swapped = disc.features(x.flip(3))[:, plain.features_dim :]  # time order does not change band moments
    assert torch.allclose(stats, swapped, atol=1e-5)


def _d_statistics_hear_time_order(x: torch.Tensor, shuffled: torch.Tensor, extra: int, **option) -> None:
    """D's band statistics (x: (B, 1, 32, W)) without and with ``option``, which adds ``extra`` per
    band: equal for x and its shuffled frames without it, different with it; D scores the batch."""
    base = dict(n_mels=32, frames=x.shape[3], z_dim=8, channels=4, d_band_stats=True)
    for arch, n_extra in ((G.GanArch(**base), 0), (G.GanArch(**base, **option), extra)):
        disc = G.Discriminator(arch)
        disc.set_band_normalization(torch.cat([x, shuffled]))
        assert disc.stats_shift.shape == ((2 + n_extra) * 32,)
        same = torch.allclose(disc.band_statistics(x), disc.band_statistics(shuffled), atol=1e-5)
        assert same == (n_extra == 0)
        assert disc(x, torch.rand(len(x), 2)).shape == (len(x),)


def test_slow_movement_lets_the_discriminator_hear_level_changes():
    """gan_d_slow_frames: D's band statistics gain each band's std over time of its level averaged
    over segments (slow_movement). A crop whose bands step between two levels (chord or section
    changes) and the same crop with its frames shuffled have equal band moments, so D's statistics
    differ only with the option; too short a crop for two segments is a clear error."""
    x = torch.tensor([[[[0.0, 2.0, 0.0, 2.0, 4.0, 6.0, 4.0, 6.0, 9.0]]]])  # 1 band, segments of 4 frames
    torch.testing.assert_close(G.slow_movement(x, 4), torch.tensor([[8.0**0.5]]))  # means 1, 5: std 2^1.5
    with pytest.raises(ValueError, match="two 8-frame segments"):
        G.slow_movement(x, 8)
    torch.manual_seed(0)
    level = (torch.rand(6, 1, 32, 1) + 0.5) * torch.randn(6, 1, 32, 1).sign()  # each band's step, |.| >= 0.5
    steps = torch.randn(6, 1, 32, 64) * 0.3 + (torch.arange(64) >= 32).float() * level
    shuffled = steps[..., torch.randperm(64)]
    torch.testing.assert_close(G.band_moments(steps), G.band_moments(shuffled))
    _d_statistics_hear_time_order(steps, shuffled, 1, d_slow_frames=16)
    assert G.slow_movement(steps, 16).mean() > 3 * G.slow_movement(shuffled, 16).mean()  # steps move, shuffled do not


def test_lag_statistics_let_the_discriminator_hear_held_notes_and_beats():
    """gan_d_lags: D's band statistics gain each band's autocorrelation over time at lags 1, 2, 4, ...
    A band that holds a level and one that repeats a beat have the same moments as their shuffled
    frames, which the lags alone tell apart; the values are the autocorrelation (a sine of period 32
    frames reads cos(2 pi k / 32) at lag k, i.i.d. noise ~0)."""
    assert G.lags(0) == [] and G.lags(16) == [1, 2, 4, 8, 16] and G.lags(12) == [1, 2, 4, 8]
    t = torch.arange(512, dtype=torch.float32)
    sine = torch.sin(2 * math.pi * t / 32)[None, None, None].expand(1, 1, 2, 512)
    ac = G.band_autocorrelation(sine, [1, 8, 16]).view(3, 2)
    torch.testing.assert_close(ac[:, 0], torch.tensor([math.cos(2 * math.pi / 32), 0.0, -1.0]), atol=0.03, rtol=0)
    torch.manual_seed(0)
    noise = torch.randn(4, 1, 2, 4096)
    assert G.band_autocorrelation(noise, [1, 4]).abs().max() < 0.1
    held = torch.randn(6, 1, 32, 64).repeat_interleave(4, dim=3)  # each level held for 4 frames
    shuffled = held[..., torch.randperm(256)]
    torch.testing.assert_close(G.band_moments(held), G.band_moments(shuffled))
    _d_statistics_hear_time_order(held, shuffled, 4, d_lags=8)
    lag2 = G.band_autocorrelation(held, [2]).mean()
    assert lag2 > 0.4 > G.band_autocorrelation(shuffled, [2]).abs().mean()  # held levels persist (0.5 expected)


def test_bilinear_upsampling_reaches_the_generator_and_its_key():
    """gan_upsample: "bilinear" replaces G's nearest-neighbour 2x steps with the same weights (a
    checkpoint of either loads into the other; the outputs differ), is part of the GAN's key, so a
    GAN trained one way is never reused as the other, and any other value is a clear error. The
    same for gan_d_lags, which sizes D's statistics."""
    cfg = tiny_config(gan_upsample="bilinear")
    arch = gan_train.arch_from_config(cfg, n_mels=32)
    assert arch.upsample == "bilinear" and gan_train.arch_from_config(tiny_config(), n_mels=32).upsample == "nearest"
    torch.manual_seed(0)
    smooth, blocky = G.Generator(arch), G.Generator(replace_arch(arch, upsample="nearest"))
    blocky.load_state_dict(smooth.state_dict())
    smooth.eval(), blocky.eval()
    z, y = torch.randn(2, arch.z_dim), torch.rand(2, 2) * 2 - 1
    noise = torch.randn(smooth.noise_shape(2, 64))
    a, b = smooth(z, y, noise, frames=64), blocky(z, y, noise, frames=64)
    assert a.shape == b.shape == (2, 1, 32, 64) and not torch.allclose(a, b)
    assert {"gan_upsample", "gan_d_lags"} <= set(gan_train.GAN_FIELDS)
    with pytest.raises(ValueError, match="gan_upsample must be one of"):
        tiny_config(gan_upsample="cubic")
    across = G.Generator(replace_arch(arch, upsample="bilinear-freq"))
    across.load_state_dict(smooth.state_dict())
    c = across.eval()(z, y, noise, frames=64)
    assert c.shape == a.shape and not torch.allclose(c, a) and not torch.allclose(c, b)
    assert gan_train.arch_from_config(tiny_config(gan_upsample="bilinear-freq"), n_mels=32).upsample == "bilinear-freq"


def test_bilinear_freq_upsampling_interpolates_bands_and_repeats_frames():
    """(B, C, bands, frames) -> twice each: every frame is repeated as it is (onsets stay one step),
    every band profile is the bilinear one, and a map constant across bands comes out as nearest's."""
    x = torch.randn(2, 3, 4, 5)
    up = G.upsample(x, "bilinear-freq")
    assert up.shape == (2, 3, 8, 10)
    assert torch.equal(up[..., 0::2], up[..., 1::2])
    bands = F.interpolate(x, scale_factor=(2, 1), mode="bilinear")
    torch.testing.assert_close(up[..., 0::2], bands)
    flat = x[:, :, :1].expand(-1, -1, 4, -1)
    torch.testing.assert_close(G.upsample(flat, "bilinear-freq"), G.upsample(flat, "nearest"))
    torch.testing.assert_close(G.upsample(x, "bilinear"), F.interpolate(x, scale_factor=2, mode="bilinear"))
    with pytest.raises(ValueError, match="gan_d_lags must be >= 0"):
        tiny_config(gan_d_lags=-1)


def replace_arch(arch, **changes):
    return G.GanArch(**{**arch.to_dict(), **changes})


def test_slow_noise_drifts_over_its_columns_and_keeps_unit_variance():
    """gan_slow_noise: half of G's noise channels become a moving average over ``columns`` starting-grid
    columns, rescaled: unit variance, neighbours correlated (a level that drifts over bars), columns
    ``columns`` apart independent; the other half stays the i.i.d. noise given. G applies it to the
    noise it is given (samples stay reproducible from z and noise) and adds no weights."""
    torch.manual_seed(0)
    noise = torch.randn(4000, 8, 2, 30)
    slow = G.slow_noise(noise, 8)
    torch.testing.assert_close(slow[:, 4:], noise[:, 4:])
    inner = slow[:, :4, :, 8:22]  # away from the replicated edges
    assert abs(float(inner.std()) - 1) < 0.02
    a = slow[:, 0, 0]

    def corr(i, j):
        return float(torch.corrcoef(torch.stack([a[:, i], a[:, j]]))[0, 1])

    assert corr(12, 13) > 0.8 and abs(corr(12, 20)) < 0.05 and abs(corr(12, 13) - 7 / 8) < 0.03
    arch = G.GanArch(n_mels=32, frames=64, z_dim=8, channels=4, margin=3, slow_noise=4)
    gen = G.Generator(arch).eval()
    plain = G.Generator(G.GanArch(**{**arch.to_dict(), "slow_noise": 0})).eval()
    plain.load_state_dict(gen.state_dict())  # same weights: the option adds none
    z, y, n = torch.randn(2, 8), torch.rand(2, 2), torch.randn(gen.noise_shape(2))
    assert gen(z, y, noise=n).shape == (2, 1, 32, 64)
    torch.testing.assert_close(gen(z, y, noise=n), plain(z, y, noise=G.slow_noise(n, 4)))  # G smooths the noise
    assert not torch.allclose(gen(z, y, noise=n), plain(z, y, noise=n))


def test_batch_spread_lets_the_discriminator_see_song_to_song_variety():
    """gan_d_batch_spread: a sample's score depends on the batch around it through the batch's std
    of each standardized band statistic -- the same sample scores differently beside copies of
    itself (no variety, as a generator that ignores its noise makes) than beside other songs; without
    the option a sample's score is its own."""
    torch.manual_seed(0)
    base = dict(n_mels=32, frames=64, z_dim=8, channels=4, d_band_stats=True)
    x, y = torch.randn(4, 1, 32, 64) * torch.rand(4, 1, 32, 1) * 2, torch.rand(4, 2)
    copies = x[:1].expand(4, -1, -1, -1)
    for spread in (False, True):
        disc = G.Discriminator(G.GanArch(**base, d_batch_spread=spread))
        with torch.no_grad():
            for _ in range(30):  # spectral norm's power iteration settles (a fresh estimate is arbitrary)
                disc(x, y)
            disc.eval()
            in_variety, alone = disc(x, y)[0], disc(copies, y[:1].expand(4, -1))[0]
        assert torch.isclose(in_variety, alone, atol=1e-5) != spread
    assert disc(x[:1], y[:1]).shape == (1,)  # a batch of one: spread 0, no NaN
    assert torch.isfinite(disc(x[:1], y[:1])).all()


def test_band_statistics_are_standardized_by_the_real_crops():
    """set_band_normalization: the real crops' band moments enter D's statistics MLP with mean 0
    and std 1 per feature, so a spread of ~0.2 standardized units is not lost under spectral norm;
    the statistics are buffers, saved with D's weights."""
    torch.manual_seed(0)
    arch = G.GanArch(n_mels=32, frames=64, z_dim=8, channels=4, d_band_stats=True)
    disc = G.Discriminator(arch)
    real = 0.1 * torch.randn(40, 1, 32, 64) * torch.rand(40, 1, 32, 1) + torch.rand(40, 1, 32, 1)
    disc.set_band_normalization(real)
    seen = (G.band_moments(real) - disc.stats_shift) / disc.stats_scale
    torch.testing.assert_close(seen.mean(dim=0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen.std(dim=0), torch.ones(64), atol=1e-4, rtol=0)
    state = disc.state_dict()
    assert {"stats_shift", "stats_scale"} <= set(state)
    fresh = G.Discriminator(arch)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.stats_scale, disc.stats_scale)


def test_mode_seeking_term_pushes_same_label_pairs_apart():
    """gan_mode_seeking: with a generator that ignores z (all its z weights zeroed) the pairs
    sharing a label are identical, so the term adds exactly weight * target (> 0) to the loss;
    with the weight 0 the loss is the plain hinge loss."""
    torch.manual_seed(0)
    arch = G.GanArch(n_mels=32, frames=64, z_dim=8, channels=4)
    gen, disc = G.Generator(arch).eval(), G.Discriminator(arch)
    real, y = torch.randn(4, 1, 32, 64), torch.rand(4, 2)
    with torch.no_grad():  # converge spectral norm's power iteration, then freeze it (eval)
        for _ in range(30):
            disc(real, y)
    disc.eval()
    with torch.no_grad():
        gen.global_proj.weight[:, arch.embed_dim :] = 0  # z enters through global_proj and the CBN affines
    noise = torch.zeros(gen.noise_shape(4, 64))
    fixed = lambda z, labels, frames: gen(z, labels, noise=noise, frames=frames)  # noqa: E731
    fixed.arch = arch
    off = make_config("demo", gan_diffaugment="", gan_mode_seeking=0.0)
    on = replace(off, gan_mode_seeking=2.0)
    no_autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    torch.manual_seed(1)
    base = gan_train.generator_step_loss(fixed, disc, y[[0, 1, 0, 1]], 64, off, no_autocast, None, real=real)
    torch.manual_seed(1)
    seek = gan_train.generator_step_loss(fixed, disc, y, 64, on, no_autocast, None, real=real)
    torch.manual_seed(1)
    z = torch.randn(4, 8)
    s = G.band_moments(real)
    target = ((s[:2] - s[2:]).abs().mean(dim=1) / (z[:2] - z[2:]).abs().mean(dim=1)).mean()
    assert torch.allclose(seek - base, 2.0 * target, rtol=1e-4), (seek - base, target)


def test_style_codes_recover_what_the_labels_leave():
    """StyleCodes on band means = a quadratic function of the labels + two hidden per-song
    factors along random band profiles + small noise: the scores of the training songs have unit
    variance, carry nothing of the labels, and span what the labels leave of the hidden factors
    (R^2 > 0.999); forward() on spectrograms
    with those band means gives the same scores; a k the songs cannot support is a clear error."""
    rng = np.random.default_rng(0)
    n, n_mels = 200, 16
    y = torch.from_numpy(rng.uniform(-1, 1, (n, 2)))
    hidden = rng.normal(0, 1, (n, 2))
    means = (
        G.label_design(y).numpy() @ rng.normal(0, 1, (6, n_mels))
        + hidden @ rng.normal(0, 2, (2, n_mels))
        + rng.normal(0, 0.01, (n, n_mels))
    )
    means = torch.from_numpy(means)
    style = G.StyleCodes.fit(means, y, 2)
    x = means[:, None, :, None].expand(n, 1, n_mels, 8).float()  # spectrograms constant in time
    codes = style(x, y.float()).double().numpy()
    np.testing.assert_allclose(codes.var(axis=0, ddof=6), 1.0, rtol=1e-3)
    design = G.label_design(y).numpy()
    explained = design @ np.linalg.lstsq(design, codes, rcond=None)[0]
    assert np.abs(explained).max() < 1e-3  # the labels' quadratic fit leaves nothing in the scores
    hidden = hidden - design @ np.linalg.lstsq(design, hidden, rcond=None)[0]  # what the labels leave of them
    fit = codes @ np.linalg.lstsq(codes, hidden, rcond=None)[0]
    r2 = 1 - ((hidden - fit) ** 2).sum(axis=0) / (hidden**2).sum(axis=0)
    assert (r2 > 0.999).all(), r2
    with pytest.raises(ValueError, match="gan_style_dims"):
        G.StyleCodes.fit(means[:8], y[:8], 2)  # 8 songs cannot support 6 fit parameters + 2 directions


def test_style_loss_asks_each_fake_for_its_songs_style():
    """generator_step_loss with style codes: z's first k dims are the given codes (the generator
    sees them), and the loss grows by exactly weight * MSE(style(fake), codes) over the plain
    hinge loss; without codes nothing changes."""
    torch.manual_seed(0)
    arch = G.GanArch(n_mels=32, frames=64, z_dim=8, channels=4)
    gen, disc = G.Generator(arch).eval(), G.Discriminator(arch).eval()
    y = torch.rand(4, 2)
    style = G.StyleCodes.fit(torch.randn(40, 32, dtype=torch.float64), torch.rand(40, 2, dtype=torch.float64), 3)
    codes = torch.randn(4, 3)
    seen = []

    def spy(z, labels, frames):
        seen.append(z.clone())
        return gen(z, labels, noise=torch.zeros(gen.noise_shape(len(z), frames)), frames=frames)

    spy.arch = arch
    cfg = make_config("demo", gan_diffaugment="", gan_style_weight=3.0)
    no_autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    torch.manual_seed(1)
    plain = gan_train.generator_step_loss(spy, disc, y, 64, cfg, no_autocast, None)
    torch.manual_seed(1)
    styled = gan_train.generator_step_loss(spy, disc, y, 64, cfg, no_autocast, None, style=style, codes=codes)
    assert torch.equal(seen[1][:, :3], codes) and torch.equal(seen[1][:, 3:], seen[0][:, 3:])
    fake = spy(seen[1], y, 64)
    hinge = G.g_hinge_loss(disc(fake, y))
    expected = hinge + 3.0 * torch.nn.functional.mse_loss(style(fake, y), codes)
    assert torch.allclose(styled, expected, rtol=1e-5) and not torch.allclose(styled, plain)
    torch.manual_seed(1)
    fake = gan_train.discriminator_step(spy, disc, torch.randn(4, 1, 32, 64), y, cfg, no_autocast, None, codes)[3]
    assert torch.equal(seen[-1][:, :3], codes)  # the D step's fakes carry the same songs' styles


def test_style_targets_are_the_songs_codes_or_each_crops_own():
    torch.manual_seed(0)
    style = G.StyleCodes.fit(torch.randn(40, 16, dtype=torch.float64), torch.rand(40, 2, dtype=torch.float64), 3)
    codes, idx = torch.randn(10, 3), torch.tensor([4, 1, 4])
    real, labels = torch.randn(3, 1, 16, 24), torch.rand(3, 2)
    assert torch.equal(gan_train.style_targets(style, codes, idx, real, labels), codes[idx])  # "song"
    assert torch.equal(gan_train.style_targets(style, None, idx, real, labels), style(real, labels))  # "crop"
    assert gan_train.style_targets(None, None, idx, real, labels) is None


def test_style_sources_train_or_refuse_clearly(tiny_setup):
    """7 training songs cannot support a song-level style fit (6 label-fit parameters + k), which
    is a clear error before training; the crop source fits on 28 real crops and trains."""
    cfg, store, split, train, std = tiny_setup
    with pytest.raises(ValueError, match="gan_style_dims"):
        gan_train.train_or_load_gan(replace(cfg, gan_style_dims=2), store, split, train, std, "cpu")
    crop = replace(cfg, gan_style_dims=2, gan_style_source="crop")
    result = gan_train.train_or_load_gan(crop, store, split, train, std, "cpu")
    assert result.steps_completed == cfg.gan_steps and result.history
    with pytest.raises(ValueError, match="gan_style_source"):
        replace(cfg, gan_style_source="songs")


def test_song_envelopes_set_each_samples_band_levels_and_keep_its_movement():
    """apply() moves each sample's band means over time to the labels' quadratic fit plus one
    training song's residual (or the given share of the way there), leaving every frame's deviation
    from its band mean as it was; the residuals are what the fit leaves (orthogonal to the label
    design); too few songs are refused."""
    rng = np.random.default_rng(0)
    labels = rng.uniform(-1, 1, (30, 2))
    means = rng.normal(-40, 8, (30, 16)) + 5 * labels[:, :1]
    env = gan_train.SongEnvelopes.fit(means, labels)
    design = G.label_design(torch.from_numpy(labels)).numpy()
    np.testing.assert_allclose(design.T @ env.residuals, 0, atol=1e-8)
    np.testing.assert_allclose(design @ env.coef + env.residuals, means, atol=1e-8)
    x = rng.normal(-50, 10, (5, 16, 40)).astype(np.float32)
    y = rng.uniform(-1, 1, (5, 2))
    out = env.apply(x, y, np.random.default_rng(7))
    picked = np.random.default_rng(7).integers(0, 30, size=5)
    expected = G.label_design(torch.from_numpy(y)).numpy() @ env.coef + env.residuals[picked]
    np.testing.assert_allclose(out.mean(axis=2), expected, atol=1e-3)
    np.testing.assert_allclose(out - out.mean(axis=2, keepdims=True), x - x.mean(axis=2, keepdims=True), atol=1e-3)
    part = env.apply(x, y, np.random.default_rng(7), share=0.25)  # a quarter of the way, same song drawn
    np.testing.assert_allclose(part.mean(axis=2), 0.75 * x.mean(axis=2) + 0.25 * expected, atol=1e-3)
    np.testing.assert_allclose(env.apply(x, y, np.random.default_rng(7), share=0.0), x)
    # lend_levels: what synthesize and the notebook's figure call with a GAN result
    lent = gan_train.lend_levels(SimpleNamespace(envelope=env), x, y, 0.25, np.random.default_rng(7))
    np.testing.assert_allclose(lent, part)
    assert gan_train.lend_levels(SimpleNamespace(envelope=None), x, y, 0.0, None) is x
    with pytest.raises(ValueError, match="synthetic_envelope"):
        gan_train.lend_levels(SimpleNamespace(envelope=None), x, y, 0.7, np.random.default_rng(0))
    with pytest.raises(ValueError, match="synthetic_envelope"):
        gan_train.SongEnvelopes.fit(means[:6], labels[:6])
    with pytest.raises(ValueError, match="synthetic_envelope"):
        replace(make_config("demo"), synthetic_envelope=1.5)


def test_song_envelopes_lend_band_dynamics_by_scaling_each_bands_deviations():
    """With band stds fitted, apply(dynamics=d) moves each sample's log band std d of the way to the
    labels' fit plus the residual of the SAME song that lends its levels, by scaling every frame's
    deviation from its band mean: band means, and where each band's peaks and troughs lie, are
    unchanged; dynamics 0 is exactly the levels-only result."""
    rng = np.random.default_rng(1)
    labels = rng.uniform(-1, 1, (30, 2))
    means = rng.normal(-40, 8, (30, 16))
    stds = np.exp(rng.normal(2.0, 0.3, (30, 16)) + 0.5 * labels[:, 1:])
    env = gan_train.SongEnvelopes.fit(means, labels, stds)
    design = G.label_design(torch.from_numpy(labels)).numpy()
    np.testing.assert_allclose(design.T @ env.dyn_residuals, 0, atol=1e-8)
    np.testing.assert_allclose(design @ env.dyn_coef + env.dyn_residuals, np.log(stds + gan_train.STD_FLOOR_DB))
    x = rng.normal(-50, 10, (5, 16, 40)).astype(np.float32)
    y = rng.uniform(-1, 1, (5, 2))
    picked = np.random.default_rng(7).integers(0, 30, size=5)
    y_design = G.label_design(torch.from_numpy(y)).numpy()
    target = y_design @ env.dyn_coef + env.dyn_residuals[picked]
    own = np.log(x.std(axis=2) + gan_train.STD_FLOOR_DB)
    full = env.apply(x, y, np.random.default_rng(7), share=0.0, dynamics=1.0)
    scale = np.log(x.std(axis=2)) - own  # log(s / (s + floor)): the floor's share, ~0.003 here
    np.testing.assert_allclose(np.log(full.std(axis=2)), target + scale, atol=1e-4)
    half = env.apply(x, y, np.random.default_rng(7), share=0.0, dynamics=0.5)
    np.testing.assert_allclose(np.log(half.std(axis=2)), (own + target) / 2 + scale, atol=1e-4)
    np.testing.assert_allclose(half.mean(axis=2), x.mean(axis=2), atol=1e-3)  # levels untouched at share 0
    centred, lent = x - x.mean(axis=2, keepdims=True), half - half.mean(axis=2, keepdims=True)
    ratio = lent / centred  # one positive factor per (sample, band): the same frames stay loud
    np.testing.assert_allclose(ratio, ratio[:, :, :1].repeat(40, axis=2), rtol=1e-3)
    assert (ratio > 0).all() and not np.allclose(ratio, 1.0)
    both = env.apply(x, y, np.random.default_rng(7), share=1.0, dynamics=1.0)  # levels from the same song
    np.testing.assert_allclose(both.mean(axis=2), y_design @ env.coef + env.residuals[picked], atol=1e-3)
    np.testing.assert_allclose(
        both - both.mean(axis=2, keepdims=True), full - full.mean(axis=2, keepdims=True), atol=1e-3
    )
    np.testing.assert_allclose(
        env.apply(x, y, np.random.default_rng(7), share=0.25, dynamics=0.0),
        gan_train.SongEnvelopes(env.coef, env.residuals).apply(x, y, np.random.default_rng(7), share=0.25),
    )
    lent = gan_train.lend_levels(SimpleNamespace(envelope=env), x, y, 0.0, np.random.default_rng(7), dynamics=0.5)
    np.testing.assert_allclose(lent, half)
    with pytest.raises(ValueError, match="band_stds"):
        gan_train.SongEnvelopes(env.coef, env.residuals).apply(x, y, np.random.default_rng(0), dynamics=0.5)
    with pytest.raises(ValueError, match="synthetic_dynamics"):
        gan_train.lend_levels(SimpleNamespace(envelope=None), x, y, 0.0, np.random.default_rng(0), dynamics=0.5)
    with pytest.raises(ValueError, match="synthetic_dynamics"):
        replace(make_config("demo"), synthetic_dynamics=-0.1)


@pytest.mark.parametrize("margin", [0, 3])
def test_margin_keeps_zero_padding_out_of_every_output_frame(margin):
    """Without edges a time-convolutional G is shift-equivariant: the output for a window of a long
    noise sequence is the matching slice of the long output. Zero padding at the time edges breaks
    that within its reach (47 frames); with 3 margin columns (48 frames) no output frame sees it."""
    torch.manual_seed(0)
    arch = G.GanArch(n_mels=32, frames=128, z_dim=8, channels=4, margin=margin)
    gen = G.Generator(arch).eval()
    z, y = torch.randn(2, 8), torch.rand(2, 2) * 2 - 1
    cols = 8  # output columns of the window (128 frames)
    noise = torch.randn(2, arch.noise_dim, arch.rows0, cols + 2 * margin + 4)
    with torch.no_grad():
        long = gen(z, y, noise=noise, frames=(cols + 4) * 16)
        for k in (1, 3):
            window = gen(z, y, noise=noise[..., k : k + cols + 2 * margin], frames=cols * 16)
            expected = long[..., 16 * k : 16 * (k + cols)]
            if margin:
                torch.testing.assert_close(window, expected, rtol=0, atol=1e-5)
            else:  # the artifact: the window's first frames differ from the same frames inside a longer sample
                assert (window[..., :16] - expected[..., :16]).abs().max() > 1e-3
                torch.testing.assert_close(window[..., 48:-48], expected[..., 48:-48], rtol=0, atol=1e-5)
    assert gen.noise_shape(2, 128) == (2, arch.noise_dim, arch.rows0, cols + 2 * margin)


def test_band_probe_is_the_ridge_probe_in_torch_and_passes_gradients():
    """G's auxiliary regressor predicts what emovit.probe's fitted pipeline predicts from the same
    crops in dB, and its gradient reaches the generator's output."""
    from emovit.probe import band_stats, fit_probe

    rng = np.random.default_rng(0)
    db = rng.normal(-40, 8, (30, 16, 24)).astype(np.float32)
    labels = rng.uniform(-1, 1, (30, 2))
    probe = fit_probe(band_stats(db), labels)
    std = Standardizer(mean=-40.0, std=8.0)
    aux = G.BandProbe.from_probe(probe, std.mean, std.std)
    x = torch.from_numpy(std(db))[:, None].requires_grad_(True)
    out = aux(x)
    np.testing.assert_allclose(out.detach().numpy(), probe.predict(band_stats(db)), atol=1e-4)
    out.sum().backward()
    assert x.grad.abs().sum() > 0 and not any(p.requires_grad for p in aux.parameters())


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
    z, noise = torch.randn(4, 8), torch.randn(gen.noise_shape(4))
    low, high = gen(z, torch.full((4, 2), -0.8), noise=noise), gen(z, torch.full((4, 2), 0.8), noise=noise)
    assert (low - high).abs().mean() > 0.01


def test_diff_augment_policies():
    x = torch.randn(3, 1, 8, 32)
    assert G.diff_augment(x, "") is x
    rng = torch.Generator().manual_seed(0)
    moved = G.diff_augment(x, "translation", rng)
    # a circular shift along time: every (sample, band) row keeps its values, bands never mix
    torch.testing.assert_close(moved.sort(dim=3).values, x.sort(dim=3).values)
    cut = G.diff_augment(x, "cutout", rng)
    assert ((cut == 0).all(dim=2).sum(dim=2) == 32 // 4).all()  # one band of W/4 frames per sample
    shifted = G.diff_augment(x, "level", rng) - x
    assert shifted.abs().max() <= 0.1 + 1e-6
    torch.testing.assert_close(
        shifted, shifted[:, :, :1, :1].expand_as(shifted), atol=1e-5, rtol=0
    )  # one offset per sample
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        G.diff_augment(x, "flip", rng)


def test_diff_augment_probability_applies_each_augmentation_to_that_share_of_samples():
    """p = 1 is the plain DiffAugment, draw for draw; p = 0 leaves every sample as it is; p = 0.3
    changes about 30% of the samples under each augmentation."""
    x = torch.randn(400, 1, 8, 32)
    policy = "translation,cutout,level"
    plain = G.diff_augment(x, policy, torch.Generator().manual_seed(3))
    assert torch.equal(G.diff_augment(x, policy, torch.Generator().manual_seed(3), p=1.0), plain)
    assert torch.equal(G.diff_augment(x, policy, torch.Generator().manual_seed(3), p=0.0), x)
    for name in policy.split(","):
        out = G.diff_augment(x, name, torch.Generator().manual_seed(4), p=0.3)
        changed = (out != x).flatten(1).any(dim=1).float().mean()
        assert 0.22 < changed < 0.38, (name, changed)
    with pytest.raises(ValueError, match="probability"):
        G.diff_augment(x, policy, p=1.5)


def test_ada_update_moves_towards_more_augmentation_only_while_d_is_sure_of_real_crops():
    assert G.ada_update(0.2, 0.9, 0.6, 4, 100) == pytest.approx(0.24)  # over-fitting: more
    assert G.ada_update(0.2, 0.1, 0.6, 4, 100) == pytest.approx(0.16)  # under: less
    assert G.ada_update(0.2, 0.6, 0.6, 4, 100) == pytest.approx(0.2)
    assert G.ada_update(0.99, 1.0, 0.6, 4, 100) == 1.0 and G.ada_update(0.01, -1.0, 0.6, 4, 100) == 0.0


@pytest.mark.parametrize("real_score, p_after", [(5.0, 1.0), (-5.0, 0.0)])
def test_ada_steers_the_augmentation_by_the_real_crops_scores(tiny_setup, monkeypatch, real_score, p_after):
    """With ADA the first steps are not augmented; a D sure of every real crop (scores +5) raises p
    to 1 in one update (ramp = the update's 4 steps), one that rejects them keeps it at 0. The fake
    crops' scores are set to the opposite sign, so a controller reading them would go the other way.
    Off, every augmentation call has p = 1."""
    cfg, store, split, train, std = tiny_setup
    seen, real_step, real_augment = [], gan_train.discriminator_step, G.diff_augment

    def spy_augment(x, policy, generator=None, p=1.0):
        seen.append(p)
        return real_augment(x, policy, generator, p)

    def forced(*args, **kwargs):
        d_loss, d_real, d_fake, fake = real_step(*args, **kwargs)
        return d_loss, torch.full_like(d_real, real_score), torch.full_like(d_fake, -real_score), fake

    monkeypatch.setattr(gan_train, "discriminator_step", forced)
    monkeypatch.setattr(G, "diff_augment", spy_augment)
    ada = replace(cfg, gan_steps=8, gan_eval_every=4, gan_ada_target=0.6, gan_ada_ramp=4)
    result = gan_train.train_or_load_gan(ada, store, split, train, std, "cpu")
    per_step = len(seen) // 8  # augmentation calls a step: real and fake in D's step, fake in G's
    assert per_step == 3 and len(seen) == 24
    assert set(seen[: 4 * per_step]) == {0.0} and set(seen[4 * per_step :]) == {p_after}
    assert [h["ada_p"] for h in result.history] == [p_after, p_after]
    seen.clear()
    plain = gan_train.train_or_load_gan(replace(cfg, gan_steps=8, gan_eval_every=4), store, split, train, std, "cpu")
    assert set(seen) == {1.0} and "ada_p" not in plain.history[0]
    with pytest.raises(ValueError, match="gan_ada_target"):
        replace(cfg, gan_ada_target=1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_discriminator_pooling_and_projection_in_float32_under_autocast(dtype):
    """Issue 11: the summed features must not go through half precision."""
    disc = G.Discriminator(G.GanArch(n_mels=32, frames=64, channels=4))
    x, y = torch.randn(2, 1, 32, 64), torch.rand(2, 2)
    with torch.autocast("cpu", dtype=dtype):
        assert disc.blocks[0](x).dtype == dtype  # the convolutions do run in half precision
        phi, score = disc.features(x), disc(x, y)
    assert phi.dtype == torch.float32 and score.dtype == torch.float32


def _saved_bytes(fn):
    """Bytes of tensors autograd saves for backward while ``fn`` runs (what a step keeps alive)."""
    total = {"bytes": 0}

    def pack(t):
        total["bytes"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total["bytes"], out


def test_discriminator_step_builds_no_generator_graph():
    """Issue 11: the generator forward of the D step runs without a graph. Measured on the CPU
    as the bytes autograd saves: the D step saves exactly what D's two forwards save; a
    generator forward with grad (the old code) would add its own activations on top."""
    torch.manual_seed(0)
    arch = G.GanArch(n_mels=32, frames=64, z_dim=8, channels=4)
    gen, disc = G.Generator(arch), G.Discriminator(arch)
    cfg = make_config("demo", gan_diffaugment="")
    real, y = torch.randn(4, 1, 32, 64), torch.rand(4, 2)
    step_bytes, (loss, _, _, fake) = _saved_bytes(
        lambda: gan_train.discriminator_step(
            gen, disc, real, y, cfg, lambda: torch.autocast("cpu", enabled=False), None
        )
    )
    assert fake.grad_fn is None and not fake.requires_grad and loss.requires_grad
    d_only, _ = _saved_bytes(lambda: (disc(real, y), disc(fake, y)))
    g_graph, _ = _saved_bytes(lambda: gen(torch.randn(4, 8), y, frames=64))
    assert g_graph > 0.2 * d_only  # so the assertion below could fail
    assert d_only <= step_bytes <= d_only + 1024  # + the hinge loss's few saved scores


def test_sample_labels_follow_the_training_distribution():
    rng = np.random.default_rng(0)
    train = np.clip(rng.normal([0.1, -0.2], [0.2, 0.3], size=(300, 2)), -0.7, 0.6).astype(np.float32)
    labels = gan_train.sample_labels(train, 3200, jitter=0.05, seed=1)
    assert labels.shape == (3200, 2)
    assert (labels.min(axis=0) >= train.min(axis=0)).all() and (labels.max(axis=0) <= train.max(axis=0)).all()
    np.testing.assert_allclose(labels.mean(axis=0), train.mean(axis=0), atol=0.03)
    np.testing.assert_allclose(labels.std(axis=0), train.std(axis=0), atol=0.03)
    np.testing.assert_array_equal(labels, gan_train.sample_labels(train, 3200, jitter=0.05, seed=1))


def test_random_crops_stay_inside_each_songs_valid_frames():
    x = torch.arange(100, dtype=torch.float16).expand(3, 1, 2, 100).clone()  # value = frame index
    frames = np.array([100, 40, 10])  # the third song is shorter than a crop: starts at 0
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        crops = gan_train.random_crops(x, torch.tensor([0, 1, 2]), frames, 16, rng)
        assert crops.shape == (3, 1, 2, 16) and crops.dtype == torch.float32
        assert crops[1].max() < 40 and crops[2, 0, 0, 0] == 0


@pytest.fixture
def tiny_setup(small_demo, tmp_path):
    cfg = tiny_config(
        data_dir=str(small_demo),
        output_dir=str(tmp_path / "out"),
        clip_seconds=2.0,
        clip_offset=0.0,
        gan_steps=4,
        gan_eval_every=2,
        gan_crop_frames=32,
        num_synthetic=10,
    )
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    split = split_songs(store.songs.song_id, 0.25, 0.2, seed=7)  # 7 / 3 / 2 songs: 3 validation songs to monitor
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
    assert not first.reused and first.steps_completed == 4 and first.diverged is None
    assert [h["step"] for h in first.history] == [2, 4] and first.best_step in (2, 4)
    assert {"fidelity_valence", "fidelity_arousal", "frechet", "frechet_reference"} <= set(first.history[0])
    for name in ("generator.pth", "discriminator.pth"):
        ckpt = torch.load(f"{cfg.output_dir}/{name}", weights_only=True)
        assert {"state_dict", "arch", "standardizer", "train_labels", "key", "version"} <= set(ckpt)
    again = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert again.reused and again.key == first.key and again.weights_digest == first.weights_digest
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
    fewer = replace(cfg, synthetic_envelope=0.0, synthetic_dynamics=0.0)  # 6 songs: too few for the band-level fit
    assert not gan_train.train_or_load_gan(fewer, store, split, train[:-1], std, "cpu").reused


def test_band_normalization_is_fitted_on_training_song_crops_only(tiny_setup, monkeypatch):
    """Every crop train_or_load_gan hands to set_band_normalization is a window of a training
    song (standardized like the GAN's input), and the fitted buffers travel in discriminator.pth."""
    cfg, store, split, train, std = tiny_setup
    seen = []
    original = G.Discriminator.set_band_normalization
    monkeypatch.setattr(
        G.Discriminator,
        "set_band_normalization",
        lambda self, real: (seen.append(real.clone()), original(self, real))[1],
    )
    result = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert len(seen) == 1 and seen[0].shape[1:3] == (1, 32)
    songs = std(torch.from_numpy(np.ascontiguousarray(store.song_mels(train))).float()).to(torch.float16).float()
    length = seen[0].shape[3]
    windows = songs.unfold(2, length, 1)  # (songs, n_mels, starts, length)
    for crop in seen[0]:
        match = (windows == crop[0][None, :, None, :]).all(dim=3).all(dim=1)
        assert match.any(), "a normalization crop is not a window of any training song"
    assert not torch.equal(result.discriminator.stats_scale, torch.ones_like(result.discriminator.stats_scale))
    saved = torch.load(f"{cfg.output_dir}/discriminator.pth", weights_only=True)["state_dict"]
    torch.testing.assert_close(saved["stats_shift"], result.discriminator.stats_shift.cpu())


def test_ema_weights_load_with_weights_only(tiny_setup):
    cfg, store, split, train, std = tiny_setup
    result = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    ckpt = torch.load(os.path.join(cfg.output_dir, "generator.pth"), weights_only=True)
    gen = G.Generator(G.GanArch(**ckpt["arch"])).to(memory_format=gan_train.MEMORY_FORMAT)  # bit for bit
    gen.load_state_dict(ckpt["state_dict"])  # the EMA generator: what samples
    differs = [
        not torch.equal(ckpt["state_dict"][k], ckpt["train_state_dict"][k])
        for k in ckpt["state_dict"]
        if ckpt["state_dict"][k].is_floating_point()
    ]
    assert any(differs)  # EMA weights are not the training weights
    labels = gan_train.sample_labels(result.train_labels, 4, 0.05, seed=0)
    np.testing.assert_array_equal(
        gan_train.generate(gen, labels, std, "cpu", seed=1),
        gan_train.generate(result.generator, labels, std, "cpu", seed=1),
    )


def _checkpoint_folder(cfg, result) -> str:
    """Where train_or_load_gan keeps a GAN's checkpoints: its cache entry, named by its key (the run's
    output folder gets copies)."""
    folder = os.path.join(cfg.cache_path, "gan", result.key)
    for name in ("generator.pth", "discriminator.pth"):
        assert open(os.path.join(folder, name), "rb").read() == open(os.path.join(cfg.output_dir, name), "rb").read()
    return folder


def test_old_architecture_checkpoint_is_stale_and_retrained(tiny_setup):
    """A generator.pth of the previous (dense-layer, version 1) architecture is detected
    before any state dict is loaded, and the GAN is trained again."""
    cfg, store, split, train, std = tiny_setup
    folder = _checkpoint_folder(cfg, gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu"))
    old_arch = {
        "n_mels": 32,
        "frames": cfg.num_frames,
        "z_dim": 8,
        "channels": 4,
        "label_dim": 2,
        "out_low": -4.0,
        "out_high": 4.0,
    }
    old = {
        "state_dict": {"fc.weight": torch.zeros(128 * 2 * 6, 72), "fc.bias": torch.zeros(128 * 2 * 6)},
        "arch": old_arch,
        "key": "old",
        "standardizer": std.to_dict(),
        "train_labels": torch.zeros(3, 2),
        "history": [],
        "diverged": None,
        "config": {},
        "seconds": 1.0,
        "version": 1,
    }
    for name in ("generator.pth", "discriminator.pth"):
        torch.save(old, os.path.join(folder, name))
    with pytest.raises(gan_train.StaleCheckpoint, match="version 1"):
        gan_train.load_gan(os.path.join(folder, "generator.pth"), os.path.join(folder, "discriminator.pth"), "cpu")
    result = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert not result.reused and result.steps_completed == cfg.gan_steps
    saved = torch.load(os.path.join(folder, "generator.pth"), weights_only=True)
    assert saved["version"] == gan_train.CHECKPOINT_VERSION and saved["arch"]["name"] == G.ARCH_NAME


def test_checkpoint_with_unknown_architecture_settings_is_stale_and_retrained(tiny_setup):
    """A generator.pth under this ARCH_NAME but with an architecture setting this code lacks
    (a development build's) is stale -- retrained, not a TypeError and not loaded."""
    cfg, store, split, train, std = tiny_setup
    folder = _checkpoint_folder(cfg, gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu"))
    g_path = os.path.join(folder, "generator.pth")
    d_path = os.path.join(folder, "discriminator.pth")
    saved = torch.load(g_path, weights_only=True)
    saved["arch"]["slow_noise_dim"] = 8
    torch.save(saved, g_path)
    with pytest.raises(gan_train.StaleCheckpoint, match="slow_noise_dim"):
        gan_train.load_gan(g_path, d_path, "cpu")
    result = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert not result.reused and result.steps_completed == cfg.gan_steps
    assert "slow_noise_dim" not in torch.load(g_path, weights_only=True)["arch"]


@pytest.mark.slow
def test_key_covers_label_values_and_synthetic_cache_covers_weights(tiny_setup):
    cfg, store, split, train, std = tiny_setup
    first = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    relabelled = store.songs.copy()
    relabelled.loc[relabelled.song_id == train[0], "valence"] += 0.25  # same songs, one label changed
    store.songs = relabelled
    second = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert not second.reused and second.key != first.key
    assert (
        gan_train.train_or_load_gan(cfg, store, split, train, Standardizer(std.mean + 1, std.std), "cpu").key
        != second.key
    )  # the standardizer is in the key too
    # Same key, other weights (e.g. a replaced generator.pth): a new synthetic file, not the old one.
    a = gan_train.synthesize(second, cfg, "cpu")
    with torch.no_grad():
        next(second.generator.parameters()).add_(0.5)
    second.weights_digest = gan_train.weights_digest(second.generator)
    b = gan_train.synthesize(second, cfg, "cpu")
    assert not b.reused and a.path != b.path


def test_one_nan_step_is_skipped_and_training_goes_on(tiny_setup, monkeypatch):
    cfg, store, split, train, std = tiny_setup
    calls, real_loss = {"n": 0}, G.d_hinge_loss

    def flaky(real, fake):
        calls["n"] += 1
        loss = real_loss(real, fake)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(G, "d_hinge_loss", flaky)
    result = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    assert result.diverged is None and result.skipped_steps == 1 and result.steps_completed == cfg.gan_steps
    assert all(torch.isfinite(p).all() for p in result.generator.parameters())


def test_persistent_nan_stops_after_the_limit_and_restores_good_weights(tiny_setup, monkeypatch):
    cfg, store, split, train, std = tiny_setup
    cfg = replace(cfg, gan_steps=8, max_skipped_steps=2)
    calls, real_loss = {"n": 0}, G.d_hinge_loss

    def broken(real, fake):
        calls["n"] += 1
        loss = real_loss(real, fake)
        return loss * float("nan") if calls["n"] > 2 else loss  # NaN from step 3 on

    monkeypatch.setattr(G, "d_hinge_loss", broken)
    result = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    # steps 3-5 skipped; the check at step 4 saved the (still finite) weights of step 2
    assert result.diverged == {"step": 5, "skipped_steps": 3, "restored_step": 4}
    assert result.best_step in (2, 4) and result.steps_completed == 4
    assert all(torch.isfinite(p).all() for p in result.generator.parameters())
    assert all(torch.isfinite(p).all() for p in result.discriminator.parameters())
    saved = torch.load(f"{cfg.output_dir}/generator.pth", weights_only=True)
    assert saved["diverged"]["restored_step"] == 4


def test_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "generator.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="generator.pth"):
        gan_train.load_gan(str(path), str(path), "cpu")


def test_frame_table_of_quality_and_centre_crop(tmp_path):
    from emovit.gan_quality import centre_crop, frechet_distance, gan_quality, mean_pairwise_distance, quality_table

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 3)), rng.normal(1.0, 1.0, size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(3.0, abs=0.5)  # |mu diff|^2 = 3, same covariance
    assert mean_pairwise_distance(np.zeros((10, 3))) == 0
    table = quality_table({"diversity": {"value": 1.0, "reference": 2.0}, "n_real_val": 3})
    assert isinstance(table, pd.DataFrame) and list(table.measure) == ["diversity"]
    long = np.arange(10)[None, None, :].repeat(2, 0)
    np.testing.assert_array_equal(centre_crop(long, 4)[0, 0], [3, 4, 5, 6])
    # whole stored clips (longer) are compared with generated windows on their centre frames
    real = rng.normal(-40, 5, size=(30, 4, 20)).astype(np.float32)
    labels = rng.uniform(-1, 1, size=(30, 2))
    q = gan_quality(real, labels, real, labels, real[:, :, 5:15], labels)
    assert q["frechet_distance"]["value"] == pytest.approx(q["frechet_distance"]["reference"], abs=1e-6)
    # other band levels, the same movement within each window: only the band-means half of the distance sees it
    moved = real[:, :, 5:15] + rng.normal(0, 3, size=(30, 4, 1)).astype(np.float32)
    q = gan_quality(real, labels, real, labels, moved, labels)
    assert q["frechet_distance"]["value"] > 1.0
    assert q["frechet_distance_dynamics"]["value"] == pytest.approx(0.0, abs=1e-3)


def test_d_down_sampling_is_the_2x2_mean_on_every_path():
    """D halves its maps with the mean of each 2x2 block. The GPU path (a reshape of the channels-last
    NHWC view, for its cheaper backward) gives avg_pool2d's values and gradients; odd sizes and CPU
    tensors take avg_pool2d(ceil_mode=True) itself, so CPU training is unchanged bit for bit."""
    from emovit.gan import halve, halve_nhwc

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 12, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast, pooled = halve_nhwc(a), F.avg_pool2d(b, 2)
    assert fast.shape == (3, 5, 4, 6)
    torch.testing.assert_close(fast, pooled, rtol=0, atol=1e-12)
    g = torch.randn_like(pooled)
    fast.backward(g), pooled.backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(halve(x, nhwc=True), pooled, rtol=0, atol=1e-12)  # the path CUDA takes
    for shape, halved in (((2, 3, 7, 12), (2, 3, 4, 6)), ((2, 3, 8, 5), (2, 3, 4, 3))):  # ceil_mode's edge means
        odd = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        assert halve(odd, nhwc=True).shape == halved
        assert torch.equal(halve(odd, nhwc=True), F.avg_pool2d(odd, 2, ceil_mode=True))
    assert torch.equal(halve(x), F.avg_pool2d(x, 2, ceil_mode=True))  # CPU: avg_pool2d itself
    if torch.cuda.is_available():
        xc = x.float().cuda()
        torch.testing.assert_close(halve(xc), F.avg_pool2d(xc, 2), rtol=0, atol=1e-6)


def test_gan_quality_intervals_are_paired_and_shrink_with_validation_songs():
    """The CCC measures carry 95% bootstrap intervals. A train-on-synthetic measure and its reference
    resample the same validation songs: a synthetic set of two copies of the training songs teaches
    the probe exactly what the songs do, so its interval equals the reference's. And the intervals
    say how far a reading can move with the songs: 14 validation songs give wider ones than 300."""
    from emovit.gan_quality import gan_quality, quality_table

    rng = np.random.default_rng(1)

    def songs(n):  # (n, 6 bands, 30 frames) in dB: band levels follow the labels, plus song noise
        lab = rng.uniform(-1, 1, (n, 2))
        level = 4 * lab[:, 0, None] * np.linspace(-1, 1, 6) + 4 * lab[:, 1, None]
        mels = -40 + level[:, :, None] + rng.normal(0, 3, (n, 6, 1)) + rng.normal(0, 1, (n, 6, 30))
        return mels.astype(np.float32), lab

    train, train_lab = songs(80)
    widths = {}
    for n_val in (14, 300):
        val, val_lab = songs(n_val)
        q = gan_quality(train, train_lab, val, val_lab, np.concatenate([train, train]), np.concatenate([train_lab] * 2))
        for dim in ("valence", "arousal"):
            tstr, fid = q[f"train_synthetic_test_real_{dim}"], q[f"label_fidelity_{dim}"]
            assert tstr["value"] == pytest.approx(tstr["reference"], abs=1e-5)  # float32 features
            np.testing.assert_allclose(tstr["interval"], tstr["reference_interval"], atol=1e-5)
            for m in (tstr, fid):
                assert m["interval"][0] < m["value"] < m["interval"][1]
                assert m["reference_interval"][0] < m["reference"] < m["reference_interval"][1]
            widths[n_val, dim] = tstr["interval"][1] - tstr["interval"][0]
        table = quality_table(q).set_index("measure")
        for column, key in (("synthetic 95% interval", "interval"), ("reference 95% interval", "reference_interval")):
            low, high = q["label_fidelity_valence"][key]
            assert table.loc["label_fidelity_valence", column] == f"[{low:+.3f}, {high:+.3f}]"
        assert table.loc["diversity", "synthetic 95% interval"] == ""
    for dim in ("valence", "arousal"):
        assert widths[14, dim] > 2 * widths[300, dim]


def test_variety_beyond_the_labels():
    """label_residual_variance is the unbiased variance a quadratic fit on the labels leaves: 0 for
    features the labels determine, the noise's variance for label + noise. In gan_quality, a
    generator that maps each label to one song (its noise ignored) scores ~0 against real songs that
    vary beyond their labels -- while its diversity still looks healthy, because the labels vary."""
    from emovit.gan_quality import gan_quality, label_residual_variance

    rng = np.random.default_rng(0)
    labels = rng.uniform(-1, 1, (4000, 2))
    determined = np.column_stack([labels[:, 0] ** 2 - labels[:, 1], 3 * labels[:, 0] * labels[:, 1]])
    assert label_residual_variance(determined, labels) == pytest.approx(0, abs=1e-20)
    noise = rng.normal(0, 0.5, (4000, 2))
    assert label_residual_variance(determined + noise, labels) == pytest.approx(0.25, rel=0.05)
    with pytest.raises(ValueError, match="more than 6 rows"):
        label_residual_variance(determined[:6], labels[:6])

    def songs(lab, spread):  # dB log-mels (N, 8 bands, 40 frames): level and tilt from the labels
        tilt = np.linspace(-1, 1, 8)[None, :, None]
        level = 10 * lab[:, 0, None, None] + 6 * lab[:, 1, None, None] * tilt
        # what differs between songs of one emotion: each band's level and how much it moves in time
        offset, depth = rng.normal(0, 4, (len(lab), 8, 1)), 1 + 3 * rng.uniform(0, 1, (len(lab), 8, 1))
        frames = rng.normal(0, 1, (len(lab), 8, 40)) * (depth if spread else 2.5)
        return (-40 + level + spread * offset + frames).astype(np.float32)

    real_labels, syn_labels = rng.uniform(-1, 1, (60, 2)), rng.uniform(-1, 1, (200, 2))
    real = songs(real_labels, 1.0)
    q_alike = gan_quality(real, real_labels, real, real_labels, songs(syn_labels, 0.0), syn_labels)
    q_real = gan_quality(real, real_labels, real, real_labels, songs(syn_labels, 1.0), syn_labels)
    alike = q_alike["variety_beyond_labels"]["value"] / q_alike["variety_beyond_labels"]["reference"]
    like_real = q_real["variety_beyond_labels"]["value"] / q_real["variety_beyond_labels"]["reference"]
    assert alike < 0.3 < 0.7 < like_real < 1.4, (alike, like_real)
    assert q_alike["diversity"]["value"] > 0.5 * q_alike["diversity"]["reference"]  # diversity misses it


def test_movement_over_time_sees_windows_that_hold_still():
    """movement_over_time is the variance of each band's level over a window's quarters, summed over
    bands. Real songs whose levels step within the window, against the same windows with their frames
    shuffled in time: every per-window statistic (hence the Frechet distance) is unchanged, and
    only this measure tells that the shuffled ones hold still."""
    from emovit.gan_quality import gan_quality, movement_over_time

    steps = np.zeros((3, 2, 9))
    steps[:, :, 4:8] = 2.0  # quarters at 0, 2 (frames 4-7), and the trailing 9th frame dropped
    assert movement_over_time(steps) == pytest.approx(2.0)  # var(0, 2) = 1 per band, 2 bands
    with pytest.raises(ValueError, match="segments"):
        movement_over_time(np.zeros((2, 3, 3)))

    rng = np.random.default_rng(0)
    n, bands, frames = 60, 8, 64
    labels = rng.uniform(-1, 1, (n, 2))
    level = -40 + 8 * labels[:, :1, None] + rng.normal(0, 3, (n, bands, 1))
    change = rng.integers(8, frames - 8, n)  # where each song's second section starts
    section = (np.arange(frames)[None, None, :] >= change[:, None, None]) * rng.normal(0, 6, (n, bands, 1))
    real = (level + section + rng.normal(0, 2, (n, bands, frames))).astype(np.float32)
    still = np.stack([song[:, rng.permutation(frames)] for song in real])
    q_real = gan_quality(real, labels, real, labels, real, labels)
    q_still = gan_quality(real, labels, real, labels, still, labels)
    assert q_real["movement_over_time"]["value"] == pytest.approx(q_real["movement_over_time"]["reference"])
    assert q_still["frechet_distance"]["value"] == pytest.approx(0.0, abs=1e-6)  # same per-window statistics
    ratio = q_still["movement_over_time"]["value"] / q_still["movement_over_time"]["reference"]
    assert ratio < 0.2, ratio


# ---- learning test --------------------------------------------------------------------------------


@pytest.mark.slow
def test_gan_learns_the_label_cues_and_uses_its_conditioning(tmp_path, cue_store):
    """Learning test: 150 CPU steps (~10 s of one core) on 36 training songs whose labels set
    level, tilt and a spectral bump. Label fidelity = CCC of a ridge probe fitted on the real
    training songs, on samples generated for resampled training labels (gan_quality).

    Measured (this design, seed 42): arousal fidelity 0.90-0.95 (reference 0.998 on real
    validation songs), valence 0.16-0.35 (reference 0.72). Threshold: arousal above 0.6 --
    well below what the GAN reaches, far above the ~0.1 of an unconditioned generator; the
    same samples scored against SHUFFLED labels fall below 0.3 (measured ~0.1), so the
    conditioning, not the data's marginal, carries it.
    """
    from emovit.gan_quality import gan_quality

    store = cue_store
    cfg = tiny_config(
        output_dir=str(tmp_path / "out"),
        clip_seconds=1.463,
        gan_steps=150,
        gan_eval_every=50,
        gan_batch_size=16,
        gan_crop_frames=32,
        num_workers=0,
        gan_sample_batch_size=64,
    )
    assert cfg.num_frames == 64
    split = split_songs(store.songs.song_id, 0.2, 0.2, seed=0)
    train, val = ids_of(split, "train"), ids_of(split, "val")
    std = Standardizer.fit(store.mels, store.songs.set_index("song_id").loc[train, "row"])
    result = gan_train.train_or_load_gan(cfg, store, split, train, std, "cpu")
    labels = gan_train.sample_labels(result.train_labels, 200, 0.05, seed=0)
    synthetic = gan_train.generate(result.generator, labels, std, "cpu", seed=1)
    truth = store.songs.set_index("song_id")[["valence", "arousal"]]
    args = (store.song_mels(train), truth.loc[train].to_numpy(), store.song_mels(val), truth.loc[val].to_numpy())
    q = gan_quality(*args, synthetic, labels)
    assert q["label_fidelity_arousal"]["value"] > 0.6, q["label_fidelity_arousal"]
    shuffled = gan_quality(*args, synthetic, labels[np.random.default_rng(1).permutation(len(labels))])
    assert shuffled["label_fidelity_arousal"]["value"] < 0.3, shuffled["label_fidelity_arousal"]


def test_kaggle_gan_projection_fits_the_t4_budget():
    """benchmarks/bench.py's FLOP count (quick: batch 2, scaled): kaggle preset <= 8 T4 minutes at 25% MFU."""
    from benchmarks import bench

    p = bench.bench_gan_projection(quick=True)
    assert p["gflop_per_step"] > 0 and p["gan_steps"] == make_config("kaggle").gan_steps
    assert p["t4_minutes_at_mfu_25"] <= p["budget_minutes"], p


def test_ema_decay_ramps_then_caps_and_the_presets_never_reach_their_cap():
    """The EMA decay is the warm-up (1 + step) / (10 + step) until it meets gan_ema_decay. In both
    presets the warm-up decides to the last step, which the config comment says (a cap that
    binds would be a silent change of behaviour)."""
    from emovit.config import make_config

    assert gan_train.ema_decay(1, 0.999) == pytest.approx(2 / 11)
    assert gan_train.ema_decay(600, 0.999) == pytest.approx(601 / 610)
    assert gan_train.ema_decay(600, 0.9) == 0.9  # a smaller cap acts
    assert gan_train.ema_decay(8990, 0.999) == pytest.approx(0.999) and gan_train.ema_decay(10**5, 0.999) == 0.999
    for preset in ("kaggle", "demo"):
        cfg = make_config(preset)
        assert gan_train.ema_decay(cfg.gan_steps, cfg.gan_ema_decay) < cfg.gan_ema_decay, preset


def test_train_synthetic_test_real_reads_copies_of_the_training_songs_as_the_reference():
    """TSTR compares training data, not penalties: the synthetic probe takes the real probe's ridge
    penalty per row, so a "synthetic" set of 4 copies of the real training songs (the ideal a generator
    could copy) reads exactly the reference on both dimensions. A penalty chosen by CV among the copies
    (each copy's twins agree with it) or one not scaled by the row count reads otherwise; shuffled
    labels still read near zero."""
    from emovit.gan_quality import gan_quality

    rng = np.random.default_rng(0)
    cue = rng.normal(0, 3, (2, 8))

    def songs(labels):  # 8 bands whose levels carry the labels, plus song-to-song variety they do not explain
        level = labels @ cue + rng.normal(0, 4, (len(labels), 8))
        return (-40 + level[:, :, None] + rng.normal(0, 2, (len(labels), 8, 24))).astype(np.float32)

    train_labels, val_labels = rng.uniform(-1, 1, (60, 2)), rng.uniform(-1, 1, (40, 2))
    train, val = songs(train_labels), songs(val_labels)
    copies, copy_labels = np.tile(train, (4, 1, 1)), np.tile(train_labels, (4, 1))
    q = gan_quality(train, train_labels, val, val_labels, copies, copy_labels)
    for dim in ("valence", "arousal"):
        tstr = q[f"train_synthetic_test_real_{dim}"]
        assert tstr["reference"] > 0.5, tstr  # the probe reads these songs, so the comparison means something
        assert tstr["value"] == pytest.approx(tstr["reference"], abs=1e-6), tstr
    shuffled = gan_quality(train, train_labels, val, val_labels, copies, copy_labels[rng.permutation(240)])
    assert abs(shuffled["train_synthetic_test_real_arousal"]["value"]) < 0.3, shuffled
