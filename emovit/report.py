"""The end of a run: summary (results, stage times, counts, files) and ``vit_output.zip``.

The zip holds every file in the output folder except the caches (features, synthetic
spectrograms, resume states); it is written atomically and every member is read back and
checked against its source (size and CRC) before the run reports success.
"""

from __future__ import annotations

import collections
import os
import zipfile

import pandas as pd

from emovit.files import atomic_path, atomic_write_json

ZIP_NAME = "vit_output.zip"
STORED = (".pth", ".png", ".zip", ".npy")  # already compressed or incompressible: store as is


def output_files(output_dir: str, exclude: list[str]) -> list[str]:
    """Relative paths of the files below ``output_dir``, minus excluded folders and the zip."""
    excluded = [os.path.abspath(e) for e in exclude]
    found = []
    for folder, dirs, files in os.walk(output_dir):
        dirs[:] = sorted(d for d in dirs if not any(os.path.abspath(os.path.join(folder, d)) == e for e in excluded))
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(folder, name), output_dir)
            if rel != ZIP_NAME and not name.startswith("."):
                found.append(rel)
    return found


def file_table(output_dir: str, files: list[str]) -> pd.DataFrame:
    sizes = [os.path.getsize(os.path.join(output_dir, f)) for f in files]
    return pd.DataFrame({"file": files, "MB": [round(s / 1e6, 3) for s in sizes]})


def write_zip(output_dir: str, exclude: list[str]) -> tuple[str, list[str]]:
    """Write ``vit_output.zip`` atomically and verify it; returns (path, members)."""
    files = output_files(output_dir, exclude)
    path = os.path.join(output_dir, ZIP_NAME)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for rel in files:
                kind = zipfile.ZIP_STORED if rel.endswith(STORED) else zipfile.ZIP_DEFLATED
                zf.write(os.path.join(output_dir, rel), rel, compress_type=kind)
        verify_zip(tmp, output_dir, files)
    return path, files


def verify_zip(path: str, output_dir: str, files: list[str]) -> None:
    """Every member present, CRC-valid when read back, and the size of its source file."""
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()  # reads every member and checks its CRC
        if bad is not None:
            raise RuntimeError(f"{path}: member {bad} fails its CRC check")
        infos = {i.filename: i for i in zf.infolist()}
    missing = sorted(set(files) - set(infos))
    wrong = [f for f in files if f in infos and infos[f].file_size != os.path.getsize(os.path.join(output_dir, f))]
    if missing or wrong:
        raise RuntimeError(f"{path}: missing members {missing}, size mismatch {wrong}")


def skip_reasons(errors: pd.DataFrame, data_report) -> dict[str, int]:
    """Counts of every skipped input by reason (decoding errors and data-report skips)."""
    reasons = collections.Counter(r.split(":")[0] for r in errors.get("reason", []))
    reasons.update(s["reason"] for s in data_report.skipped)
    return dict(reasons)


def run_summary(output_dir: str, results: pd.DataFrame, timings: dict, counts: dict) -> dict:
    """Write run_summary.json (results table, stage seconds, counts, output files)."""
    summary = {"results": results.to_dict(orient="records"), "timings_seconds": timings, "counts": counts}
    atomic_write_json(os.path.join(output_dir, "run_summary.json"), summary)
    return summary
