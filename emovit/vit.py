"""The Vision Transformer regressor: where its weights come from, its head, its input.

Weights, in this order (``find_pretrained``):
  1. ``cfg.vit_local_dir``: a folder with a ViT ``config.json`` and weights;
  2. a folder below ``cfg.pretrained_search_dir`` (``/kaggle/input``) holding one, i.e. an
     attached Kaggle Model or dataset;
  3. the Hugging Face hub name ``cfg.vit_model_name`` (needs internet on Kaggle).
With none reachable the run stops with a message naming the three, unless
``cfg.allow_random_vit`` (the demo preset) asks for a small randomly initialised ViT.

Input (``DevicePreprocessor``, on the device, batched): log-mel (B, n_mels, T) float16 dB
-> standardized with training-song statistics -> values in [-k, k] std mapped linearly onto
pixels [0, 1] (k = ``pixel_clip_std``) -> resized to 224 x 224 (bilinear, antialiased) ->
repeated to 3 channels -> normalized with the checkpoint's own image statistics
(in21k: mean = std = 0.5) or the classic ImageNet-1k constants.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from emovit.config import Config
from emovit.io import LOG

IMAGENET_1K = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IN21K_DEFAULT = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Pretrained:
    """Where the backbone came from: source in {"local_dir", "kaggle_input", "hub", "random"}."""

    source: str
    location: str
    image_mean: tuple
    image_std: tuple


def is_vit_folder(folder: str) -> bool:
    """A folder with a ViT config.json and a weights file."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path) or not any(os.path.isfile(os.path.join(folder, w)) for w in WEIGHT_FILES):
        return False
    try:
        with open(cfg_path, encoding="utf-8") as f:
            return json.load(f).get("model_type") == "vit"
    except (OSError, ValueError):
        return False


def search_vit_folders(root: str) -> list[str]:
    """Every ViT model folder below ``root``, sorted; in21k-named folders first."""
    found = []
    if os.path.isdir(root):
        for folder, dirs, _ in os.walk(root, followlinks=True):
            dirs.sort()
            if is_vit_folder(folder):
                found.append(folder)
    return sorted(found, key=lambda p: ("in21k" not in p.lower(), p))


def image_stats(location: str, norm: str) -> tuple[tuple, tuple]:
    """(mean, std) per channel: from the checkpoint's preprocessor_config.json or ImageNet-1k."""
    if norm == "imagenet-1k":
        return IMAGENET_1K
    if norm != "checkpoint":
        raise ValueError(f"image_norm must be 'checkpoint' or 'imagenet-1k', got {norm!r}")
    from transformers.utils import cached_file

    try:
        path = cached_file(location, "preprocessor_config.json")
    except OSError:
        path = None
    if not path:
        LOG.info("ViT: no preprocessor_config.json at %s; using the in21k statistics 0.5 / 0.5", location)
        return IN21K_DEFAULT
    with open(path, encoding="utf-8") as f:
        proc = json.load(f)
    return tuple(proc["image_mean"]), tuple(proc["image_std"])


def find_pretrained(cfg: Config) -> Pretrained:
    """Resolve the backbone's weights (see the module docstring for the order)."""
    tried = []
    if cfg.vit_local_dir:
        if is_vit_folder(cfg.vit_local_dir):
            return _found("local_dir", cfg.vit_local_dir, cfg)
        tried.append(f"vit_local_dir={cfg.vit_local_dir!r} (no ViT config.json + weights there)")
    folders = search_vit_folders(cfg.pretrained_search_dir)
    if folders:
        return _found("kaggle_input", folders[0], cfg)
    tried.append(f"no ViT model folder below {cfg.pretrained_search_dir!r}")
    if cfg.vit_model_name:
        try:
            from transformers.utils import cached_file

            cached_file(cfg.vit_model_name, "config.json")
            return _found("hub", cfg.vit_model_name, cfg)
        except OSError as err:
            tried.append(f"hub {cfg.vit_model_name!r} not reachable ({type(err).__name__})")
    else:
        tried.append("no hub name (vit_model_name is empty)")
    if cfg.allow_random_vit:
        LOG.warning("ViT: no pretrained weights (%s); using a SMALL RANDOMLY INITIALISED ViT as the "
                    "preset allows -- numbers from it say nothing about the pretrained model", "; ".join(tried))
        return Pretrained("random", "random init", *IN21K_DEFAULT)
    raise RuntimeError(
        "No ViT weights reachable. Tried: " + "; ".join(tried) + ".\nGive the run one of:\n"
        "  1. a local folder with config.json + model.safetensors: set vit_local_dir;\n"
        f"  2. on Kaggle, attach the model as an input (Add Input -> Models -> {cfg.vit_model_name or 'a ViT'}) "
        f"so that it appears below {cfg.pretrained_search_dir};\n"
        f"  3. internet access (Kaggle: Settings -> Internet on) for the hub name {cfg.vit_model_name!r}.\n"
        "(Or set allow_random_vit=True for a small random ViT, for trying the pipeline only.)"
    )


