# %% [markdown]
# # Music emotion recognition: a Vision Transformer on mel spectrograms, with GAN augmentation
#
# **A run needs** a GPU (*Settings -> Accelerator -> GPU T4 x2* or *L4*; not the P100), the DEAM
# data set attached (*Add Input* -> `imsparsh/deam-mediaeval-dataset-emotional-analysis-in-music`),
# and the ViT weights: *Internet* on, or the model attached (README, step 4). The setup cell checks
# all three in its first minute. **Time**: a default Run All is projected at 11-23 minutes on one
# T4 (a FLOP-count projection; no T4 has timed it yet, an H200 ran it end to end).
#
# This notebook predicts the **valence** (pleasant vs unpleasant) and **arousal** (calm vs
# energetic) of music from audio. It reads DEAM (1802 songs with song-level ratings), turns each
# song into a log-mel spectrogram, trains a conditional GAN on the training songs to synthesize
# extra emotion-conditioned spectrograms, and fine-tunes `google/vit-base-patch16-224-in21k` to
# regress valence and arousal -- using the synthetic set only where the validation songs show it
# helps.
#
# **Evaluation is honest by construction**: songs are split into train / validation / test
# before anything is learned; the GAN and the ViT see training songs only, and the
# validation and test sets hold only real songs. A leaky protocol (GAN trained on all songs,
# synthetic clips in validation) reports much higher numbers that do not hold on new music.
#
# Everything is written to `/kaggle/working/vit_augmented`: one folder per run under `runs/`,
# an index `runs.csv`, and `vit_output.zip` of the latest run (it can predict on its own). The
# code of the `emovit` package sits in collapsed `%%writefile` cells where it is first needed;
# open one to read it, edit and re-run it and the change takes effect (autoreload).

# %% [markdown]
# ## Parameters
# `PRESET = "kaggle"` is the full run on DEAM; `"demo"` generates a small DEAM-like data set and
# runs on a CPU in minutes. `OVERRIDES` takes any field of `Config`; the settings changed most
# are listed below (uncomment to use). Every field, with its default, is in the configuration
# table the setup cell prints and in the README's configuration reference.

# %% tags=["parameters"]
PRESET = "kaggle"  # "kaggle": full DEAM run on a GPU; "demo": generated songs on a CPU
DATA_DIR = ""  # searched recursively for DEAM; empty means the preset default (/kaggle/input)
OUTPUT_DIR = ""  # empty means the preset default (/kaggle/working/vit_augmented)
OVERRIDES = {
    # "run_name": "lr1e-4",  # a name for this run's folder under runs/ (else an id of the settings)
    # "max_songs": 200,  # a quick trial on the first 200 songs
    # "vit_epochs": 8,  # ViT epochs (early stopping may end sooner)
    # "vit_lr": 3e-5,  # learning rate of the top encoder layer
    # "gan_steps": 1750,  # GAN training steps
    # "num_synthetic": 3200,  # synthetic spectrograms the GAN generates
    # "synthetic_dims": "auto",  # synthetic labels used: "auto" (the judge decides), "both", "valence", "none", ...
    # "deliver": "auto",  # best_vit_model.pth: "auto" (validation decides), "synthetic", "real_only", "mean"
    # "arms": {"vit_no_augment": {"random_crop": False, "spec_augment": False, "test_crops": 1}},  # extra ablations
    # "predict_dir": "/kaggle/input/my-songs",  # your own music, predicted at the end
    # "vit_local_dir": "/kaggle/input/vit-base-patch16-224-in21k",  # the ViT weights, when not found by themselves
}

# %% [markdown]
# ## Setup
# The package's modules are written to a temporary folder that is put first on
# `sys.path`; `%autoreload 2` reloads a module when its cell is edited and re-run. Then the run
# checks what it needs before spending any GPU time: a GPU this PyTorch can use (without one the
# kaggle preset stops rather than train for days on the CPU; `require_gpu`), and the ViT
# weights (a folder you named, an attached model under `/kaggle/input`, or the hub).

# %%
import os
import sys
import tempfile
import time

RUN_START = time.perf_counter()

if "EMOVIT_SRC" not in globals():
    EMOVIT_SRC = tempfile.mkdtemp(prefix="emovit_src_")
os.makedirs(os.path.join(EMOVIT_SRC, "emovit"), exist_ok=True)
if EMOVIT_SRC not in sys.path:
    sys.path.insert(0, EMOVIT_SRC)
# %load_ext autoreload
# %autoreload 2
print(f"emovit modules are written to {EMOVIT_SRC}")

# %% module="emovit/__init__.py"

# %% module="emovit/files.py"

# %% module="emovit/config.py"

# %% module="emovit/runtime.py"

# %% module="emovit/distributed.py"

# %% module="emovit/vit.py"

# %% module="emovit/workspace.py"

# %%
import pandas as pd
from IPython.display import display

