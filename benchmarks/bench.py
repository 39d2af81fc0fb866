#!/usr/bin/env python3
"""`make bench`: throughput and memory of each stage, measured in one run on one machine.

Figures (all written to benchmarks/results.json with the machine's description):
  extraction  songs/s with 1 process and with all cores; overhead ratio of emovit's
              extraction (1 process) against bare librosa.load + melspectrogram on the same files
  reload      seconds to memory-map and read once a store of the given size (full scale:
              1802 x 128 x 1938 float16 -- whole 45 s clips, 894 MB)
  vit         training images/s through the real loader + device preprocessing, against the same
              model fed pre-made tensors already on the device; their ratio (target >= 0.9)
  gan         training steps/s and sampling rate (spectrograms/s)
  gan_projection  kaggle-preset GAN: FLOPs per step (FlopCounterMode) x gan_steps -> T4 minutes
  predict     songs/s of emovit.predict over a folder of 3-minute songs (the demo checkpoint's
              architecture), decoding in this thread and in decode threads beside the model;
              where the time goes (decode, log-mel, model, the rest = Python overhead)
  memory      peak resident memory of this process (RSS) over the whole benchmark
  run_all_projection
              PROJECTED Run All minutes of the kaggle preset on a T4, T4 x2 and L4 from FLOP
              counts (benchmarks/projection.py) and the extraction rate measured here; also
              written to RESULTS.md and README.md (between run-all-projection markers)

    python -m benchmarks.bench            # default sizes (a few minutes on 2 cores)
    python -m benchmarks.bench --quick    # tiny sizes: CI runs this so the code cannot rot
    python -m benchmarks.bench --only predict   # one stage, merged into an existing results.json
    python -m benchmarks.bench --projection   # only the projection, from results.json's extraction rate
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import projection
from emovit.config import make_config, replace
from emovit.deam import discover
from emovit.demo_data import make_demo_deam
from emovit.features import MelParams, extract_features, log_mel
from emovit.gan import Discriminator, GanArch, Generator
from emovit.gan_train import MEMORY_FORMAT, generate
from emovit.runtime import describe_environment
from emovit.split import Standardizer
from emovit.vit import DevicePreprocessor, build_model, find_pretrained
from emovit.vit_train import MelDataset, Part, _loader, loss_fn, param_groups

ROOT = Path(__file__).resolve().parents[1]

SIZES = {
    "quick": {
        "songs": 4,
        "song_seconds": 12.0,
        "clip": 10.0,
        "reload_rows": 16,
        "vit_batch": 4,
        "vit_steps": 3,
        "gan_steps": 2,
        "gan_samples": 8,
        "n_mels": 64,
        "predict_songs": 2,
        "predict_seconds": 25.0,
        "write_workers": 1,  # the few test songs are written in this process: no worker start-up
    },
    "default": {
        "songs": 160,
        "song_seconds": 45.0,
        "clip": 30.0,
        "reload_rows": 1802,
        "vit_batch": 32,
        "vit_steps": 12,
        "gan_steps": 6,
        "gan_samples": 64,
        "n_mels": 128,
        "predict_songs": 20,
        "predict_seconds": 180.0,
        "write_workers": 0,  # the test songs are written on every core
    },
}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_extraction(work: Path, s: dict) -> dict:
    """Songs/s of emovit's extraction (1 process, all cores) and bare librosa on the same files."""
    import librosa

    root = work / "songs"
    make_demo_deam(  # 44.1 kHz mp3, like DEAM
        str(root), num_songs=s["songs"], seconds=s["song_seconds"], seed=1, num_workers=s["write_workers"]
    )
    songs, _ = discover(str(root))
    cfg = make_config(
        "kaggle", data_dir=str(root), output_dir=str(work / "out"), clip_seconds=s["clip"], n_mels=s["n_mels"]
    )
    params = MelParams.from_config(cfg)
    log_mel(np.zeros(params.num_samples, np.float32), params)  # numba compile outside the timings

    def bare():
        for path in songs.audio_path:
            y, _ = librosa.load(path, sr=params.sample_rate, mono=True, duration=params.clip_seconds)
            S = librosa.feature.melspectrogram(
                y=y, sr=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length, n_mels=params.n_mels
            )
            librosa.power_to_db(S, ref=1.0)

    _, t_bare = timed(bare)
    _, t_one = timed(lambda: extract_features(songs, replace(cfg, cache_dir=str(work / "c1")), num_workers=1))
    cores = os.cpu_count() or 1
    _, t_all = timed(lambda: extract_features(songs, replace(cfg, cache_dir=str(work / "c2")), num_workers=cores))
    # Start-up of the worker processes (spawn, imports): all cores on as many songs as cores.
    _, t_start = timed(
        lambda: extract_features(songs.head(cores), replace(cfg, cache_dir=str(work / "c3")), num_workers=cores)
    )
    cached, t_hit = timed(lambda: extract_features(songs, replace(cfg, cache_dir=str(work / "c2"))))
    n = len(songs)
    return {
        "songs": n,
        "clip_seconds": s["clip"],
        "songs_per_s_1_process": n / t_one,
        f"songs_per_s_{cores}_processes": n / t_all,
        f"songs_per_s_{cores}_processes_after_startup": (n - cores) / max(t_all - t_start, 1e-9),
        "worker_startup_seconds": t_start,
        "songs_per_s_bare_librosa": n / t_bare,
        "overhead_ratio_vs_bare": t_one / t_bare,
        "cache_hit_seconds": t_hit,
        "cores": cores,
    }


