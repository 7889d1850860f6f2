"""The stored chapters in JupyterLab and nbconvert: opened unedited, saved byte for byte, solutions closed.

* Every stored notebook in ``chapters/`` (a temporary copy) is opened in
  JupyterLab in headless Chromium, with its kernel started as a reader's is;
  once JupyterLab has written the kernel's spec and language into the
  notebook's metadata, the document must not be marked edited (the model's
  ``dirty`` flag and the tab's ``jp-mod-dirty``). It is then saved with
  ``docmanager:save`` (what Ctrl+S runs) and its bytes must equal the stored
  file's. This is what `flowlib.book.notebook_format` promises; a difference
  names the lines JupyterLab changed.
* Chapter 4's solutions as a reader's run shows them (a notebook whose
  solution cells hold what ``solution("4.N")`` displays: the answers in
  words from ``chapters/solutions/04-*.md``, the code part the chapter's run
  kept) render in JupyterLab as closed ``<details>`` elements showing only
  "Solution 4.N (click to show)" (the code part "... (click to show the code
  and its output)"); a click opens one, and the math inside is typeset
  (MathJax), no ``$`` left. (The stored chapters show no solution at all:
  ``tests/test_solutions.py``.)
* The same notebook converted by nbconvert (HTML, the lab template, MathJax 2
  from the pinned ``jupyter-server-mathjax`` instead of a CDN) shows the same:
  closed solutions, math typeset inside once opened.

JupyterLab runs as in ``tests/test_browser.py`` (loopback, a fresh token,
temporary config and state), with ``--LabApp.expose_app_in_browser`` so the
test can read the document model. Needs Chromium and chromedriver from the
system packages; skipped without them.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser_support import chromium, needs_chromium  # noqa: E402
from test_browser import CHAPTERS, PAGE_TIMEOUT, jupyterlab, _wait  # noqa: E402

pytestmark = [pytest.mark.slow, needs_chromium]

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS_CHAPTER = "04-images-as-data.ipynb"  # answers in words with inline and display math
SHOWN = "solutions-as-run.ipynb"  # written beside the chapters by `_solutions_as_run`
KERNEL_TIMEOUT = 120  # seconds, for one notebook to open and its kernel to start on a busy small CPU

_APP_READY_JS = """
const app = window.jupyterapp;
return Boolean(app && app.commands.hasCommand('docmanager:open') && app.commands.hasCommand('docmanager:save'));
"""

# Open a notebook, start its kernel, wait until JupyterLab has written the kernel's spec and language
# into the metadata (what marks a notebook stored with another spec edited), then report its dirty state.
_OPEN_JS = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const app = window.jupyterapp;
  await app.restored;
  const widget = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await widget.context.ready;
  await widget.sessionContext.ready;
  const kernel = widget.sessionContext.session.kernel;
  const spec = await kernel.spec, info = await kernel.info;
  const model = widget.context.model;
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    const ks = model.getMetadata('kernelspec') || {}, li = model.getMetadata('language_info') || {};
    if (ks.display_name === spec.display_name && li.version === info.language_info.version) break;
    await new Promise(r => setTimeout(r, 100));
  }
  await new Promise(r => setTimeout(r, 500));
  done({dirty: model.dirty, tab: widget.title.className.includes('jp-mod-dirty'),
        kernel: spec.display_name, python: info.language_info.version});
})().catch(e => done({error: String((e && e.stack) || e)}));
"""