from emovit.config import make_config
from emovit.files import setup_logging
from emovit.runtime import check_gpu, describe_environment, pick_device, seed_everything
from emovit.vit import find_pretrained
from emovit.workspace import start_run

setup_logging()
cfg = make_config(PRESET, data_dir=DATA_DIR or None, output_dir=OUTPUT_DIR or None, **OVERRIDES)
check_gpu(cfg.require_gpu)  # stops here, with what to do, if no GPU is visible or this PyTorch cannot run on it
pretrained = find_pretrained(cfg)  # stops here, with what to attach, if no ViT weights are reachable
cfg, run = start_run(cfg)  # this run's folder under runs/ (cfg.output_dir from here on) and its row in runs.csv
cfg.save()
seed_everything(cfg.seed)
device = pick_device()
environment = describe_environment(cfg.mixed_precision)
print(f"run {run.id}: results in {cfg.output_dir}, caches in {cfg.cache_path}")
display(pd.Series(environment, name="value").to_frame())
display(pd.Series(cfg.to_dict(), name="value").to_frame())

# %% [markdown]
# ## Data
# DEAM is found by searching below `data_dir` for `<song_id>.mp3` files and the static
# annotation CSVs, whatever the folder layout (and DEAM's 2 Hz rating files, when attached: they
# score the emotion curves at the end). Ratings on DEAM's 1-9 scale are mapped to
# [-1, 1] by (x - 5) / 4. The demo preset first writes a synthetic DEAM whose labels are
# learnable from the audio (tempo, loudness and brightness for arousal; mode and register
# for valence).

# %% module="emovit/demo_data.py"

# %% module="emovit/deam.py"

# %% module="emovit/plots.py"

# %%
from emovit import plots
from emovit.deam import discover, load_dynamic
from emovit.demo_data import make_demo_deam

if cfg.preset == "demo":
    make_demo_deam(
        cfg.data_dir,
        num_songs=cfg.demo_num_songs,
        seconds=cfg.demo_song_seconds,
        seed=cfg.seed,
        style=cfg.demo_style,
        dynamic=cfg.demo_dynamic,
    )
songs, data_report = discover(cfg.data_dir)
if cfg.max_songs:
    songs = songs.head(cfg.max_songs)
dynamic = load_dynamic(data_report, songs)  # DEAM's 2 Hz ratings, when attached (None otherwise)
display(data_report.table())
plots.label_scatter(songs, cfg.output_dir);
# %% [markdown]
# ## Features
# Each song's whole clip (DEAM: 45 s, up to `max_clip_seconds`) becomes one log-mel
# spectrogram: mono audio at 22,050 Hz, n_fft 2048, hop 512, 128 mel bands (128 x 1938 for
# 45 s). The model itself looks at 30 s windows (128 x 1292, dashed box below): training draws
# a new window from each clip every epoch, evaluation averages several. Power is in dB against
# a fixed reference, not the clip's own maximum, so loudness survives. Extraction runs on all
# CPU cores and is cached: re-running this cell with the same files and settings loads the
# cache. Files that cannot be decoded are skipped and listed in `errors.csv`.

# %% module="emovit/features.py"

# %%
from emovit.features import extract_features

store = extract_features(songs, cfg)
display(pd.Series(store.counts, name="songs").to_frame())
if len(store.errors):
    display(store.errors.groupby("reason").size().rename("files").to_frame())
examples = store.songs.sample(3, random_state=cfg.seed).sort_values("song_id")
plots.example_spectrograms(store.song_mels(examples["song_id"]), examples, store.params, cfg.output_dir);
# %% [markdown]
# ## Split
# Songs are split once, by song, into train / validation / test (`split.csv`). A song's split
# is a hash of its id and the seed, so it never moves because another song failed to decode
# on some machine; the set sizes are therefore close to, not exactly at, their targets (the
# table shows both). `split_file` uses a published split instead. Everything learned later --
# standardization statistics, the GAN, the ViT -- sees training songs only; validation and
# test hold real songs only.

# %% module="emovit/split.py"

# %%
from emovit.split import fit_standardizer, read_split_file, save_split, split_songs, split_table

if cfg.split_file:
    split, split_counts = read_split_file(cfg.split_file, store.songs["song_id"])
    print(f"split from {cfg.split_file}: {split_counts}")
else:
    split = split_songs(store.songs["song_id"], cfg.val_fraction, cfg.test_fraction, cfg.seed)
save_split(split, cfg.output_dir)
standardizer = fit_standardizer(store, split)
display(split_table(split, cfg.val_fraction, cfg.test_fraction))
print(f"standardization (training songs only): mean {standardizer.mean:.2f} dB, std {standardizer.std:.2f} dB")
plots.split_distributions(store.songs, split, cfg.output_dir);
# %% [markdown]
# ### How hard is the task? A linear probe
# Before any deep model: ridge regression on the per-band mean and standard deviation of
# the log-mel, fitted on the training songs and scored on the validation songs (the test
# songs stay untouched until the end). Any model below should beat this.