def bench_reload(work: Path, s: dict) -> dict:
    """Memory-map a store of reload_rows x 128 x 1938 float16 (45 s clips) and read it once (standardizer fit)."""
    shape = (s["reload_rows"], 128, 1938)
    path = work / "store.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    for i in range(0, shape[0], 128):
        mm[i : i + 128] = np.random.default_rng(i).normal(-40, 15, size=(min(128, shape[0] - i),) + shape[1:])
    mm.flush()
    del mm
    os.system(f"sync; cat {path} > /dev/null")  # warm page cache like a re-run on the same machine
    (store, t_open) = timed(lambda: np.load(path, mmap_mode="r"))
    _, t_read = timed(lambda: Standardizer.fit(store, np.arange(shape[0])))
    return {
        "shape": list(shape),
        "megabytes": path.stat().st_size / 1e6,
        "open_seconds": t_open,
        "read_all_seconds": t_read,
    }


def bench_vit(work: Path, s: dict, device: str) -> dict:
    """Images/s: real loader (random crops of 1.5-window clips) + device preprocessing with
    SpecAugment, the same without augmentation, and pre-made tensors on the device."""
    cfg = make_config(
        "demo",
        output_dir=str(work / "vit"),
        vit_batch_size=s["vit_batch"],
        loader_workers=2,
        n_mels=s["n_mels"],
        clip_seconds=s["clip"],
    )
    frames = cfg.num_frames
    n = s["vit_batch"] * (s["vit_steps"] + 2)
    path = work / "vit_store.npy"
    stored = frames * 3 // 2  # like DEAM: 45 s clips, 30 s windows
    np.save(path, np.random.default_rng(0).normal(-40, 15, size=(n, s["n_mels"], stored)).astype(np.float16))
    ds = MelDataset(
        [Part(str(path), np.arange(n), np.zeros((n, 2), np.float32), 1.0, np.full(n, stored))],
        window=frames,
        mode="random",
        seed=0,
    )
    found = find_pretrained(cfg)
    masking = DevicePreprocessor.from_config(cfg, Standardizer(-40.0, 15.0), found).to(device).train()
    spans_rng = torch.Generator().manual_seed(0)

    def augmenting(mel):  # SpecAugment with spans drawn per batch, as training draws them
        return masking(mel, masking.sample_spans(len(mel), mel.shape[1], mel.shape[2], spans_rng))

    pre = DevicePreprocessor(-40.0, 15.0, found.image_mean, found.image_std).to(device)

    def run(batches):
        model = build_model(cfg, found).to(device).train()
        opt = torch.optim.AdamW(param_groups(model, cfg))
        seen, start = 0, None
        for step, (pixels, y, w) in enumerate(batches()):
            if step == 2:  # two warm-up steps
                start = time.perf_counter()
            out = model(pixels)
            loss = loss_fn("mse+ccc", out.float(), y, w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step >= 2:
                seen += len(pixels)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - start)

    def real(preprocess):
        def batches():
            for mel, y, w in _loader(ds, cfg, device, epoch=1):
                yield preprocess(mel.to(device, non_blocking=True)), y.to(device), w.to(device)

        return batches

    fixed = pre(torch.from_numpy(np.load(path)[: s["vit_batch"], :, :frames]).to(device))
    y0, w0 = torch.zeros(s["vit_batch"], 2, device=device), torch.ones(s["vit_batch"], device=device)

    def premade():
        for _ in range(s["vit_steps"] + 2):
            yield fixed, y0, w0

    augmented_rate, plain_rate, model_rate = run(real(augmenting)), run(real(pre)), run(premade)
    return {
        "model": f"random ViT hidden {cfg.random_vit_hidden}, {cfg.random_vit_layers} layers",
        "batch": s["vit_batch"],
        "device": device,
        "images_per_s_real_loader": augmented_rate,
        "images_per_s_real_loader_no_augment": plain_rate,
        "images_per_s_premade_tensors": model_rate,
        "ratio": augmented_rate / model_rate,
        "augment_ratio": augmented_rate / plain_rate,
        "loader_workers": cfg.loader_workers,
    }


