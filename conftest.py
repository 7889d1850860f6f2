"""Every chapter's kernel under the test command checks its figures' readability when it shows them.

nbval starts one IPython kernel per chapter with this process's environment.
Pointing ``IPYTHONDIR`` at a fresh folder whose startup file calls
`flowlib.book.readability.check_figures_when_shown` makes ``plt.show()`` in
every chapter fail on a figure whose texts would be too small, or cut off, at
the notebook's column width. A reader's own IPython folder is not touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

STARTUP = "from flowlib.book.readability import check_figures_when_shown\ncheck_figures_when_shown()\n"


_folder: Path | None = None


def pytest_configure(config: object) -> None:
    global _folder
    _folder = Path(tempfile.mkdtemp(prefix="flowlib-ipython-"))
    startup = _folder / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-readable-figures.py").write_text(STARTUP)
    os.environ["IPYTHONDIR"] = str(_folder)


def pytest_unconfigure(config: object) -> None:
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