# %% module="emovit/metrics.py"

# %% module="emovit/probe.py"

# %%
from emovit.probe import validation_probe
from emovit.split import ids_of

labels = store.songs.set_index("song_id")[["valence", "arousal"]]
train_ids, val_ids = ids_of(split, "train"), ids_of(split, "val")
probe, probe_val_ccc = validation_probe(store, split)
print(probe_val_ccc, "validation CCC of the ridge probe")

# %% [markdown]
# ## Conditional GAN
# A conditional GAN learns to draw log-mel spectrograms for a given (valence, arousal), from
# the **training songs only** (the code asserts it). With ~1,260 songs a GAN easily
# over-fits its discriminator or memorises, so the design is data-efficient:
# - the **generator is convolutional along time** (a learned per-band constant and the
#   song-level noise extended in time, plus a local noise sequence), so it trains on
#   **random crops** of the songs (`gan_crop_frames`: many windows per song, cheaper steps)
#   and still generates the full window; a crop of 256 frames (~6 s) holds a whole bar, so
#   the discriminator sees held chords and bass notes and where they change (with 128-frame
#   crops the samples lacked them);
# - the **discriminator** is at least as large as the generator, spectrally normalised,
#   pools over time only (bands keep their pitch), and is conditioned by a **projection**
#   term it cannot ignore; it also reads each band's **mean and spread over time**
#   (`gan_d_band_stats`), so samples must match songs' dynamics, not only their average
#   spectrum (without it, a probe trained on synthetic samples failed on real songs); those
#   statistics are standardized by real training crops first (without that the discriminator
#   sat at chance, hinge loss ~2, and taught the generator little);
#   **DiffAugment** (time shift, cutout, small level shift) is applied to real and fake alike;
# - the generator also learns from a **frozen regressor of real songs**: a ridge probe on band
#   statistics, fitted on real training crops, reads the labels from each fake crop, and its error
#   joins the generator's loss (`gan_aux_weight`) -- it tells the generator *where* real songs carry
#   valence (register, the bass line), which the discriminator alone did not; the judge below, a ViT
#   trained on real songs, checks that the samples did not merely learn to please the probe;
# - the generator computes a few extra columns past each time edge and drops them
#   (`gan_margin`), so the zero padding of its convolutions never reaches a sample's first or last
#   frames;
# - samples come from an **exponential moving average** of the generator's weights;
# - training runs `gan_steps` steps; every `gan_eval_every` steps the label fidelity and the
#   Frechet distance are measured on the **validation** songs and the best checkpoint is kept
#   (curves below). A non-finite loss skips its step; too many restore the last good weights.
#
# It then synthesizes `num_synthetic` spectrograms with labels resampled from the training
# songs' labels (plus small jitter), stored like the real features. A re-run with the same
# settings, songs and labels reuses `generator.pth`.
#
# Last, each sample's **band levels** (every band's mean over the window) move
# `synthetic_envelope` (0.7 by default) of the way to levels taken from the training songs: a quadratic fit
# of their levels on (valence, arousal), plus what one random training song's levels carry beyond
# its labels (its mix, register, instruments). What moves within the window -- rhythm, chords,
# notes -- stays the generator's. Why: from a few hundred songs the generator learns the
# labels' share of the levels but not their song-to-song spread, which real songs have; on both
# demo generators, over three training seeds, borrowing it brought the Frechet distance under 2x
# on 11 of 13 GANs and raised the delivered model's valence. `synthetic_envelope = 0` keeps the generator's own
# levels. `synthetic_dynamics` (0.25) lends, from the same song, a quarter of how far each band
# moves around its level too, by scaling every frame's deviation so the notes stay where the
# generator put them. With it all ten GANs we measured on held-out songs, on both generators, came
# under 2x the real Frechet distance, and the delivered model read as it does without it; lending
# half (0.5) cost the delivered model valence.

# %% module="emovit/gan.py"

# %% module="emovit/gan_quality.py"

# %% module="emovit/gan_train.py"

# %%
import numpy as np

from emovit.gan import count_parameters
from emovit.gan_train import generate, lend_levels, synthesize, train_or_load_gan

gan = train_or_load_gan(cfg, store, split, train_ids, standardizer, device)
print(
    f"generator {count_parameters(gan.generator):,} parameters, discriminator "
    f"{count_parameters(gan.discriminator):,}; "
    + (
        "reused the saved checkpoint"
        if gan.reused
        else f"trained {gan.steps_completed} steps in {gan.seconds:.0f} s on {device}, kept step {gan.best_step}"
    )
)
if gan.skipped_steps:
    print(f"{gan.skipped_steps} step(s) skipped on a non-finite loss")
if gan.diverged:
    print(f"WARNING: GAN training stopped on non-finite losses: {gan.diverged} (last good weights kept)")