def bench_gan(s: dict, device: str) -> dict:
    """Training steps/s (demo-size arch, batch 16) in the memory layout training uses
    (``gan_train.MEMORY_FORMAT``) and in PyTorch's default one, in the same run (their ratio is
    the layout's speed-up), and the sampling rate of the full-size generator."""

    def steps_per_s(memory_format: torch.memory_format) -> float:
        torch.manual_seed(0)
        demo = GanArch(n_mels=64, frames=431, z_dim=32, channels=8)
        gen = Generator(demo).to(device, memory_format=memory_format)
        disc = Discriminator(demo).to(device, memory_format=memory_format)
        opt_g, opt_d = torch.optim.Adam(gen.parameters(), 1e-4), torch.optim.Adam(disc.parameters(), 4e-4)
        x, y = torch.randn(16, 1, 64, 431, device=device), torch.rand(16, 2, device=device) * 2 - 1

        def steps():
            for _ in range(s["gan_steps"]):
                d = (
                    torch.relu(1 - disc(x, y)).mean()
                    + torch.relu(1 + disc(gen(torch.randn(16, 32, device=device), y).detach(), y)).mean()
                )
                opt_d.zero_grad()
                d.backward()
                opt_d.step()
                g = -disc(gen(torch.randn(16, 32, device=device), y), y).mean()
                opt_g.zero_grad()
                g.backward()
                opt_g.step()

        _, t_train = timed(steps)
        return s["gan_steps"] / t_train

    default_layout = steps_per_s(torch.contiguous_format)
    training_layout = steps_per_s(MEMORY_FORMAT)
    full = Generator(GanArch(n_mels=128, frames=1292)).to(device, memory_format=MEMORY_FORMAT)
    labels = np.zeros((s["gan_samples"], 2), np.float32)
    _, t_sample = timed(lambda: generate(full, labels, Standardizer(-40.0, 15.0), device, batch_size=16))
    return {
        "train_steps_per_s_demo_arch_batch16": training_layout,
        "train_steps_per_s_demo_arch_batch16_default_layout": default_layout,
        "memory_format": str(MEMORY_FORMAT).removeprefix("torch."),
        "layout_speedup": training_layout / default_layout,
        "samples_per_s_full_arch_128x1292": s["gan_samples"] / t_sample,
        "device": device,
    }


