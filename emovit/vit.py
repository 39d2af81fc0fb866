"""The Vision Transformer regressor: where its weights come from, its head, its input.

Weights, in this order (``find_pretrained``):
  1. ``cfg.vit_local_dir``: a folder with a ViT ``config.json`` and weights;
  2. a folder below ``cfg.pretrained_search_dir`` (``/kaggle/input``) holding one, i.e. an
     attached Kaggle Model or dataset;
  3. the Hugging Face hub name ``cfg.vit_model_name`` (needs internet on Kaggle).
With none reachable the run stops with a message naming the three, unless
``cfg.allow_random_vit`` (the demo preset) asks for a small randomly initialised ViT.

Input (``DevicePreprocessor``, on the device, batched): log-mel (B, n_mels, T) float16 dB
-> standardized with training-song statistics -> (training only) SpecAugment masks, set to
0 = the mean level -> values in [-k, k] std mapped linearly onto pixels [0, 1]
(k = ``pixel_clip_std``) -> resized to image_height x image_width (bilinear, antialiased;
224 x 224 by default) -> repeated to 3 channels -> normalized with the checkpoint's own image
statistics (in21k: mean = std = 0.5) or the classic ImageNet-1k constants. Any other multiple
of 16 (e.g. 128 x 512, close to a spectrogram's own aspect) works through the ViT's
interpolation of its position embeddings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn import functional as F
from transformers import ViTConfig, ViTModel
from transformers.utils import cached_file

from emovit import distributed
from emovit.config import Config
from emovit.files import LOG

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
    try:
        path = cached_file(location, "preprocessor_config.json")
    except OSError:
        path = None
    if not path:
        LOG.warning(
            "ViT: no preprocessor_config.json at %s, so the checkpoint does not say how its images were "
            "normalized; assuming the in21k statistics 0.5 / 0.5 (image_norm='imagenet-1k' for ImageNet-1k's)",
            location,
        )
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
            cached_file(cfg.vit_model_name, "config.json")
            return _found("hub", cfg.vit_model_name, cfg)
        except OSError as err:
            tried.append(f"hub {cfg.vit_model_name!r} not reachable ({type(err).__name__})")
    else:
        tried.append("no hub name (vit_model_name is empty)")
    if cfg.allow_random_vit:
        LOG.warning(
            "ViT: no pretrained weights (%s); using a SMALL RANDOMLY INITIALISED ViT as the "
            "preset allows -- numbers from it say nothing about the pretrained model",
            "; ".join(tried),
        )
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


def check_image_shape(height: int, width: int) -> None:
    """Both sides must be positive multiples of the ViT's 16-pixel patch."""
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise ValueError(
            f"image_height and image_width must be positive multiples of 16 (the ViT patch), got {height} x {width}"
        )


def random_vit_config(cfg: Config):
    check_image_shape(cfg.image_height, cfg.image_width)
    return ViTConfig(
        hidden_size=cfg.random_vit_hidden,
        num_hidden_layers=cfg.random_vit_layers,
        num_attention_heads=cfg.random_vit_heads,
        intermediate_size=4 * cfg.random_vit_hidden,
        image_size=[cfg.image_height, cfg.image_width],
        patch_size=16,
        num_channels=3,
    )


