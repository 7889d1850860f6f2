"""Where a chapter's figures go, and the command that rebuilds the book (`flowlib.book.rebuild`).

* `figure_path` gives ``$FLOWLIB_FIGURES`` when set and a scratch folder otherwise, quick or full:
  only the rebuild command sets it to ``figures/``;
* a reader's full run of a chapter (chapter 1, in a fresh kernel started in ``chapters/`` of a clone of
  this repository, ``FLOWLIB_QUICK`` and ``FLOWLIB_FIGURES`` unset, the inline backend) leaves the clone's
  work tree clean, shows its figures inline and saves them in the scratch folder (slow);
* the rebuild runs a notebook in full mode, stores it in the stored form and its figures in the folder
  given; a notebook that fails leaves its file and the figures as they were (slow: kernels start).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from flowlib.book import chapter as book
from flowlib.files import figures_dir

ROOT = Path(__file__).resolve().parent.parent
READER_CHAPTER = "01-change-of-variables.ipynb"  # full mode in about 15 s, no data needed


@pytest.mark.parametrize("quick", ["1", "0", ""])
def test_only_flowlib_figures_sends_figures_into_a_folder(monkeypatch, tmp_path, quick) -> None:
    monkeypatch.setenv("FLOWLIB_QUICK", quick)
    monkeypatch.delenv("FLOWLIB_FIGURES", raising=False)
    scratch = book.figure_path("x.png").parent
    assert scratch != figures_dir() and scratch.is_dir() and not scratch.is_relative_to(ROOT)
    assert book.figure_path("y.png").parent == scratch  # one scratch folder per process
    monkeypatch.setenv("FLOWLIB_FIGURES", str(tmp_path / "figs"))
    assert book.figure_path("x.png") == tmp_path / "figs" / "x.png" and (tmp_path / "figs").is_dir()


def _kernel_env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWLIB_QUICK", "FLOWLIB_FIGURES", "MPLBACKEND")}
    env.update(changes)
    return env


def _run(path: Path, cwd: Path, env: dict[str, str]) -> dict:
    """``path`` executed by nbclient in a fresh kernel started in ``cwd`` (as JupyterLab starts it)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute(env=env)
    return nb


def _tracked_mtimes(checkout: Path) -> dict[str, int]:
    """Modification times of the files git tracks in ``checkout`` (a file rewritten with the same bytes shows)."""
    names = subprocess.run(["git", "ls-files"], cwd=checkout, capture_output=True, text=True, check=True).stdout
    return {name: (checkout / name).stat().st_mtime_ns for name in names.splitlines()}


@pytest.mark.slow
def test_a_readers_full_run_leaves_the_work_tree_clean(tmp_path: Path) -> None:
    clone = tmp_path / "book"
    subprocess.run(["git", "clone", "--quiet", "--local", str(ROOT), str(clone)], check=True)
    (tmp_path / "tmp").mkdir()
    before = _tracked_mtimes(clone)
    nb = _run(ROOT / "chapters" / READER_CHAPTER, clone / "chapters", _kernel_env(TMPDIR=str(tmp_path / "tmp")))
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status == "", f"a reader's run of {READER_CHAPTER} changed the work tree:\n{status}"
    rewritten = sorted(name for name, mtime in _tracked_mtimes(clone).items() if before[name] != mtime)
    assert not rewritten, f"a reader's run of {READER_CHAPTER} rewrote tracked files (same bytes): {rewritten}"
    saved = sorted(p.name for p in (tmp_path / "tmp").glob("flowlib-figures-*/*.png"))
    assert saved and all(n.startswith("ch01-") for n in saved), saved
    shown = [c for c in nb.cells if c.cell_type == "code" and "figure_path(" in c.source]
    assert shown and all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in shown)
    assert any("mode: full" in o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _notebook(path: Path, *sources: str) -> None:
    cells = [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [],
              "source": s} for i, s in enumerate(sources)]
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": cells, "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}, "widgets": {}}}))


@pytest.mark.slow
def test_the_rebuild_stores_the_run_and_its_figures(tmp_path: Path) -> None:
    from flowlib.book.notebook_format import dumps, format_notebook
    from flowlib.book.rebuild import rebuild_chapter

    path, figures = tmp_path / "chapters" / "01-tiny.ipynb", tmp_path / "figures"
    path.parent.mkdir()
    _notebook(path, "import os, matplotlib.pyplot as plt\nfrom flowlib.book.chapter import figure_path, quick_mode\n"
                    "print(quick_mode()); print(os.getcwd())",
              "fig = plt.figure(figsize=(3, 2), layout='constrained'); plt.plot([0, 1])\n"   # readable: conftest.py
              "fig.savefig(figure_path('tiny.png')); plt.show()")
    rebuild_chapter(path, figures)
    text = path.read_text()
    nb = json.loads(text)
    assert dumps(format_notebook(nb)) == text and "widgets" not in nb["metadata"]
    first = nb["cells"][0]["outputs"]
    assert len(first) == 1 and "".join(first[0]["text"]) == f"False\n{path.parent}\n"  # full mode, in its folder
    assert "image/png" in nb["cells"][1]["outputs"][0]["data"]  # the inline backend
    assert [p.name for p in figures.iterdir()] == ["tiny.png"]

    before = {p: p.read_bytes() for p in (path, figures / "tiny.png")}
    _notebook(path, "from flowlib.book.chapter import figure_path\nopen(figure_path('tiny.png'), 'w').close()",
              "raise RuntimeError('a failing cell')")
    failing = path.read_bytes()
    with pytest.raises(Exception, match="a failing cell"):
        rebuild_chapter(path, figures)
    assert path.read_bytes() == failing and (figures / "tiny.png").read_bytes() == before[figures / "tiny.png"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
