"""Where a run's files go: its results folder, the index of runs, and the cache with its housekeeping.

Under ``output_dir`` (``/kaggle/working/vit_augmented`` on Kaggle):

    runs/<run id>/    this run's results: checkpoints, figures, tables, metrics.json, ...
    runs.csv          one row per run: id, name, times, status, the settings that differ from
                      the preset, the delivered model's test CCC, its folder
    vit_output.zip    the latest run's folder with the code and a how-to (``emovit.report``)

The run id is ``run_name`` (when set) and a digest of every setting that can change a result,
so re-running the same settings resumes in, and overwrites, the same folder, and other settings
never overwrite it: two settings sit side by side.

The cache -- features, GAN checkpoints, synthetic sets, ViT checkpoints and resume states -- is
kept out of what Kaggle saves: ``cache_dir`` when set, else ``/kaggle/temp/emovit_cache`` on
Kaggle (a *Save Version* run saves /kaggle/working, at most 20 GB, and nothing else; an
interactive session keeps /kaggle/temp until it ends), else ``<output_dir>/cache``. Each cache
entry is a folder (one store, one GAN, one model's run); of each kind the ``cache_keep`` most
recently used are kept, and never one the current run uses. A large write first checks the free
space (``ensure_free``), so a full disk stops the run with a message instead of a broken file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass

import pandas as pd

from emovit.config import Config, make_config, replace
from emovit.files import LOG, atomic_write_csv, hash_json

RUNS_FOLDER = "runs"
RUNS_INDEX = "runs.csv"
# Settings that cannot change any result: left out of the run id (and of runs.csv's "changed").
NOT_RESULT_FIELDS = (
    "output_dir",
    "cache_dir",
    "cache_keep",
    "run_name",
    "num_workers",
    "loader_workers",
    "ddp_processes",
    "retrain_bad_checkpoints",
    "gan_sample_batch_size",
    "pretrained_search_dir",
    "vit_local_dir",
)
FREE_MARGIN_BYTES = 200_000_000  # left free after a large write (logs, figures, the next small files)


def run_id(cfg: Config) -> str:
    """``[<run_name>-]<8 hex>``: the same for the same result-changing settings."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in NOT_RESULT_FIELDS}
    digest = hash_json(settings, length=8)
    return f"{cfg.run_name}-{digest}" if cfg.run_name else digest


def changed_settings(cfg: Config) -> dict:
    """{field: value} where ``cfg`` differs from its preset (paths and run-neutral fields left out)."""
    preset = make_config(cfg.preset).to_dict()
    skip = set(NOT_RESULT_FIELDS) | {"data_dir"}
    return {k: v for k, v in cfg.to_dict().items() if k not in skip and preset.get(k) != v}


@dataclass
class Run:
    """One run's place: ``root`` (the output_dir the user chose), its id and its folder."""

    root: str
    id: str
    folder: str
    started: str

    @property
    def index_path(self) -> str:
        return os.path.join(self.root, RUNS_INDEX)


def start_run(cfg: Config) -> tuple[Config, Run]:
    """Make this run's folder and its runs.csv row; returns (the run's config, the run).

    The run's config has ``output_dir`` = the run folder (every stage writes its outputs there)
    and ``cache_dir`` resolved, so caches stay shared between runs.
    """
    rid = run_id(cfg)
    folder = os.path.join(cfg.output_dir, RUNS_FOLDER, rid)
    os.makedirs(folder, exist_ok=True)
    run = Run(cfg.output_dir, rid, folder, _now())
    run_cfg = replace(cfg, output_dir=folder, cache_dir=cfg.cache_path)
    os.makedirs(run_cfg.cache_dir, exist_ok=True)
    update_index(run, cfg, status="running")
    LOG.info("run %s: results in %s, caches in %s", rid, folder, run_cfg.cache_dir)
    return run_cfg, run


