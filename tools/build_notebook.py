#!/usr/bin/env python3
"""Build the Kaggle notebook from ``notebook/emovit_notebook.py`` and the ``emovit`` package.

The orchestration script is a jupytext percent script. A cell whose header carries
``module="emovit/x.py"`` becomes a ``%%writefile {EMOVIT_SRC}/emovit/x.py`` cell holding that
module's source byte for byte, so the code run on Kaggle is the tested code. Module cells are
collapsed when the notebook opens (``HIDDEN_SOURCE``), so the notebook reads as its story --
markdown, short calls and figures -- with each module one click away, next to the step that
first uses it (and editable there: re-running the cell reloads the module).

Checks made on every build (the build fails with a message otherwise):
  * every module of ``emovit/`` is written by exactly one cell;
  * a module is written before any cell (or earlier-written module) that imports it.

Usage:
    python -m tools.build_notebook           # write vit_with_gans_emotion_prediction.ipynb
    python -m tools.build_notebook --check   # exit 1 if the committed notebook is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "notebook" / "emovit_notebook.py"
NOTEBOOK = ROOT / "vit_with_gans_emotion_prediction.ipynb"
PACKAGE = "emovit"
IMPORT_RE = re.compile(
    r"^\s*(?:from\s+emovit\.(\w+)\s+import|import\s+emovit\.(\w+)|from\s+emovit\s+import\s+([\w, ()]+))",
    re.MULTILINE,
)
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
# Cell metadata that hides a module cell's source until opened: JupyterLab / Notebook 7 read
# "jupyter.source_hidden"; Kaggle's editor and viewer read "_kg_hide-input".
HIDDEN_SOURCE = {"jupyter": {"source_hidden": True}, "_kg_hide-input": True}


class BuildError(Exception):
    pass


def imported_modules(source: str) -> set[str]:
    """Names of ``emovit`` submodules a piece of code imports (``emovit.files`` -> ``io``)."""
    names: set[str] = set()
    for a, b, c in IMPORT_RE.findall(source):
        if a or b:
            names.add(a or b)
        else:
            names.update(n.split()[0] for n in c.strip("()").split(",") if n.strip())  # "gan as G" -> gan
    return names


def module_name(rel_path: str) -> str:
    stem = Path(rel_path).stem
    return PACKAGE if stem == "__init__" else stem


def build(root: Path = ROOT, script: Path | None = None) -> str:
    """Return the notebook JSON text built from ``script`` and ``root/emovit``."""
    script = script or root / "notebook" / "emovit_notebook.py"
    nb = jupytext.read(script, fmt="py:percent")
    package_files = sorted(p.relative_to(root).as_posix() for p in (root / PACKAGE).glob("*.py"))
    written: list[str] = []
    cells = []
    for index, cell in enumerate(nb.cells):
        module = cell.metadata.pop("module", None)
        tags = cell.metadata.get("tags")
        if module:
            if module not in package_files:
                raise BuildError(f"cell {index}: {module} is not a module of {PACKAGE}/")
            if module in written:
                raise BuildError(f"cell {index}: {module} is written twice")
            code = (root / module).read_text(encoding="utf-8")
            _check_imports(code, written + [module], where=module)  # a docstring may show its own import
            written.append(module)
            source = f"%%writefile {{EMOVIT_SRC}}/{module}\n{code}"
        else:
            source = cell.source
            if cell.cell_type == "code":
                _check_imports(source, written, where=f"cell {index}")
        new = nbformat.v4.new_code_cell(source) if cell.cell_type == "code" else nbformat.v4.new_markdown_cell(source)
        new["id"] = f"cell-{index:03d}"
        if tags:
            new.metadata["tags"] = list(tags)
        if module:  # collapsed when the notebook opens: the story reads on, any module is one click away
            new.metadata.update(HIDDEN_SOURCE)
        cells.append(new)
    missing = sorted(set(package_files) - set(written))
    if missing:
        raise BuildError(f"modules without a %%writefile cell in {script.name}: {missing}")
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    nbformat.validate(out)
    return nbformat.writes(out) + "\n"


def _check_imports(source: str, written: list[str], where: str) -> None:
    have = {module_name(m) for m in written}
    missing = sorted(imported_modules(source) - have)
    if missing:
        raise BuildError(f"{where} imports emovit.{missing} before its %%writefile cell")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed notebook is stale")
    args = parser.parse_args(argv)
    try:
        text = build()
    except BuildError as err:
        print(f"build_notebook: {err}", file=sys.stderr)
        return 2
    if args.check:
        current = NOTEBOOK.read_text(encoding="utf-8") if NOTEBOOK.exists() else ""
        if current != text:
            print(
                f"build_notebook: {NOTEBOOK.name} is stale (differs from a fresh build of "
                f"{SCRIPT.relative_to(ROOT)} and {PACKAGE}/). Run `python -m tools.build_notebook` "
                "and commit the result.",
                file=sys.stderr,
            )
            return 1
        print(f"build_notebook: {NOTEBOOK.name} is up to date")
        return 0
    NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"build_notebook: wrote {NOTEBOOK.relative_to(ROOT)} ({len(nb_cells(text))} cells)")
    return 0


def nb_cells(text: str) -> list:
    return nbformat.reads(text, as_version=4).cells


if __name__ == "__main__":
    sys.exit(main())
