"""The exercises' code solutions: kept out of the chapters, run in them, shown only when asked.

A chapter's code solutions live in one Python file beside it,
``chapters/solutions/NN-<chapter>.py``, one section per solution, each opened
by a line ``# %% Solution N.K`` (the cell marker editors such as VS Code and
Jupytext read). The chapter's solution cell holds only its label and a call::

    # Solution 4.2
    solution("4.2")

`solution` runs the section in the chapter's namespace (so it uses the
chapter's models and data, as code typed into the cell would), holds back
everything it prints and draws, and shows it, with the code, inside a closed
``<details>`` element: "Solution 4.2 (click to show the code and its
output)". JupyterLab and nbconvert's HTML keep the element closed, where a
code cell written out would show its source and printed output in full. On
GitHub the cell shows only its two lines; GitHub's notebook view is reported
to show what is inside a ``<details>`` element (not checked here).
A solution shows its results by printing them (a last bare expression is
not echoed, as it would be in a cell); what it writes to stderr goes into the
element too, and a figure it draws (without ``plt.show()``, which would show
it outside) is shown inside it. A solution that fails raises, after printing
what it had printed, so the chapter's test run fails.

>>> text = "'''Solutions of chapter 9.'''\\n# %% Solution 9.1\\nx = 2\\nprint(x * 21)\\n\\n# %% Solution 9.2\\n"
>>> sections = parse_solutions(text + "print('two')\\n")
>>> list(sections), sections["9.1"].code
(['9.1', '9.2'], 'x = 2\\nprint(x * 21)')
>>> ran = run_solution(sections["9.1"], {})
>>> ran.output, ran.figures
('42\\n', [])
>>> html = solution_html("9.1", sections["9.1"].code, ran)
>>> html.startswith('<details class="solution"><summary>Solution 9.1 (click to show the code and its output)</summary>')
True
"""

from __future__ import annotations

import ast
import base64
import html
import io
import re
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .readability import check_readable

__all__ = ["SolutionSection", "SolutionRun", "CALL", "call_source", "solutions_folders", "solutions_file",
           "parse_solutions", "run_solution", "solution_html", "solution"]

#: The line that opens a solution's section in a solutions file.
SECTION = re.compile(r"^# %% Solution (\d+\.\d+)[ \t]*$", re.M)
_ANY_MARKER = re.compile(r"\s*#\s*%%")
_LABEL = re.compile(r"\d+\.\d+")
#: A chapter's solution cell: its label, then the call that runs and shows the solution (`call_source`).
CALL = re.compile(r'# Solution (\d+\.\d+)\nsolution\("\1"\)\n?')


def call_source(label: str) -> str:
    """The source of chapter's solution cell ``label``: nothing but the label and the call.

    >>> print(call_source("4.2"))
    # Solution 4.2
    solution("4.2")
    >>> bool(CALL.fullmatch(call_source("4.2")))
    True
    """
    return f'# Solution {label}\nsolution("{label}")'


@dataclass(frozen=True)
class SolutionSection:
    """One solution's code, and the line of its solutions file where the code starts (for tracebacks)."""
    code: str
    first_line: int = 1
    path: str = "<solutions>"


@dataclass
class SolutionRun:
    """What running a solution printed, and the PNG bytes of each figure it drew."""
    output: str
    figures: list[bytes] = field(default_factory=list)


def solutions_folders(start: Path | None = None) -> list[Path]:
    """Where the solutions files may be, in the order they are looked for: ``solutions/`` beside the running
    chapter (the current folder), ``chapters/solutions`` of the book's checkout the current folder lies in,
    and that of the checkout flowlib is installed from (an editable install, as ``run.py`` makes)."""
    here = (start or Path.cwd()).resolve()
    checkouts = [p for p in (here, *here.parents) if (p / "run.py").is_file() and (p / "flowlib").is_dir()][:1]
    candidates = [here / "solutions"] + [p / "chapters" / "solutions" for p in checkouts]
    candidates.append(Path(__file__).resolve().parents[2] / "chapters" / "solutions")
    return list(dict.fromkeys(candidates))


def solutions_file(chapter: int, folders: list[Path] | None = None) -> Path:
    """``NN-*.py``, chapter ``chapter``'s solutions: the first of `solutions_folders` that holds one."""
    folders = solutions_folders() if folders is None else folders
    for folder in folders:
        found = sorted(folder.glob(f"{chapter:02d}-*.py"))
        if len(found) > 1:
            raise ValueError(f"expected one solutions file {chapter:02d}-*.py in {folder}, found {len(found)}")
        if found:
            return found[0]
    raise ValueError(f"expected a solutions file {chapter:02d}-*.py in {' or '.join(map(str, folders))}; found "
                     f"none (run the chapter from the book's chapters/ folder)")


