"""Rebuild the book: run chapters in full mode and store them with their outputs and figures.

``python3 run.py rebuild [CHAPTER ...]`` (or ``python -m flowlib.book.rebuild``)
runs each chapter (all of ``chapters/NN-*.ipynb`` when none is named; ``02``,
``02-additive-coupling`` or a path name one) in a fresh kernel, one at a
time, as a reader's JupyterLab would: the kernel's folder is ``chapters/``,
the inline matplotlib backend draws every figure into the notebook, and
``FLOWLIB_QUICK`` is unset, so training cells run their real budget for the
device found. This is the only command that writes ``figures/``: it points
``$FLOWLIB_FIGURES`` (`flowlib.book.chapter.figure_path`) at a scratch
folder and copies the figures into ``figures/`` once the chapter has run.
It works on the checkout it is started in (``run.py`` starts it there;
``--book`` names another).

Each chapter is stored in the form of `flowlib.book.notebook_format` (what
JupyterLab writes back, solutions stored without output, no widget state). Nothing is
half written: a chapter that fails leaves its notebook and figures as they
were, and each file is replaced atomically, keeping its permissions
(`flowlib.book.notebook_format.replace_file`).
It prints the hardware, then each cell as it starts (cell i/n, time so far),
then each chapter's wall time.

``--format-only`` executes nothing: it puts the named (or all) stored
notebooks, the contents and bibliography included, in the stored form.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .notebook_format import dumps, format_file, format_notebook, replace_file

__all__ = ["hardware", "find_chapters", "kernel_environment", "rebuild_chapter", "main"]

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def hardware() -> str:
    """The CPU (``lscpu``'s model name and thread count) and any NVIDIA GPU, in one line.

    >>> "threads" in hardware()
    True
    """
    found = {}
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        found[key.strip()] = value.strip()
    cpu = found.get("Model name") or platform.processor() or platform.machine()
    text = f"{cpu}, {found.get('CPU(s)') or os.cpu_count()} threads"
    if shutil.which("nvidia-smi"):
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.split("\n")
        text += "".join(f", GPU {g.strip()}" for g in gpus if g.strip())
    return text


def find_chapters(names: list[str], folder: Path, every: str = "[0-9][0-9]-*.ipynb") -> list[Path]:
    """The notebooks in ``folder`` that ``names`` name (``"02"``, a stem, a file name or a path); all when none.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for n in ("01-a.ipynb", "02-b.ipynb", "bibliography.ipynb"):
    ...         _ = Path(d, n).write_text("{}")
    ...     [p.name for p in find_chapters([], Path(d))], [p.name for p in find_chapters(["2", "01-a"], Path(d))]
    (['01-a.ipynb', '02-b.ipynb'], ['02-b.ipynb', '01-a.ipynb'])
    """
    if not names:
        return sorted(folder.glob(every))
    found = []
    for name in names:
        stem = Path(name).name.removesuffix(".ipynb")
        matches = sorted(folder.glob(f"{int(stem):02d}-*.ipynb") if stem.isdigit() else folder.glob(f"{stem}.ipynb"))
        if len(matches) != 1:
            raise SystemExit(f"{name!r} names {len(matches)} notebooks in {folder}: "
                             f"{[p.name for p in matches] or 'none'}")
        found.append(matches[0])
    return found


def kernel_environment(figures: Path) -> dict[str, str]:
    """The kernel's environment: this one in full mode, the inline backend, figures into ``figures``."""
    env = dict(os.environ)
    env.pop("FLOWLIB_QUICK", None)
    env.update(FLOWLIB_FIGURES=str(figures), MPLBACKEND=INLINE_BACKEND, PYTHONUNBUFFERED="1")
    return env


def _progress(name: str, total: int, start: float):
    """A hook for nbclient's ``on_cell_start``: prints ``cell i/n`` and the time so far for each code cell."""
    def show(cell, cell_index: int, **_: object) -> None:
        if cell.cell_type != "code":
            return
        first = next((line for line in cell.source.splitlines() if line.strip()), "")[:60]
        minutes, seconds = divmod(int(time.perf_counter() - start), 60)
        print(f"  {name}: cell {cell_index + 1}/{total} [{minutes}:{seconds:02d}] {first}", flush=True)
    return show


def execute(path: Path, env: dict[str, str]) -> dict:
    """``path`` run top to bottom in a fresh kernel started in its folder; the executed notebook (not stored)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                            resources={"metadata": {"path": str(path.parent)}}, store_widget_state=False,
                            on_cell_start=_progress(path.stem, len(nb.cells), time.perf_counter()))
    client.execute(env=env)
    return nb


def rebuild_chapter(path: Path, figures: Path) -> float:
    """Run the chapter at ``path`` in full mode, then store it and copy its figures into ``figures``; seconds.

    The figures are drawn into a scratch folder first, so a chapter that
    fails changes nothing; each file is then written atomically.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flowlib-rebuild-") as scratch:
        nb = execute(path, kernel_environment(Path(scratch)))
        text = dumps(format_notebook(nb))
        for picture in sorted(Path(scratch).iterdir()):
            replace_file(figures / picture.name, picture.read_bytes())
        replace_file(path, text.encode("utf-8"))
    return time.perf_counter() - start


def _format_only(paths: list[Path]) -> int:
    changed = [p for p in paths if format_file(p)]
    for p in changed:
        print(f"reformatted {p}")
    print(f"{len(changed)} of {len(paths)} notebooks reformatted (nothing executed)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 run.py rebuild", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="02, 02-additive-coupling or a path (default: every chapter)")
    parser.add_argument("--format-only", action="store_true", help="execute nothing; store the notebooks' form")
    parser.add_argument("--book", type=Path, default=Path.cwd(), help="the book's checkout (default: here)")
    args = parser.parse_args(argv)
    folder, figures = args.book / "chapters", args.book / "figures"
    if args.format_only:
        return _format_only(find_chapters(args.chapters, folder, every="*.ipynb"))
    paths, machine = find_chapters(args.chapters, folder), hardware()
    print(f"Rebuilding {len(paths)} chapters in full mode on {machine}; figures into {figures}", flush=True)
    times = []
    for path in paths:
        print(f"{path.name} ...", flush=True)
        try:
            seconds = rebuild_chapter(path, figures)
        except Exception as e:  # the chapter's cell error, with its traceback; nothing of it was stored
            print(f"{path.name} failed; its notebook and figures are as they were.\n{e}", file=sys.stderr)
            return 1
        times.append((path.name, seconds))
        print(f"{path.name}: {seconds:.0f} s on {machine}", flush=True)
    for name, seconds in times:
        print(f"  {name:40s} {seconds:8.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