# Ctrl+S's command on the open notebook, then its kernel shut down and its tab closed.
_SAVE_AND_CLOSE_JS = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const app = window.jupyterapp;
  const widget = app.shell.currentWidget;
  if (!widget || !widget.context || widget.context.path !== path) {
    throw new Error('the current document is not ' + path);
  }
  await app.commands.execute('docmanager:save');
  const dirty = widget.context.model.dirty;
  await widget.sessionContext.shutdown();
  widget.dispose();
  done({dirty});
})().catch(e => done({error: String((e && e.stack) || e)}));
"""

# The solutions on the page: [summary, open?, the text shown inside, number of typeset formulas] for each.
# The summary's textContent, as JupyterLab skips rendering cells out of view (content-visibility), where
# innerText is empty; the shown text only from children that are rendered (closed details hide theirs).
_SOLUTIONS_JS = """
return Array.from(document.querySelectorAll('details')).map(d => {
  const summary = d.querySelector('summary');
  const inner = Array.from(d.children).filter(e => e.tagName !== 'SUMMARY');
  return [summary ? summary.textContent.trim() : '', d.open,
          inner.filter(e => e.checkVisibility()).map(e => e.innerText).join('').trim(),
          d.querySelectorAll('mjx-container, .MathJax, .MathJax_CHTML, .mjx-chtml').length];
});
"""


def _differences(before: bytes, after: bytes, limit: int = 20) -> str:
    lines = difflib.unified_diff(before.decode().splitlines(), after.decode().splitlines(), "stored", "saved", n=1,
                                 lineterm="")
    return "\n".join(list(lines)[:limit])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Path]]:
    """JupyterLab on a temporary copy of ``chapters/`` and Chromium on its main page: (server, driver, root)."""
    tmp = tmp_path_factory.mktemp("roundtrip")
    root = tmp / "chapters"
    shutil.copytree(CHAPTERS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    os.environ.setdefault("SE_OFFLINE", "true")
    with jupyterlab(root, tmp / "state", tmp / "figures", ("--LabApp.expose_app_in_browser=True",)) as server, \
            chromium(tmp / "profile") as driver:
        driver.get(server.authorized("/lab?reset"))
        _wait(driver, PAGE_TIMEOUT, "JupyterLab to start", lambda d: d.execute_script(_APP_READY_JS))
        yield server, driver, root


def _open(driver: Any, name: str) -> dict:
    driver.set_script_timeout(KERNEL_TIMEOUT)
    state = driver.execute_async_script(_OPEN_JS, name)
    assert "error" not in state, f"{name}: {state['error']}"
    return state


def round_trip(driver: Any, root: Path, name: str) -> list[str]:
    """Open ``name`` (in ``root``, which JupyterLab serves) and save it; what went wrong, if anything."""
    path = root / name
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    state = _open(driver, name)
    problems = []
    if state["dirty"] or state["tab"]:
        problems.append(f"{name}: marked edited right after opening (kernel {state['kernel']!r}, "
                        f"Python {state['python']})")
    saved = driver.execute_async_script(_SAVE_AND_CLOSE_JS, name)
    assert "error" not in saved, f"{name}: {saved['error']}"
    after = path.read_bytes()
    if path.stat().st_mtime_ns == mtime:
        problems.append(f"{name}: docmanager:save did not write the file")
    elif after != before:
        problems.append(f"{name}: saving changed its bytes:\n{_differences(before, after)}")
    return problems


def test_every_stored_notebook_opens_unedited_and_saves_unchanged(lab) -> None:
    _, driver, root = lab
    names = sorted(p.name for p in root.glob("*.ipynb") if p.name != SHOWN)
    assert len(names) >= 10, names
    problems = [p for name in names for p in round_trip(driver, root, name)]
    assert not problems, "\n\n".join(problems)


def _solutions(driver: Any) -> list[list]:
    return [s for s in driver.execute_script(_SOLUTIONS_JS) if s[0].startswith("Solution")]


def _solutions_as_run(folder: Path) -> Path:
    """Chapter 4 with each solution cell holding what running it displays (`flowlib.book.solutions.solution`):
    its answers in words, from their file, around the element its code part showed in the chapter's run."""
    from flowlib.book.notebook_format import SOLUTION_OUTPUT, dumps
    from flowlib.book.solutions import CALL, answer_bundle, parse_answers

    nb = json.loads((CHAPTERS / SOLUTIONS_CHAPTER).read_text(encoding="utf-8"))
    words_file = CHAPTERS / "solutions" / SOLUTIONS_CHAPTER.replace(".ipynb", ".md")
    answers = parse_answers(words_file.read_text(encoding="utf-8"), str(words_file))
    for cell in nb["cells"]:
        match = CALL.fullmatch("".join(cell["source"])) if "solution" in cell["metadata"].get("tags", []) else None
        if match:
            words = [{"output_type": "display_data", "metadata": {}, "data": answer_bundle(a, words_file.name)}
                     for a in answers.get(match.group(1), [])]
            code = cell["metadata"].pop(SOLUTION_OUTPUT, [])
            cell["outputs"] = [w for w, a in zip(words, answers.get(match.group(1), [])) if a.before_code] + code + \
                              [w for w, a in zip(words, answers.get(match.group(1), [])) if not a.before_code]
    assert sum(len(c.get("outputs", [])) for c in nb["cells"] if "solution" in c["metadata"].get("tags", [])) >= 8
    path = folder / SHOWN
    path.write_text(dumps(nb), encoding="utf-8")
    return path


