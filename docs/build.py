"""Build the book's website from the stored notebooks: ``python3 run.py site [--serve]``.

Nothing is executed: every chapter shows the outputs it was stored with. The
build copies the chapters into a scratch source folder (``build/site-src``,
ignored by git) and changes the copies only in how they are shown:

* a solution (a cell tagged ``solution``, which only calls
  ``solution("N.M")`` and is stored without output) is shown as its parts,
  each collapsed behind a line that says only "Solution N.M" and what the
  part is: its answers in words from ``chapters/solutions/NN-*.md`` (before
  or after its code, as `flowlib.book.solutions` places them), and its code
  part by the closed element the chapter's run kept in the cell's metadata
  (``solution_output``); the solutions files are copied into the site, so
  the chapters' links to them download them;
* each chapter gets, under its title, a line saying how to run it locally;
* the landing page gets the (hidden) table of contents that gives the
  sidebar and the previous / next links;
* links to files of the repository (results, benchmarks) point to the
  site's own copies;
* each bibliography entry gets an anchor named by its arXiv number, and each
  entry of a chapter's *References* links to it.

The site's own pages (results, the trainer's guarantees, speed, the module
guide) are ``docs/*.md``. MathJax is copied from the pinned
``sphinx-mathjax-offline`` package into the site, so no page requests
anything from another host. The build runs with warnings as errors; it
writes ``site/`` (ignored by git) and prints the path of the front page.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import sys
from pathlib import Path

from flowlib.book.notebook_format import SOLUTION_OUTPUT
from flowlib.book.solutions import CALL, Answer, parse_answers, parse_solutions, solutions_file_in

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHAPTERS = ROOT / "chapters"
SOURCE = ROOT / "build" / "site-src"
OUT = ROOT / "site"
FRONT = "00-index"
#: The site's own pages, after the chapters and the bibliography, in this order.
PAGES = ("results", "trainer", "speed", "flowlib")
#: Folders of the repository the pages link to; copied into the site as they are.
COPIED = ("results", "benchmarks", "figures")
SOLUTIONS = CHAPTERS / "solutions"
RUN_LOCALLY = ("*Run this chapter yourself: download the notebook with the download button at the top of the "
               "page, or clone the book and run* `python3 run.py book` *(see the [contents](00-index.ipynb)).*")

_ARXIV = re.compile(r"\[arXiv:(\d{4}\.\d{4,5})\]")
_WIDGET = "application/vnd.jupyter.widget-view+json"


def chapter_files() -> list[Path]:
    """The notebooks of the book: the landing page, the chapters in order, the bibliography."""
    return sorted(CHAPTERS.glob("[0-9][0-9]-*.ipynb")) + [CHAPTERS / "bibliography.ipynb"]


def answers_in_words(chapter: int, folder: Path = SOLUTIONS) -> dict[str, list[Answer]]:
    """Chapter ``chapter``'s answers in words (``NN-*.md`` in ``folder``), by label; none without that file."""
    found = solutions_file_in(folder, chapter, ".md")
    return parse_answers(found.read_text(encoding="utf-8"), str(found)) if found else {}


def _answer_cell(answer: Answer, cell_id: str) -> dict:
    # An HTML block ends at a blank line, so the answer between the tags is read as markdown (with math).
    return _markdown_cell(f'<details class="solution">\n<summary>{answer.summary}</summary>\n\n{answer.text}\n\n'
                          f'</details>\n', cell_id)


def show_solution_collapsed(cell: dict, answers: dict[str, list[Answer]]) -> list[dict]:
    """A solution cell as the site shows it: its parts (``answers``, the chapter's answers in words by label,
    and the element its code part stored), each collapsed behind its summary, nothing else visible."""
    source = "".join(cell["source"])
    match = CALL.fullmatch(source) if cell["cell_type"] == "code" else None
    if match is None:
        raise ValueError(f"a solution's cell holds only its label and solution(...), its answers kept in "
                         f"chapters/solutions/ (flowlib.book.solutions); got a {cell['cell_type']} cell "
                         f"{source[:80]!r}")
    label = match.group(1)
    words = answers.get(label, [])
    stored = cell["metadata"].get(SOLUTION_OUTPUT)
    shown = [_answer_cell(a, f"{cell['id']}-words-{k}") for k, a in enumerate(words) if a.before_code]
    if stored:
        code = {**cell, "outputs": stored, "metadata": {**cell["metadata"]}}
        code["metadata"].pop(SOLUTION_OUTPUT, None)
        code["metadata"]["tags"] = [*code["metadata"].get("tags", []), "remove-input"]
        shown.append(code)
    elif label in _code_labels(int(label.split(".")[0])):
        raise ValueError(f"Solution {label} is stored without the output of its code, so the site would show "
                         f"nothing of it: re-run its chapter (python3 run.py rebuild)")
    shown += [_answer_cell(a, f"{cell['id']}-words-{k}") for k, a in enumerate(words) if not a.before_code]
    return shown


def _code_labels(chapter: int) -> set[str]:
    found = solutions_file_in(SOLUTIONS, chapter, ".py")
    return set(parse_solutions(found.read_text(encoding="utf-8"), str(found))) if found else set()


def without_widget_views(cell: dict) -> dict:
    """Drop the live-widget part of each output (no widget state is stored); the picture and caption stay."""
    for output in cell.get("outputs", []):
        data = output.get("data")
        if data and _WIDGET in data:
            del data[_WIDGET]
    return cell