def bench_gan_projection(quick: bool = False) -> dict:
    """Projected GAN minutes on one T4 for the kaggle preset (training steps, the validation checks
    and sampling ``num_synthetic``), from :func:`projection.gan_flops` over a T4's 65 TFLOP/s at
    the GAN's assumed MFU range (:data:`projection.MFU`, reasons there). Budget: 8 T4 minutes.
    ``quick`` only documents CI use: the count always runs at batch 2 and scales.
    """
    cfg = make_config("kaggle")
    gan = projection.gan_flops(cfg)
    counts = projection.preset_counts(cfg)
    total = gan["step_flops"] * cfg.gan_steps + gan["sample_flops"] * counts["gan_samples"]
    peak = projection.CARDS["T4"]["peak_tflops"] * 1e12
    minutes = {f"t4_minutes_at_mfu_{round(m * 100)}": total / (peak * m) / 60 for m in projection.MFU["gan"]}
    return {
        "preset": "kaggle",
        "n_mels": cfg.n_mels,
        "frames": cfg.num_frames,
        "crop_frames": gan["crop_frames"],
        "batch": cfg.gan_batch_size,
        "gan_steps": cfg.gan_steps,
        "counted_batch": gan["counted_batch"],
        "gflop_per_step_d": gan["d_step_flops"] / 1e9,
        "gflop_per_step_g": gan["g_step_flops"] / 1e9,
        "gflop_per_step": gan["step_flops"] / 1e9,
        "gflop_per_sample_full_length": gan["sample_flops"] / 1e9,
        "pflop_total": total / 1e15,
        "t4_peak_tflops": peak / 1e12,
        **minutes,
        "budget_minutes": 8.0,
        "generator_parameters": gan["generator_parameters"],
        "discriminator_parameters": gan["discriminator_parameters"],
    }


def bench_predict(work: Path, s: dict, device: str, checkpoint: str | None = None) -> dict:
    """Songs/s of ``emovit.predict`` on ``predict_songs`` generated songs of ``predict_seconds``
    (44.1 kHz mp3, like DEAM), with the demo preset's checkpoint: ``checkpoint`` if given (a
    best_vit_model.pth of a demo run), else the same architecture untrained (hidden 128,
    4 layers, 10 s windows, 64 mels; speed does not depend on the weights).

    Decoding in the main thread (sequential) gives the split of the time: decode (librosa.load),
    log-mel, model (preprocessing + ViT), and the rest (Python: tables, windows, progress);
    then the same folder with decode threads running ahead of the model.
    """
    from emovit.predict import Predictor, find_audio, predict_many
    from emovit.vit_train import save_best

    root = work / "my_songs"
    make_demo_deam(
        str(root), num_songs=s["predict_songs"], seconds=s["predict_seconds"], seed=5, num_workers=s["write_workers"]
    )
    given = checkpoint is not None
    if not given:
        cfg = make_config("demo", output_dir=str(work / "predict"))
        found = find_pretrained(cfg)
        pre = DevicePreprocessor.from_config(cfg, Standardizer(-40.0, 15.0), found)
        checkpoint = str(work / "predict" / "best_vit_model.pth")
        save_best(build_model(cfg, found), pre, cfg, checkpoint, epoch=0, row={}, key="bench")
    paths = find_audio(str(root))
    predictor = Predictor(checkpoint, device)
    predictor.predict_file(paths[0])  # librosa / numba / torch warm-up outside the timings
    n = len(paths)
    rates = {}
    for workers in (0, 1, 2):
        predictor.timings = dict.fromkeys(predictor.timings, 0.0)
        results, seconds = timed(lambda w=workers: predict_many(paths, predictor, workers=w, progress=False))
        assert not any(r.error for r in results), [r.error for r in results if r.error]
        rates[workers] = n / seconds
        if workers == 0:
            split = {f"{k}_seconds_per_song": v / n for k, v in predictor.timings.items()}
            overhead = seconds - sum(predictor.timings.values())
            windows = sum(len(r.values) for r in results)
    return {
        "songs": n,
        "song_seconds": s["predict_seconds"],
        "windows_per_song": windows / n,
        "window_seconds": predictor.params.clip_seconds,
        "hop_seconds": predictor.hop_seconds,
        "checkpoint": "demo run's best_vit_model.pth" if given else "demo architecture, untrained",
        "device": device,
        "songs_per_s_sequential": rates[0],
        "songs_per_s_1_decode_thread": rates[1],
        "songs_per_s_2_decode_threads": rates[2],
        **split,
        "python_overhead_seconds_per_song": overhead / n,
        "python_overhead_fraction": overhead / (n / rates[0]),
        "audio_minutes_per_s_best": max(rates.values()) * s["predict_seconds"] / 60,
        "load_average_1min": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
    }


