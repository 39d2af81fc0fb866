"""Every hyperparameter of a run in one dataclass, with one comment per field.

Two presets exist: ``kaggle`` (the full DEAM run on a Kaggle GPU) and ``demo``
(synthetic songs, small sizes, CPU in minutes). ``make_config(preset, **overrides)``
builds one; ``Config.save`` writes ``config.json`` into the output folder.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any

from emovit.files import atomic_write_text

# Ablation arms: each is the synthetic-trained model with these overrides, trained with the same
# split, seed, test songs and optimizer steps. The real-only model is not an arm: every run trains
# it as the reference and the judge of the synthetic set (emovit.choice). OPTIONAL_ARMS are ready to
# add, e.g. OVERRIDES = {"arms": OPTIONAL_ARMS}; the demo preset runs them all.
DEFAULT_ARMS: dict[str, dict[str, Any]] = {}
OPTIONAL_ARMS: dict[str, dict[str, Any]] = {
    # the standard augmentations' own worth: random crops, SpecAugment and test-time averaging off (GAN on)
    "vit_no_augment": {"random_crop": False, "spec_augment": False, "test_crops": 1},
}
RESERVED_MODEL_NAMES = ("delivered", "vit_real_only", "vit_real_plus_synthetic", "ridge_baseline")


@dataclass
class Config:
    # --- run -------------------------------------------------------------------
    preset: str = "kaggle"  # name of the preset these values started from
    data_dir: str = "/kaggle/input"  # searched recursively for DEAM audio and annotations
    output_dir: str = "/kaggle/working/vit_augmented"  # every output of the run goes here
    cache_dir: str = ""  # caches; "" = /kaggle/temp/emovit_cache on Kaggle (not saved), else <output_dir>/cache
    cache_keep: int = 2  # cache entries of each kind kept (most recently used first; the current run's always)
    seed: int = 42  # the split, the demo data, the GAN and the bootstrap; the ViTs' too when seeds is empty
    seeds: list = field(default_factory=list)  # ViT training seeds: each ViT trains once per seed ([] = [seed])
    max_songs: int = 0  # use only the first N songs by id (0 = all); for quick trials
    run_name: str = ""  # name of this run's results folder under runs/ ("" = an id made from the settings)

    # --- audio and log-mel features -------------------------------------------
    sample_rate: int = 22050  # Hz; audio is resampled to this and mixed to mono
    clip_seconds: float = 30.0  # length of the model's window; clips shorter than one window are padded
    clip_offset: float = 0.0  # seconds skipped at the start of each file
    max_clip_seconds: float = 45.0  # each song's whole clip up to this long is stored (DEAM clips: 45 s)
    n_fft: int = 2048  # STFT window length in samples
    hop_length: int = 512  # STFT hop in samples (30 s -> 1292 frames)
    n_mels: int = 128  # mel bands
    db_amin: float = 1e-10  # power floor before log; silence maps to 10*log10(amin) dB
    num_workers: int = 0  # feature-extraction processes (0 = all CPU cores)
    max_error_fraction: float = 0.5  # stop when more than this fraction of songs fails to decode
    retrain_bad_checkpoints: bool = False  # a corrupt/truncated GAN or resume checkpoint: retrain instead of stopping

    # --- split (by song) --------------------------------------------------------
    val_fraction: float = 0.15  # share of songs for model selection (real only); a hash of (seed, song id) decides
    test_fraction: float = 0.15  # share of songs for the final test (real only)
    split_file: str = ""  # CSV (song_id, split = train/val/test) to use a published split instead ("" = hash split)

    # --- conditional GAN (time-convolutional G, projection D, hinge loss; emovit/gan.py) ----
    gan_steps: int = 1750  # training steps (one D + one G update each); replaces epochs over few songs
    gan_batch_size: int = 32  # random song crops per step
    gan_crop_frames: int = 256  # frames of each training crop (0 = num_frames); G samples num_frames
    gan_diffaugment: str = "translation,cutout,level"  # DiffAugment on real and fake before D ("" = off)
    gan_ada_target: float = 0.0  # ADA: augment with a probability that keeps mean sign(D(real)) here (0 = off)
    gan_ada_ramp: int = 500  # ADA: fewest steps for the augmentation probability to go from 0 to 1
    gan_ema_decay: float = 0.999  # cap of the sampling EMA's decay, which ramps as (1+step)/(10+step) (gan_train)
    gan_eval_every: int = 250  # steps between fidelity / Frechet checks on validation songs (best kept)
    gan_lr_g: float = 5e-4  # generator Adam learning rate, betas (0.0, 0.99)
    gan_lr_d: float = 5e-4  # discriminator Adam learning rate, betas (0.0, 0.99)
    gan_z_dim: int = 128  # noise dimension of the generator
    gan_channels: int = 32  # width of the outermost G/D blocks (inner blocks up to 8x)
    gan_d_band_stats: bool = True  # D also sees each band's mean / std over time (song-level dynamics)
    gan_mode_seeking: float = 0.0  # weight of the mode-seeking term on same-label pairs' band statistics (0 = off)
    gan_margin: int = 3  # G's starting-grid columns (16 frames each) generated past each time edge and dropped
    gan_band_condition: bool = False  # G adds a label- and noise-dependent level per mel band to its output
    gan_d_batch_spread: bool = False  # D's band-statistics MLP also reads the batch's spread of each statistic
    gan_upsample: str = "nearest"  # G's 2x upsampling: "nearest", "bilinear", "bilinear-freq" (bands only)
    gan_d_lags: int = 0  # D also reads each band's autocorrelation at lags 1, 2, 4, ... up to this (0 = off)
    gan_d_slow_frames: int = 0  # D also reads how much each band's level moves between segments this long (0 = off)
    gan_slow_noise: int = 0  # half of G's noise drifts over this many 16-frame columns (0 = off)
    gan_aux_weight: float = 1.0  # weight of G's loss from a frozen band-statistics probe of real crops (0 = off)
    gan_style_dims: int = 0  # z's first dims carry a training song's style beyond its labels (0 = off)
    gan_style_weight: float = 1.0  # weight of G's loss asking each fake to carry its song's style
    gan_style_source: str = "song"  # style of the paired real "song" (whole clip) or of the real "crop" itself
    num_synthetic: int = 3200  # synthetic spectrograms generated for ViT training
    synthetic_envelope: float = 0.7  # share of a sample's band levels lent by training songs (label fit + one's rest)
    synthetic_dynamics: float = 0.25  # share of a sample's band stds (log) lent by the same song (label fit + its rest)
    synthetic_label_jitter: float = 0.05  # std of noise on resampled training labels ([-1, 1] scale)
    gan_sample_batch_size: int = 64  # spectrograms generated per batch
    mixed_precision: bool = True  # fp16 + GradScaler on T4, bf16 on L4/Ampere+; off on CPU
    require_gpu: bool = True  # stop in the setup cell when no GPU is visible (these sizes take days on a CPU)

    # --- Vision Transformer: weights and input ------------------------------------------
    vit_model_name: str = "google/vit-base-patch16-224-in21k"  # hub name, tried third ("" = never)
    vit_local_dir: str = ""  # folder with a ViT config.json + weights, tried first
    pretrained_search_dir: str = "/kaggle/input"  # searched for an attached ViT model folder, tried second
    allow_random_vit: bool = False  # with no weights reachable use a small random ViT instead of stopping
    random_vit_hidden: int = 64  # hidden size of that random ViT
    random_vit_layers: int = 2  # transformer layers of that random ViT
    random_vit_heads: int = 2  # attention heads of that random ViT
    image_height: int = 224  # spectrograms are resized to image_height x image_width on the device ...
    image_width: int = 224  # ... (multiples of 16; other than 224 x 224 the position embeddings are interpolated)
    image_norm: str = "checkpoint"  # "checkpoint": the weights' own image mean/std; "imagenet-1k": classic constants
    pixel_clip_std: float = 3.0  # standardized log-mel in [-k, k] std maps linearly onto pixels [0, 1]

    # --- Vision Transformer: training -------------------------------------------------------
    vit_epochs: int = 8  # maximum epochs (early stopping may end sooner)
    vit_batch_size: int = 32  # images per step (split over all visible GPUs)
    vit_lr: float = 3e-5  # AdamW learning rate of the top encoder layer
    head_lr: float = 1e-3  # AdamW learning rate of the regression head
    vit_weight_decay: float = 0.05  # AdamW weight decay (not on biases and norms)
    vit_warmup_fraction: float = 0.1  # share of steps with linear warmup, then cosine decay
    vit_layer_decay: float = 0.75  # layer-wise lr decay per layer below the top (1.0 = off)
    vit_loss: str = "mse+ccc"  # "mse", "ccc" (1 - mean CCC) or "mse+ccc"
    head_dropout: float = 0.1  # dropout before the regression head
    grad_clip: float = 1.0  # max gradient norm
    early_stop_patience: int = 3  # epochs without a mean val CCC gain before stopping
    use_synthetic: bool = True  # add the GAN's samples to the training set
    random_crop: bool = True  # train on a random clip_seconds window of each clip, new every epoch (False: centre)
    test_crops: int = 3  # validation/test/prediction average this many evenly spaced windows (1 = the centre one)
    spec_augment: bool = True  # SpecAugment masks on the device, training batches only
    freq_masks: int = 2  # SpecAugment: frequency masks per spectrogram (AST recipe, scaled to 128 bins)
    freq_mask_max: int = 24  # SpecAugment: widest frequency mask in mel bins (24 of 128; scale it with n_mels)
    time_masks: int = 2  # SpecAugment: time masks per spectrogram
    time_mask_max_fraction: float = 0.1  # SpecAugment: widest time mask as a share of the window's frames
    mixup_alpha: float = 0.0  # mixup of spectrograms and labels, lambda ~ Beta(alpha, alpha) per batch (0 = off)
    synthetic_weight: float = 0.25  # loss weight of a synthetic sample (a real one has 1.0)
    synthetic_epochs: int = 0  # epochs whose steps also draw synthetic samples (0 = all); later epochs: real songs only
    synthetic_dims: str = "auto"  # synthetic labels in the loss: auto (judge decides), both, valence, arousal, none
    synthetic_gate_ratio: float = 0.5  # auto: a dimension passes if judge CCC on synthetic >= this x on val songs
    deliver: str = "auto"  # delivered: auto (per dimension, as validation says), synthetic, real_only, mean (of both)
    deliver_confidence: float = 0.8  # auto: synthetic-trained if higher val CCC and wins >= this share of resamples
    deliver_hedge: float = 0.5  # auto: higher val CCC, wins >= this share but < deliver_confidence -> mean of both
    loader_workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    ddp_processes: int = 0  # ViT training processes via torchrun, one GPU each (0 = every visible GPU; 1 = this one)
    max_skipped_steps: int = 20  # steps with a NaN/inf loss tolerated before training stops
    n_bootstrap: int = 1000  # bootstrap resamples for the 95% intervals of test metrics
    arms: dict = field(default_factory=lambda: dict(DEFAULT_ARMS))  # ablation arms {name: Config overrides}
    vit_max_steps: int = 0  # smoke setting: stop each ViT training after this many optimizer steps (0 = no cap)

    # --- predicting your own music (emovit.predict) ------------------------------------
    predict_dir: str = ""  # folder of your own songs for "Your own music" ("" = a few test songs instead)
    predict_hop_seconds: float = 0.0  # seconds between prediction windows (0 = half the checkpoint's window)
    curve_hop_seconds: float = 1.0  # seconds between windows when test songs' curves meet DEAM's 2 Hz ratings

    # --- demo data ----------------------------------------------------------------
    demo_num_songs: int = 120  # synthetic songs written by the demo generator
    demo_song_seconds: float = 30.0  # length of each synthetic song
    demo_style: str = "demo"  # demo generator: "demo" (mono wavetable songs) or "band" (stereo drums, pads, bass)
    demo_dynamic: bool = False  # demo generator: arousal moves within each song, 2 Hz rating files written

    def __post_init__(self) -> None:
        """Refuse values that would only fail (or silently do something else) hours later."""
        choices = {
            "synthetic_dims": ("auto", "both", "valence", "arousal", "none"),
            "deliver": ("auto", "synthetic", "real_only", "mean"),
            "gan_style_source": ("song", "crop"),
            "gan_upsample": ("nearest", "bilinear", "bilinear-freq"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.gan_d_lags < 0:
            raise ValueError(f"gan_d_lags must be >= 0 (0 = off), got {self.gan_d_lags}")
        if not 0.0 <= self.synthetic_envelope <= 1.0:
            raise ValueError(f"synthetic_envelope must be in [0, 1] (0 = off), got {self.synthetic_envelope}")
        if not 0.0 <= self.synthetic_dynamics <= 1.0:
            raise ValueError(f"synthetic_dynamics must be in [0, 1] (0 = off), got {self.synthetic_dynamics}")
        if not 0.0 <= self.deliver_hedge <= self.deliver_confidence <= 1.0:
            raise ValueError(
                f"need 0 <= deliver_hedge <= deliver_confidence <= 1, got {self.deliver_hedge} and "
                f"{self.deliver_confidence}"
            )
        if not 0.0 <= self.gan_ada_target < 1.0 or self.gan_ada_ramp < 1:
            raise ValueError(
                f"gan_ada_target must be in [0, 1) (0 = off) and gan_ada_ramp >= 1 step, got "
                f"{self.gan_ada_target} and {self.gan_ada_ramp}"
            )
        if self.max_clip_seconds < self.clip_seconds:
            raise ValueError(
                f"max_clip_seconds ({self.max_clip_seconds}) must be at least clip_seconds "
                f"({self.clip_seconds}): the store keeps whole clips the model's windows are cut from"
            )
        if len(set(self.seeds)) != len(self.seeds) or not all(type(s) is int and s >= 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds!r}")
        reserved = sorted(set(self.arms) & set(RESERVED_MODEL_NAMES))
        if reserved:
            raise ValueError(
                f"arms {reserved} name models every run trains or reports itself; "
                f"choose other names (reserved: {RESERVED_MODEL_NAMES})"
            )

    @property
    def cache_path(self) -> str:
        """Folder for caches: ``cache_dir``; else on Kaggle /kaggle/temp/emovit_cache, outside what a
        saved version keeps (/kaggle/working, 20 GB at most); else ``<output_dir>/cache``."""
        if self.cache_dir:
            return self.cache_dir
        if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):  # "Batch" (Save Version) or "Interactive"
            return "/kaggle/temp/emovit_cache"
        return os.path.join(self.output_dir, "cache")

    @property
    def training_seeds(self) -> list[int]:
        """The ViTs' training seeds: ``seeds``, or ``[seed]`` when empty. The first trains the model
        saved as ``best_vit_model.pth``; the split, the GAN and the synthetic set are shared by all."""
        return list(self.seeds) or [self.seed]

    @property
    def num_frames(self) -> int:
        """Frames T of one log-mel window (librosa's centred STFT): 1 + samples // hop."""
        return 1 + int(round(self.sample_rate * self.clip_seconds)) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | None = None) -> str:
        """Write the config as JSON (atomically); returns the path."""
        path = path or os.path.join(self.output_dir, "config.json")
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str) -> Config:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        return replace(cls(), **values)


