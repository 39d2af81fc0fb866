"""Fine-tune the ViT regressor: data, crops, augmentation, loss, optimizer, AMP, checkpoints, resume.

Training data = real TRAINING songs (asserted) + synthetic GAN samples (optional, with a
loss weight); validation = real validation songs only. Host memory holds 1-channel float16
log-mels only (memory-mapped .npy files opened lazily in each loader worker); resizing, the 3
channels, SpecAugment and the normalization happen on the device, per batch.

Learning more from few songs (AST's recipe): each training item is a random ``clip_seconds``
window of the song's stored clip, a new one every epoch (``random_crop``); validation, test
and prediction average ``test_crops`` evenly spaced windows; SpecAugment masks and optional
mixup act on training batches only.

Every epoch is reproducible from (seed, epoch): the sampler, the crops (a generator seeded by
(seed, epoch, item)) and torch's RNG (masks, dropout, mixup) are re-seeded at the start of
each epoch, so a run resumed from its resume state ends with the same weights as an
uninterrupted one (on the CPU; GPU kernels may differ slightly).

An "epoch" is ``steps_per_epoch`` optimizer steps. By default that is one pass over the
training set; ablation arms pass the main model's value, so every arm takes the same number
of optimizer steps whatever its data size (a smaller set is cycled through, reshuffled on
every pass).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from emovit import distributed
from emovit.config import Config, replace
from emovit.features import PARAM_FIELDS, crop_starts
from emovit.files import LOG, atomic_path, atomic_write_json, hash_json, load_checkpoint
from emovit.metrics import ccc
from emovit.runtime import amp_dtype, load_scaler_state, scaler_step
from emovit.split import assert_only_train, ids_of
from emovit.vit import for_devices

# Encoder layer index in a parameter name: "encoder.layer.N." (transformers 4.x) or "layers.N." (5.x).
LAYER_RE = re.compile(r"\.(?:encoder\.layer|layers)\.(\d+)\.")
# Config fields that cannot change what a ViT learns or how it is scored on validation songs. Every
# other field is part of the ViT's run key (a new field is in the key unless it is listed here).
NOT_TRAINING_FIELDS = (
    "preset",
    "data_dir",
    "output_dir",
    "cache_dir",
    "cache_keep",
    "run_name",
    "max_songs",
    "num_workers",
    "max_error_fraction",
    "retrain_bad_checkpoints",
    "gan_sample_batch_size",
    "pretrained_search_dir",
    "vit_local_dir",
    "vit_model_name",
    "loader_workers",
    "n_bootstrap",
    "arms",
    "demo_num_songs",
    "demo_song_seconds",
    "demo_style",
    "split_file",
    "predict_dir",
    "predict_hop_seconds",
    "synthetic_gate_ratio",
    "deliver",
    "deliver_confidence",
    "deliver_hedge",
    "ddp_processes",
    "seeds",  # one model's training depends on its own seed (``seed`` in its config), not the list
    "curve_hop_seconds",
    "demo_dynamic",  # what it changes reaches the key through the data (features and labels)
)
# Fields that only shape the synthetic set and how it is used: left out of the run key of a model
# trained without synthetic data (a GAN tweak must not retrain the real-only reference). The
# synthetic set's size still reaches that key through the run's steps per epoch.
SYNTHETIC_FIELDS = (
    "num_synthetic",
    "synthetic_envelope",
    "synthetic_dynamics",
    "synthetic_label_jitter",
    "synthetic_weight",
    "synthetic_epochs",
    "synthetic_dims",
)
CHECKPOINT_FORMAT = 2  # best_vit_model.pth: 2 = run key, image height/width, test crops


@dataclass
class Part:
    """One source of items: rows of a memory-mapped .npy store.

    ``frames``: valid frames per row (a crop never reaches past them); ``song_ids``: real
    songs' ids, None for synthetic samples.
    """

    path: str
    rows: np.ndarray
    labels: np.ndarray  # (n, 2) float32
    weight: float | tuple  # loss weight of every item: one number, or (valence, arousal) per dimension
    frames: np.ndarray
    song_ids: list[int] | None = None

    def weights(self) -> np.ndarray:
        """(2,) float32 loss weights (valence, arousal) of this part's items."""
        return np.broadcast_to(np.asarray(self.weight, np.float32), (2,)).copy()


