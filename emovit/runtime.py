"""Where the run executes: seeding, device choice, GPU compatibility, library versions."""

from __future__ import annotations

import importlib
import os
import platform
import random
import re
import sys

import numpy as np
import torch

LIBRARIES = ("torch", "transformers", "librosa", "numpy", "pandas", "sklearn", "matplotlib", "soundfile", "tqdm")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def library_versions() -> dict[str, str]:
    """{name: version} of the libraries a run depends on ("missing" when not installed)."""
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except ImportError:
            versions[name] = "missing"
    return versions


def gpu_compatibility_problem(capability: tuple[int, int], arch_list: list[str], name: str = "this GPU") -> str | None:
    """Why the installed PyTorch cannot run on a GPU of ``capability``, or None if it can.

    PyTorch ships kernels for the architectures in ``torch.cuda.get_arch_list()``
    (``sm_75``, ``sm_80``, ... and ``compute_XY`` PTX that newer GPUs can JIT). Kaggle's
    current image has no Pascal (sm_60) kernels, so a P100 is allocated and then fails at
    the first CUDA operation.
    """
    if not arch_list:
        return None  # a build that does not report its architectures: nothing to compare
    major, minor = capability
    cc = major * 10 + minor
    have = [a for a in map(parse_arch, arch_list) if a is not None]
    sm = {number for kind, number, _ in have if kind == "sm"}
    ptx = {number for kind, number, suffix in have if kind == "compute" and not suffix}
    if cc in sm or any(c // 10 == major and c <= cc for c in sm):
        return None
    if any(c <= cc for c in ptx):  # portable PTX (no "a"/"f" suffix) JIT-compiles on newer GPUs
        return None
    return (
        f"The installed PyTorch has no kernels for {name} (compute capability {major}.{minor}; "
        f"this build supports {', '.join(arch_list)}). On Kaggle this is the P100: open the "
        "notebook's Settings -> Accelerator and choose 'GPU T4 x2' or 'GPU L4' (or install a "
        "PyTorch build with Pascal support), then run again."
    )


ARCH_RE = re.compile(r"^(sm|compute)_(\d+)([a-z]*)$")


def parse_arch(name: str) -> tuple[str, int, str] | None:
    """("sm" | "compute", number, suffix) of an arch-list entry: "sm_90a" -> ("sm", 90, "a"),
    "compute_120f" -> ("compute", 120, "f"); None for a name in another form (ignored).

    Suffixes: "a" = architecture-specific features, "f" = family-specific (CUDA 12.9+). Their
    SASS still runs on that architecture; their PTX does not JIT onto newer ones.
    """
    match = ARCH_RE.match(name.strip())
    return (match.group(1), int(match.group(2)), match.group(3)) if match else None


NO_GPU = (
    "No GPU is visible, and this preset's sizes (the GAN and two ViT-B/16 fine-tunes on DEAM) take "
    "days on a CPU. On Kaggle: Settings -> Accelerator -> GPU T4 x2 (or L4), then Run All. To try the "
    'pipeline on a CPU, use PRESET = "demo"; to run these sizes on a CPU anyway, set '
    'OVERRIDES = {"require_gpu": False}.'
)


def check_gpu(require: bool = False) -> None:
    """Stop with a clear message when a visible GPU cannot run this PyTorch build, or, with
    ``require``, when no GPU is visible at all (rather than training for days on the CPU)."""
    if not torch.cuda.is_available():
        if require:
            raise RuntimeError(NO_GPU)
        return
    for i in range(torch.cuda.device_count()):
        problem = gpu_compatibility_problem(
            torch.cuda.get_device_capability(i), torch.cuda.get_arch_list(), torch.cuda.get_device_name(i)
        )
        if problem:
            raise RuntimeError(problem)


def pick_device() -> str:
    """ "cuda" when a usable GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_environment(mixed_precision: bool = True) -> dict:
    """The card and the stack a run used, for the setup table, metrics.json and run_summary.json:
    machine, device, every GPU's name and compute capability, the precision training uses, the
    CUDA / cuDNN builds and the library versions."""
    device = pick_device()
    dtype = amp_dtype(device) if mixed_precision else None
    info = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "device": device,
        "gpu_count": torch.cuda.device_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "compute_capability": [
            ".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(torch.cuda.device_count())
        ],
        "precision": {torch.float16: "fp16 + GradScaler", torch.bfloat16: "bf16"}.get(dtype, "fp32"),
        "cuda": torch.version.cuda or "none",
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else "none",
    }
    info.update(library_versions())
    return info


def amp_dtype(device: str):
    """Mixed-precision dtype for ``device``: bf16 where supported (Ampere+, e.g. L4),
    fp16 on older GPUs (T4; use with GradScaler), None on the CPU (full precision)."""
    if not str(device).startswith("cuda"):
        return None
    major, _ = torch.cuda.get_device_capability()
    return torch.bfloat16 if major >= 8 and torch.cuda.is_bf16_supported() else torch.float16


def load_scaler_state(scaler, state: dict | None) -> bool:
    """Load a saved ``GradScaler`` state into ``scaler`` when it fits; returns whether it did.

    A run may resume on another device or precision than it started with (CPU or bf16 ->
    fp16 on a T4, or back): a disabled scaler saves ``{}``, which torch refuses to load into
    an enabled one. Then the enabled scaler starts fresh (its loss scale re-calibrates within
    a few steps); a state loaded into a disabled scaler is ignored, as torch does.
    """
    if not scaler.is_enabled() or not state:
        return False
    scaler.load_state_dict(state)
    return True


def scaler_step(scaler, optimizer) -> bool:
    """``scaler.step(optimizer)`` + ``scaler.update()``; True when the optimizer really stepped.

    With fp16 the scaler skips the step when a gradient is inf/NaN and lowers its scale;
    the learning-rate scheduler must then not advance either (the documented pattern:
    compare the scale before and after ``update``). A disabled scaler always steps.
    """
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return not scaler.is_enabled() or scaler.get_scale() >= before