def _markdown_cell(text: str, cell_id: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": text}


def table_of_contents(chapters: list[Path]) -> str:
    """The hidden toctree of the landing page: every chapter, the bibliography, then the site's pages."""
    entries = [p.stem for p in chapters if p.stem != FRONT] + list(PAGES)
    return "```{toctree}\n:hidden:\n:maxdepth: 1\n\n" + "\n".join(entries) + "\n```\n"


def _repository_links(text: str) -> str:
    """``](../results/x.json)`` and the like point to the site's copy of that file, ``](../docs/results.md)``
    to the site's page, ``](solutions/04-x.md)`` to a download of the site's copy."""
    for folder in COPIED:
        text = text.replace(f"](../{folder}/", f"]({folder}/")
    # The solutions files as downloads (MyST would read a link to a .md file as one to a page of the site).
    text = text.replace("](solutions/", "](path:solutions/")
    for page in PAGES:  # the site's own pages sit beside the chapters
        text = text.replace(f"](../docs/{page}.md)", f"]({page}.md)")
    return text


def _anchor(arxiv: str) -> str:
    return "arxiv-" + arxiv.replace(".", "-")


def with_reference_links(text: str, bibliography: bool) -> str:
    """A list of references with its arXiv entries tied to the bibliography.

    In the bibliography each entry ``- ... [arXiv:N](...)`` gets an anchor ``arxiv-N``; in a chapter's
    *References* each such entry gets a link to that anchor (plain HTML, so it is checked as a link).
    """
    lines = []
    for line in text.splitlines():
        match = _ARXIV.search(line) if line.startswith("- ") else None
        if match and bibliography:
            line = f'- <a id="{_anchor(match.group(1))}"></a>' + line[2:]
        elif match:
            line += f' (<a href="bibliography.html#{_anchor(match.group(1))}">bibliography</a>)'
        lines.append(line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def prepare_notebook(path: Path, toc: str) -> dict:
    """The copy of one stored notebook that the site renders (see the module docstring)."""
    nb = json.loads(path.read_text())
    cells = []
    answers = answers_in_words(int(path.stem[:2])) if path.stem[:2].isdigit() else {}
    for k, cell in enumerate(nb["cells"]):
        cell = without_widget_views(cell)
        if "solution" in cell.get("metadata", {}).get("tags", []):
            cells += show_solution_collapsed(cell, answers)
            continue
        if cell["cell_type"] == "markdown":
            text = _repository_links("".join(cell["source"]))
            if path.stem == "bibliography" or text.lstrip().startswith("## References"):
                text = with_reference_links(text, bibliography=path.stem == "bibliography")
            cell["source"] = text
        cells.append(cell)
        if k == 0 and path.stem not in (FRONT, "bibliography"):
            cells.append(_markdown_cell(RUN_LOCALLY, "site-run-locally"))
    if path.stem == FRONT:
        cells.append(_markdown_cell(toc, "site-contents"))
    nb["cells"] = cells
    return nb


def mathjax_folder() -> Path:
    """MathJax 3 (``tex-chtml.js`` and its woff fonts) as the pinned ``sphinx-mathjax-offline`` installs it."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        folder = Path(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"))
    except PackageNotFoundError:
        folder = None
    if folder is None or not (folder / "tex-chtml.js").is_file():
        raise SystemExit("the site needs MathJax from the package sphinx-mathjax-offline (requirements.txt): "
                         "run python3 run.py site, which installs it")
    return folder


def prepare(source: Path = SOURCE) -> Path:
    """Write the site's source folder: conf.py, pages, static files, prepared notebooks."""
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("build.py", "__pycache__"))
    shutil.copytree(mathjax_folder(), source / "_static" / "mathjax")
    shutil.copy(ROOT / "flowlib" / "README.md", source / "_flowlib-layout.md")  # included by flowlib.md
    for folder in COPIED:  # a link to an existing file becomes a download link
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SOLUTIONS, source / "solutions", ignore=shutil.ignore_patterns("__pycache__"))
    for record in (source / "benchmarks" / "results").glob("*.md"):  # a page needs a title
        record.write_text(f"# Benchmark record: {record.stem}\n\n" + record.read_text())
    chapters = chapter_files()
    toc = table_of_contents(chapters)
    for path in chapters:
        (source / path.name).write_text(json.dumps(prepare_notebook(path, toc), indent=1, ensure_ascii=False))
    return source


def build(out: Path = OUT, source: Path = SOURCE) -> Path:
    """Prepare the source and build the HTML with warnings as errors; the path of the front page.

    Sphinx writes beside the source (myst-nb keeps its ``jupyter_execute`` folder next to the HTML folder),
    then the finished HTML moves to ``out``.
    """
    from sphinx.cmd.build import build_main

    prepare(source)
    html = source.parent / "site-html"
    for folder in (html, out):
        if folder.exists():
            shutil.rmtree(folder)
    status = build_main(["-W", "--keep-going", "-q", "-b", "html", str(source), str(html)])
    if status:
        raise SystemExit(f"the site did not build (sphinx exit status {status}); the warnings are above")
    shutil.move(html, out)
    for notebook in chapter_files():  # the download button offers the stored notebook, not the site's copy
        shutil.copy(notebook, out / "_sources" / notebook.name)
    return out / "index.html"


def serve(folder: Path, port: int = 8000) -> None:
    """Serve ``folder`` on 127.0.0.1 until Ctrl-C."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"Serving the book at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 run.py site", description="Build the book's website into site/.")
    p.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1 and print the URL")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    front = build()
    print(f"Built the site: {front}", flush=True)
    if args.serve:
        serve(OUT, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
