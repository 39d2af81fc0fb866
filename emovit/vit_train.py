"""Fine-tune the ViT regressor: data, loss, optimizer, mixed precision, checkpoints, resume.

Training data = real TRAINING songs (asserted) + synthetic GAN samples (optional, with a
loss weight); validation = real validation songs only. Host memory holds 1-channel float16
log-mels only (memory-mapped .npy files opened lazily in each loader worker); resizing to
224 x 224, the 3 channels and the normalization happen on the device, per batch.

Every epoch is reproducible from (seed, epoch): the shuffling generator and torch's RNG are
re-seeded at the start of each epoch, so a run resumed from ``last_vit_model.pth`` ends with
the same weights as an uninterrupted one (on the CPU; GPU kernels may differ slightly).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from emovit.config import Config
from emovit.io import LOG, atomic_path, hash_json, load_checkpoint
from emovit.metrics import ccc
from emovit.runtime import amp_dtype, load_scaler_state, scaler_step
from emovit.split import assert_only_train, ids_of
from emovit.vit import for_devices

# Encoder layer index in a parameter name: "encoder.layer.N." (transformers 4.x) or "layers.N." (5.x).
LAYER_RE = re.compile(r"\.(?:encoder\.layer|layers)\.(\d+)\.")
TRAIN_FIELDS = ("vit_epochs", "vit_batch_size", "vit_lr", "head_lr", "vit_weight_decay", "vit_warmup_fraction",
                "vit_layer_decay", "vit_loss", "grad_clip", "early_stop_patience", "use_synthetic",
                "synthetic_weight", "head_dropout", "seed", "image_size", "image_norm", "pixel_clip_std",
                "mixed_precision", "vit_max_steps")


class MelDataset(Dataset):
    """Items (mel (n_mels, T) float16, label (2,) float32, weight () float32).

    ``parts``: list of (npy_path, rows, labels (n, 2), weight). Files are memory-mapped on
    first use in each process, so loader workers share pages instead of copying arrays.
    """

    def __init__(self, parts: list[tuple[str, np.ndarray, np.ndarray, float]]):
        self.parts = [(p, np.asarray(r), np.asarray(lab, np.float32), float(w)) for p, r, lab, w in parts]
        self.offsets = np.cumsum([0] + [len(r) for _, r, _, _ in self.parts])
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        part = int(np.searchsorted(self.offsets, i, side="right") - 1)
        path, rows, labels, weight = self.parts[part]
        j = i - self.offsets[part]
        if path not in self._maps:
            self._maps[path] = np.load(path, mmap_mode="r")
        mel = torch.from_numpy(np.array(self._maps[path][rows[j]], dtype=np.float16))
        return mel, torch.tensor(labels[j]), torch.tensor(weight)

    def __getstate__(self):  # never pickle open memmaps into workers
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


def real_part(store, song_ids, weight: float = 1.0):
    songs = store.songs.set_index("song_id").loc[list(song_ids)]
    return (store.path, songs["row"].to_numpy(), songs[["valence", "arousal"]].to_numpy(np.float32), weight)


def make_datasets(store, split, synthetic, cfg: Config, train_ids=None) -> tuple[MelDataset, MelDataset, MelDataset]:
    """(train, val, test). Train = real training songs (+ synthetic); val and test: real only."""
    train_ids = ids_of(split, "train") if train_ids is None else sorted(int(s) for s in train_ids)
    assert_only_train(train_ids, split, stage="ViT")
    parts = [real_part(store, train_ids)]
    if cfg.use_synthetic and synthetic is not None:
        parts.append((synthetic.path, np.arange(len(synthetic.labels)), synthetic.labels, cfg.synthetic_weight))
    val = MelDataset([real_part(store, ids_of(split, "val"))])
    test = MelDataset([real_part(store, ids_of(split, "test"))])
    return MelDataset(parts), val, test


# ---- loss ------------------------------------------------------------------------------

def weighted_ccc(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CCC per column (2,) with weighted population moments."""
    w = (weight / weight.sum()).unsqueeze(1)
    mp, mt = (w * pred).sum(0), (w * target).sum(0)
    vp, vt = (w * (pred - mp) ** 2).sum(0), (w * (target - mt) ** 2).sum(0)
    cov = (w * (pred - mp) * (target - mt)).sum(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)