def update_index(run: Run, cfg: Config, status: str, metrics: dict | None = None) -> pd.DataFrame:
    """Insert or replace this run's row of runs.csv (atomically); returns the index."""
    row = {
        "run_id": run.id,
        "run_name": cfg.run_name,
        "started_utc": run.started,
        "finished_utc": _now() if status == "finished" else "",
        "status": status,
        "preset": cfg.preset,
        "changed": json.dumps(changed_settings(cfg), sort_keys=True),
        "valence_ccc": _ccc(metrics, "valence"),
        "arousal_ccc": _ccc(metrics, "arousal"),
        "folder": os.path.relpath(run.folder, run.root),
    }
    index = read_index(run.root)
    index = pd.concat([index[index["run_id"] != run.id], pd.DataFrame([row])], ignore_index=True)
    atomic_write_csv(run.index_path, index)
    return index


def read_index(root: str) -> pd.DataFrame:
    path = os.path.join(root, RUNS_INDEX)
    if os.path.exists(path):
        return pd.read_csv(path, dtype={"run_id": str, "run_name": str}, keep_default_na=False)
    return pd.DataFrame(columns=["run_id"])


def latest_run(root: str) -> str:
    """The folder of the run that finished last under ``root`` (from runs.csv)."""
    index = read_index(root)
    done = index[index["status"] == "finished"] if "status" in index.columns else index.iloc[0:0]
    if done.empty:
        raise FileNotFoundError(f"no finished run listed in {os.path.join(root, RUNS_INDEX)}")
    return os.path.join(root, done.sort_values("finished_utc").iloc[-1]["folder"])


def _ccc(metrics: dict | None, dim: str):
    if not metrics:
        return ""
    return round(metrics["models"]["delivered"][dim]["ccc"]["value"], 4)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# ---- the cache ------------------------------------------------------------------------------


def entry(cfg: Config, kind: str, name: str) -> str:
    """The folder of one cache entry, ``<cache>/<kind>/<name>`` (created); marks it as just used."""
    folder = os.path.join(cfg.cache_path, kind, name)
    os.makedirs(folder, exist_ok=True)
    os.utime(folder)
    return folder


def prune(cfg: Config, kind: str, in_use: str | None = None) -> list[str]:
    """Delete all but the ``cfg.cache_keep`` most recently used entries of ``kind`` -- never
    ``in_use`` (an entry folder). Returns the deleted folders."""
    parent = os.path.join(cfg.cache_path, kind)
    if not os.path.isdir(parent):
        return []
    keep_abs = os.path.abspath(in_use) if in_use else None
    entries = [os.path.join(parent, d) for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))]
    entries.sort(key=os.path.getmtime, reverse=True)
    kept, deleted = 0, []
    for folder in entries:
        if os.path.abspath(folder) == keep_abs:
            continue
        kept += 1
        if kept > max(cfg.cache_keep - (1 if keep_abs else 0), 0):
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    if deleted:
        LOG.info(
            "cache: removed %d superseded %s entr%s (%s)",
            len(deleted),
            kind,
            "y" if len(deleted) == 1 else "ies",
            ", ".join(os.path.basename(d) for d in deleted),
        )
    return deleted


def sizes(folder: str) -> dict[str, int]:
    """Bytes per kind (first-level folder) below ``folder``."""
    out: dict[str, int] = {}
    if not os.path.isdir(folder):
        return out
    for kind in sorted(os.listdir(folder)):
        path = os.path.join(folder, kind)
        if os.path.isdir(path):
            out[kind] = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return out


def free_bytes(folder: str) -> int:
    """Free bytes on the file system of ``folder`` (tests replace this to simulate a full disk)."""
    while not os.path.exists(folder):
        folder = os.path.dirname(folder) or "."
    return shutil.disk_usage(folder).free


def ensure_free(folder: str, nbytes: int, what: str) -> None:
    """Raise OSError naming ``what`` when writing ``nbytes`` into ``folder`` would leave less than
    ``FREE_MARGIN_BYTES`` free. Called before a write starts, so nothing is half-written."""
    free = free_bytes(folder)
    if free < nbytes + FREE_MARGIN_BYTES:
        raise OSError(
            f"not enough disk space for {what}: it needs {nbytes / 1e9:.2f} GB in {folder}, and "
            f"{free / 1e9:.2f} GB are free (keeping {FREE_MARGIN_BYTES / 1e9:.1f} GB spare). Free space "
            "(delete old folders under runs/ or the cache), set cache_dir to a larger disk, or lower "
            "cache_keep."
        )