def _found(source: str, location: str, cfg: Config) -> Pretrained:
    mean, std = image_stats(location, cfg.image_norm)
    LOG.info("ViT: weights from %s (%s); image mean %s std %s", source, location, mean, std)
    return Pretrained(source, location, mean, std)


def random_vit_config(cfg: Config):
    from transformers import ViTConfig

    return ViTConfig(hidden_size=cfg.random_vit_hidden, num_hidden_layers=cfg.random_vit_layers,
                     num_attention_heads=cfg.random_vit_heads, intermediate_size=4 * cfg.random_vit_hidden,
                     image_size=cfg.image_size, patch_size=16, num_channels=3)


class ViTRegressor(nn.Module):
    """ViT backbone + head on the CLS token: images (B, 3, 224, 224) -> (B, 2) valence, arousal.

    ``autocast_dtype`` (None = off): the forward pass runs under ``torch.autocast`` with this
    dtype, entered here rather than only by the caller. ``DataParallel`` runs each replica in
    a worker thread and re-enters autocast there with ``enabled=`` only; autocast's dtype is
    per thread, so the replicas would fall back to the device default (fp16 on CUDA) while
    the caller asked for bf16 and turned the GradScaler off.
    """

    def __init__(self, backbone: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 2))
        nn.init.zeros_(self.head[1].bias)
        nn.init.normal_(self.head[1].weight, std=0.02)
        self.autocast_dtype: torch.dtype | None = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self._forward(pixels)
        with torch.autocast(device_type=pixels.device.type, dtype=self.autocast_dtype):
            return self._forward(pixels)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        cls = self.backbone(pixel_values=pixels).last_hidden_state[:, 0]  # (B, hidden)
        return self.head(cls)


def for_devices(model: ViTRegressor, device: str, dtype: torch.dtype | None) -> nn.Module:
    """The module a training step calls: ``model`` with its forward pinned to ``dtype``
    (mixed precision; None = full), wrapped in ``DataParallel`` over every visible GPU when
    there are several. ``model`` itself stays the unwrapped one to save and optimize."""
    model.autocast_dtype = dtype
    if str(device).startswith("cuda") and torch.cuda.device_count() > 1:
        return nn.DataParallel(model)
    return model


def build_model(cfg: Config, pretrained: Pretrained) -> ViTRegressor:
    """The regressor with the resolved backbone (``from_pretrained`` unless random).

    Seeded with ``cfg.seed`` first, so the head (and a random backbone) start the same
    whatever ran before -- re-running the notebook cell gives the same model.
    """
    from transformers import ViTModel

    torch.manual_seed(cfg.seed)
    if pretrained.source == "random":
        backbone = ViTModel(random_vit_config(cfg), add_pooling_layer=False)
    else:
        backbone = ViTModel.from_pretrained(pretrained.location, add_pooling_layer=False)
        # Train in float32 master weights whatever the checkpoint's dtype: an fp16 copy loads as
        # fp16 parameters (transformers 5 keeps the saved dtype), and GradScaler.unscale_ then
        # refuses their fp16 gradients; bf16 master weights would lose the small AdamW updates.
        backbone = backbone.float()
    return ViTRegressor(backbone, cfg.head_dropout)


def model_from_config_dict(vit_config: dict, dropout: float = 0.0) -> ViTRegressor:
    """Rebuild an (untrained) regressor from a saved ``ViTConfig.to_dict()`` -- no hub needed."""
    from transformers import ViTConfig, ViTModel

    return ViTRegressor(ViTModel(ViTConfig.from_dict(vit_config), add_pooling_layer=False), dropout)


class DevicePreprocessor(nn.Module):
    """log-mel dB (B, n_mels, T) any float dtype -> normalized pixels (B, 3, size, size) float32."""

    def __init__(self, mel_mean: float, mel_std: float, image_mean, image_std, size: int = 224,
                 clip_std: float = 3.0):
        super().__init__()
        self.mel_mean, self.mel_std, self.size, self.clip_std = mel_mean, mel_std, size, clip_std
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        z = (mels.float() - self.mel_mean) / self.mel_std  # standardized
        pixels = ((z + self.clip_std) / (2 * self.clip_std)).clamp(0, 1).unsqueeze(1)  # (B, 1, M, T) in [0, 1]
        pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", antialias=True,
                               align_corners=False)
        return (pixels.expand(-1, 3, -1, -1) - self.image_mean) / self.image_std

    def to_dict(self) -> dict:
        return {"mel_mean": self.mel_mean, "mel_std": self.mel_std, "image_mean": self.image_mean.flatten().tolist(),
                "image_std": self.image_std.flatten().tolist(), "size": self.size, "clip_std": self.clip_std}
