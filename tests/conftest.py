"""Shared fixtures: the real DEAM sample files, synthetic demo data sets, a demo config."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from emovit.config import make_config
from emovit.demo_data import make_demo_deam

ROOT = Path(__file__).resolve().parents[1]


# The sizes every small test run shares: 32 mel bands, a 2-layer ViT of width 32, a GAN of width 4,
# batches of 4 on one process. Tests add what they are about (data folder, windows, steps).
TINY = dict(
    n_mels=32,
    num_workers=1,
    random_vit_hidden=32,
    random_vit_layers=2,
    random_vit_heads=2,
    vit_batch_size=4,
    early_stop_patience=10,
    n_bootstrap=50,
    gan_eval_every=1,
    gan_batch_size=4,
    gan_channels=4,
    gan_z_dim=8,
    gan_sample_batch_size=4,
)


def tiny_config(**overrides):
    """The demo preset at the TINY sizes, with ``overrides`` (paths, windows, steps) on top."""
    return make_config("demo", **{**TINY, **overrides})


def real_deam_dir() -> Path | None:
    path = Path(os.environ.get("EMOVIT_REAL_DEAM", ROOT.parent / "shared" / "data" / "deam"))
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def real_deam() -> Path:
    path = real_deam_dir()
    if path is None:
        pytest.skip("real DEAM sample files not found at ../shared/data/deam (set EMOVIT_REAL_DEAM)")
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The default demo data set (120 songs of 30 s, seed 42), written once per test session, or
    read from $EMOVIT_DEMO_DATA when set: ``make test`` writes it there once for all its lanes
    (``make_demo_deam`` checks that the folder holds this same set and writes it if not)."""
    shared = os.environ.get("EMOVIT_DEMO_DATA")
    root = Path(shared) if shared else tmp_path_factory.mktemp("demo_data")
    make_demo_deam(str(root), num_songs=120, seconds=30.0, seed=42)
    return root


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """A tiny demo data set (12 songs of 6 s) for fast feature tests."""
    root = tmp_path_factory.mktemp("small_demo")
    make_demo_deam(str(root), num_songs=12, seconds=6.0, seed=3)
    return root


@pytest.fixture
def small_cfg(small_demo, tmp_path):
    """Demo config on the tiny data set: 4 s windows, 32 mels, one worker."""
    return tiny_config(data_dir=str(small_demo), output_dir=str(tmp_path / "out"), clip_seconds=4.0, clip_offset=1.0)


# The end-to-end run is the demo preset with one training seed, no 2 Hz ratings and no ablation
# arm: the learning thresholds of test_notebook_e2e were measured with one seed, and three would
# triple the ViT stage in CI; the arm trains after every model those tests read and leaves their
# numbers as they are (docs/experiments.md section 7). The full-size smoke run covers the dynamic
# ratings. make test-old shortens the GAN and the ViT trainings (EMOVIT_E2E_OVERRIDES), trains
# two seeds and the demo's ablation arm, and skips the tests marked learning.
E2E_OVERRIDES = {"seeds": [42], "demo_dynamic": False, "arms": {}}


@pytest.fixture(scope="session")
def demo_run(demo_root, tmp_path_factory):
    """The built notebook executed once under papermill on the demo preset (~5 min on 2 cores):
    (the run's results folder, executed notebook). The output root (runs.csv, vit_output.zip,
    the cache) is two levels up. Its best_vit_model.pth is the demo checkpoint."""
    import nbformat
    import papermill

    out = tmp_path_factory.mktemp("demo_run")
    # The kernel spec starts "python" from PATH: make it this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    executed = out / "executed.ipynb"
    papermill.execute_notebook(
        str(ROOT / "vit_with_gans_emotion_prediction.ipynb"),
        str(executed),
        kernel_name="python3",
        cwd=str(out),
        progress_bar=False,
        parameters={
            "PRESET": "demo",
            "DATA_DIR": str(demo_root),
            "OUTPUT_DIR": str(out / "outputs"),
            "OVERRIDES": {**E2E_OVERRIDES, **json.loads(os.environ.get("EMOVIT_E2E_OVERRIDES", "{}"))},
        },
    )
    from emovit.workspace import latest_run

    return Path(latest_run(str(out / "outputs"))), nbformat.read(str(executed), as_version=4)


def cue_feature_store(folder: Path, n: int = 60, n_mels: int = 32, frames: int = 96, seed: int = 0):
    """A FeatureStore on disk of spectrograms whose labels set visible cues -- a data set a small
    GAN or ViT learns in seconds. Arousal -> level and brightness (tilt); valence -> a
    formant-like bump high (V > 0) or low (V < 0); a beat every 8 frames; noise 3 dB. Stored
    clips of ``frames`` (96) are longer than the model window of 64 frames (``CUE_CLIP_SECONDS``
    at 22,050 Hz, hop 512), as whole DEAM clips are."""
    import numpy as np
    import pandas as pd

    from emovit.features import FeatureStore, MelParams

    rng = np.random.default_rng(seed)
    v, a = rng.uniform(-0.8, 0.8, n), rng.uniform(-0.8, 0.8, n)
    band = np.arange(n_mels)[None, :, None]
    level = -50 + 12 * a[:, None, None] * (1 + band / n_mels)
    bump = 12 * (
        np.clip(v, 0, None)[:, None, None] * np.exp(-((band - 10) ** 2) / 8)
        + np.clip(-v, 0, None)[:, None, None] * np.exp(-((band - 22) ** 2) / 8)
    )
    beat = 6 * ((np.arange(frames)[None, None, :] % 8) < 2)
    mels = (level + bump + beat + rng.normal(0, 3, (n, n_mels, frames))).astype(np.float16)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cue_{n}_{n_mels}_{frames}_{seed}.npy"
    np.save(path, mels)
    songs = pd.DataFrame(
        {
            "song_id": np.arange(1, n + 1),
            "audio_path": "",
            "valence": v.astype(np.float32),
            "arousal": a.astype(np.float32),
            "row": np.arange(n),
            "frames": frames,
        }
    )
    params = MelParams(22050, CUE_CLIP_SECONDS, 0.0, 2048, 512, n_mels, 1e-10, frames * 512 / 22050)
    assert params.num_frames == 64
    return FeatureStore(
        np.load(path, mmap_mode="r"),
        songs,
        pd.DataFrame(columns=["song_id", "path", "reason"]),
        {"ok": n},
        False,
        str(path),
        0.0,
        params,
    )


CUE_CLIP_SECONDS = 1.463  # 64 frames at 22,050 Hz, hop 512


@pytest.fixture(scope="session")
def cue_store(tmp_path_factory):
    """The default cue data set (60 songs, 32 mels, 96 stored frames), written once per session."""
    return cue_feature_store(tmp_path_factory.mktemp("cue"))


# Tests never reach the Hugging Face hub (there is no internet here or in CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Mark every test that reads the end-to-end demo run ``notebook``: the older-stack pass of
    ``make test`` runs those and the fast tests (the code paths where library versions differ)."""
    for item in items:
        if "demo_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.notebook)