plots.gan_training_curves(gan.history, cfg.output_dir, best_step=gan.best_step);
# %%
synthetic = synthesize(gan, cfg, device)
shown = train_ids[:4]
shown_labels = labels.loc[shown].to_numpy(np.float32)
shown_fake = generate(gan.generator, shown_labels, gan.standardizer, device, seed=cfg.seed)
plots.real_vs_synthetic(  # the samples as the ViT sees them: band levels lent as in the synthetic set
    store.centre_windows(shown),
    lend_levels(
        gan, shown_fake, shown_labels, cfg.synthetic_envelope, np.random.default_rng(cfg.seed), cfg.synthetic_dynamics
    ),
    shown_labels,
    shown,
    cfg.output_dir,
)
plots.label_distributions(gan.train_labels, synthetic.labels, cfg.output_dir);
# %% [markdown]
# ### What do the synthetic spectrograms carry?
# Each measure is shown beside its value on real data, so it can be judged. **Label
# fidelity** near its reference means a spectrogram generated for (V, A) sounds, to a linear
# probe trained on real songs, like a real song with those labels. **Train on synthetic,
# test on real** near its reference means the synthetic set alone teaches the probe what
# real songs teach it (the same probe and penalty, trained on the samples instead of the songs).
# A **Frechet distance** near the real-vs-real reference means the
# feature distributions match; its **dynamics** row is the same distance on how each band moves
# within the window alone, the part `synthetic_envelope` (which lends the samples the training
# songs' band levels) never sets: it is the generator's own, up to the share `synthetic_dynamics` lends.
# **Diversity** far below its reference means mode collapse.
# **Variety beyond the labels** is the feature variance a fit on (valence, arousal) leaves:
# real songs of one emotion still differ in tempo, level and instruments, and a generator that
# ignores its noise makes them all alike -- which diversity misses, since the labels vary.
# **Movement over time** is how much each band's level moves between the quarters of a window:
# real songs change chords and sections, and a generator that learned from short crops can make
# windows that hold still -- which every per-window statistic above misses, the Frechet distance too.
# The four CCC rows carry 95% bootstrap intervals. On the demo's 14 validation songs they are wide
# (train-on-synthetic valence 0.28-0.78 in one demo run), so a low ratio there can be the songs
# rather than the generator; DEAM's 270 validation songs narrow them about fourfold.

# %%
from emovit.gan_quality import assess_gan, quality_table

quality = assess_gan(gan, synthetic, store, split, cfg.output_dir, seed=cfg.seed)
with pd.option_context("display.max_colwidth", 120):
    display(quality_table(quality))

# %% [markdown]
# ## Vision Transformer
# The backbone is `google/vit-base-patch16-224-in21k` (ImageNet-21k pre-training), loaded
# from a folder you give (`vit_local_dir`), an attached Kaggle Model under `/kaggle/input`,
# or the Hugging Face hub, in that order. A regression head on the CLS token outputs
# valence and arousal on [-1, 1]. Spectrograms stay 1-channel float16 in host memory; each
# batch is standardized, resized to `image_height` x `image_width` (224 x 224, the
# checkpoint's own size; e.g. 128 x 512 keeps the spectrogram's aspect, with interpolated
# position embeddings), repeated to 3 channels and normalized with the checkpoint's own image
# statistics on the device.

# %%
from emovit.vit import DevicePreprocessor, build_model

model = build_model(cfg, pretrained)
pre = DevicePreprocessor.from_config(cfg, standardizer, pretrained)
print(
    f"ViT from {pretrained.source} ({pretrained.location}): {sum(p.numel() for p in model.parameters()):,} "
    f"parameters; image mean {pretrained.image_mean}, std {pretrained.image_std}"
)

