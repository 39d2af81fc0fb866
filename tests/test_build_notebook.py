"""The notebook builder: module cells, ordering checks and the staleness check."""

import ast
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tools import build_notebook

ROOT = Path(__file__).resolve().parents[1]


def _copy_project(tmp_path: Path) -> Path:
    for name in ("emovit", "notebook", "tools"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / build_notebook.NOTEBOOK.name, tmp_path)
    return tmp_path


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.build_notebook", "--check"], cwd=root, capture_output=True, text=True
    )


def test_committed_notebook_is_fresh():
    assert build_notebook.build() == build_notebook.NOTEBOOK.read_text(encoding="utf-8")


def test_every_module_is_one_writefile_cell_with_its_exact_source():
    nb = nbformat.reads(build_notebook.build(), as_version=4)
    written = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("%%writefile"):
            header, body = cell.source.split("\n", 1)
            written[header.split("}/", 1)[1]] = body
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "emovit").glob("*.py"))
    assert sorted(written) == modules
    for rel, body in written.items():
        assert body == (ROOT / rel).read_text(encoding="utf-8"), rel
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "PRESET" in params[0].source and "OVERRIDES" in params[0].source
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code")
    setup = next(c.source for c in nb.cells if "EMOVIT_SRC" in c.source and "%autoreload" in c.source)
    assert "%autoreload 2" in setup


def test_check_catches_a_stale_notebook(tmp_path):
    root = _copy_project(tmp_path)
    assert _check(root).returncode == 0
    split = root / "emovit" / "split.py"
    split.write_text(split.read_text() + "\n# an edit\n")
    result = _check(root)
    assert result.returncode == 1 and "stale" in result.stderr


def test_module_used_before_its_cell_is_an_error(tmp_path):
    root = _copy_project(tmp_path)
    script = root / "notebook" / "emovit_notebook.py"
    text = script.read_text()
    script.write_text(
        text.replace(
            "# %%\nimport pandas as pd", "# %%\nfrom emovit.features import extract_features\nimport pandas as pd", 1
        )
    )
    with pytest.raises(build_notebook.BuildError, match=r"imports emovit\.\['features'\] before"):
        build_notebook.build(root, script)


def test_module_without_a_cell_is_an_error(tmp_path):
    root = _copy_project(tmp_path)
    (root / "emovit" / "orphan.py").write_text('"""Not placed anywhere."""\n')
    with pytest.raises(build_notebook.BuildError, match="orphan.py"):
        build_notebook.build(root)


def test_module_cells_open_collapsed_and_the_story_does_not():
    nb = nbformat.reads(build_notebook.build(), as_version=4)
    for cell in nb.cells:
        module = cell.cell_type == "code" and cell.source.startswith("%%writefile")
        hidden = cell.metadata.get("jupyter", {}).get("source_hidden", False)
        assert hidden == module and cell.metadata.get("_kg_hide-input", False) == module, cell.source[:60]


def test_a_cell_ending_in_a_figure_shows_it_once():
    """A plot call that ends a cell returns its figure, which Jupyter would show a second time beside
    the inline backend's copy; the trailing ";" stops that (the formatter must leave it alone)."""
    nb = nbformat.reads(build_notebook.build(), as_version=4)
    ending_in_a_plot = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or cell.source.startswith(("%%", "%")):
            continue
        python = "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.split("\n"))
        body = ast.parse(python).body  # IPython magics read as "pass"
        last = body[-1] if body else None
        call = last.value if isinstance(last, ast.Expr) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            if isinstance(call.func.value, ast.Name) and call.func.value.id == "plots":
                ending_in_a_plot += 1
                assert cell.source.rstrip().endswith(";"), cell.source[-120:]
    assert ending_in_a_plot >= 8


def test_module_docstrings_hold_design_not_history():
    """The notebook shows every module to its readers: docstrings stay short (history belongs in
    docs/experiments.md) and cite nothing a reader cannot open."""
    import ast

    for path in sorted((ROOT / "emovit").glob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert len(doc.splitlines()) <= 40, (path.name, len(doc.splitlines()))
        assert not re.search(r"\bissue \d|DESIGN section|iteration\b", text, re.IGNORECASE), path.name


def test_parameters_cell_names_real_settings():
    from emovit.config import Config

    nb = nbformat.reads(build_notebook.build(), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    named = re.findall(r'^\s*#\s*"(\w+)":', cell.source, re.MULTILINE)
    fields = {f.name for f in dataclasses.fields(Config)}
    assert len(named) >= 10 and set(named) <= fields, set(named) - fields
