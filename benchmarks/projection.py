"""Projected Run All time of the ``kaggle`` preset on Kaggle's cards: a PROJECTION, not a measurement.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on models built on the ``meta``
device (real shapes, no memory, no arithmetic; seconds on any CPU):
  * ViT-B/16 (google/vit-base-patch16-224-in21k's config: hidden 768, 12 layers, 12 heads,
    MLP 3072, patch 16) + the regression head: one training step at ``vit_batch_size``
    (forward + backward) and one forward pass per evaluated image;
  * the GAN at the preset's size (128 x 1292, ``gan_channels``): one step = a D step
    (G forward, D on real and fake, D backward) + a G step (G forward, D forward, backward
    through both), and one G forward per synthetic sample.
    (The GAN helper's ``results["gan_projection"]`` replaces ``gan_flops`` when merged.)
Those are multiplied by the steps the preset takes on DEAM (1802 songs; the split fractions;
``vit_epochs`` x steps per epoch for the main model AND each extra ViT arm, which trains for
the same number of optimizer steps; validation every epoch and test once per ViT, each over
``test_crops`` windows), and divided by a card's peak dense throughput times a model FLOP
utilisation (MFU) range -- see ``CARDS`` and ``MFU`` for the figures and why. Extraction is
projected from the per-core rate ``make bench`` measured, on Kaggle's 4 CPU cores.

Not counted: data loading (its own benchmark shows the loader keeps up), the GAN quality
probes and bootstrap (CPU, seconds), kernel start-up and package imports (~30 s).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

# Peak dense tensor throughput (no 2:4 sparsity) in the precision the run uses on that card.
CARDS = {
    "T4": {"peak_tflops": 65.0, "precision": "fp16 + GradScaler", "gpus": 1},
    "T4 x2": {"peak_tflops": 65.0, "precision": "fp16 + GradScaler", "gpus": 2},
    "L4": {"peak_tflops": 121.0, "precision": "bf16", "gpus": 1},
}
# Model FLOP utilisation (achieved / peak), (low, high). Why these ranges:
#  - ViT-B/16 at batch 32 with AMP: large matmuls, but the T4 and the L4 are 70-72 W cards that
#    drop their clocks well below boost under sustained tensor-core load, and HF's eager ViT adds
#    layernorm/softmax/GELU passes that are memory-bound. Public T4 figures for ViT-B/16 training
#    (~90-130 images/s with AMP, i.e. 9-14 TFLOP/s at 105 GFLOP per image) are 15-21% of 65;
#    30% is a well-fed best case. The same reasoning (power-capped, same software) for the L4.
#  - the GAN: convolutions with 32-256 channels on 128 x 1292 maps, the first D and last G
#    layers with ONE channel (no tensor-core use), batch norm, spectral norm and element-wise
#    ops between them: memory-bound much of the time, so 10-25%.
MFU = {"vit": (0.15, 0.30), "gan": (0.10, 0.25)}
# DistributedDataParallel on N GPUs (emovit.distributed): each GPU computes its 1/N of the batch,
# and every step all-reduces the gradients, compressed to fp16 on CUDA (2 bytes per parameter): a
# ring all-reduce moves 2 (N - 1) / N of them through each GPU. Kaggle's T4 x2 has no NVLink: the
# traffic crosses PCIe (gen3 x16, ~12 GB/s raw), where NCCL reaches about 5-10 GB/s. DDP overlaps
# the all-reduce with the backward pass bucket by bucket; the exposed share is 70% (pessimistic)
# to 20% (optimistic). Evaluation splits its batches without gradient traffic. The GAN trains on
# one GPU (its BatchNorm statistics are per batch, and it is 3-8 of the T4 minutes): not split.
ALLREDUCE_GB_PER_S = (5.0, 10.0)  # (pessimistic, optimistic)
ALLREDUCE_EXPOSED = (0.7, 0.2)  # share of the all-reduce not hidden behind the backward pass
GRADIENT_BYTES_PER_PARAMETER = 2  # fp16 compression hook
KAGGLE_CPU_CORES = 4
DEAM_SONGS = 1802
VIT_B16 = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "patch_size": 16,
}
# Resume state per epoch (fp32 weights + AdamW's two moments) and the best weights when the
# epoch improves, written to Kaggle's /kaggle/working disk; assumed 0.5 GB/s with fsync.
CHECKPOINT_GB_PER_S = 0.5


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as ``FlopCounterMode`` counts them (2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@functools.cache
def vit_flops(batch: int, height: int = 224, width: int = 224) -> dict:
    """ViT-B/16 regressor on the meta device: training step at ``batch`` and forward per image."""
    from transformers import ViTConfig, ViTModel

    from emovit.vit import ViTRegressor

    config = ViTConfig(**VIT_B16, image_size=max(height, width), num_channels=3)
    with torch.device("meta"):
        model = ViTRegressor(ViTModel(config, add_pooling_layer=False))
        params = sum(p.numel() for p in model.parameters())
        step = count_flops(lambda: model(torch.randn(batch, 3, height, width)).square().mean().backward())
        with torch.no_grad():
            forward = count_flops(lambda: model(torch.randn(1, 3, height, width)))
    return {"parameters": params, "train_step_flops": step, "forward_flops_per_image": forward, "batch": batch}


def gan_flops(cfg, batch: int = 2) -> dict:
    """The GAN of :mod:`emovit.gan` at ``cfg``'s size: FLOPs of one training step (a D step + a G
    step, the functions ``gan_train`` runs, on ``gan_crop_frames`` crops) and of one full-length
    sample. Counted on real CPU tensors at ``batch`` (autocast has no meta device; ~3 s a count)
    and scaled to ``cfg.gan_batch_size`` (FLOPs are linear in the batch; DiffAugment adds none).

    Counted once per process for each setting of what a trained GAN depends on (the fields of its
    checkpoint key, ``gan_train.GAN_FIELDS``, and the spectrogram size): the scenarios of
    :func:`scenarios` change only other fields."""
    from emovit.gan_train import GAN_FIELDS

    gan_fields = {k: getattr(cfg, k) for k in (*GAN_FIELDS, "n_mels", "num_frames")}
    key = (json.dumps(gan_fields, sort_keys=True, default=repr), batch)
    if key not in _GAN_FLOPS:
        _GAN_FLOPS[key] = _count_gan_flops(cfg, batch)
    return dict(_GAN_FLOPS[key])


_GAN_FLOPS: dict[tuple[str, int], dict] = {}


def _count_gan_flops(cfg, batch: int) -> dict:
    from emovit import gan as G
    from emovit.gan_train import arch_from_config, discriminator_step, generator_step_loss

    arch = arch_from_config(cfg)
    gen, disc = G.Generator(arch), G.Discriminator(arch)
    crop = cfg.gan_crop_frames or cfg.num_frames
    real, y = torch.randn(batch, 1, cfg.n_mels, crop), torch.rand(batch, 2) * 2 - 1
    no_amp = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    d = count_flops(lambda: discriminator_step(gen, disc, real, y, cfg, no_amp, None)[0].backward())
    g = count_flops(lambda: generator_step_loss(gen, disc, y, crop, cfg, no_amp, None, real=real).backward())
    gen.eval()
    with torch.no_grad():
        sample = count_flops(lambda: gen(torch.randn(1, arch.z_dim), y[:1]))
    scale = cfg.gan_batch_size / batch
    return {
        "d_step_flops": int(d * scale),
        "g_step_flops": int(g * scale),
        "step_flops": int((d + g) * scale),
        "sample_flops": sample,
        "batch": cfg.gan_batch_size,
        "counted_batch": batch,
        "crop_frames": crop,
        "generator_parameters": G.count_parameters(gen),
        "discriminator_parameters": G.count_parameters(disc),
    }


def preset_counts(cfg, songs: int = DEAM_SONGS) -> dict:
    """Steps and evaluated images the preset takes on ``songs`` songs.

    Reads the arms and evaluation crops the way the current Config spells them: ``arms``
    (a dict of extra ViT arms) where it exists, else ``run_ablation`` (one arm); ``test_crops``
    where it exists, else 1 window per song; ``image_height``/``image_width`` else ``image_size``.
    """
    n_val = round(songs * cfg.val_fraction)
    n_test = round(songs * cfg.test_fraction)
    n_train = songs - n_val - n_test
    synthetic = cfg.num_synthetic if cfg.use_synthetic else 0
    steps_per_epoch = math.ceil((n_train + synthetic) / cfg.vit_batch_size)
    arms = len(cfg.arms) if hasattr(cfg, "arms") else int(bool(getattr(cfg, "run_ablation", False)))
    crops = getattr(cfg, "test_crops", 1)
    # the real-only reference always trains; the synthetic-trained model too when synthetic data is
    # on and the gate passes a dimension (counted: the projection is for a run that uses the GAN)
    vits_per_seed = 1 + int(bool(cfg.use_synthetic)) + arms
    seeds = len(getattr(cfg, "training_seeds", [0]))  # every ViT trains once per training seed
    vits = vits_per_seed * seeds
    judged = synthetic if hasattr(cfg, "synthetic_dims") else 0  # the judge's pass over the synthetic set
    gan_batch = cfg.gan_batch_size
    gan_steps = cfg.gan_steps
    gan_checks = gan_steps // cfg.gan_eval_every  # each generates 2 samples per validation song
    return {
        "songs": songs,
        "train_songs": n_train,
        "val_songs": n_val,
        "test_songs": n_test,
        "vit_trainings": vits,
        "training_seeds": seeds,
        "vit_steps_per_seed": vits_per_seed * cfg.vit_epochs * steps_per_epoch,
        "eval_images_per_seed": vits_per_seed * ((cfg.vit_epochs + 1) * n_val + n_test) * crops,
        "extra_arms": arms,
        "vit_steps_per_epoch": steps_per_epoch,
        "vit_epochs": cfg.vit_epochs,
        "vit_steps_total": vits * cfg.vit_epochs * steps_per_epoch,
        # per ViT: a validation pass per epoch and one of the kept checkpoint, the test pass; + the judge,
        # + the predict() example
        "eval_images_total": vits * ((cfg.vit_epochs + 1) * n_val + n_test) * crops + judged + crops,
        "eval_crops": crops,
        "gan_steps": gan_steps,
        "gan_batch": gan_batch,
        "gan_samples": cfg.num_synthetic + gan_checks * 2 * n_val,
        "image_height": getattr(cfg, "image_height", getattr(cfg, "image_size", 224)),
        "image_width": getattr(cfg, "image_width", getattr(cfg, "image_size", 224)),
    }


def allreduce_seconds(parameters: int, gpus: int, gb_per_s: float) -> float:
    """One ring all-reduce of the fp16 gradients: 2 (N - 1) / N of them through each GPU."""
    if gpus < 2:
        return 0.0
    return 2 * (gpus - 1) / gpus * parameters * GRADIENT_BYTES_PER_PARAMETER / (gb_per_s * 1e9)


def project(
    cfg,
    extraction_songs_per_s_per_core: float,
    extraction_parallel_efficiency: float = 1.0,
    worker_startup_s: float = 5.0,
    songs: int = DEAM_SONGS,
) -> dict:
    """Minutes per card at the MFU range (low MFU -> "high" minutes), and where they go."""
    counts = preset_counts(cfg, songs)
    vit = vit_flops(cfg.vit_batch_size, counts["image_height"], counts["image_width"])
    gan = gan_flops(cfg)
    flops = {
        "vit_training": counts["vit_steps_total"] * vit["train_step_flops"],
        "vit_evaluation": counts["eval_images_total"] * vit["forward_flops_per_image"],
        "gan_training": counts["gan_steps"] * gan["step_flops"],
        "gan_sampling": counts["gan_samples"] * gan["sample_flops"],
    }
    extraction_s = worker_startup_s + songs / (
        extraction_songs_per_s_per_core * KAGGLE_CPU_CORES * extraction_parallel_efficiency
    )
    checkpoint_bytes = counts["vit_trainings"] * cfg.vit_epochs * vit["parameters"] * 4 * (3 + 1)
    io_s = checkpoint_bytes / 1e9 / CHECKPOINT_GB_PER_S
    cards = {}
    for name, card in CARDS.items():
        peak = card["peak_tflops"] * 1e12
        row = {"peak_tflops": card["peak_tflops"], "precision": card["precision"]}
        for bound, i in (("optimistic", 1), ("pessimistic", 0)):
            gpus = card["gpus"]
            vit_rate = peak * MFU["vit"][i] * gpus
            gan_rate = peak * MFU["gan"][i]
            allreduce_s = allreduce_seconds(vit["parameters"], gpus, ALLREDUCE_GB_PER_S[i]) * ALLREDUCE_EXPOSED[i]
            parts = {
                "extraction": extraction_s,
                "vit_training": flops["vit_training"] / vit_rate + counts["vit_steps_total"] * allreduce_s,
                "vit_evaluation": flops["vit_evaluation"] / vit_rate,
                "gan_training": flops["gan_training"] / gan_rate,
                "gan_sampling": flops["gan_sampling"] / gan_rate,
                "checkpoint_io": io_s,
            }
            row[f"{bound}_minutes"] = sum(parts.values()) / 60
            per_seed = (  # one more training seed: every ViT again, with its evaluations and checkpoints
                counts["vit_steps_per_seed"] * (vit["train_step_flops"] / vit_rate + allreduce_s)
                + counts["eval_images_per_seed"] * vit["forward_flops_per_image"] / vit_rate
                + io_s / counts["training_seeds"]
            )
            row[f"{bound}_minutes_per_extra_seed"] = per_seed / 60
            row[f"{bound}_minutes_by_stage"] = {k: v / 60 for k, v in parts.items()}
        cards[name] = row
    return {
        "label": "PROJECTION from FLOP counts and an assumed MFU range, not a measurement",
        "counts": counts,
        "vit": vit,
        "gan": gan,
        "flops": flops,
        "mfu": {k: list(v) for k, v in MFU.items()},
        "allreduce_gb_per_s": list(ALLREDUCE_GB_PER_S),
        "allreduce_exposed": list(ALLREDUCE_EXPOSED),
        "allreduce_ms_per_step_t4x2": [
            round(1000 * allreduce_seconds(vit["parameters"], 2, b) * e, 1)
            for b, e in zip(ALLREDUCE_GB_PER_S, ALLREDUCE_EXPOSED)
        ],
        "kaggle_cpu_cores": KAGGLE_CPU_CORES,
        "extraction_songs_per_s_per_core": extraction_songs_per_s_per_core,
        "extraction_parallel_efficiency": extraction_parallel_efficiency,
        "checkpoint_gb_per_s": CHECKPOINT_GB_PER_S,
        "cards": cards,
    }


def markdown(p: dict) -> list[str]:
    """A table of the projection (for RESULTS.md and the README)."""
    c, v, g = p["counts"], p["vit"], p["gan"]
    lines = [
        f"**Projection, not a measurement** (no T4 or L4 has run it; what an H200 measured is in "
        "`benchmarks/RESULTS.md`): FLOPs from `FlopCounterMode`, times the steps "
        f"of the `kaggle` preset on DEAM ({c['songs']} songs: {c['train_songs']} train / {c['val_songs']} val / "
        f"{c['test_songs']} test), divided by each card's peak at an assumed MFU of "
        f"{p['mfu']['vit'][0]:.0%}-{p['mfu']['vit'][1]:.0%} (ViT) and "
        f"{p['mfu']['gan'][0]:.0%}-{p['mfu']['gan'][1]:.0%} "
        f"(GAN). T4 x2: the ViT with DistributedDataParallel, each GPU half of every batch, plus the exposed "
        f"part of an fp16 gradient all-reduce over PCIe ({p['allreduce_ms_per_step_t4x2'][1]}-"
        f"{p['allreduce_ms_per_step_t4x2'][0]} ms per step); the GAN on one GPU. Why these figures: "
        "`benchmarks/projection.py`.",
        "",
        f"- ViT-B/16 ({v['parameters'] / 1e6:.1f} M parameters): {v['train_step_flops'] / 1e12:.2f} TFLOP per "
        f"training step at batch {v['batch']} (forward + backward), {v['forward_flops_per_image'] / 1e9:.1f} GFLOP "
        f"per evaluated image; {c['vit_trainings']} ViT trainings (real-only, synthetic-trained + "
        f"{c['extra_arms']} arm(s), same steps) "
        f"x {c['vit_epochs']} "
        f"epochs x {c['vit_steps_per_epoch']} steps = {c['vit_steps_total']} steps; {c['eval_images_total']} evaluated "
        f"images ({c['eval_crops']} window(s) per song); {c['training_seeds']} training seed(s).",
        f"- GAN (G {g['generator_parameters'] / 1e6:.2f} M, D {g['discriminator_parameters'] / 1e6:.2f} M parameters, "
        f"trained on 128 x {g['crop_frames']} crops, sampled at 128 x 1292): {g['step_flops'] / 1e12:.2f} TFLOP per "
        f"step at batch {g['batch']} (D step {g['d_step_flops'] / 1e12:.2f} + G step {g['g_step_flops'] / 1e12:.2f}); "
        f"{c['gan_steps']} steps; {c['gan_samples']} full-length samples (synthetic set + validation checks) at "
        f"{g['sample_flops'] / 1e9:.0f} GFLOP each.",
        f"- Extraction: {c['songs']} songs at {p['extraction_songs_per_s_per_core']:.1f} songs/s per core (measured "
        f"by `make bench`) on Kaggle's {p['kaggle_cpu_cores']} cores. Checkpoint writes at "
        f"{p['checkpoint_gb_per_s']} GB/s.",
        "",
        "| card | peak TFLOP/s | precision | extraction | GAN | ViT (train + eval) | checkpoints | Run All, minutes "
        "| each extra training seed, minutes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    # in CARDS order, also when p was read back from the key-sorted results.json
    for name, r in sorted(p["cards"].items(), key=lambda item: list(CARDS).index(item[0])):
        lo, hi = r["optimistic_minutes_by_stage"], r["pessimistic_minutes_by_stage"]

        def span(*keys, lo=lo, hi=hi):
            return f"{sum(lo[k] for k in keys):.1f}-{sum(hi[k] for k in keys):.1f}"

        lines.append(
            f"| {name} | {r['peak_tflops']:g} | {r['precision']} | {span('extraction')} | "
            f"{span('gan_training', 'gan_sampling')} | {span('vit_training', 'vit_evaluation')} | "
            f"{span('checkpoint_io')} | **{r['optimistic_minutes']:.0f}-{r['pessimistic_minutes']:.0f}** | "
            f"{r['optimistic_minutes_per_extra_seed']:.0f}-{r['pessimistic_minutes_per_extra_seed']:.0f} |"
        )
    return lines


# Default sets to pick from to meet the ~20 min T4 budget of a default Run All: each is
# the kaggle preset with these overrides, projected the same way. Fields a Config lacks are skipped.
SCENARIOS = {
    "kaggle preset as is": {},
    "+ arm vit_no_augment": {
        "arms": {"vit_no_augment": {"random_crop": False, "spec_augment": False, "test_crops": 1}}
    },
    "gate closes both dimensions": {"use_synthetic": False},
    "ViT 6 epochs": {"vit_epochs": 6},
    "GAN 1500 steps": {"gan_steps": 1500},
    "3 training seeds": {"seeds": [42, 1, 2]},
}


def scenarios(cfg, **kwargs) -> dict:
    """{scenario: T4 minutes (optimistic, pessimistic) and each card's} for ``SCENARIOS``."""
    known = {f.name for f in dataclasses.fields(cfg)}
    out = {}
    for name, overrides in SCENARIOS.items():
        p = project(dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if k in known}), **kwargs)
        out[name] = {
            "overrides": {k: v for k, v in overrides.items() if k in known},
            **{
                card: [round(r["optimistic_minutes"], 1), round(r["pessimistic_minutes"], 1)]
                for card, r in p["cards"].items()
            },
        }
    return out


def scenario_markdown(rows: dict) -> list[str]:
    cards = list(CARDS)
    lines = [
        "| defaults | " + " | ".join(f"{c}, minutes" for c in cards) + " |",
        "| --- | " + " | ".join("---" for _ in cards) + " |",
    ]
    for name, r in sorted(rows.items(), key=lambda item: list(SCENARIOS).index(item[0])):  # SCENARIOS order
        lines.append(f"| {name} | " + " | ".join(f"{r[c][0]:.0f}-{r[c][1]:.0f}" for c in cards) + " |")
    return lines
