"""The end of a run: its summary (results, stage times, counts, the card and stack, cache sizes)
and ``vit_output.zip``, which predicts on its own.

The zip, written to the top of ``output_dir``, holds this run's folder only -- with the delivered
model as ``best_vit_model_fp16.pth`` (half the size; the exact fp32 ``best_vit_model.pth`` stays
in the run folder) -- plus the ``emovit`` package's source, a ``requirements.txt`` and
``PREDICT.md``, so that after ``pip install -r requirements.txt`` a fresh unzip runs
``python -m emovit.predict``. It is written atomically and every member is read back and checked
against its source (size and CRC) before the run reports success.
"""

from __future__ import annotations

import collections
import os
import zipfile

import pandas as pd
import torch

from emovit.files import atomic_path, atomic_write_json, atomic_write_text, load_checkpoint

ZIP_NAME = "vit_output.zip"
STORED = (".pth", ".png", ".zip", ".npy")  # already compressed or incompressible: store as is
FULL_CHECKPOINT = "best_vit_model.pth"  # fp32, kept in the run folder
HALF_CHECKPOINT = "best_vit_model_fp16.pth"  # in the zip
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# What `python -m emovit.predict` imports (lower bounds: the stack Kaggle's image has).
PREDICT_REQUIREMENTS = (
    "torch>=2.1",
    "transformers>=4.57",
    "librosa>=0.10.2",
    "soundfile>=0.12.1",
    "numpy>=1.26",
    "pandas>=2.2",
    "tqdm>=4.66",
    "threadpoolctl>=3",
)


def output_files(output_dir: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Relative paths of the files below ``output_dir``, minus ``exclude``, hidden files and the zip."""
    found = []
    for folder, dirs, files in os.walk(output_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(folder, name), output_dir)
            if rel != ZIP_NAME and rel not in exclude and not name.startswith("."):
                found.append(rel)
    return found


def file_table(files: dict[str, str]) -> pd.DataFrame:
    """{member: source path} -> member, MB."""
    return pd.DataFrame({"file": list(files), "MB": [round(os.path.getsize(p) / 1e6, 3) for p in files.values()]})


def save_half(src: str, dst: str) -> str:
    """A copy of a ``best_vit_model.pth`` with its floating-point weights in float16 (loaded back
    into float32 models by ``emovit.predict``; predictions move by ~1e-3)."""
    state = load_checkpoint(src)
    state["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    state["weights_dtype"] = "float16"
    with atomic_path(dst) as tmp:
        torch.save(state, tmp)
    return dst


def predict_howto(run_id: str, environment: dict) -> str:
    """PREDICT.md: how to predict from a fresh unzip, and what the model was trained on."""
    gpus = ", ".join(environment.get("gpus", [])) or environment.get("device", "cpu")
    return f"""# Predicting with this run's model

This zip holds run `{run_id}`: its results, the delivered model as `{HALF_CHECKPOINT}` (float16
weights; the run folder keeps the exact float32 `{FULL_CHECKPOINT}`), and the `emovit` code.

```bash
pip install -r requirements.txt
python -m emovit.predict my_songs/ --checkpoint {HALF_CHECKPOINT} --csv my_predictions.csv --curves my_curves.csv
```

Any audio file of any length (mp3, wav, flac, ogg; m4a with ffmpeg): one row per file with valence
and arousal on [-1, 1] and DEAM's 1-9 scale and the Russell quadrant; `--curves` adds a row per
window (the emotion over time). Add `--device cuda` on a GPU. In Python:
`from emovit.predict import predict; predict("song.mp3", "{HALF_CHECKPOINT}")`.

Trained on: {gpus}; precision {environment.get("precision", "?")}; torch {environment.get("torch", "?")},
transformers {environment.get("transformers", "?")}, Python {environment.get("python", "?")}
(all in `run_summary.json`). Test metrics: `metrics.json`; the choices behind the delivered model:
`metrics.json` -> `gate` and `choice`.
"""


def write_zip(run_dir: str, root: str, run_id: str, environment: dict) -> tuple[str, dict[str, str]]:
    """Write ``<root>/vit_output.zip`` of one run (module docstring) and verify it.

    Returns (path, {member: source path})."""
    save_half(os.path.join(run_dir, FULL_CHECKPOINT), os.path.join(run_dir, HALF_CHECKPOINT))
    atomic_write_text(os.path.join(run_dir, "PREDICT.md"), predict_howto(run_id, environment))
    atomic_write_text(os.path.join(run_dir, "requirements.txt"), "\n".join(PREDICT_REQUIREMENTS) + "\n")
    members = {rel: os.path.join(run_dir, rel) for rel in output_files(run_dir, exclude=(FULL_CHECKPOINT,))}
    for name in sorted(os.listdir(PACKAGE_DIR)):
        if name.endswith(".py"):
            members[f"emovit/{name}"] = os.path.join(PACKAGE_DIR, name)
    path = os.path.join(root, ZIP_NAME)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for member, source in members.items():
                kind = zipfile.ZIP_STORED if member.endswith(STORED) else zipfile.ZIP_DEFLATED
                zf.write(source, member, compress_type=kind)
        verify_zip(tmp, members)
    return path, members


def verify_zip(path: str, members: dict[str, str]) -> None:
    """Every member present, CRC-valid when read back, and the size of its source file."""
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()  # reads every member and checks its CRC
        if bad is not None:
            raise RuntimeError(f"{path}: member {bad} fails its CRC check")
        infos = {i.filename: i for i in zf.infolist()}
    missing = sorted(set(members) - set(infos))
    wrong = [m for m, src in members.items() if m in infos and infos[m].file_size != os.path.getsize(src)]
    if missing or wrong:
        raise RuntimeError(f"{path}: missing members {missing}, size mismatch {wrong}")


def skip_reasons(errors: pd.DataFrame, data_report) -> dict[str, int]:
    """Counts of every skipped input by reason (decoding errors and data-report skips)."""
    reasons = collections.Counter(r.split(":")[0] for r in errors.get("reason", []))
    reasons.update(s["reason"] for s in data_report.skipped)
    return dict(reasons)


def run_summary(
    output_dir: str, results: pd.DataFrame, timings: dict, counts: dict, environment: dict, cache_bytes: dict
) -> dict:
    """Write run_summary.json: results table, stage seconds, counts, the card and stack, cache MB by kind."""
    summary = {
        "results": results.to_dict(orient="records"),
        "timings_seconds": timings,
        "counts": counts,
        "environment": environment,
        "cache_mb": {k: round(v / 1e6, 1) for k, v in cache_bytes.items()},
    }
    atomic_write_json(os.path.join(output_dir, "run_summary.json"), summary)
    return summary