PRESETS: dict[str, dict[str, Any]] = {
    # Full DEAM run on a Kaggle GPU: every default above.
    "kaggle": {},
    # Synthetic DEAM-layout songs and small sizes: a CPU finishes in minutes.
    "demo": {
        "data_dir": "outputs/demo_data",
        "output_dir": "outputs/demo",
        "clip_seconds": 10.0,
        "clip_offset": 5.0,
        "max_clip_seconds": 25.0,  # the 30 s demo songs after the 5 s offset
        "n_mels": 64,
        "freq_mask_max": 12,  # SpecAugment's 24 of 128 mel bins, scaled to 64
        "demo_num_songs": 120,
        "gan_steps": 600,
        # 256-frame crops (~6 s, as the kaggle preset's) at batch 8: the same pixels per step as
        # 16 x 128, and D hears whole bars (held chords, note changes); see emovit/gan.py
        "gan_batch_size": 8,
        "gan_crop_frames": 256,
        "gan_eval_every": 100,  # ~1 CPU s per check; every 50 took 12 of the stage's 102 s
        "gan_lr_g": 1e-3,
        "gan_lr_d": 1e-3,
        "gan_channels": 8,
        "gan_z_dim": 32,
        "num_synthetic": 320,
        "vit_model_name": "",
        "pretrained_search_dir": "",
        "allow_random_vit": True,
        "require_gpu": False,  # sized for a CPU
        "random_vit_hidden": 128,
        "random_vit_layers": 4,
        "random_vit_heads": 4,
        "vit_epochs": 25,
        "vit_batch_size": 16,
        "vit_lr": 3e-4,
        "vit_layer_decay": 1.0,
        "early_stop_patience": 6,
        "loader_workers": 0,
        "arms": {**DEFAULT_ARMS, **OPTIONAL_ARMS},  # the demo measures every ready-made arm
        "seeds": [42, 1, 2],  # three training seeds: the spread of every model over training runs
        "demo_dynamic": True,  # 2 Hz rating files, so the demo scores emotion curves too
    },
}


def replace(cfg: Config, **overrides: Any) -> Config:
    """Return a copy of ``cfg`` with ``overrides``; unknown names raise a clear error."""
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"Unknown Config field(s) {unknown}. Known fields: {', '.join(sorted(known))}")
    return dataclasses.replace(cfg, **overrides)


def make_config(preset: str = "kaggle", **overrides: Any) -> Config:
    """Build the config of a preset, then apply ``overrides`` (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return replace(Config(preset=preset), **values)


def field_docs() -> list[tuple[str, str, str, str]]:
    """(name, type, kaggle default, comment) per field, read from this file's comments.

    The README's configuration reference is generated from this, so it cannot drift.
    """
    comments: dict[str, str] = {}
    for line in inspect.getsource(Config).splitlines():
        stripped = line.strip()
        if ":" in stripped and "  # " in stripped and not stripped.startswith("#"):
            name = stripped.split(":", 1)[0].strip()
            comments[name] = stripped.split("  # ", 1)[1].strip()
    defaults = Config()
    rows = []
    for f in dataclasses.fields(Config):
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((f.name, type_name, repr(getattr(defaults, f.name)), comments.get(f.name, "")))
    return rows


__all__ = ["Config", "PRESETS", "make_config", "replace", "field_docs"]
