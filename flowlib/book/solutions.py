"""The exercises' solutions: kept out of the chapters, run in them, shown only when asked.

A chapter stores no answer, in any view: its solution cells hold only a
label and a call, and are stored without their output::

    # Solution 4.2
    solution("4.2")

GitHub, nbconvert and JupyterLab all show that cell as those two lines and
nothing else (whether GitHub's notebook view keeps a ``<details>`` element
closed cannot be relied on, so nothing hangs on it). The answers live beside
the chapter, in ``chapters/solutions/``:

* ``NN-<chapter>.md``, the answers in words, one section per part, each
  opened by a heading ``## Solution N.K`` (shown before the solution's code)
  or ``## Solution N.K, <what it is>`` (shown after it, such as
  ``## Solution 4.4, discussion``); GitHub renders the file, math included;
* ``NN-<chapter>.py``, the code solutions, one section per solution, each
  opened by a line ``# %% Solution N.K`` (the cell marker editors such as
  VS Code and Jupytext read).

Running the cell shows each part of solution N.K closed: an answer in words
as a ``<details>`` element whose summary reads "Solution 4.2 (click to
show)", the Markdown and math inside rendered once opened; the code, run in
the chapter's namespace (so it uses the chapter's models and data, as code
typed into the cell would), with everything it prints and draws held back
and shown inside one closed element, "Solution 4.2 (click to show the code
and its output)". The chapter's stored copy keeps that element in the cell's
metadata (``solution_output``, see `flowlib.book.notebook_format`), where no
view shows it and the book's website finds it.

A code solution shows its results by printing them (a last bare expression
is not echoed, as it would be in a cell); what it writes to stderr goes into
the element too, and a figure it draws (without ``plt.show()``, which would
show it outside) is shown inside it. A solution that fails raises, after
printing what it had printed, so the chapter's test run fails.

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
>>> words = "# Answers\\n\\n## Solution 9.1\\n\\nIt is $2 \\\\times 21$.\\n\\n## Solution 9.1, discussion\\n\\nAs printed.\\n"
>>> [(a.summary, a.text, a.before_code) for a in parse_answers(words)["9.1"]]
[('Solution 9.1', 'It is $2 \\\\times 21$.', True), ('Solution 9.1, discussion', 'As printed.', False)]
>>> print(answer_bundle(parse_answers(words)["9.1"][0])["text/markdown"])
<details><summary>Solution 9.1 (click to show)</summary>
<BLANKLINE>
It is $2 \\times 21$.
<BLANKLINE>
</details>
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

__all__ = ["SolutionSection", "SolutionRun", "Answer", "CALL", "call_source", "solutions_folders", "solutions_file",
           "solutions_file_in", "parse_solutions", "parse_answers", "run_solution", "solution_html", "answer_bundle",
           "solution"]

#: The line that opens a solution's section in a solutions file.
SECTION = re.compile(r"^# %% Solution (\d+\.\d+)[ \t]*$", re.M)
_ANY_MARKER = re.compile(r"\s*#\s*%%")
_LABEL = re.compile(r"\d+\.\d+")
#: The heading that opens an answer in words in a chapter's ``NN-<chapter>.md``: its summary line.
ANSWER = re.compile(r"^## (Solution (\d+\.\d+)(?:, [^\n]*\S)?)[ \t]*$", re.M)
_ANY_ANSWER = re.compile(r"#+\s*Solution\b")
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


@dataclass(frozen=True)
class Answer:
    """One part of a solution's answer in words: its summary ("Solution 4.4, discussion") and its Markdown."""
    label: str
    summary: str
    text: str

    @property
    def before_code(self) -> bool:
        """A part headed by the bare label comes before the solution's code; one with a qualifier after it."""
        return self.summary == f"Solution {self.label}"


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


def solutions_file(chapter: int, folders: list[Path] | None = None, suffix: str = ".py") -> Path:
    """``NN-*.py`` (or ``NN-*.md``, `suffix`), chapter ``chapter``'s code solutions (answers in words): the
    first of `solutions_folders` that holds one."""
    folders = solutions_folders() if folders is None else folders
    for folder in folders:
        found = solutions_file_in(folder, chapter, suffix)
        if found is not None:
            return found
    raise ValueError(f"expected a solutions file {chapter:02d}-*{suffix} in {' or '.join(map(str, folders))}; "
                     f"found none (run the chapter from the book's chapters/ folder)")


def solutions_file_in(folder: Path, chapter: int, suffix: str = ".py") -> Path | None:
    """``folder``'s ``NN-*<suffix>`` for chapter ``chapter``, None if it has none (`ValueError` if several).

    >>> solutions_file_in(Path(__file__).parents[2] / "chapters" / "solutions", 4, ".md").name
    '04-images-as-data.md'
    """
    found = sorted(folder.glob(f"{chapter:02d}-*{suffix}"))
    if len(found) > 1:
        raise ValueError(f"expected one solutions file {chapter:02d}-*{suffix} in {folder}, found {len(found)}")
    return found[0] if found else None


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