def loss_fn(kind: str, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """"mse", "ccc" (1 - mean CCC over valence and arousal) or "mse+ccc"."""
    mse = ((pred - target) ** 2).mean(1).mul(weight).sum() / weight.sum()
    if kind == "mse":
        return mse
    one_minus_ccc = 1 - weighted_ccc(pred, target, weight).mean()
    if kind == "ccc":
        return one_minus_ccc
    if kind == "mse+ccc":
        return mse + one_minus_ccc
    raise ValueError(f"vit_loss must be 'mse', 'ccc' or 'mse+ccc', got {kind!r}")


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
    resumed_from: int = 0  # last completed epoch found in last_vit_model.pth (0 = fresh)
    skipped_steps: int = 0  # steps skipped for a non-finite loss
    seconds: float = 0.0
    key: str = ""


def run_key(cfg: Config, data_key: str, pretrained_location: str) -> str:
    return hash_json({"train": {k: getattr(cfg, k) for k in TRAIN_FIELDS}, "data": data_key,
                      "weights": pretrained_location})


def _loader(ds, cfg: Config, device: str, shuffle: bool, epoch: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    workers = cfg.loader_workers
    return DataLoader(ds, batch_size=cfg.vit_batch_size, shuffle=shuffle, generator=gen if shuffle else None,
                      num_workers=workers, pin_memory=device.startswith("cuda"), persistent_workers=False,
                      prefetch_factor=4 if workers else None)


@torch.no_grad()
def predict_dataset(model, pre, ds, cfg: Config, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(predictions (N, 2), targets (N, 2)) in dataset order."""
    model.eval()
    dtype = amp_dtype(device) if cfg.mixed_precision else None
    preds, targets = [], []
    for mel, y, _ in _loader(ds, cfg, device, shuffle=False):
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(pre(mel.to(device, non_blocking=True)))
        preds.append(out.float().cpu().numpy())
        targets.append(y.numpy())
    return np.concatenate(preds), np.concatenate(targets)


def train_vit(model, pre, train_ds, val_ds, cfg: Config, device: str, key: str, best_path: str, last_path: str,
              interrupt_after_epoch: int | None = None) -> TrainResult:
    """Fine-tune ``model`` (unwrapped ViTRegressor) and keep the best epoch by mean val CCC.

    Writes ``best_path`` (best val CCC, for ``predict``) and ``last_path`` (the resume
    state: weights, optimizer, scheduler, scaler, history). With a ``last_path`` of the same
    ``key``, training resumes after its last completed epoch (or returns at once if it had
    finished). ``interrupt_after_epoch`` raises KeyboardInterrupt after that epoch (tests).
    """
    start = time.perf_counter()
    model.to(device)
    pre.to(device)
    steps_per_epoch = max(1, -(-len(train_ds) // cfg.vit_batch_size))
    total = steps_per_epoch * cfg.vit_epochs
    opt = torch.optim.AdamW(param_groups(model, cfg))
    from transformers import get_cosine_schedule_with_warmup

    sched = get_cosine_schedule_with_warmup(opt, int(cfg.vit_warmup_fraction * total), total)
    dtype = amp_dtype(device) if cfg.mixed_precision else None
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    net = for_devices(model, device, dtype)  # autocast dtype pinned inside forward (DataParallel threads)
    result = TrainResult(key=key)
    bad_epochs = 0
    state = None
    if os.path.exists(last_path):
        try:
            state = load_checkpoint(last_path)
        except RuntimeError as err:
            if not cfg.retrain_bad_checkpoints:
                raise RuntimeError(f"{err} Or set retrain_bad_checkpoints=True to train from scratch.") from err
            LOG.warning("ViT: %s -- training from scratch (retrain_bad_checkpoints=True)", err)
    if state is not None:
        if state.get("key") == key:
            model.load_state_dict(state["state_dict"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            load_scaler_state(scaler, state["scaler"])  # {} from a disabled scaler: a fresh one
            result.history, bad_epochs = state["history"], state["bad_epochs"]
            result.best_epoch, result.best_val_ccc = state["best_epoch"], state["best_val_ccc"]
            result.resumed_from, result.stopped_early = state["epoch"], state["stopped_early"]
            result.skipped_steps = state["skipped_steps"]
            LOG.info("ViT: resuming after epoch %d from %s", state["epoch"], last_path)
        else:
            LOG.info("ViT: %s belongs to other settings or data; starting fresh", last_path)
    def capped() -> bool:  # the smoke-run cap on optimizer steps (vit_max_steps) is reached
        return 0 < cfg.vit_max_steps <= sched.last_epoch

    first_epoch = result.resumed_from + 1
    if result.stopped_early or first_epoch > cfg.vit_epochs or capped():
        LOG.info("ViT: training had already finished (best epoch %d)", result.best_epoch)
    epochs = range(first_epoch, cfg.vit_epochs + 1) if not (result.stopped_early or capped()) else range(0)
    bar = tqdm(epochs, desc="ViT", unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + epoch)
        net.train()
        loss_sum, n_steps = 0.0, 0
        batches = tqdm(_loader(train_ds, cfg, device, True, epoch), desc=f"epoch {epoch}", unit="batch", leave=False,
                       mininterval=2.0)
        for mel, y, w in batches:
            mel, y, w = (t.to(device, non_blocking=True) for t in (mel, y, w))
            with torch.autocast(device_type=device.split(":")[0], dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                pred = net(pre(mel))
            loss = loss_fn(cfg.vit_loss, pred.float(), y, w)
            if not torch.isfinite(loss):
                result.skipped_steps += 1
                LOG.warning("ViT: non-finite loss at epoch %d; step skipped (%d so far)", epoch, result.skipped_steps)
                if result.skipped_steps > cfg.max_skipped_steps:
                    raise RuntimeError(
                        f"ViT training stopped: {result.skipped_steps} steps had a non-finite loss (limit "
                        f"max_skipped_steps={cfg.max_skipped_steps}). Lower vit_lr or set mixed_precision=False. "
                        f"{best_path} (best epoch {result.best_epoch}) is intact.")
                opt.zero_grad(set_to_none=True)
                continue
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler_step(scaler, opt):  # an fp16 step skipped for inf grads does not advance the lr
                sched.step()
            loss_sum += float(loss.detach())
            n_steps += 1
            batches.set_postfix(loss=f"{loss_sum / n_steps:.4f}")
            if epoch == first_epoch and n_steps == min(10, steps_per_epoch):
                rate = n_steps * cfg.vit_batch_size / (time.perf_counter() - t0)
                LOG.info("ViT: ~%.0f images/s; ETA for %d epochs ~%.0f s", rate, len(epochs),
                         len(train_ds) * len(epochs) / rate)
            if capped():
                break
        pred, target = predict_dataset(model, pre, val_ds, cfg, device)
        row = {"epoch": epoch, "train_loss": loss_sum / max(n_steps, 1),
               "val_loss": float(loss_fn(cfg.vit_loss, torch.from_numpy(pred), torch.from_numpy(target),
                                         torch.ones(len(pred)))),
               "val_ccc_valence": ccc(target[:, 0], pred[:, 0]), "val_ccc_arousal": ccc(target[:, 1], pred[:, 1]),
               "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
        row["val_ccc_mean"] = (row["val_ccc_valence"] + row["val_ccc_arousal"]) / 2
        result.history.append(row)
        if row["val_ccc_mean"] > result.best_val_ccc:
            result.best_val_ccc, result.best_epoch, bad_epochs = row["val_ccc_mean"], epoch, 0
            save_best(model, pre, cfg, best_path, epoch, row)
        else:
            bad_epochs += 1
        result.stopped_early = bad_epochs >= cfg.early_stop_patience
        _save_last(last_path, model, opt, sched, scaler, result, epoch, bad_epochs, key)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_ccc=f"{row['val_ccc_mean']:.3f}")
        if interrupt_after_epoch == epoch:
            raise KeyboardInterrupt(f"simulated interruption after epoch {epoch}")
        if result.stopped_early:
            LOG.info("ViT: early stop after epoch %d (no val CCC gain for %d epochs)", epoch, bad_epochs)
            break
        if capped():
            LOG.info("ViT: stopped after %d optimizer steps (vit_max_steps, a smoke setting)", sched.last_epoch)
            break
    bar.close()
    result.seconds = time.perf_counter() - start
    return result


def save_best(model, pre, cfg: Config, path: str, epoch: int, row: dict) -> None:
    """Everything ``predict`` needs, loadable with ``torch.load(weights_only=True)``."""
    state = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vit_config": model.backbone.config.to_dict(), "preprocess": pre.to_dict(),
        "mel_params": {k: getattr(cfg, k) for k in ("sample_rate", "clip_seconds", "clip_offset", "n_fft",
                                                    "hop_length", "n_mels", "db_amin")},
        "config": cfg.to_dict(), "epoch": epoch, "val": row, "format": 1,
    }
    _atomic_save(state, path)


def _save_last(path, model, opt, sched, scaler, result: TrainResult, epoch: int, bad_epochs: int, key: str) -> None:
    _atomic_save({
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
        "history": result.history, "epoch": epoch, "bad_epochs": bad_epochs, "best_epoch": result.best_epoch,
        "best_val_ccc": result.best_val_ccc, "stopped_early": result.stopped_early,
        "skipped_steps": result.skipped_steps, "key": key,
    }, path)


def _atomic_save(obj, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def data_key(store, split, synthetic) -> str:
    """Identity of the training data: feature store, split and synthetic set."""
    return hash_json({"features": os.path.basename(store.path), "split": split.to_dict(orient="list"),
                      "synthetic": os.path.basename(synthetic.path) if synthetic is not None else None})
