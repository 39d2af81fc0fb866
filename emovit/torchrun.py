"""One ViT trained over several GPUs: a job file, the ``torchrun`` launcher, and its entry point.

The notebook's kernel has already touched CUDA, so it cannot fork training processes itself
(``accelerate``'s notebook launcher refuses an initialized CUDA context). It writes a job --
the config, where the feature store, split, synthetic set and weights are, the checkpoint paths --
and starts ``python -m torch.distributed.run --nproc_per_node N -m emovit.torchrun <job>`` in a
subprocess whose output streams into the cell. Each process rebuilds the inputs from files
(memory-mapped, so nothing is copied), joins the process group (:mod:`emovit.distributed`) and
runs :func:`emovit.vit_train.train_vit` -- the same function, DistributedDataParallel inside --
then the validation and test passes, batches shared out over the ranks. Rank 0 writes the
checkpoints, the completion record and the predictions; the kernel reads them back. ``make run``
and a cluster's ``torchrun --nnodes`` use the same entry point.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import torch

from emovit import distributed
from emovit.config import Config
from emovit.features import FeatureStore, MelParams
from emovit.files import LOG, atomic_path, atomic_write_json, setup_logging
from emovit.gan_train import SyntheticSet
from emovit.split import Standardizer
from emovit.vit import DevicePreprocessor, Pretrained, build_model
from emovit.vit_train import make_datasets, predict_dataset, train_vit

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def processes(cfg: Config) -> int:
    """Training processes for ``cfg``: ``ddp_processes``, or every visible GPU (one on a CPU)."""
    if cfg.ddp_processes:
        return cfg.ddp_processes
    return max(torch.cuda.device_count(), 1)


def predictions_path(best_path: str) -> str:
    return os.path.splitext(best_path)[0] + ".predictions.npz"


def write_job(
    folder: str,
    cfg: Config,
    store,
    split: pd.DataFrame,
    synthetic,
    standardizer,
    pretrained,
    key: str,
    best_path: str,
    last_path: str,
    steps_per_epoch: int,
) -> str:
    """Everything a training process needs, as files in ``folder``; returns the job's path."""
    songs, split_csv = os.path.join(folder, "job_songs.csv"), os.path.join(folder, "job_split.csv")
    store.songs.to_csv(songs, index=False)
    split.to_csv(split_csv, index=False)
    labels = None
    if synthetic is not None:
        labels = os.path.join(folder, "job_synthetic_labels.npy")
        np.save(labels, np.asarray(synthetic.labels, np.float32))
    job = {
        "config": cfg.to_dict(),
        "key": key,
        "best_path": best_path,
        "last_path": last_path,
        "steps_per_epoch": steps_per_epoch,
        "store": {"path": store.path, "songs": songs, "params": dataclasses.asdict(store.params)},
        "split": split_csv,
        "synthetic": None if synthetic is None else {"path": synthetic.path, "labels": labels},
        "standardizer": standardizer.to_dict(),
        "pretrained": dataclasses.asdict(pretrained),
    }
    path = os.path.join(folder, "job.json")
    atomic_write_json(path, job)
    return path


# A traceback's last line as torchrun relays it from a training process: "[rank0]: torch.OutOfMemoryError: ..."
RANK_EXCEPTION = re.compile(r"^\[rank\d+\]:\s*[\w.]*(Error|Exception|Interrupt)\b")


def launch(job_path: str, n: int, extra_env: dict | None = None) -> None:
    """Run the job on ``n`` processes with torchrun, its output streamed here; raises on failure."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "emovit.torchrun",
        job_path,
    ]
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p)
    LOG.info("ViT: training on %d processes: %s", n, " ".join(cmd[2:]))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the blocks this process keeps cached (GAN, judge) go back to rank 0's GPU
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail, pending, causes = "", "", []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0) as proc:
        # Bytes as they come, carriage returns kept: a progress bar redraws in place in the cell
        # instead of printing a line per refresh.
        for chunk in iter(lambda: proc.stdout.read(65536), b""):
            text = decoder.decode(chunk)
            sys.stdout.write(text)
            sys.stdout.flush()
            tail = (tail + text)[-20000:]
            *lines, pending = (pending + text).split("\n")
            causes += [line.strip() for line in lines if RANK_EXCEPTION.match(line)]
    if proc.returncode:
        lines = [line.rsplit("\r", 1)[-1] for line in tail.splitlines() if line.strip()]  # a bar's last state
        cause = f": {causes[0]}" if causes else ""  # the first rank's exception, e.g. CUDA out of memory
        raise RuntimeError(
            f"torchrun training failed (exit {proc.returncode}){cause}; its last lines:\n" + "\n".join(lines[-40:])
        )


def _inputs(job: dict):
    s = job["store"]
    songs = pd.read_csv(s["songs"])
    store = FeatureStore(
        np.load(s["path"], mmap_mode="r"),
        songs,
        pd.DataFrame(columns=["song_id", "path", "reason"]),
        {},
        True,
        s["path"],
        0.0,
        MelParams(**s["params"]),
    )
    synthetic = None
    if job["synthetic"]:
        path = job["synthetic"]["path"]
        synthetic = SyntheticSet(np.load(path, mmap_mode="r"), np.load(job["synthetic"]["labels"]), path, True, 0.0)
    pretrained = Pretrained(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["pretrained"].items()})
    return store, pd.read_csv(job["split"]), synthetic, Standardizer(**job["standardizer"]), pretrained


def run_job(job_path: str) -> None:
    """One rank's work: train, then predict the validation and test songs (rank 0 writes them)."""
    ranks, device = distributed.init()
    setup_logging(logging.INFO if ranks.main else logging.WARNING)  # rank 0 says what all do; the rest, problems
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    cfg = Config(**job["config"])
    store, split, synthetic, standardizer, pretrained = _inputs(job)
    model = build_model(cfg, pretrained)
    pre = DevicePreprocessor.from_config(cfg, standardizer, pretrained)
    train_ds, val_ds, test_ds = make_datasets(store, split, synthetic, cfg)
    interrupt = int(os.environ.get("EMOVIT_INTERRUPT_AFTER_EPOCH", 0)) or None  # tests: a killed run
    train_vit(
        model,
        pre,
        train_ds,
        val_ds,
        cfg,
        device,
        job["key"],
        job["best_path"],
        job["last_path"],
        steps_per_epoch=job["steps_per_epoch"],
        interrupt_after_epoch=interrupt,
    )
    state = torch.load(job["best_path"], map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    model.to(device)
    out = {}
    for name, ds in (("val", val_ds), ("test", test_ds)):
        out[f"{name}_pred"], out[f"{name}_true"] = predict_dataset(model, pre, ds, cfg, device)
    if ranks.main:
        with atomic_path(predictions_path(job["best_path"])) as tmp, open(tmp, "wb") as f:
            np.savez(f, key=job["key"], world=ranks.world, **out)
    distributed.barrier()
    if ranks.active:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_job(sys.argv[1])
