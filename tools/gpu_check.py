#!/usr/bin/env python3
"""`make gpu-check`: the kaggle preset's sizes on a GPU, in one short call -> benchmarks/gpu.json.

The one command to run on a lent GPU machine (from the repository root; needs only a CUDA
PyTorch + transformers + numpy; no hub, no internet; about 2-4 minutes on an H100/H200):

    python -m tools.gpu_check --out benchmarks/gpu.json

What it does, for each precision -- "fp16" (fp16 autocast + GradScaler, FORCED: the T4 path,
whatever the card) and "bf16" (bf16 autocast, no scaler: the L4/Ampere+ path, when supported):
  * GAN at full size (128 x 1292 log-mels, gan_channels 32, z 128, batch 32): ``--gan-steps``
    steps of the training loop's D step + G step (hinge loss, Adam, autocast, one scaler each);
    GAN steps/s, peak GPU memory, finite losses;
  * ViT-B/16 (google/vit-base-patch16-224-in21k's config, random weights: no hub) + the
    regression head at batch 32, fed (32, 128, 1292) float16 log-mels through the on-device
    preprocessing: ``--vit-steps`` steps of the training step (``for_devices`` autocast,
    GradScaler, unscale_, clip_grad_norm_, ``scaler_step``, cosine schedule); images/s, peak
    memory, finite losses; and achieved TFLOP/s and MFU against the FLOP counts of
    benchmarks/projection.py (what the Run All projection assumes);
  * with two or more GPUs, the fp16 ViT step on 2 GPUs with DistributedDataParallel (torchrun,
    the global batch split in two) and its speedup over one GPU;
  * a ``best_vit_model.pth``-format checkpoint written on the GPU, loaded on the CPU by
    ``emovit.predict.Predictor`` (when its imports -- pandas, librosa -- exist; otherwise by the
    same two calls Predictor makes, and gpu.json says so) and checked to give the GPU model's
    outputs on the same log-mels.
Then, with ``--notebook-songs N`` (needs papermill, librosa, pandas, scikit-learn, matplotlib)
and while the time used is under ``--budget-s`` / 2: the built notebook on N generated songs
with the kaggle preset and ``--notebook-overrides`` (a random ViT-B/16 saved in a local folder
unless they name weights: no hub needed).

``--dry`` runs the same code on the CPU with tiny sizes in seconds (tests/test_gpu_check.py),
so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from emovit import distributed
from emovit import gan as G
from emovit.files import atomic_write_json, load_checkpoint
from emovit.runtime import gpu_compatibility_problem, scaler_step
from emovit.vit import DevicePreprocessor, ViTRegressor, for_devices, model_from_config_dict

ROOT = Path(__file__).resolve().parents[1]

FULL = {
    "n_mels": 128,
    "frames": 1292,
    "gan_crop": 256,
    "gan_channels": 32,
    "z_dim": 128,
    "gan_batch": 32,
    "vit_batch": 32,
    "vit": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
DRY = {
    "n_mels": 16,
    "frames": 64,
    "gan_crop": 32,
    "gan_channels": 4,
    "z_dim": 8,
    "gan_batch": 4,
    "vit_batch": 4,
    "vit": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}
# Dense fp16/bf16 tensor peak (TFLOP/s) by a substring of the card's name, for the MFU figures
# (--peak-tflops overrides). H100/H200: SXM figures; a PCIe H100 is ~756.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0, "A10": 125.0}
MEL_MEAN, MEL_STD = -40.0, 15.0  # dB: the scale of the real features


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def gan_run(
    s: dict, device: str, dtype: torch.dtype, steps: int, memory_format: torch.memory_format | None = None
) -> dict:
    """The GAN training loop's step at full size (emovit.gan_train: its own D step, G step and EMA
    update on ``gan_crop_frames`` crops, the kaggle preset's settings, G and D in training's memory
    layout unless ``memory_format`` says otherwise)."""
    from emovit.config import make_config
    from emovit.gan_train import MEMORY_FORMAT, discriminator_step, generator_step_loss, update_ema

    memory_format = MEMORY_FORMAT if memory_format is None else memory_format

    torch.manual_seed(0)
    cfg = make_config("kaggle", gan_crop_frames=s["gan_crop"])
    arch = G.GanArch(
        n_mels=s["n_mels"],
        frames=s["frames"],
        z_dim=s["z_dim"],
        channels=s["gan_channels"],
        d_band_stats=cfg.gan_d_band_stats,
    )
    gen = G.Generator(arch).to(device, memory_format=memory_format)
    disc = G.Discriminator(arch).to(device, memory_format=memory_format)
    ema = G.Generator(arch).to(device, memory_format=memory_format).eval()
    ema.load_state_dict(gen.state_dict())
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.gan_lr_g, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.gan_lr_d, betas=(0.0, 0.99))
    scaler_g = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    scaler_d = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    bs, crop = s["gan_batch"], s["gan_crop"]
    real = torch.randn(bs, 1, s["n_mels"], crop, device=device).clamp(-4, 4)
    labels = torch.rand(bs, 2, device=device) * 2 - 1
    autocast = lambda: torch.autocast(device_type=device, dtype=dtype)  # noqa: E731
    aug_rng = torch.Generator().manual_seed(0)  # a CPU generator, as gan_train's (diff_augment draws on the CPU)
    reset_peak(device)
    losses, start = [], None
    warmup = min(2, steps - 1)
    for step in range(steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        d_loss = discriminator_step(gen, disc, real, labels, cfg, autocast, aug_rng)[0]
        opt_d.zero_grad(set_to_none=True)
        scaler_d.scale(d_loss).backward()
        scaler_step(scaler_d, opt_d)
        g_loss = generator_step_loss(gen, disc, labels, crop, cfg, autocast, aug_rng, real=real)
        opt_g.zero_grad(set_to_none=True)
        scaler_g.scale(g_loss).backward()
        scaler_step(scaler_g, opt_g)
        update_ema(ema, gen, cfg.gan_ema_decay)
        losses.append([float(d_loss.detach()), float(g_loss.detach())])
    sync(device)
    seconds = time.perf_counter() - start
    timed = steps - warmup
    with torch.no_grad():  # a full-length sample from the EMA generator
        sample = ema(torch.randn(2, arch.z_dim, device=device), labels[:2])
    return {
        "steps": steps,
        "timed_steps": timed,
        "batch": bs,
        "crop_frames": crop,
        "steps_per_s": timed / seconds,
        "memory_format": str(memory_format).removeprefix("torch."),
        "peak_gpu_gib": peak_gib(device),
        "losses_finite": all(math.isfinite(v) for row in losses for v in row),
        "sample_shape": list(sample.shape),
        "sample_finite": bool(torch.isfinite(sample).all()),
        "last_losses": losses[-1],
        "generator_parameters": G.count_parameters(gen),
        "discriminator_parameters": G.count_parameters(disc),
    }


def vit_model(s: dict) -> ViTRegressor:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(**s["vit"], image_size=224, patch_size=16, num_channels=3)
    return ViTRegressor(ViTModel(config, add_pooling_layer=False), dropout=0.1)


def vit_run(s: dict, device: str, dtype: torch.dtype, steps: int) -> tuple[dict, ViTRegressor, DevicePreprocessor]:
    """The ViT training step of emovit.vit_train.train_vit at batch ``vit_batch``."""
    from transformers import get_cosine_schedule_with_warmup

    model = vit_model(s).to(device)
    pre = DevicePreprocessor(MEL_MEAN, MEL_STD, (0.5,) * 3, (0.5,) * 3).to(device)
    net = for_devices(model, device, dtype)  # DistributedDataParallel when started by torchrun (--ddp-worker)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 10), steps)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    ranks = distributed.current()
    bs = s["vit_batch"] // ranks.world  # this rank's part of the global batch
    gen = torch.Generator().manual_seed(ranks.rank)
    mels = (torch.randn(bs, s["n_mels"], s["frames"], generator=gen) * MEL_STD + MEL_MEAN).half().to(device)
    target = (torch.rand(bs, 2, generator=gen) * 2 - 1).to(device)
    reset_peak(device)
    losses, skipped, start = [], 0, None
    warmup = min(2, steps - 1)
    model.train()
    for step in range(steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype):
            pred = net(pre(mels))
        loss = torch.nn.functional.mse_loss(distributed.gather_rows(pred.float()), distributed.gather_rows(target))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler_step(scaler, opt):
            sched.step()
        else:
            skipped += 1
        losses.append(float(loss.detach()))
    sync(device)
    seconds = time.perf_counter() - start
    timed = steps - warmup
    result = {
        "steps": steps,
        "timed_steps": timed,
        "batch": bs * ranks.world,
        "processes": ranks.world,
        "images_per_s": timed * bs * ranks.world / seconds,
        "steps_per_s": timed / seconds,
        "peak_gpu_gib": peak_gib(device),
        "losses_finite": all(math.isfinite(v) for v in losses),
        "last_loss": losses[-1],
        "scaler_skipped_steps": skipped,
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameter_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
    }
    return result, model, pre


def write_checkpoint(model: ViTRegressor, pre: DevicePreprocessor, path: str, n_mels: int = 128) -> None:
    """best_vit_model.pth written by emovit.vit_train.save_best itself, from GPU tensors."""
    from emovit.config import make_config
    from emovit.vit_train import save_best

    save_best(model, pre, make_config("kaggle", n_mels=n_mels), path, epoch=1, row={}, key="gpu_check")


def reload_on_cpu(model: ViTRegressor, pre: DevicePreprocessor, path: str, device: str, s: dict) -> dict:
    """Load ``path`` on the CPU (Predictor when importable) and compare with the GPU model."""
    gen = torch.Generator().manual_seed(1)
    mels = torch.randn(2, s["n_mels"], s["frames"], generator=gen) * MEL_STD + MEL_MEAN
    model.eval().autocast_dtype = None
    with torch.no_grad():
        on_device = model(pre(mels.to(device))).float().cpu()
    try:
        from emovit.predict import Predictor
    except ImportError as err:  # a stock image without pandas/librosa: the same two calls Predictor makes
        loader = f"model_from_config_dict + DevicePreprocessor (emovit.predict not importable: {err})"
        state = load_checkpoint(path)
        cpu_model = model_from_config_dict(state["vit_config"])
        cpu_model.load_state_dict(state["state_dict"])
        cpu_pre = DevicePreprocessor.from_dict(state["preprocess"])
    else:
        loader = "emovit.predict.Predictor"
        predictor = Predictor(path, device="cpu")
        cpu_model, cpu_pre = predictor.model, predictor.pre
    with torch.no_grad():
        on_cpu = cpu_model.eval()(cpu_pre(mels)).float()
    diff = float((on_cpu - on_device).abs().max())
    return {"loader": loader, "weights_only": True, "max_abs_diff_vs_device_fp32": diff, "match": diff < 2e-3}


def achieved(vit: dict, gan: dict, s: dict, peak_tflops: float | None) -> dict:
    """Achieved TFLOP/s (and MFU against ``peak_tflops``) from projection.py's FLOP counts."""
    from benchmarks import projection
    from emovit.config import make_config

    vf = projection.vit_flops(s["vit_batch"])["train_step_flops"] if s is FULL else None
    gf = projection.gan_flops(make_config("kaggle"))["step_flops"] if s is FULL else None
    out = {}
    if vf:
        out["vit_tflops"] = vf * vit["steps_per_s"] / 1e12
        out["gan_tflops"] = gf * gan["steps_per_s"] / 1e12
        if peak_tflops:
            out["vit_mfu"], out["gan_mfu"] = out["vit_tflops"] / peak_tflops, out["gan_tflops"] / peak_tflops
    return out


