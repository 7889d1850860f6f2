#!/usr/bin/env python3
"""Set up and run the book: ``python3 run.py book``, ``test [--fast]``, ``site [--serve]`` or ``rebuild``.

Every command creates ``.venv`` beside this file on first use and installs the
pinned ``requirements.txt`` plus ``flowlib`` itself into it; they reinstall
only when ``requirements.txt`` or ``pyproject.toml`` change. Needs only
Python 3.10+ (with ``venv``) and git.

``book`` starts JupyterLab on ``chapters/`` and opens the landing page,
``chapters/00-index.ipynb``. Its default settings come from
``jupyter-config/lab/settings/overrides.json``: no news or update checks (so
no pop-up on first start) and no last-modified column (so the file browser
has room for the chapters' names). Settings a reader changes still go to their
own JupyterLab settings and take precedence. Extra arguments go to JupyterLab
(``python3 run.py book --no-browser``).

``test`` runs the full suite (what CI runs): unit tests, doctests, the
chapters (nbval) and the browser test. ``test --fast`` runs the unit tests and
doctests only: no chapters, no browser, no test marked ``slow`` (a few
minutes on 2 cores). Extra arguments go to pytest
(``python3 run.py test tests/test_layers.py -k round_trip``); without paths of
their own, ``--fast`` collects ``flowlib`` and ``tests``. The tests run
torch on ``FLOWLIB_TEST_THREADS`` threads (default 1); tests/README.md
describes the tiers.

``rebuild [CHAPTER ...]`` runs the chapters (all, or those named: ``02``,
``02-additive-coupling``) one at a time in full mode (``FLOWLIB_QUICK``
unset) in a fresh kernel with the inline backend, and stores each with its
outputs in the form JupyterLab writes back (flowlib/book/notebook_format.py)
and its figures in ``figures/``, the only command that writes there. It
prints the hardware, each cell as it starts and each chapter's wall time; a
chapter can take an hour on a CPU. A chapter that fails leaves its notebook
and figures as they were. ``rebuild --format-only [CHAPTER ...]`` runs
nothing: it only puts the stored notebooks in that form
(flowlib/book/rebuild.py).

``site`` builds the book's website into ``site/`` from the stored notebooks
(docs/build.py, nothing executed) and prints the path of its front page;
``site --serve`` then serves it on 127.0.0.1 and prints the URL.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".flowlib-installed"
INDEX = "00-index.ipynb"  # the landing page, in chapters/
LAB_SETTINGS = ROOT / "jupyter-config" / "lab" / "settings"  # holds overrides.json


# pyproject.toml tables that do not change what is installed (editing them must not reinstall)
_NOT_INSTALLED = ("[tool.pytest.ini_options]",)

# What the fast tier leaves out: the chapters, the browser tests and the slow tests (tests/README.md).
FAST = ["-m", "not slow", "-o", "testpaths=flowlib tests",
        "--ignore=tests/test_chapters.py", "--ignore=tests/test_browser.py", "--ignore=tests/test_site.py",
        "--ignore=tests/test_roundtrip.py"]


def _fingerprint() -> str:
    h = hashlib.sha256()
    h.update((ROOT / "requirements.txt").read_bytes())
    keep = True
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("["):
            keep = line.strip() not in _NOT_INSTALLED
        if keep:
            h.update(line.encode() + b"\n")
    return h.hexdigest()


def setup() -> None:
    """Create the virtual environment and install the pinned requirements once."""
    if sys.version_info < (3, 10):
        sys.exit(f"flowlib needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"Creating a virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    print("Installing pinned requirements (first run only) ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run(pip + ["-r", str(ROOT / "requirements.txt")], check=True)
    subprocess.run(pip + ["--no-deps", "-e", str(ROOT)], check=True)
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("book", "test", "site", "rebuild"):
        print(__doc__)
        return 2
    setup()
    env = dict(os.environ)
    if argv[0] == "site":  # docs/build.py: the website from the stored notebooks, into site/
        return subprocess.call([str(PYTHON), str(ROOT / "docs" / "build.py")] + argv[1:], cwd=ROOT, env=env)
    if argv[0] == "rebuild":  # the chapters run in full mode and stored, with their figures in figures/
        env.pop("FLOWLIB_QUICK", None)
        cmd = [str(PYTHON), "-m", "flowlib.book.rebuild", "--book", str(ROOT)] + argv[1:]
        return subprocess.call(cmd, cwd=ROOT, env=env)
    if argv[0] == "book":
        cmd = [
            str(PYTHON), "-m", "jupyterlab", str(ROOT / "chapters"),
            f"--LabApp.default_url=/lab/tree/{INDEX}",  # open at the landing page, not the Launcher
            f"--LabApp.app_settings_dir={LAB_SETTINGS}",  # the book's default settings (overrides.json)
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            print("Running as root (as in many containers): passing --allow-root, "
                  "without which JupyterLab refuses to start.", flush=True)
            cmd.append("--allow-root")
        cmd += argv[1:]
    else:
        env.setdefault("FLOWLIB_QUICK", "1")
        env.setdefault("MPLBACKEND", "Agg")
        # Quick runs write their figures to a scratch folder, not over the stored ones.
        env.setdefault("FLOWLIB_FIGURES", tempfile.mkdtemp(prefix="flowlib-figures-"))
        # ... and the suite fails if it changed any file git tracks (tests/conftest.py).
        env.setdefault("FLOWLIB_CHECK_TREE", "1")
        args = argv[1:]
        if "--fast" in args:
            args = FAST + [a for a in args if a != "--fast"]
        cmd = [str(PYTHON), "-m", "pytest"] + args
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
