"""The README's configuration reference is generated from Config and cannot drift."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

from emovit.config import Config

ROOT = Path(__file__).resolve().parents[1]


def _check(root: Path) -> subprocess.CompletedProcess:
    """The check as `python -m` runs it from ``root``: that folder's emovit is the one imported."""
    return subprocess.run(
        [sys.executable, "-m", "tools.readme_config", "--check"], cwd=root, capture_output=True, text=True
    )


def test_reference_lists_every_field():
    text = (ROOT / "README.md").read_text()
    for f in dataclasses.fields(Config):
        assert f"| `{f.name}` |" in text, f.name
    assert _check(ROOT).returncode == 0


def test_adding_a_field_without_the_readme_fails(tmp_path):
    for name in ("emovit", "tools"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", tmp_path)
    config = tmp_path / "emovit" / "config.py"
    text = config.read_text()
    config.write_text(
        text.replace("    seed: int = 42  #", "    new_knob: int = 1  # a new field\n    seed: int = 42  #", 1)
    )
    result = _check(tmp_path)
    assert result.returncode == 1 and "stale" in result.stderr


def test_published_numbers_in_the_readme_are_the_ones_the_notebook_shows():
    """Each published reference appears in README's table with the same metric and values, and
    each states its protocol (a number without one cannot be compared)."""
    from emovit.results import REFERENCES

    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| ")]
    for ref in REFERENCES:
        assert ref["protocol"] and ref["data"] and ref["metric"] != "CCC", ref
        row = next(r for r in rows if r.startswith(f"| {ref['source']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2:] == [ref["metric"], f"{ref['valence']:g}", f"{ref['arousal']:g}"], row