def run_results(output_dir: Path) -> tuple[dict, dict]:
    """(run_summary.json, metrics.json) of the one run under ``output_dir``: each run writes its
    results in its own folder ``runs/<run id>/``."""
    folders = sorted(p.parent for p in output_dir.glob("runs/*/run_summary.json"))
    if len(folders) != 1:
        raise RuntimeError(f"expected one finished run under {output_dir}/runs, found {[str(f) for f in folders]}")
    return tuple(json.loads((folders[0] / name).read_text()) for name in ("run_summary.json", "metrics.json"))


def random_vit_folder(folder: Path, s: dict) -> Path:
    """A ViT of ``s["vit"]``'s sizes with random weights, saved as a model folder (config, weights, a
    preprocessor_config.json with in21k's mean and std 0.5) for ``vit_local_dir``: the notebook's
    real loading path on a GPU machine with no hub access."""
    from transformers import ViTImageProcessor

    vit_model(s).backbone.save_pretrained(folder)
    ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


def run_notebook(songs: int, overrides: dict, work: Path) -> dict:
    """The built notebook, kaggle preset, on ``songs`` generated songs (needs the full stack). Unless
    ``overrides`` name ViT weights, a random ViT-B/16 from a local folder (the pipeline, not accuracy)."""
    import papermill

    from emovit.demo_data import make_demo_deam

    if "vit_local_dir" not in overrides and "vit_model_name" not in overrides:
        folder = str(random_vit_folder(work / "vit-b16-random", FULL))
        overrides = {**overrides, "vit_local_dir": folder, "pretrained_search_dir": "", "vit_model_name": ""}
    start = time.perf_counter()
    make_demo_deam(str(work / "deam"), num_songs=songs, seconds=45.0, seed=5)
    generated = time.perf_counter() - start
    papermill.execute_notebook(
        str(ROOT / "vit_with_gans_emotion_prediction.ipynb"),
        str(work / "run.ipynb"),
        kernel_name="python3",
        cwd=str(work),
        progress_bar=False,
        parameters={
            "PRESET": "kaggle",
            "DATA_DIR": str(work / "deam"),
            "OUTPUT_DIR": str(work / "out"),
            "OVERRIDES": overrides,
        },
    )
    summary, metrics = run_results(work / "out")
    return {
        "songs": songs,
        "overrides": overrides,
        "generate_seconds": generated,
        "notebook_seconds": time.perf_counter() - start - generated,
        "timings_seconds": summary["timings_seconds"],
        "vit_weights": metrics["vit"]["weights"],
    }