class MelDataset(Dataset):
    """Windows of stored log-mels with their labels and loss weights.

    ``mode``:
      * "random": item i of epoch e is a random ``window``-frame crop, drawn from a generator
        seeded by (seed, e, i) -> mel (n_mels, window) float16;
      * "centre": the centre window -> (n_mels, window);
      * "crops": ``crops`` evenly spaced windows -> (crops, n_mels, window).
    Items are (mel, label (2,) float32, weight (2,) float32 per dimension). Files are memory-mapped on first use
    in each process, so loader workers share pages instead of copying arrays.
    """

    def __init__(self, parts: list[Part], window: int, mode: str = "centre", crops: int = 1, seed: int = 0):
        if mode not in ("random", "centre", "crops"):
            raise ValueError(f"mode must be 'random', 'centre' or 'crops', got {mode!r}")
        self.parts, self.window, self.mode, self.crops, self.seed = parts, window, mode, crops, seed
        self.epoch = 0  # set before each training epoch's loader is built
        self.offsets = np.cumsum([0] + [len(p.rows) for p in parts])
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def song_ids(self) -> list[int]:
        """Ids of the real songs, in item order (synthetic parts contribute none)."""
        return [int(s) for p in self.parts if p.song_ids is not None for s in p.song_ids]

    @property
    def n_real(self) -> int:
        """Items of the leading real parts (real songs come first, synthetic samples after)."""
        n = 0
        for p in self.parts:
            if p.song_ids is None:
                break
            n += len(p.rows)
        return n

    @property
    def files(self) -> list[str]:
        return [p.path for p in self.parts]

    def _locate(self, i: int) -> tuple[Part, int]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[k], int(i - self.offsets[k])

    def starts(self, i: int) -> np.ndarray:
        """Window starts (frames) of item i in this dataset's mode and current epoch."""
        part, j = self._locate(i)
        frames = int(part.frames[j])
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, self.epoch, i])
            return np.array([rng.integers(0, max(frames - self.window, 0) + 1)])
        return crop_starts(frames, self.window, self.crops if self.mode == "crops" else 1)

    def __getitem__(self, i: int):
        part, j = self._locate(i)
        if part.path not in self._maps:
            self._maps[part.path] = np.load(part.path, mmap_mode="r")
        row = self._maps[part.path][part.rows[j]]  # (n_mels, T_store) memmap view
        windows = np.stack([np.asarray(row[:, s : s + self.window], dtype=np.float16) for s in self.starts(i)])
        if windows.shape[2] < self.window:  # a store narrower than one window (never from extract_features)
            raise ValueError(f"{part.path} row {part.rows[j]} has {windows.shape[2]} frames < window {self.window}")
        mel = torch.from_numpy(windows if self.mode == "crops" else windows[0])
        return mel, torch.tensor(part.labels[j]), torch.from_numpy(part.weights())

    def __getstate__(self):  # never pickle open memmaps into workers
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