# %% [markdown]
# ## Training
# AdamW with warmup and cosine decay, layer-wise learning-rate decay, mixed precision
# (fp16 with loss scaling on a T4, bf16 on an L4), gradient clipping; the epoch with the best
# mean CCC on the **real validation songs** is kept. If the run stops within a session (an error,
# an interrupt), re-run the cell: training resumes after its last completed epoch (resume states in
# the cache folder). A new Kaggle session starts without `/kaggle/temp`, where the cache lives, so
# it starts over unless `cache_dir` points under `/kaggle/working` with *Persistence* on.
#
# **Every GPU**: with two or more (Kaggle's *T4 x2*), each ViT trains with PyTorch's
# DistributedDataParallel, one process per GPU started by `torchrun` in a subprocess whose output
# streams into the cell (this kernel has touched CUDA, so it cannot fork the processes itself).
# Each step is the step one GPU would take with the same batch of `vit_batch_size` items: the
# batch is split over the GPUs, the loss (CCC included) is computed on the whole batch, and the
# gradients are averaged. `ddp_processes = 1` keeps training in this kernel.
#
# About 1,260 training songs are few for an 86M-parameter ViT, so the standard audio
# augmentations (AST's recipe) are on, each measured by an ablation arm below:
# - **random crops** (`random_crop`): each epoch takes a new 30 s window from each song's 45 s
#   clip, so the model never sees exactly the same input twice;
# - **SpecAugment** (`spec_augment`): 2 frequency masks of up to 24 mel bins and 2 time masks of
#   up to 10% of the window, set to the mean level, on training batches only;
# - **test-time averaging** (`test_crops`): validation and test average the predictions of 3
#   evenly spaced windows, covering the whole clip;
# - **mixup** (`mixup_alpha`, off by default): blends pairs of spectrograms and their labels.
#
# Synthetic data can help or hurt, and which one depends on the music and the dimension. So
# the run decides from evidence it is allowed to use -- training and validation songs, never
# test songs -- in three steps:
# 1. a ViT is trained on the **real training songs only** (`vit_real_only`): the reference any
#    claim about the GAN needs, and the **judge** of the synthetic set;
# 2. the judge predicts every synthetic spectrogram: per dimension, its CCC against the labels
#    the GAN was asked for, beside its CCC on the real validation songs, says whether the
#    samples carry that dimension the way real songs do (a **gate**, `synthetic_dims`);
# 3. the same ViT trains on real + synthetic (`vit_real_plus_synthetic`, loss weight
#    `synthetic_weight`), using synthetic labels only of the dimensions that passed; then, per
#    dimension, the model the validation songs prefer -- or the mean of both where they lean
#    without convincing -- is **delivered** as `best_vit_model.pth` (`deliver`).
#
# Every model takes the same optimizer steps (one pass over the real songs plus the synthetic
# set per epoch), so more data is never confused with more training.

# %% module="emovit/vit_train.py"

# %% module="emovit/results.py"

# %% module="emovit/torchrun.py"

# %% module="emovit/runs.py"

# %%
from emovit.runs import Trainer

trainer = Trainer(cfg, store, split, synthetic, standardizer, pretrained, device)
reference = trainer.fit("vit_real_only", use_synthetic=False)
print(
    f"real only: {reference.n_train} songs, {trainer.steps_per_epoch} steps per epoch; best epoch "
    f"{reference.run.best_epoch}, mean validation CCC {reference.run.best_val_ccc:.3f}"
)
plots.vit_training_curves(
    reference.run.history,
    cfg.output_dir,
    reference.run.best_epoch,
    name="vit_real_only_training_curves.png",
    title="ViT, real songs only",
);
# %% [markdown]
# ### The judge: does a ViT trained on real songs hear the labels in the synthetic set?
# A dimension passes when the judge's CCC on the synthetic samples (against the labels they were
# generated for) is at least `synthetic_gate_ratio` times its CCC on the real validation songs.
# The linear probe of the GAN section hears loudness and spectral balance; the judge hears what
# a ViT learns from real songs -- rhythm, harmony, register -- so it can refuse samples the probe
# accepts. `synthetic_dims` set to `"both"`, `"valence"`, `"arousal"` or `"none"` overrides it.
# Each CCC carries a 95% bootstrap interval (the samples, the validation songs resampled): when the
# validation interval is wide, the gate's call on a dimension near the line is a close one.

# %% module="emovit/choice.py"

# %%
from emovit.choice import judge_synthetic

judgement = judge_synthetic(reference, synthetic, cfg, device)
display(judgement.table())
print(
    f"synthetic labels used for training: {judgement.dims}"
    + (" (set by synthetic_dims / use_synthetic)" if judgement.forced else "")
)

# %% [markdown]
# ### Training with the synthetic set
# The synthetic rows count in the loss with weight `synthetic_weight`, on the dimensions that
# passed only (a mask: a gated dimension gets no gradient from synthetic rows; real rows count on
# both). With `synthetic_epochs` > 0 the synthetic rows are drawn in the first epochs only, then
# the model fine-tunes on real songs. When no dimension passes, no second model is trained.
# Here is one training batch as the ViT sees it:

# %%
from emovit.config import replace
from emovit.vit_train import augmented_examples, make_datasets

run_cfg = replace(cfg, synthetic_dims=judgement.dims)
examples_ds, _, _ = make_datasets(store, split, synthetic, run_cfg)
images, image_labels = augmented_examples(examples_ds, pre, run_cfg, device)
plots.augmented_batch(images, image_labels, cfg.output_dir);
# %%
main = trainer.fit("vit_real_plus_synthetic", synthetic_dims=judgement.dims) if judgement.any else None
if main is None:
    print("no synthetic-trained model: the gate closed every dimension (or use_synthetic is off)")
else:
    print(
        f"trained on {main.n_train} spectrograms ({len(train_ids)} real songs + {main.n_train - len(train_ids)} "
        f"synthetic); best epoch {main.run.best_epoch}, mean validation CCC {main.run.best_val_ccc:.3f}"
    )
    plots.vit_training_curves(main.run.history, cfg.output_dir, main.run.best_epoch)