class ViTRegressor(nn.Module):
    """ViT backbone + head on the CLS token: images (B, 3, H, W) -> (B, 2) valence, arousal.

    Inputs of another size than the backbone's ``image_size`` use interpolated position
    embeddings (``interpolate_pos_encoding``); H and W must be multiples of the patch size.

    ``autocast_dtype`` (None = off): the forward pass runs under ``torch.autocast`` with this
    dtype, entered here rather than only by the caller, so that any wrapper running the forward
    elsewhere (a thread, a hook) keeps the dtype the caller chose: autocast's dtype is per thread.
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
        size = self.backbone.config.image_size
        native = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        interpolate = tuple(pixels.shape[-2:]) != native
        cls = self.backbone(pixel_values=pixels, interpolate_pos_encoding=interpolate).last_hidden_state[:, 0]
        return self.head(cls)  # (B, 2)


def for_devices(model: ViTRegressor, device: str, dtype: torch.dtype | None) -> nn.Module:
    """The module a training step calls: ``model`` with its forward pinned to ``dtype`` (mixed
    precision; None = full), wrapped in ``DistributedDataParallel`` when the process is one of
    several ranks (``torchrun``; one GPU each). ``model`` itself stays the unwrapped one to save
    and optimize."""
    model.autocast_dtype = dtype
    if not distributed.current().active:
        return model
    if not str(device).startswith("cuda"):
        return nn.parallel.DistributedDataParallel(model)  # gloo on the CPU (tests)
    index = torch.device(device).index
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[torch.cuda.current_device() if index is None else index]
    )
    if dtype == torch.float16:  # gradients are loss-scaled, so fp16 keeps small ones; bf16 runs have no scaler
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)  # half the all-reduce bytes over PCIe
    return ddp


def build_model(cfg: Config, pretrained: Pretrained) -> ViTRegressor:
    """The regressor with the resolved backbone (``from_pretrained`` unless random).

    Seeded with ``cfg.seed`` first, so the head (and a random backbone) start the same
    whatever ran before -- re-running the notebook cell gives the same model.
    """
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
    return ViTRegressor(ViTModel(ViTConfig.from_dict(vit_config), add_pooling_layer=False), dropout)


class RoutedRegressor(nn.Module):
    """Each output dimension the mean of one or more regressors: images (B, 3, H, W) -> (B, 2).

    ``sources[d]`` lists the indices of the members whose outputs are averaged for dimension d
    (0 valence, 1 arousal); a bare index means that member alone. The delivered model takes each
    dimension from the model the validation songs preferred, or the mean of both where they lean
    but do not convince. A member no dimension names is never run.
    """

    def __init__(self, members: list[nn.Module], sources: Sequence[int | Sequence[int]]):
        super().__init__()
        routes = tuple((s,) if isinstance(s, int) else tuple(s) for s in sources)
        if len(routes) != 2 or not all(r and all(0 <= i < len(members) for i in r) for r in routes):
            raise ValueError(f"sources must name members per dimension, got {sources} for {len(members)} members")
        self.members = nn.ModuleList(members)
        self.sources = tuple(tuple(int(i) for i in r) for r in routes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        outs = {i: self.members[i](pixels) for i in sorted({i for r in self.sources for i in r})}
        return torch.stack([torch.stack([outs[i][:, d] for i in r]).mean(0) for d, r in enumerate(self.sources)], 1)


def regressor_from_checkpoint(state: dict) -> nn.Module:
    """The trained model of a ``best_vit_model.pth`` state: a :class:`ViTRegressor`, or for a
    delivered checkpoint (``sources`` present) a :class:`RoutedRegressor` of its members."""
    if "sources" in state:
        model = RoutedRegressor(
            [model_from_config_dict(state["vit_config"]) for _ in state["members"]], state["sources"]
        )
    else:
        model = model_from_config_dict(state["vit_config"])
    model.load_state_dict(state["state_dict"])
    return model


class SpecAugment(nn.Module):
    """Frequency and time masks (Park et al. 2019) on standardized log-mels, training mode only.

    ``sample(batch, n_mels, frames, generator)`` draws (batch, freq_masks + time_masks, 2) spans
    (start, width): ``freq_masks`` bands of 0..``freq_mask_max`` mel bins, then ``time_masks``
    spans of 0..``time_mask_max_fraction`` x frames, from a CPU generator -- one global training
    step's, so an item's masks do not depend on how a batch is split over ranks.
    ``forward(z, spans)``: (B, n_mels, T) -> same shape, masked values 0 = the training songs'
    mean level (the input is standardized); identity in eval mode or without spans.
    """

    def __init__(
        self, freq_masks: int = 2, freq_mask_max: int = 24, time_masks: int = 2, time_mask_max_fraction: float = 0.1
    ):
        super().__init__()
        self.freq_masks, self.freq_mask_max = freq_masks, freq_mask_max
        self.time_masks, self.time_mask_max_fraction = time_masks, time_mask_max_fraction

    @staticmethod
    def _draw(batch: int, length: int, count: int, max_width: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, count, 2) int64 spans: width uniform on 0..max_width, start uniform where it fits."""
        max_width = min(max_width, length)
        width = torch.randint(0, max_width + 1, (batch, count), generator=generator)
        start = (torch.rand(batch, count, generator=generator) * (length - width + 1)).floor().long()
        return torch.stack([start, width], dim=2)

    def sample(self, batch: int, n_mels: int, frames: int, generator: torch.Generator) -> torch.Tensor:
        freq = self._draw(batch, n_mels, self.freq_masks, self.freq_mask_max, generator)
        time = self._draw(batch, frames, self.time_masks, int(self.time_mask_max_fraction * frames), generator)
        return torch.cat([freq, time], dim=1)

    @staticmethod
    def _hit(spans: torch.Tensor, length: int) -> torch.Tensor:
        """(B, count, 2) spans -> (B, length) bool: inside any of them."""
        pos = torch.arange(length, device=spans.device)[None, None, :]
        start, width = spans[..., :1], spans[..., 1:]
        return ((pos >= start) & (pos < start + width)).any(dim=1)

    def forward(self, z: torch.Tensor, spans: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or spans is None:
            return z
        spans = spans.to(z.device)
        freq = self._hit(spans[:, : self.freq_masks], z.shape[1])[:, :, None]
        time = self._hit(spans[:, self.freq_masks :], z.shape[2])[:, None, :]
        return z.masked_fill(freq | time, 0.0)

    def to_dict(self) -> dict:
        return {
            "freq_masks": self.freq_masks,
            "freq_mask_max": self.freq_mask_max,
            "time_masks": self.time_masks,
            "time_mask_max_fraction": self.time_mask_max_fraction,
        }


class DevicePreprocessor(nn.Module):
    """log-mel dB (B, n_mels, T) any float dtype -> normalized pixels (B, 3, H, W) float32.

    ``size`` is (H, W) or one int for a square. ``spec_augment`` (optional) masks the
    standardized log-mel with the ``spans`` given (``sample_spans``) in training mode only;
    ``eval()`` (validation, test, prediction) never masks.
    """

    def __init__(
        self,
        mel_mean: float,
        mel_std: float,
        image_mean,
        image_std,
        size: int | tuple = 224,
        clip_std: float = 3.0,
        spec_augment: SpecAugment | None = None,
    ):
        super().__init__()
        self.height, self.width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        check_image_shape(self.height, self.width)
        self.mel_mean, self.mel_std, self.clip_std = mel_mean, mel_std, clip_std
        self.spec_augment = spec_augment
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def from_config(cls, cfg: Config, standardizer, pretrained: Pretrained) -> DevicePreprocessor:
        """The run's preprocessor: training-song statistics, the weights' image statistics,
        ``image_height`` x ``image_width`` and SpecAugment when ``cfg.spec_augment``."""
        augment = (
            SpecAugment(cfg.freq_masks, cfg.freq_mask_max, cfg.time_masks, cfg.time_mask_max_fraction)
            if cfg.spec_augment
            else None
        )
        return cls(
            standardizer.mean,
            standardizer.std,
            pretrained.image_mean,
            pretrained.image_std,
            (cfg.image_height, cfg.image_width),
            cfg.pixel_clip_std,
            augment,
        )

    @classmethod
    def from_dict(cls, d: dict) -> DevicePreprocessor:
        """Rebuild from :meth:`to_dict` (checkpoints before format 2 stored one square ``size``).

        Prediction never augments, so SpecAugment settings are not restored."""
        size = (d["height"], d["width"]) if "height" in d else d["size"]
        return cls(d["mel_mean"], d["mel_std"], d["image_mean"], d["image_std"], size, d["clip_std"])

    def sample_spans(self, batch: int, n_mels: int, frames: int, generator: torch.Generator) -> torch.Tensor | None:
        """SpecAugment spans of a global batch (None without SpecAugment); see :class:`SpecAugment`."""
        return None if self.spec_augment is None else self.spec_augment.sample(batch, n_mels, frames, generator)

    def forward(self, mels: torch.Tensor, spans: torch.Tensor | None = None) -> torch.Tensor:
        z = (mels.float() - self.mel_mean) / self.mel_std  # standardized
        if self.spec_augment is not None:
            z = self.spec_augment(z, spans)  # identity unless in training mode with spans
        pixels = ((z + self.clip_std) / (2 * self.clip_std)).clamp(0, 1).unsqueeze(1)  # (B, 1, M, T) in [0, 1]
        pixels = F.interpolate(
            pixels, size=(self.height, self.width), mode="bilinear", antialias=True, align_corners=False
        )
        return (pixels.expand(-1, 3, -1, -1) - self.image_mean) / self.image_std

    def to_dict(self) -> dict:
        return {
            "mel_mean": self.mel_mean,
            "mel_std": self.mel_std,
            "image_mean": self.image_mean.flatten().tolist(),
            "image_std": self.image_std.flatten().tolist(),
            "height": self.height,
            "width": self.width,
            "clip_std": self.clip_std,
            "spec_augment": self.spec_augment.to_dict() if self.spec_augment is not None else None,
        }