def bench_memory_full_scale(work: Path, songs_n: int) -> dict:
    """Peak RSS through discovery, features, split, sampling 3200 synthetic and the ViT data
    pipeline (one epoch of loader + device preprocessing) at DEAM scale: ``songs_n`` songs of 45 s,
    stored whole (128 x 1938 per song).

    The generator is full size in its output (128 x 1292) but narrow (host memory does not
    depend on its width, and a full-width one samples at ~3/s on a CPU).
    """
    from emovit.gan_train import GanResult, synthesize
    from emovit.split import fit_standardizer, ids_of, split_songs
    from emovit.vit_train import make_datasets

    root = work / "deam_full"
    make_demo_deam(str(root), num_songs=songs_n, seconds=45.0, seed=7)  # DEAM's 45 s clips, stored whole
    cfg = make_config(
        "kaggle", data_dir=str(root), output_dir=str(work / "full_out"), loader_workers=2, vit_batch_size=32, seed=0
    )
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    rss = {"after_features_mb": _rss_mb()}
    split = split_songs(store.songs.song_id, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    train_ids = ids_of(split, "train")
    std = fit_standardizer(store, split)
    arch = GanArch(n_mels=128, frames=cfg.num_frames, z_dim=8, channels=2)
    labels = store.songs.set_index("song_id").loc[train_ids, ["valence", "arousal"]].to_numpy(np.float32)
    gan = GanResult(Generator(arch), Discriminator(arch), arch, std, labels, key="bench")
    synthetic = synthesize(gan, cfg, "cpu")
    rss["after_sampling_mb"] = _rss_mb()
    train, _, _ = make_datasets(store, split, synthetic, cfg)
    pre = DevicePreprocessor(std.mean, std.std, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        for mel, _, _ in _loader(train, cfg, "cpu", epoch=1):
            pre(mel)
    rss["after_vit_epoch_mb"] = _rss_mb()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "songs": len(store.songs),
        "synthetic": len(synthetic.labels),
        "train_examples": len(train),
        **rss,
        "peak_rss_main_mb": _rss_mb(),
        "peak_rss_largest_child_mb": children,
        "store_mb": os.path.getsize(store.path) / 1e6,
        "synthetic_store_mb": os.path.getsize(synthetic.path) / 1e6,
    }


def bench_projection(extraction: dict) -> dict:
    """Projected Run All of the kaggle preset (see benchmarks/projection.py) from the measured
    per-core extraction rate and its parallel efficiency on this machine's cores."""
    per_core = extraction["songs_per_s_1_process"]
    cores = extraction.get("cores", 1)
    parallel = extraction.get(f"songs_per_s_{cores}_processes_after_startup", per_core * cores)
    kwargs = {
        "extraction_songs_per_s_per_core": per_core,
        "extraction_parallel_efficiency": min(1.0, parallel / (per_core * cores)),
        "worker_startup_s": extraction.get("worker_startup_seconds", 5.0),
    }
    cfg = make_config("kaggle")
    result = projection.project(cfg, **kwargs)
    result["scenarios"] = projection.scenarios(cfg, **kwargs)
    return result


def projection_markdown(p: dict) -> list[str]:
    return (
        projection.markdown(p)
        + ["", "What defaults would meet the ~20 min T4 budget (same projection):", ""]
        + projection.scenario_markdown(p["scenarios"])
    )


def write_readme_projection(p: dict, readme: Path = ROOT / "README.md") -> None:
    """Replace README's block between the run-all-projection markers with the projection."""
    start, end = "<!-- run-all-projection:start -->", "<!-- run-all-projection:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise RuntimeError(f"{readme} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + "\n".join(projection_markdown(p)) + "\n" + end + rest.split(end, 1)[1])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_markdown(r: dict, path: Path) -> None:
    """benchmarks/RESULTS.md, generated from results.json (no hand-typed figure)."""
    m = r["machine"]
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (benchmarks/bench.py) from `results.json`; the figures",
        f"of each stage were measured in one run on one machine: {m['platform']}, {m['cpu']}, torch {m['torch']}, "
        f"device {m['device']}{' ' + ', '.join(m['gpus']) if m['gpus'] else ''}. The `memory_full_scale` rows "
        "come from a separate `python -m benchmarks.bench --full-scale-memory 1802` run on the same kind of "
        "machine (1802 generated 30 s songs through discovery, features, split, sampling 3200 synthetic "
        "spectrograms and one epoch of the ViT data pipeline; RSS includes the file-backed pages of the "
        "memory-mapped stores).",
        "",
        "| stage | figure | value |",
        "| --- | --- | --- |",
    ]
    for section in ("extraction", "reload", "vit", "gan", "gan_projection", "predict", "memory", "memory_full_scale"):
        for key, value in r.get(section, {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {section} | {key} | {value:.4g} |")
            elif isinstance(value, str):
                lines.append(f"| {section} | {key} | {value} |")
    if "machine" in r.get("predict", {}):
        lines += [
            "",
            "The `predict` rows come from a separate `python -m benchmarks.bench --only predict` run on the "
            f"same kind of machine (load average {r['predict'].get('load_average_1min', float('nan')):.1f} "
            f"while it ran, torch threads {r['predict'].get('torch_threads', '?')}): 20 generated 3-minute "
            "mp3 songs, the demo checkpoint, 10 s windows every 5 s; `*_seconds_per_song` split the "
            "sequential run's time, the rest is `python_overhead`.",
        ]
    if "machine" in r.get("gan", {}):
        lines += [
            "",
            "The `gan` rows come from a separate `python -m benchmarks.bench --only gan` run on "
            f"{r['gan']['machine']['platform']} ({r['gan']['machine']['cpu']}); its two layouts ran one after "
            "the other in that run, so `layout_speedup` is a ratio within one run.",
        ]
    if "run_all_projection" in r:
        lines += ["", "## Projected Run All time (kaggle preset)", ""] + projection_markdown(r["run_all_projection"])
    gpu = path.with_name("gpu.json")  # tools/gpu_check.py's report, where a GPU has run it
    if gpu.exists():
        lines += [""] + gpu_markdown(json.loads(gpu.read_text()))
    else:
        lines += ["", "No GPU figures yet: no GPU was available to this project's sessions."]
    lines += [
        "",
        "Targets: ViT loader/pre-made ratio >= 0.9, full-scale peak RSS <= 6 GB, full Kaggle Run All <= 30 min "
        "on a T4.",
        "",
    ]
    path.write_text("\n".join(lines))


def gpu_markdown(g: dict) -> list[str]:
    """RESULTS.md's GPU section from benchmarks/gpu.json (``python -m tools.gpu_check``'s report,
    with the extra GAN measurements and the notebook run where they were taken)."""
    card, m = g["card"], g["machine"]
    lines = [
        "## Measured on a GPU",
        "",
        f"{card['name']} ({card['memory_gib']:.0f} GiB, compute capability "
        f"{'.'.join(map(str, card['capability']))}), torch {m['torch']}, transformers {m['transformers']}, "
        f"CUDA {m['cuda']}, {m['cpu_cores']} CPU cores; full-size models (`benchmarks/gpu.json`). "
        f"{g.get('sources', '')}",
        "",
        "| precision | ViT-B/16 images/s | ViT TFLOP/s (MFU) | ViT peak GiB | GAN steps/s | GAN layout | GAN peak GiB "
        "|",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in g["precisions"].items():
        vit, gan, a = row["vit"], row["gan"], row.get("achieved", {})
        mfu = f"{a['vit_tflops']:.1f} ({a['vit_mfu']:.1%})" if "vit_mfu" in a else "-"
        lines.append(
            f"| {name} | {vit['images_per_s']:.0f} | {mfu} | {vit['peak_gpu_gib']:.1f} | {gan['steps_per_s']:.1f} "
            f"| {gan.get('memory_format', '?')} | {gan['peak_gpu_gib']:.1f} |"
        )
    ckpt = g["precisions"].get("fp16", {}).get("checkpoint")
    if ckpt:
        lines += [
            "",
            f"Checkpoint: {ckpt['megabytes']:.0f} MB, written on the GPU and read on the CPU by {ckpt['loader']}: "
            f"largest output difference {ckpt['max_abs_diff_vs_device_fp32']:.1e} "
            f"({'matches' if ckpt['match'] else 'DOES NOT MATCH'}). DistributedDataParallel: "
            f"{g.get('ddp', {}).get('skipped', g.get('ddp', {}).get('speedup_vs_one_gpu', '-'))}.",
        ]
    if "gan_layouts" in g:
        lines += [
            "",
            "GAN step (fp16, batch 32) by memory layout, in one process:",
            "",
            "| layout | steps/s | GPU kernel ms per step | kernels per step |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in g["gan_layouts"].items():
            lines.append(
                f"| {name} | {row['steps_per_s']:.1f} | {row['kernel_ms_per_step_incl_setup']:.1f} "
                f"| {row['kernels_per_step_incl_setup']:.0f} |"
            )
    if "gan_batch_scaling" in g:
        by = g["gan_batch_scaling"]["by_batch"]
        lines += [
            "",
            "GAN steps/s by batch size ("
            + g["gan_batch_scaling"]["memory_format"]
            + "): "
            + ", ".join(f"batch {b} {v['steps_per_s']:.1f} ({v['samples_per_s']:.0f} crops/s)" for b, v in by.items())
            + ".",
        ]
    rep = g.get("repeats")
    if rep:
        lines += [
            "",
            "The same steps in separate runs ("
            + rep["note"]
            + "): "
            + "; ".join(
                f"{k.replace('_', ' ')} {', '.join(f'{x:.0f}' if x > 50 else f'{x:.1f}' for x in v)} "
                f"(max/min {max(v) / min(v):.2f})"
                for k, v in rep.items()
                if k != "note"
            )
            + ". Figures from one run are comparable with each other; across runs they vary by this much.",
        ]
    down = g.get("gan_downsample")
    if down:
        lines += [
            "",
            f"D's 2x2 down-sampling ({down['note']}):",
            "",
            "| implementation | largest difference (fp32) | micro fwd+bwd ms | GAN step kernel ms | GAN steps/s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, m in down["micro"].items():
            steps = [v for k, v in down["step"].items() if k == name or k == name + "_again"]
            kernel = " / ".join(f"{v['kernel_ms_per_step_incl_setup']:.1f}" for v in steps) or "-"
            rate = " / ".join(f"{v['steps_per_s']:.1f}" for v in steps) or "-"
            lines.append(
                f"| {name} | {m['max_abs_diff_fp32']:.1e} | {m['fwd_bwd_ms_all_four_shapes']:.2f} | {kernel} | {rate} |"
            )
    nb = g.get("notebook", {})
    if "timings_seconds" in nb:
        t = nb["timings_seconds"]
        lines += [
            "",
            f"The built notebook, kaggle preset, {nb['songs']} generated songs, overrides "
            f"`{json.dumps({k: v for k, v in nb['overrides'].items() if 'dir' not in k and 'name' not in k})}` "
            f"(ViT weights from {nb['vit_weights']}): {nb['notebook_seconds']:.0f} s. Stage seconds: "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(t.items()) if k != "total_run")
            + ".",
        ]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument(
        "--full-scale-memory",
        type=int,
        default=0,
        metavar="SONGS",
        help="only the full-scale memory run, with this many songs (1802 = DEAM)",
    )
    parser.add_argument(
        "--only",
        choices=["extraction", "reload", "vit", "gan", "predict"],
        help="run one stage and merge it into an existing --out",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="predict stage: a demo run's best_vit_model.pth (default: the demo architecture, untrained)",
    )
    parser.add_argument(
        "--projection",
        action="store_true",
        help="only the Run All projection, from the extraction figures already in --out",
    )
    args = parser.parse_args(argv)
    if args.projection:
        previous = json.loads(args.out.read_text())
        previous["run_all_projection"] = bench_projection(previous["extraction"])
        args.out.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
        write_markdown(previous, args.out.with_name("RESULTS.md"))
        write_readme_projection(previous["run_all_projection"])
        print("\n".join(projection_markdown(previous["run_all_projection"])))
        return 0
    sizes = SIZES["quick" if args.quick else "default"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = describe_environment()
    results = {
        "mode": "quick" if args.quick else "default",
        "sizes": sizes,
        "machine": {
            "platform": platform.platform(),
            "cpu": env["machine"],
            "gpus": env["gpus"],
            "torch": env["torch"],
            "device": device,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.full_scale_memory:  # merged into an existing results file
            previous = json.loads(args.out.read_text()) if args.out.exists() else results
            previous["memory_full_scale"] = bench_memory_full_scale(work, args.full_scale_memory)
            previous["memory_full_scale"]["machine"] = results["machine"]
            print(json.dumps(previous["memory_full_scale"], indent=1))
            args.out.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
            write_markdown(previous, args.out.with_name("RESULTS.md"))
            return 0
        stages = (
            ("extraction", lambda: bench_extraction(work, sizes)),
            ("reload", lambda: bench_reload(work, sizes)),
            ("vit", lambda: bench_vit(work, sizes, device)),
            ("gan", lambda: bench_gan(sizes, device)),
            ("predict", lambda: bench_predict(work, sizes, device, args.checkpoint)),
        )
        if args.only:  # one stage, merged into the existing results
            previous = json.loads(args.out.read_text()) if args.out.exists() else results
            previous[args.only] = {**dict(stages)[args.only](), "machine": results["machine"]}
            print(json.dumps(previous[args.only], indent=1))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
            if previous.get("mode") == "default":
                write_markdown(previous, args.out.with_name("RESULTS.md"))
            return 0
        for name, fn in stages:
            results[name] = fn()
            print(
                f"{name}: "
                + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in results[name].items())
            )
    results["gan_projection"] = bench_gan_projection(quick=args.quick)
    print(
        "gan_projection: "
        + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in results["gan_projection"].items()
        )
    )
    results["run_all_projection"] = bench_projection(results["extraction"])
    print("\n".join(projection_markdown(results["run_all_projection"])))
    results["memory"] = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"memory: peak RSS {results['memory']['peak_rss_mb']:.0f} MB (this process)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists() and "memory_full_scale" in json.loads(args.out.read_text()):
        results["memory_full_scale"] = json.loads(args.out.read_text())["memory_full_scale"]
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if not args.quick:
        write_markdown(results, args.out.with_name("RESULTS.md"))
        write_readme_projection(results["run_all_projection"])
    print(f"bench: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