def _closed(summary: str) -> bool:
    return summary.endswith(("(click to show)", "(click to show the code and its output)"))


def test_solutions_are_closed_in_jupyterlab(lab) -> None:
    _, driver, root = lab
    _open(driver, _solutions_as_run(root).name)
    solutions = _wait(driver, PAGE_TIMEOUT, "the solutions to render", _solutions)
    assert any(s[0].endswith("(click to show)") for s in solutions), solutions  # answers in words among them
    for summary, is_open, shown, _ in solutions:
        assert _closed(summary) and not is_open and not shown, (summary, is_open, shown[:80])
    details = driver.find_elements("css selector", "details")
    first = next(d for d in details if d.find_element("tag name", "summary").text.startswith("Solution"))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", first)
    first.find_element("tag name", "summary").click()
    opened = _wait(driver, PAGE_TIMEOUT, "the first solution to open with its math typeset",
                   lambda d: next((s for s in _solutions(d) if s[1] and s[3]), None))
    assert opened[2] and "$" not in opened[2], f"raw TeX in the opened solution: {opened[2][:300]}"


def _nbconvert_html(notebook: Path, out: Path) -> Path:
    import jupyter_server_mathjax

    mathjax = Path(jupyter_server_mathjax.__file__).parent / "static" / "MathJax.js"
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(notebook), "--output-dir", str(out),
                    f"--HTMLExporter.mathjax_url={mathjax.as_uri()}?config=TeX-AMS-MML_HTMLorMML-full,Safe"],
                   check=True, capture_output=True)
    return out / (notebook.stem + ".html")


_MATHJAX_DONE_JS = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.Hub) { done(false); return; }
MathJax.Hub.Queue(() => done(true));
"""

def test_solutions_are_closed_in_nbconvert_html(tmp_path: Path) -> None:
    html = _nbconvert_html(_solutions_as_run(tmp_path), tmp_path)
    with chromium(tmp_path / "profile", extra_flags=("--allow-file-access-from-files",)) as driver:
        driver.set_script_timeout(PAGE_TIMEOUT)
        driver.get(html.as_uri())
        _wait(driver, PAGE_TIMEOUT, "MathJax to load", lambda d: d.execute_async_script(_MATHJAX_DONE_JS))
        solutions = [s for s in driver.execute_script(_SOLUTIONS_JS) if s[0].startswith("Solution")]
        assert len(solutions) >= 8, solutions
        for summary, is_open, shown, _ in solutions:
            assert _closed(summary) and not is_open and not shown, (summary, is_open, shown[:80])
        for summary in driver.find_elements("css selector", "details > summary"):
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click()", summary)
        _wait(driver, PAGE_TIMEOUT, "MathJax after opening", lambda d: d.execute_async_script(_MATHJAX_DONE_JS))
        opened = [s for s in driver.execute_script(_SOLUTIONS_JS) if s[0].startswith("Solution")]
        assert all(s[1] and s[2] for s in opened), opened
        assert any(s[3] for s in opened), "no math typeset inside any solution"
        raw = [s[0] for s in opened if "$" in s[2]]
        assert not raw, f"raw TeX left in {raw}"