def parse_answers(text: str, path: str = "<answers>") -> dict[str, list[Answer]]:
    """The answers in words of a chapter's ``NN-<chapter>.md``, by label, each label's parts in file order.

    Each part runs from its heading (``## Solution N.K`` or ``## Solution N.K, <what it is>``) to the next
    heading of that form; what comes before the first is the file's introduction. Raises ``ValueError`` for a
    heading of another form ("### Solution 4.1", "## Solution 4.1."), a summary given twice, or an empty part.
    """
    for number, line in enumerate(text.splitlines(), 1):
        if _ANY_ANSWER.match(line) and not ANSWER.fullmatch(line):
            raise ValueError(f"{path}, line {number}: expected a heading '## Solution N.K' or "
                             f"'## Solution N.K, <what it is>', got {line!r}")
    headings = list(ANSWER.finditer(text))
    answers: dict[str, list[Answer]] = {}
    seen: set[str] = set()
    for i, heading in enumerate(headings):
        summary, label = heading.group(1), heading.group(2)
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        body = text[heading.end():end].strip()
        if summary in seen:
            raise ValueError(f"'{summary}' appears twice in {path}")
        if not body:
            raise ValueError(f"'{summary}' in {path} has no text")
        seen.add(summary)
        answers.setdefault(label, []).append(Answer(label, summary, body))
    return answers


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


def answer_bundle(answer: Answer, source: str = "") -> dict[str, str]:
    """The closed ``<details>`` element that shows an answer in words when opened, as a display bundle: the
    Markdown (an HTML block ends at a blank line, so the answer between the tags is read as Markdown, math
    included) and a plain-text line that gives nothing away."""
    element = f"<details><summary>{answer.summary} (click to show)</summary>\n\n{answer.text}\n\n</details>"
    return {"text/markdown": element, "text/plain": f"{answer.summary}: " + (f"in {source}" if source else "hidden")}


def _files(chapter: int) -> tuple[Path | None, Path | None]:
    """Chapter ``chapter``'s code solutions and answers in words, both from the first of `solutions_folders`
    that holds either (so a chapter's copy never mixes its own files with the book's)."""
    folders = solutions_folders()
    for folder in folders:
        code, words = solutions_file_in(folder, chapter, ".py"), solutions_file_in(folder, chapter, ".md")
        if code is not None or words is not None:
            return code, words
    raise ValueError(f"expected a solutions file {chapter:02d}-*.py or {chapter:02d}-*.md in "
                     f"{' or '.join(map(str, folders))}; found none (run the chapter from the book's chapters/ "
                     f"folder)")


def solution(label: str, namespace: dict[str, Any] | None = None) -> None:
    """Show solution ``label`` ("N.K") of chapter N, every part closed (see the module docstring): its answers
    in words, and its code run in the notebook's namespace (or ``namespace``). Outside IPython it prints them."""
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise ValueError(f"expected a solution label such as '4.2', got {label!r}")
    from IPython import get_ipython
    from IPython.display import display

    chapter = int(label.split(".")[0])
    code_path, words_path = _files(chapter)
    sections = parse_solutions(code_path.read_text(encoding="utf-8"), str(code_path)) if code_path else {}
    answers = parse_answers(words_path.read_text(encoding="utf-8"), str(words_path)).get(label, []) \
        if words_path else []
    if label not in sections and not answers:
        places = " or ".join(str(p) for p in (code_path, words_path) if p)
        raise ValueError(f"expected solution {label} in {places}, which hold "
                         f"{', '.join(sections) or 'no code solution'}; its answer in words would be a section "
                         f"'## Solution {label}' of the .md file")
    shell = get_ipython()
    if namespace is None:  # the notebook's namespace; else (a script) the caller's module's
        namespace = shell.user_ns if shell is not None else sys._getframe(1).f_globals
    words_shown = f"chapters/solutions/{words_path.name}" if words_path else ""
    code_shown = f"chapters/solutions/{code_path.name}" if code_path else ""

    def show_words(before: bool) -> None:
        for answer in answers:
            if answer.before_code == before:
                if shell is None:
                    print(f"{answer.summary} ({words_shown}):\n{answer.text}")
                else:
                    display(answer_bundle(answer, words_shown), raw=True)

    show_words(before=True)
    try:
        if label not in sections:
            return
        if shell is None:
            ran = run_solution(sections[label], namespace)
            print(f"Solution {label} ({code_shown}):\n{sections[label].code}\n--- its output:\n{ran.output}",
                  end="")
            return
        status = display({"text/plain": f"Solution {label}: running"}, raw=True, display_id=True)
        try:
            ran = run_solution(sections[label], namespace)
        except BaseException:
            status.update({"text/plain": f"Solution {label}: failed (the error is below)"}, raw=True)
            raise
        status.update({"text/html": solution_html(label, sections[label].code, ran, code_shown),
                       "text/plain": f"Solution {label}: its code is in {code_shown}"}, raw=True)
    finally:  # an answer in words after the code is shown even if the code failed (its error is below it)
        show_words(before=False)