# %% [markdown]
# ### The delivered model
# Per dimension, the synthetic-trained model is delivered when it beats the real-only model on
# the validation songs convincingly: a higher CCC, and a higher CCC on at least
# `deliver_confidence` (80%) of paired bootstrap resamples of the validation songs -- the bar
# rises where the validation set is small or the dimension noisy. Where it has the higher CCC and
# wins on at least `deliver_hedge` (half) of the resamples but not 80%, the validation songs lean
# its way without proving it, and the **mean of both models' predictions** answers: it keeps
# about half of a real gain and pays about half of a chance one. Otherwise the real-only model
# predicts that dimension. `best_vit_model.pth` holds the chosen weights and routes each dimension to its model
# or models (one backbone when both dimensions name the same one); *Your own music* below uses
# it. `deliver = "synthetic"`, `"real_only"` or `"mean"` forces one answer.

# %%
from emovit.choice import choose_models, deliver

outcomes = {"vit_real_only": reference} | ({"vit_real_plus_synthetic": main} if main is not None else {})
choice = choose_models(main, reference, cfg)
delivered = deliver(choice, outcomes, os.path.join(cfg.output_dir, "best_vit_model.pth"), cfg.n_bootstrap, cfg.seed)
outcomes = {delivered.name: delivered, **outcomes}
display(choice.table())
if choice.note:
    print(choice.note)

# %% [markdown]
# ## Test evaluation
# The delivered model is scored once on the **test songs** -- real songs that neither the GAN
# nor any ViT saw, and that played no part in any choice. CCC (concordance correlation,
# population moments), Pearson r, R^2 and RMSE (on the [-1, 1] scale), each with a bootstrap
# 95% interval over test songs. Published numbers follow the table, each with its protocol and
# its own metric (R^2 and Pearson r are not CCC: they are listed as published, not converted), and
# how reliable DEAM's averaged ratings themselves are (computed from its static file, checked by a
# test; the README states its assumptions): the yardstick is
# itself noisy, and every model is scored against it.

# %%
from emovit.results import MODEL_LABELS, metrics_table, prediction_table, references_table, write_results

metrics = {
    "models": {k: o.metrics for k, o in outcomes.items()},
    "gate": judgement.to_dict(),
    "choice": choice.to_dict(),
    "protocol": {
        "split": cfg.split_file or "by song: hash of (seed, song id)",
        "n_train_real": len(train_ids),
        "n_train_synthetic": len(synthetic.labels) if main is not None else 0,
        "n_val": len(ids_of(split, "val")),
        "n_test": len(delivered.predictions),
        "test_crops": cfg.test_crops,
        "interval": "95% bootstrap percentile",
        "rmse_scale": "[-1, 1]",
        "ccc_moments": "population (1/N)",
    },
    "vit": {
        "weights": pretrained.source,
        "steps_per_epoch": trainer.steps_per_epoch,
        **{
            k: {
                "best_epoch": o.run.best_epoch,
                "best_val_ccc": o.run.best_val_ccc,
                "optimizer_steps": o.run.optimizer_steps,
            }
            for k, o in outcomes.items()
            if k != delivered.name
        },
    },
    "environment": environment,
    "run_id": run.id,
}
delivered_table = prediction_table(delivered.predictions, delivered.val_predictions, delivered.seed)
write_results(cfg.output_dir, metrics, delivered_table)
display(metrics_table({MODEL_LABELS.get(k, k): o.metrics for k, o in outcomes.items()}))
display(references_table())
plots.prediction_scatter(delivered.predictions, delivered.metrics, cfg.output_dir)
plots.va_plane(delivered.predictions, cfg.output_dir);
# %% [markdown]
# ## Does the GAN help? Ablation arms and a baseline
# The table puts the delivered model first, then the synthetic-trained model (what the run
# delivers with `deliver = "synthetic"`: the GAN's own effect), the real-only model, the
# ablation arms of `arms` -- the same ViT with a few settings changed, e.g. **without the
# standard augmentations** (`vit_no_augment`: crops, SpecAugment and test-time averaging off,
# synthetic labels as gated) -- trained with the same split, seed and **number of optimizer
# steps**, a ridge regression on per-band mean and standard deviation of each clip, and -- where
# DEAM's openSMILE feature files are attached -- a ridge on their per-song mean and std. All are
# scored on the same test songs; differences carry a paired bootstrap 95% interval (an interval
# that contains 0 means the data cannot tell the two apart). `OVERRIDES = {"arms": {}}` skips
# the arms.

# %%
from emovit.results import results_table
from emovit.runs import arm_table, opensmile_baseline, paired_differences, ridge_baseline
from emovit.files import atomic_write_csv

for name, overrides in cfg.arms.items():
    outcomes[name] = trainer.fit(name, synthetic_dims=judgement.dims, **overrides)
outcomes["ridge_baseline"] = ridge_baseline(cfg, store, split)
opensmile = opensmile_baseline(cfg, store, split, data_report.opensmile)
if isinstance(opensmile, str):
    print(f"ridge_opensmile skipped: {opensmile} (DEAM's features/<song_id>.csv, when attached, add this baseline)")
