"""Shared fixtures: the real DEAM sample files, synthetic demo data sets, a demo config."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emovit.config import make_config  # noqa: E402
from emovit.demo_data import make_demo_deam  # noqa: E402


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
    """The default demo data set (120 songs of 30 s), written once per test session."""
    root = tmp_path_factory.mktemp("demo_data")
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
    return make_config("demo", data_dir=str(small_demo), output_dir=str(tmp_path / "out"),
                       clip_seconds=4.0, clip_offset=1.0, n_mels=32, num_workers=1)


@pytest.fixture(scope="session")
def demo_run(demo_root, tmp_path_factory):
    """The built notebook executed once under papermill on the demo preset (~4 min on 2 cores):
    (outputs folder, executed notebook). Its best_vit_model.pth is the demo checkpoint."""
    import nbformat
    import papermill

    out = tmp_path_factory.mktemp("demo_run")
    # The kernel spec starts "python" from PATH: make it this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    executed = out / "executed.ipynb"
    papermill.execute_notebook(
        str(ROOT / "vit_with_gans_emotion_prediction.ipynb"), str(executed), kernel_name="python3", cwd=str(out),
        progress_bar=False,
        parameters={"PRESET": "demo", "DATA_DIR": str(demo_root), "OUTPUT_DIR": str(out / "outputs")},
    )
    return out / "outputs", nbformat.read(str(executed), as_version=4)


# Tests never reach the Hugging Face hub (there is no internet here or in CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