def parse_solutions(text: str, path: str = "<solutions>") -> dict[str, SolutionSection]:
    """Each ``# %% Solution N.K`` section of a solutions file's text, by label, in order (code without the
    marker and trailing blank lines). Raises ``ValueError`` for a label given twice, no section at all, a
    marker line of another form, or code before the first marker (only a docstring and comments may be there)."""
    for number, line in enumerate(text.splitlines(), 1):
        if _ANY_MARKER.match(line) and not SECTION.fullmatch(line):
            raise ValueError(f"{path}, line {number}: expected a marker '# %% Solution N.K', got {line!r}")
    markers = list(SECTION.finditer(text))
    if not markers:
        raise ValueError(f"expected sections opened by '# %% Solution N.K' in {path}, found none")
    if _code_before(text[:markers[0].start()]):
        raise ValueError(f"{path}: code before the first '# %% Solution N.K' would never run; "
                         f"put it in the solution that needs it")
    sections: dict[str, SolutionSection] = {}
    for i, marker in enumerate(markers):
        label = marker.group(1)
        if label in sections:
            raise ValueError(f"solution {label} appears twice in {path}")
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        chunk = text[marker.end():end]
        start = marker.end() + len(chunk) - len(chunk.lstrip("\n"))  # where the code's first line begins
        sections[label] = SolutionSection(chunk.strip("\n").rstrip(), text.count("\n", 0, start) + 1, path)
    return sections


def _code_before(head: str) -> bool:
    """Whether ``head`` (a file's text before its first marker) holds statements other than one docstring."""
    body = ast.parse(head).body
    return len(body) > 1 or (len(body) == 1 and not (isinstance(body[0], ast.Expr)
                                                     and isinstance(body[0].value, ast.Constant)
                                                     and isinstance(body[0].value.value, str)))


def _figure_numbers() -> set[int]:
    """The numbers of the open matplotlib figures (none if pyplot was never imported: nothing was drawn)."""
    return set(sys.modules["matplotlib.pyplot"].get_fignums()) if "matplotlib.pyplot" in sys.modules else set()


def _close_figures(numbers: set[int]) -> None:
    for number in numbers:
        sys.modules["matplotlib.pyplot"].close(number)


def _new_figures(before: set[int]) -> list[bytes]:
    """PNGs of the matplotlib figures opened since ``before`` (their numbers), closed afterwards."""
    new = sorted(_figure_numbers() - before)
    if not new:
        return []
    import matplotlib.pyplot as plt

    pictures = []
    for number in new:
        figure = plt.figure(number)
        if getattr(plt.show, "checks_readability", False):  # the test command's check (book.readability)
            try:
                check_readable(figure)
            except ValueError:
                _close_figures(_figure_numbers() - before)
                raise
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
        plt.close(figure)
        pictures.append(buffer.getvalue())
    return pictures


def run_solution(section: SolutionSection, namespace: dict[str, Any]) -> SolutionRun:
    """Run ``section`` in ``namespace``, holding back what it prints (stdout and stderr) and draws.

    On an error, what it printed goes to the real stdout before the error propagates.
    """
    before = _figure_numbers()
    # Blank lines in front, so a traceback names the line of the solutions file.
    code = compile("\n" * (section.first_line - 1) + section.code, section.path, "exec", dont_inherit=True)
    printed = io.StringIO()
    try:
        with redirect_stdout(printed), redirect_stderr(printed):
            exec(code, namespace)
    except BaseException:
        sys.stdout.write(printed.getvalue())
        _close_figures(_figure_numbers() - before)
        raise
    return SolutionRun(printed.getvalue(), _new_figures(before))


def solution_html(label: str, code: str, ran: SolutionRun, source: str = "") -> str:
    """The closed ``<details>`` element that shows a solution's code, its output and its figures when opened."""
    parts = [f'<details class="solution"><summary>Solution {label} (click to show the code and its output)</summary>']
    if source:
        parts.append(f"<p>The code, from <code>{html.escape(source)}</code> (copy it into a cell to change it):</p>")
    parts.append(f"<pre><code>{html.escape(code, quote=False)}</code></pre>")
    if ran.output:
        parts.append(f"<p>Its output:</p>\n<pre>{html.escape(ran.output.rstrip(), quote=False)}</pre>")
    for png in ran.figures:
        parts.append(f'<img alt="the figure of solution {label}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode("ascii")}"/>')
    parts.append("</details>")
    return "\n".join(parts)


def solution(label: str, namespace: dict[str, Any] | None = None) -> None:
    """Run solution ``label`` ("N.K") of chapter N in the notebook's namespace (or ``namespace``) and show it
    collapsed (see the module docstring). Outside IPython it prints the code and what it printed."""
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise ValueError(f"expected a solution label such as '4.2', got {label!r}")
    from IPython import get_ipython
    from IPython.display import display

    path = solutions_file(int(label.split(".")[0]))
    sections = parse_solutions(path.read_text(encoding="utf-8"), str(path))
    if label not in sections:
        raise ValueError(f"expected solution {label} in {path}, which has {', '.join(sections)}")
    shell = get_ipython()
    if namespace is None:  # the notebook's namespace; else (a script) the caller's module's
        namespace = shell.user_ns if shell is not None else sys._getframe(1).f_globals
    shown = f"chapters/solutions/{path.name}"
    if shell is None:
        ran = run_solution(sections[label], namespace)
        print(f"Solution {label} ({shown}):\n{sections[label].code}\n--- its output:\n{ran.output}", end="")
        return
    status = display({"text/plain": f"Solution {label}: running"}, raw=True, display_id=True)
    try:
        ran = run_solution(sections[label], namespace)
    except BaseException:
        status.update({"text/plain": f"Solution {label}: failed (the error is below)"}, raw=True)
        raise
    status.update({"text/html": solution_html(label, sections[label].code, ran, shown),
                   "text/plain": f"Solution {label}: its code is in {shown}"}, raw=True)