else:
    outcomes["ridge_opensmile"] = opensmile
metrics["models"] = {k: o.metrics for k, o in outcomes.items()}
metrics["arms"] = arm_table(outcomes).to_dict(orient="records")
metrics["differences"] = paired_differences(outcomes, cfg.n_bootstrap, cfg.seed)
write_results(cfg.output_dir, metrics, delivered_table)
for k, o in outcomes.items():
    if k != delivered.name:
        atomic_write_csv(
            os.path.join(cfg.output_dir, f"predictions_{k}.csv"),
            prediction_table(o.predictions, o.val_predictions, o.seed),
        )
results = results_table(metrics["models"], metrics["differences"])
display(arm_table(outcomes))
with pd.option_context("display.width", 200, "display.max_columns", 10):
    display(results)
plots.ablation_comparison(metrics["models"], cfg.output_dir, MODEL_LABELS);
# %% [markdown]
# ## Training seeds: how much of a difference is training noise?
# A ViT's test CCC moves with its training seed -- the head's first weights, the crops, the
# SpecAugment masks, the batch order -- and the intervals above resample test songs of one training
# run only. With `seeds` (the demo: three; the kaggle preset: one, since each extra seed trains
# every ViT again -- the README's time projection says how long) every ViT above trains once more
# per seed, on the same split, GAN and synthetic set and with the gate's decision of the first seed.
# The table gives each model's mean +- sd over seeds and every seed's value; each difference, its
# value per seed and pooled -- the mean over seeds, with a 95% interval from a bootstrap over test
# songs AND seeds, paired (seed k of one model against seed k of the other; with few seeds it
# understates the training noise, so read it with the per-seed values). `best_vit_model.pth`
# stays the first seed's delivered model; `predictions.csv` holds every seed's rows (`seed`).

# %% module="emovit/seeds.py"

# %%
from tqdm.auto import tqdm

from emovit import seeds as training_seeds

by_seed = {delivered.seed: outcomes}
seed_choices = {delivered.seed: choice.to_dict()}
fixed = {k: o for k, o in outcomes.items() if o.seed is None}  # the ridge baselines: no training seed
for s in tqdm(cfg.training_seeds[1:], desc="extra training seeds"):
    seed_outcomes, seed_choice = training_seeds.train_seed(trainer, s, judgement, cfg)
    by_seed[s], seed_choices[s] = {**seed_outcomes, **fixed}, seed_choice.to_dict()
metrics["seeds"] = {**training_seeds.summarize(by_seed, cfg.n_bootstrap, cfg.seed), "choices": seed_choices}
write_results(cfg.output_dir, metrics, training_seeds.seed_predictions(by_seed, delivered.name))
for k in outcomes:
    if k != delivered.name:
        path = os.path.join(cfg.output_dir, f"predictions_{k}.csv")
        atomic_write_csv(path, training_seeds.seed_predictions(by_seed, k))
if len(by_seed) == 1:
    print(f"one training seed ({delivered.seed}): set seeds, e.g. [42, 1, 2], to see the spread over training runs")
else:
    with pd.option_context("display.width", 200, "display.max_columns", 10, "display.max_colwidth", 60):
        display(training_seeds.seeds_table(metrics["seeds"]))
    plots.seed_spread(training_seeds.per_seed_table(by_seed), cfg.output_dir, MODEL_LABELS);

# %% [markdown]
# ## Your own music
# `best_vit_model.pth` alone predicts any audio file of any length (mp3, wav, flac, ogg; m4a
# with ffmpeg, which Kaggle has). Windows as long as the training clips slide over the whole
# song every `predict_hop_seconds` (0 = half a window); each window gives a point of the
# curve over time, and the song's value is their mean, on [-1, 1] and on DEAM's 1-9 scale,
# with its Russell quadrant in words ("neutral" within 0.1 of the centre). A file that cannot
# be decoded gets a row with the reason instead of stopping the cell.
#
# **Your songs**: attach them as a Kaggle dataset (*Add Input -> Datasets*, e.g. an upload of
# a folder of mp3s) and set `OVERRIDES = {"predict_dir": "/kaggle/input/<your-dataset>"}`;
# every audio file below that folder is predicted. With `predict_dir` empty, a few test songs
# stand in. The tables go to `my_predictions.csv` (one row per file) and `my_curves.csv`
# (one row per window). Outside the notebook: `python -m emovit.predict my_songs/
# --checkpoint best_vit_model.pth --csv my_predictions.csv --curves my_curves.csv`.

# %% module="emovit/predict.py"

# %%
from emovit.predict import NEUTRAL_RADIUS, QUADRANTS, Predictor, display_table, predict_folder, write_tables

if cfg.predict_dir:
    my_songs = cfg.predict_dir
else:
    my_songs = list(store.songs.set_index("song_id").loc[ids_of(split, "test")[:6], "audio_path"])
    print(f"predict_dir is empty: predicting {len(my_songs)} test songs instead")