def ddp_worker(args) -> int:
    """One rank: the fp16 ViT step with DistributedDataParallel at the global batch; rank 0 writes."""
    ranks, device = distributed.init()
    torch.backends.cudnn.benchmark = True
    vit, _, _ = vit_run(FULL, "cuda", torch.float16, args.vit_steps)
    if ranks.main:
        atomic_write_json(str(args.out), vit)
    distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


def ddp_speedup(args, one_gpu: dict, work: Path, device: str) -> dict:
    """With two or more GPUs: the same fp16 ViT step on 2 GPUs (DistributedDataParallel through
    torchrun, the global batch split in two), against one GPU -- the figure the projection assumes."""
    if device != "cuda" or torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count() if device == 'cuda' else 0} GPU(s) visible; needs 2"}
    out = work / "ddp.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tools.gpu_check",
        "--ddp-worker",
        "--vit-steps",
        str(args.vit_steps),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        return {"failed": proc.stdout[-1500:] + proc.stderr[-1500:]}
    two = json.loads(out.read_text())
    return {"two_gpus": two, "speedup_vs_one_gpu": two["images_per_s"] / one_gpu["images_per_s"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu.json")
    parser.add_argument("--vit-steps", type=int, default=40)
    parser.add_argument("--gan-steps", type=int, default=20)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the card's dense fp16/bf16 peak for the MFU figures (default: PEAK_TFLOPS by name)",
    )
    parser.add_argument("--notebook-songs", type=int, default=0, help="then run the notebook on this many songs")
    parser.add_argument(
        "--notebook-overrides",
        type=json.loads,
        default={"vit_epochs": 1, "gan_steps": 60, "gan_eval_every": 30, "seeds": [42, 1]},
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="start the notebook only under half of this")
    parser.add_argument(
        "--ddp-worker",
        action="store_true",
        help="(internal) one torchrun rank of the DistributedDataParallel ViT measurement",
    )
    args = parser.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    start = time.perf_counter()
    if args.dry:
        device, sizes, vit_steps, gan_steps = "cpu", DRY, 3, 3
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA GPU visible (use --dry on a CPU)")
        device, sizes, vit_steps, gan_steps = "cuda", FULL, args.vit_steps, args.gan_steps
        torch.backends.cudnn.benchmark = True
    import transformers

    report = {
        "mode": "dry (CPU, tiny sizes)" if args.dry else "full size",
        "machine": {
            "platform": platform.platform(),
            "cpu_cores": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
        },
        "sizes": {k: v for k, v in sizes.items()},
        "precisions": {},
    }
    if device == "cuda":
        cap = torch.cuda.get_device_capability()
        report["card"] = {
            "name": torch.cuda.get_device_name(),
            "capability": list(cap),
            "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
            "count": torch.cuda.device_count(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "arch_list": torch.cuda.get_arch_list(),
            "compatibility_problem": gpu_compatibility_problem(cap, torch.cuda.get_arch_list()),
        }
        if args.peak_tflops is None:
            args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in report["card"]["name"]), None)
        report["card"]["peak_tflops_used_for_mfu"] = args.peak_tflops
    else:
        report["card"] = {"name": "none (CPU dry run)"}
    bf16_ok = device == "cpu" or torch.cuda.is_bf16_supported()
    precisions = {"fp16": torch.float16, **({"bf16": torch.bfloat16} if bf16_ok else {})}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dtype in precisions.items():
            gan = gan_run(sizes, device, dtype, gan_steps)
            print(f"gpu_check {name}: GAN {gan['steps_per_s']:.2f} steps/s, peak {gan['peak_gpu_gib']} GiB", flush=True)
            vit, model, pre = vit_run(sizes, device, dtype, vit_steps)
            print(
                f"gpu_check {name}: ViT {vit['images_per_s']:.1f} images/s, peak {vit['peak_gpu_gib']} GiB", flush=True
            )
            row = {"gan": gan, "vit": vit, "achieved": achieved(vit, gan, sizes, args.peak_tflops)}
            if name == "fp16":  # the T4 path's checkpoint, written on the device, read on the CPU
                path = os.path.join(tmp, "best_vit_model.pth")
                write_checkpoint(model, pre, path, n_mels=sizes["n_mels"])
                row["checkpoint"] = {
                    "megabytes": os.path.getsize(path) / 1e6,
                    **reload_on_cpu(model, pre, path, device, sizes),
                }
            report["precisions"][name] = row
            del model, pre
            reset_peak(device)
        report["ddp"] = ddp_speedup(args, report["precisions"]["fp16"]["vit"], Path(tmp), device)
        if args.notebook_songs and time.perf_counter() - start < args.budget_s / 2:
            report["notebook"] = run_notebook(args.notebook_songs, args.notebook_overrides, Path(tmp))
        elif args.notebook_songs:
            report["notebook"] = {"skipped": f"{time.perf_counter() - start:.0f} s used of --budget-s {args.budget_s}"}
    report["seconds"] = time.perf_counter() - start
    ok = (
        all(
            r["gan"]["losses_finite"] and r["gan"]["sample_finite"] and r["vit"]["losses_finite"]
            for r in report["precisions"].values()
        )
        and report["precisions"]["fp16"]["checkpoint"]["match"]
    )
    report["ok"] = ok
    atomic_write_json(str(args.out), report)
    print(json.dumps(report, indent=1, default=str))
    print(f"gpu_check: {'OK' if ok else 'FAILED'} in {report['seconds']:.0f} s -> {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