class EpochSampler(Sampler):
    """Indices of one epoch: ``num_samples`` items from permutations of range(n) laid end to end.

    Seeded by (seed, epoch). With num_samples == n this is one shuffled pass; with more, a
    smaller data set is cycled through, reshuffled on every pass (step-matched arms). With n
    smaller than the data set, only its first n items (the real songs) are drawn.
    """

    def __init__(self, n: int, num_samples: int, seed: int, epoch: int):
        self.n, self.num_samples, self.seed, self.epoch = n, num_samples, seed, epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        passes = -(-self.num_samples // self.n)
        order = torch.cat([torch.randperm(self.n, generator=gen) for _ in range(passes)])
        return iter(order[: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


def real_part(store, song_ids, weight: float = 1.0) -> Part:
    songs = store.songs.set_index("song_id").loc[list(song_ids)]
    return Part(
        store.path,
        songs["row"].to_numpy(),
        songs[["valence", "arousal"]].to_numpy(np.float32),
        weight,
        songs["frames"].to_numpy(),
        [int(s) for s in song_ids],
    )


# Which dimensions' synthetic labels a training run's loss uses -> (valence, arousal) mask on
# synthetic rows. Real rows always use both. "auto" is resolved by the judge (emovit.choice) first.
SYNTHETIC_DIMS = {"both": (1.0, 1.0), "valence": (1.0, 0.0), "arousal": (0.0, 1.0), "none": (0.0, 0.0)}


def synthetic_mask(dims: str) -> tuple[float, float]:
    """(valence, arousal) loss mask of synthetic rows for ``Config.synthetic_dims``."""
    if dims == "auto":
        raise ValueError(
            "synthetic_dims='auto' must be resolved by the judge (emovit.choice.judge_synthetic) "
            "before a training set is built"
        )
    if dims not in SYNTHETIC_DIMS:
        raise ValueError(f"synthetic_dims must be 'auto' or one of {sorted(SYNTHETIC_DIMS)}, got {dims!r}")
    return SYNTHETIC_DIMS[dims]


def uses_synthetic(cfg: Config, synthetic) -> bool:
    """Whether a run with ``cfg`` trains on synthetic rows at all (on, a set, a dimension not gated off)."""
    return bool(cfg.use_synthetic and synthetic is not None and any(synthetic_mask(cfg.synthetic_dims)))


def make_datasets(store, split, synthetic, cfg: Config, train_ids=None) -> tuple[MelDataset, MelDataset, MelDataset]:
    """(train, val, test). Train = real training songs (+ synthetic); val and test: real only.

    Train items are random windows (``random_crop``) or centre windows; val and test items are
    ``test_crops`` evenly spaced windows each (averaged by :func:`predict_dataset`). Synthetic
    rows carry the loss weight ``synthetic_weight`` times the ``synthetic_dims`` mask, so a
    gated dimension gets no gradient from them; real rows weigh 1 on both dimensions.
    """
    train_ids = ids_of(split, "train") if train_ids is None else sorted(int(s) for s in train_ids)
    assert_only_train(train_ids, split, stage="ViT")
    window = store.params.num_frames
    parts = [real_part(store, train_ids)]
    if uses_synthetic(cfg, synthetic):
        n = len(synthetic.labels)
        if synthetic.mels.shape[2] < window:
            raise ValueError(
                f"synthetic spectrograms have {synthetic.mels.shape[2]} frames, fewer than the "
                f"model's window of {window}"
            )
        weight = tuple(cfg.synthetic_weight * m for m in synthetic_mask(cfg.synthetic_dims))
        parts.append(
            Part(
                synthetic.path,
                np.arange(n),
                np.asarray(synthetic.labels, np.float32),
                weight,
                np.full(n, synthetic.mels.shape[2]),
            )
        )
    train = MelDataset(parts, window, "random" if cfg.random_crop else "centre", seed=cfg.seed)
    val, test = (
        MelDataset([real_part(store, ids_of(split, name))], window, "crops", crops=cfg.test_crops)
        for name in ("val", "test")
    )
    return train, val, test


# ---- loss ------------------------------------------------------------------------------


def per_dimension(weight: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Loss weights as (B, 2): a (B,) weight applies to both dimensions."""
    return weight.unsqueeze(1).expand_as(pred) if weight.ndim == 1 else weight


def weighted_ccc(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CCC per column (2,) with weighted population moments; weight (B,) or (B, 2) per column.

    A row of weight 0 in a column takes no part in that column's moments (and gets no gradient)."""
    w = per_dimension(weight, pred)
    w = w / w.sum(0).clamp_min(1e-12)
    mp, mt = (w * pred).sum(0), (w * target).sum(0)
    vp, vt = (w * (pred - mp) ** 2).sum(0), (w * (target - mt) ** 2).sum(0)
    cov = (w * (pred - mp) * (target - mt)).sum(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)


def loss_fn(kind: str, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ "mse", "ccc" (1 - mean CCC over valence and arousal) or "mse+ccc".

    pred, target (B, 2); weight (B,) or (B, 2) per dimension. Each dimension's terms are
    weighted means over its rows; a dimension whose weights are all 0 in this batch (every row
    synthetic with that dimension gated off) is left out of the mean, not counted as 0.
    """
    if kind not in ("mse", "ccc", "mse+ccc"):
        raise ValueError(f"vit_loss must be 'mse', 'ccc' or 'mse+ccc', got {kind!r}")
    w = per_dimension(weight, pred)
    present = w.sum(0) > 0  # (2,)
    if not bool(present.any()):
        return (pred * 0).sum()  # nothing to learn from this batch: a zero loss with a graph
    mse = ((w * (pred - target) ** 2).sum(0) / w.sum(0).clamp_min(1e-12))[present].mean()
    if kind == "mse":
        return mse
    one_minus_ccc = 1 - weighted_ccc(pred, target, w)[present].mean()
    if kind == "ccc":
        return one_minus_ccc
    return mse + one_minus_ccc


# ---- optimizer ---------------------------------------------------------------------------


def param_groups(model, cfg: Config) -> list[dict]:
    """AdamW groups: layer-wise lr decay over the encoder, no weight decay on biases/norms."""
    layers = model.backbone.config.num_hidden_layers
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            lr = cfg.head_lr
        else:
            layer = LAYER_RE.search(name)
            if layer:
                depth = int(layer.group(1)) + 1
            elif ".embeddings." in name:
                depth = 0
            else:  # final layernorm
                depth = layers
            lr = cfg.vit_lr * cfg.vit_layer_decay ** (layers - depth)
        wd = 0.0 if p.ndim == 1 else cfg.vit_weight_decay
        groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd})["params"].append(p)
    return list(groups.values())


# ---- training ----------------------------------------------------------------------------


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_ccc: float = float("-inf")
    stopped_early: bool = False
    resumed_from: int = 0  # last completed epoch found in the resume state (0 = fresh)
    skipped_steps: int = 0  # steps skipped for a non-finite loss
    seconds: float = 0.0
    key: str = ""
    steps_per_epoch: int = 0  # optimizer steps per epoch (equal across step-matched arms)
    optimizer_steps: int = 0  # optimizer steps taken over all epochs, resumed ones included


def training_settings(cfg: Config) -> dict:
    """Every Config field that can change what the ViT learns (all but NOT_TRAINING_FIELDS; without
    synthetic data, also without the GAN's and the synthetic set's fields)."""

    def counts(name: str) -> bool:
        if name in NOT_TRAINING_FIELDS:
            return False
        return cfg.use_synthetic or not (name.startswith("gan_") or name in SYNTHETIC_FIELDS)

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if counts(f.name)}


def run_key(cfg: Config, data_key: str, pretrained_location: str, steps_per_epoch: int = 0) -> str:
    """Identity of one ViT training run: its settings, its data, its starting weights and length."""
    return hash_json(
        {
            "train": training_settings(cfg),
            "data": data_key,
            "weights": pretrained_location,
            "steps_per_epoch": steps_per_epoch,
        }
    )


def data_key(store, split, synthetic) -> str:
    """Identity of the training and selection data: feature store, split, the labels of every
    split song, and the synthetic set (whose file name is tied to the generator's weights)."""
    labels = store.songs.set_index("song_id").loc[split["song_id"], ["valence", "arousal"]]
    return hash_json(
        {
            "features": os.path.basename(store.path),
            "split": split.to_dict(orient="list"),
            "labels": labels.round(6).to_numpy().tolist(),
            "synthetic": os.path.basename(synthetic.path) if synthetic is not None else None,
        }
    )


class RankBatches(Sampler):
    """This rank's part of each global training batch: (list of item indices) per step.

    The epoch's order is :class:`EpochSampler`'s (the same for any number of ranks); step k's global
    batch is ``order[k * B : (k + 1) * B]`` with B = ``vit_batch_size``, and this rank takes its
    contiguous slice of it (:func:`emovit.distributed.rank_slice`).
    """

    def __init__(self, order: Sampler, batch: int, part: slice):
        self.order, self.batch, self.part = order, batch, part

    def __iter__(self):
        order = list(self.order)
        for k in range(0, len(order), self.batch):
            yield order[k : k + self.batch][self.part]

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch)


class EvalBatches(Sampler):
    """Evaluation batches in dataset order, batch k to rank k mod world: each batch is the one a
    single process computes, so gathered predictions equal its predictions exactly."""

    def __init__(self, n: int, batch: int):
        self.n, self.batch = n, batch

    def __iter__(self):
        for k, start in enumerate(range(0, self.n, self.batch)):
            if distributed.mine(k):
                yield list(range(start, min(start + self.batch, self.n)))

    def __len__(self) -> int:
        return sum(distributed.mine(k) for k in range(-(-self.n // self.batch)))


def _loader(ds, cfg: Config, device: str, epoch: int | None = None, samples: int | None = None) -> DataLoader:
    """Training loader of ``epoch`` (``samples`` items, shuffled; this rank's part of each global
    batch) or, with epoch None, an evaluation loader (this rank's batches, in dataset order). After
    ``cfg.synthetic_epochs`` epochs (when > 0) a training epoch draws from the real songs only."""
    workers = cfg.loader_workers
    if epoch is not None:
        ds.epoch = epoch  # before the workers get their copy of the dataset
        real_only = 0 < cfg.synthetic_epochs < epoch
        order = EpochSampler(ds.n_real if real_only else len(ds), samples or len(ds), cfg.seed, epoch)
        batches = RankBatches(
            order, cfg.vit_batch_size, distributed.rank_slice(cfg.vit_batch_size, distributed.current())
        )
    else:
        batches = EvalBatches(len(ds), cfg.vit_batch_size)
    return DataLoader(
        ds,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The random numbers of one global training step (SpecAugment spans, the mixup plan): a
    function of (seed, epoch, step), so the same for any number of ranks."""
    return torch.Generator().manual_seed(((seed * 1009 + epoch) * 100_003 + step) % (2**63 - 1))


def mixup(mel: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float, generator: torch.Generator, part: slice):
    """Mix each item of the global batch with another one of it: lambda ~ Beta(alpha, alpha), one
    per step, partners a permutation -- both from ``generator``. mel (b, n_mels, T), y (b, 2), w
    (b, 2) are this rank's rows (``part`` of the global batch); the partners' rows are gathered
    from every rank. Returns this rank's mixed rows. alpha 0: unchanged. Mixing log-mels in dB
    before standardization equals mixing them after (an affine map)."""
    if alpha <= 0:
        return mel, y, w
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator))).beta(alpha, alpha))
    every = [distributed.gather_rows(t.detach()) for t in (mel.float(), y, w)]
    perm = torch.randperm(len(every[0]), generator=generator).to(mel.device)[part]
    return tuple(lam * t + (1 - lam) * a[perm] for t, a in zip((mel.float(), y, w), every))


@torch.no_grad()
def predict_dataset(model, pre, ds, cfg: Config, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(predictions (N, 2), targets (N, 2)) in dataset order; several crops per item are averaged.
    Under several ranks each computes its batches and every rank gets all N rows."""
    model.eval()
    pre.eval()
    dtype = amp_dtype(device) if cfg.mixed_precision else None
    preds, targets = [], []
    for mel, y, _ in _loader(ds, cfg, device):
        mel = mel.to(device, non_blocking=True)
        crops = mel.shape[1] if mel.ndim == 4 else 1  # (B, K, n_mels, T) -> K windows per item
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(pre(mel.reshape(-1, *mel.shape[-2:])))
        preds.append(out.float().view(len(y), crops, 2).mean(dim=1).cpu().numpy())
        targets.append(y.numpy())
    parts = distributed.gather_objects((preds, targets))
    if len(parts) > 1:  # rank r holds batches r, r + world, ...: batch k is parts[k % world][k // world]
        world, n = len(parts), sum(len(p) for p, _ in parts)
        preds = [parts[k % world][0][k // world] for k in range(n)]
        targets = [parts[k % world][1][k // world] for k in range(n)]
    return np.concatenate(preds), np.concatenate(targets)


@torch.no_grad()
def augmented_examples(train_ds, pre, cfg: Config, device: str, count: int = 8, epoch: int = 1):
    """The first ``count`` training items of ``epoch`` as the ViT sees them, masks included.

    Returns (images (count, 3, H, W) float32 numpy, labels (count, 2)). Leaves ``pre`` in eval mode.
    """
    loader = _loader(train_ds, replace(cfg, vit_batch_size=count, loader_workers=0), device, epoch, samples=count)
    mel, y, _ = next(iter(loader))
    spans = pre.sample_spans(count, mel.shape[1], mel.shape[2], step_generator(cfg.seed, epoch, 0))
    pre.to(device).train()
    images = pre(mel.to(device), spans).cpu().numpy()
    pre.eval()
    return images, y.numpy()


def train_vit(
    model,
    pre,
    train_ds,
    val_ds,
    cfg: Config,
    device: str,
    key: str,
    best_path: str,
    last_path: str,
    steps_per_epoch: int | None = None,
    interrupt_after_epoch: int | None = None,
) -> TrainResult:
    """Fine-tune ``model`` (unwrapped ViTRegressor) and keep the best epoch by mean val CCC.

    Writes ``best_path`` (best val CCC, for ``predict``; it carries ``key``) and ``last_path``
    (the resume state: weights, optimizer, scheduler, scaler, history). With a ``last_path`` of
    the same ``key`` and a ``best_path`` of that key, training resumes after its last completed
    epoch; anything else starts fresh. When training completes (all epochs or early stopping) the
    result goes to a small ``<best>.result.json`` and the ~3x larger resume state is deleted; a
    later call with the same key returns that result at once. (A run stopped by the smoke cap
    ``vit_max_steps`` keeps its resume state: it has not completed.)
    ``steps_per_epoch`` (default: one pass over ``train_ds``) sets the optimizer steps per
    epoch. ``interrupt_after_epoch`` raises KeyboardInterrupt after that epoch (tests).
    """
    start = time.perf_counter()
    model.to(device)
    pre.to(device)
    steps_per_epoch = steps_per_epoch or max(1, -(-len(train_ds) // cfg.vit_batch_size))
    total = steps_per_epoch * cfg.vit_epochs
    opt = torch.optim.AdamW(param_groups(model, cfg))
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.vit_warmup_fraction * total), total)
    dtype = amp_dtype(device) if cfg.mixed_precision else None
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    net = for_devices(model, device, dtype)  # DistributedDataParallel under several ranks
    ranks = distributed.current()
    part = distributed.rank_slice(cfg.vit_batch_size, ranks)
    done = finished_result(best_path, key)
    if done is not None and not os.path.exists(last_path):
        LOG.info("ViT: training had already finished (best epoch %d)", done.best_epoch)
        return done
    result = TrainResult(key=key, steps_per_epoch=steps_per_epoch)
    bad_epochs = 0
    state = _resume_state(last_path, best_path, key, cfg)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        load_scaler_state(scaler, state["scaler"])  # {} from a disabled scaler: a fresh one
        result.history, bad_epochs = state["history"], state["bad_epochs"]
        result.best_epoch, result.best_val_ccc = state["best_epoch"], state["best_val_ccc"]
        result.resumed_from, result.stopped_early = state["epoch"], state["stopped_early"]
        result.skipped_steps, result.optimizer_steps = state["skipped_steps"], state["optimizer_steps"]
        LOG.info("ViT: resuming after epoch %d from %s", state["epoch"], last_path)

    def capped() -> bool:  # the smoke-run cap on optimizer steps (vit_max_steps) is reached
        return 0 < cfg.vit_max_steps <= result.optimizer_steps

    first_epoch = result.resumed_from + 1
    if result.stopped_early or first_epoch > cfg.vit_epochs or capped():
        LOG.info("ViT: training had already finished (best epoch %d)", result.best_epoch)
    epochs = range(first_epoch, cfg.vit_epochs + 1) if not (result.stopped_early or capped()) else range(0)
    bar = tqdm(epochs, desc="ViT", unit="epoch", disable=not ranks.main)
    for epoch in bar:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + epoch)
        net.train()
        pre.train()
        loss_sum, n_steps = 0.0, 0
        loader = _loader(train_ds, cfg, device, epoch, samples=steps_per_epoch * cfg.vit_batch_size)
        batches = tqdm(
            loader, desc=f"epoch {epoch}", unit="batch", leave=False, mininterval=2.0, disable=not ranks.main
        )
        for step, (mel, y, w) in enumerate(batches):
            mel, y, w = (t.to(device, non_blocking=True) for t in (mel, y, w))
            gen = step_generator(cfg.seed, epoch, step)  # the global step's masks and mixup, any number of ranks
            spans = pre.sample_spans(cfg.vit_batch_size, mel.shape[1], mel.shape[2], gen)
            mel, y, w = mixup(mel, y, w, cfg.mixup_alpha, gen, part)
            with torch.autocast(
                device_type=device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                pred = net(pre(mel, spans[part] if spans is not None else None))
            # the global batch's loss on every rank (CCC is a statistic of the whole batch); gradients
            # flow back to each rank's own rows, and DDP's average of them is the one-process gradient
            loss = loss_fn(
                cfg.vit_loss,
                distributed.gather_rows(pred.float()),
                distributed.gather_rows(y),
                distributed.gather_rows(w),
            )
            if not torch.isfinite(loss):
                result.skipped_steps += 1
                LOG.warning("ViT: non-finite loss at epoch %d; step skipped (%d so far)", epoch, result.skipped_steps)
                if result.skipped_steps > cfg.max_skipped_steps:
                    raise RuntimeError(
                        f"ViT training stopped: {result.skipped_steps} steps had a non-finite loss (limit "
                        f"max_skipped_steps={cfg.max_skipped_steps}). Lower vit_lr or set mixed_precision=False. "
                        f"{best_path} (best epoch {result.best_epoch}) is intact."
                    )
                opt.zero_grad(set_to_none=True)
                continue
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler_step(scaler, opt):  # an fp16 step skipped for inf grads does not advance the lr
                sched.step()
                result.optimizer_steps += 1
            loss_sum += float(loss.detach())
            n_steps += 1
            batches.set_postfix(loss=f"{loss_sum / n_steps:.4f}")
            if epoch == first_epoch and n_steps == min(10, steps_per_epoch):
                rate = n_steps * cfg.vit_batch_size / (time.perf_counter() - t0)
                LOG.info(
                    "ViT: ~%.0f images/s; ETA for %d epochs ~%.0f s",
                    rate,
                    len(epochs),
                    steps_per_epoch * cfg.vit_batch_size * len(epochs) / rate,
                )
            if capped():
                break
        pred, target = predict_dataset(model, pre, val_ds, cfg, device)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(n_steps, 1),
            "val_loss": float(
                loss_fn(cfg.vit_loss, torch.from_numpy(pred), torch.from_numpy(target), torch.ones(len(pred)))
            ),
            "val_ccc_valence": ccc(target[:, 0], pred[:, 0]),
            "val_ccc_arousal": ccc(target[:, 1], pred[:, 1]),
            "lr": sched.get_last_lr()[0],
            "seconds": time.perf_counter() - t0,
        }
        row["val_ccc_mean"] = (row["val_ccc_valence"] + row["val_ccc_arousal"]) / 2
        result.history.append(row)
        if row["val_ccc_mean"] > result.best_val_ccc:  # every rank decides alike: the same gathered predictions
            result.best_val_ccc, result.best_epoch, bad_epochs = row["val_ccc_mean"], epoch, 0
            if ranks.main:
                save_best(model, pre, cfg, best_path, epoch, row, key)
        else:
            bad_epochs += 1
        result.stopped_early = bad_epochs >= cfg.early_stop_patience
        if ranks.main:
            _save_last(last_path, model, opt, sched, scaler, result, epoch, bad_epochs, key)
        distributed.barrier()  # no rank reads (or resumes from) a file rank 0 is still writing
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_ccc=f"{row['val_ccc_mean']:.3f}")
        if interrupt_after_epoch == epoch:
            raise KeyboardInterrupt(f"simulated interruption after epoch {epoch}")
        if result.stopped_early:
            LOG.info("ViT: early stop after epoch %d (no val CCC gain for %d epochs)", epoch, bad_epochs)
            break
        if capped():
            LOG.info("ViT: stopped after %d optimizer steps (vit_max_steps, a smoke setting)", result.optimizer_steps)
            break
    bar.close()
    result.seconds = time.perf_counter() - start
    if ranks.main:  # the result's record; completed (not stopped by the smoke cap): drop the resume state
        atomic_write_json(result_path(best_path), dataclasses.asdict(result))
        if not capped() and os.path.exists(last_path):
            os.remove(last_path)
    distributed.barrier()
    return result


def result_path(best_path: str) -> str:
    """The completed-training record beside a best checkpoint."""
    return os.path.splitext(best_path)[0] + ".result.json"


def finished_result(best_path: str, key: str) -> TrainResult | None:
    """The :class:`TrainResult` of a completed training of ``key`` whose best checkpoint is there."""
    path = result_path(best_path)
    if not (os.path.exists(path) and os.path.exists(best_path)):
        return None
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("key") != key or checkpoint_key(best_path) != key:
        return None
    return TrainResult(**record)


def _resume_state(last_path: str, best_path: str, key: str, cfg: Config) -> dict | None:
    """The resume state to continue from, or None to start fresh.

    Continuing needs a resume state of this run's ``key`` AND a best checkpoint of the same
    key: a run interrupted between writing the two files, then followed by a run of other
    settings in the same folder, must never leave a best file of another run to be scored.
    """
    if not os.path.exists(last_path):
        return None
    try:
        state = load_checkpoint(last_path)
    except RuntimeError as err:
        if not cfg.retrain_bad_checkpoints:
            raise RuntimeError(f"{err} Or set retrain_bad_checkpoints=True to train from scratch.") from err
        LOG.warning("ViT: %s -- training from scratch (retrain_bad_checkpoints=True)", err)
        return None
    if state.get("key") != key:
        LOG.info("ViT: %s belongs to other settings or data; starting fresh", last_path)
        return None
    best_key = checkpoint_key(best_path) if os.path.exists(best_path) else None
    if state["best_epoch"] and best_key != key:
        LOG.warning(
            "ViT: %s is not this run's best checkpoint (run key %s, found %s); starting fresh", best_path, key, best_key
        )
        return None
    return state


def checkpoint_key(path: str) -> str | None:
    """The run key stored in a best checkpoint (None for files before format 2)."""
    return load_checkpoint(path).get("key")


def load_best(path: str, key: str) -> dict:
    """Load a best checkpoint, refusing one written by another run (other settings or data)."""
    state = load_checkpoint(path)
    if state.get("key") != key:
        raise RuntimeError(
            f"{path} was written by another run (run key {state.get('key')!r}, this run {key!r}): its model may "
            "have trained on this run's test songs, so it is not scored. Delete it (or use another output_dir) "
            "and run the training cell again."
        )
    return state


def save_best(model, pre, cfg: Config, path: str, epoch: int, row: dict, key: str) -> None:
    """Everything ``predict`` needs, loadable with ``torch.load(weights_only=True)``."""
    state = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vit_config": model.backbone.config.to_dict(),
        "preprocess": pre.to_dict(),
        "mel_params": {k: getattr(cfg, k) for k in PARAM_FIELDS},
        "test_crops": cfg.test_crops,
        "config": cfg.to_dict(),
        "epoch": epoch,
        "val": row,
        "key": key,
        "format": CHECKPOINT_FORMAT,
    }
    _atomic_save(state, path)


def _save_last(path, model, opt, sched, scaler, result: TrainResult, epoch: int, bad_epochs: int, key: str) -> None:
    _atomic_save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "history": result.history,
            "epoch": epoch,
            "bad_epochs": bad_epochs,
            "best_epoch": result.best_epoch,
            "best_val_ccc": result.best_val_ccc,
            "stopped_early": result.stopped_early,
            "skipped_steps": result.skipped_steps,
            "optimizer_steps": result.optimizer_steps,
            "key": key,
        },
        path,
    )


def _atomic_save(obj, path: str) -> None:
    if not distributed.current().main:
        raise RuntimeError(f"rank {distributed.current().rank} tried to write {path}: only rank 0 writes files")
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