predictor = Predictor(delivered.best_path, device, hop_seconds=cfg.predict_hop_seconds)
print(f"{predictor.params.clip_seconds:g} s windows every {predictor.hop_seconds:.2f} s on {device}")
my_predictions, my_curves = predict_folder(my_songs, predictor, return_curves=True)
write_tables(
    my_predictions,
    my_curves,
    os.path.join(cfg.output_dir, "my_predictions.csv"),
    os.path.join(cfg.output_dir, "my_curves.csv"),
)
with pd.option_context("display.max_colwidth", 80):
    display(display_table(my_predictions))
plots.songs_va_plane(my_predictions, cfg.output_dir, QUADRANTS, NEUTRAL_RADIUS)
plots.emotion_curves(my_curves, cfg.output_dir, max_songs=4);
# %% [markdown]
# ## Emotion over time, checked against DEAM's 2 Hz ratings
# The model learned from whole-song ratings, yet the section above draws curves. DEAM also rates
# each song twice a second (from 15 s on). Where those files are attached, the delivered model's
# curve on every **test** song that has them is scored: windows of the training length every
# `curve_hop_seconds`, each against the mean rating inside it. Per dimension: RMSE and Pearson r
# per song, averaged over songs (as MediaEval's *Emotion in Music* task scored), and a CCC over
# all windows pooled. Windows before the first rating are left out and counted. Without the
# files the section says so and skips.

# %% module="emovit/curves.py"

# %%
from emovit import curves

if dynamic is None:
    print(
        "no dynamic (2 Hz) rating files below data_dir: curves are not scored. In the Kaggle DEAM dataset they are "
        "DEAM_Annotations/annotations/annotations averaged per song/dynamic (per second annotations)/"
    )
else:
    curve_predictor = Predictor(delivered.best_path, device, hop_seconds=cfg.curve_hop_seconds)
    window_table, curve_songs = curves.score_test_songs(curve_predictor, store.songs, split, dynamic)
    metrics["curves"] = {
        "window_seconds": curve_predictor.params.clip_seconds,
        "hop_seconds": curve_predictor.hop_seconds,
        "undecoded_songs": int((curve_songs["error"] != "").sum()),
        "scores": curves.curve_metrics(window_table),
    }
    write_results(cfg.output_dir, metrics, training_seeds.seed_predictions(by_seed, delivered.name))
    atomic_write_csv(os.path.join(cfg.output_dir, "test_curves.csv"), window_table)
    display(curves.metrics_table(metrics["curves"]["scores"]))
    plots.curves_vs_ratings(window_table, dynamic, cfg.output_dir)
# %% [markdown]
# ## Run summary
# The results table (and, with several training seeds, their spread), the time each stage took,
# what was found and skipped, the card and library versions, the cache's size by kind, and every
# file of the zip. `vit_output.zip` holds this run's
# folder, the `emovit` code and `PREDICT.md`: unzipped anywhere, `pip install -r requirements.txt`
# and `python -m emovit.predict` run from it. It is verified (every member read back and checked)
# before this cell reports success. On Kaggle, download it from the output panel
# (`/kaggle/working/vit_augmented/vit_output.zip`); earlier runs stay in `runs/`, listed in `runs.csv`.

# %% module="emovit/report.py"

# %%
from emovit import workspace
from emovit.report import file_table, run_summary, skip_reasons, write_zip

timings = {
    "features": store.seconds,
    "gan_training": gan.seconds,
    "gan_sampling": synthetic.seconds,
    **{k: o.seconds for k, o in outcomes.items()},
    "extra_training_seeds": sum(o.seconds for s in cfg.training_seeds[1:] for o in by_seed[s].values() if o.run),
    "total_run": time.perf_counter() - RUN_START,
}
counts = {
    **data_report.to_dict(),
    "decoded": len(store.songs),
    "skipped_by_reason": skip_reasons(store.errors, data_report),
    "per_split": split["split"].value_counts().to_dict(),
    "synthetic": len(synthetic.labels),
}
cache_bytes = workspace.sizes(cfg.cache_path)
summary = run_summary(cfg.output_dir, results, timings, counts, environment, cache_bytes)
index = workspace.update_index(run, cfg, "finished", metrics)
zip_path, members = write_zip(cfg.output_dir, run.root, run.id, environment)
display(results)
if len(by_seed) > 1:
    display(training_seeds.seeds_table(metrics["seeds"]))
display(pd.Series(timings, name="seconds").round(1).to_frame())
display(pd.Series({k: v for k, v in counts.items() if not isinstance(v, (dict, list))}, name="count").to_frame())
display(pd.Series({k: round(v / 1e6, 1) for k, v in cache_bytes.items()}, name="cache MB").to_frame())
display(index.tail(10))
display(file_table(members))
print(f"vit_output.zip verified: {len(members)} files, {os.path.getsize(zip_path) / 1e6:.1f} MB -> {zip_path}")
