"""The code solutions kept in ``chapters/solutions/`` (flowlib.book.solutions): run where they are called, shown
only inside a closed element, and stored from the code the files hold now.

The chapters' nbval run executes every ``solution("N.K")`` cell in the chapter's namespace; these tests check
the stored chapters and files against each other, and the runner's behaviour on a failing or drawing solution.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from flowlib.book.solutions import (CALL, SolutionSection, parse_solutions, run_solution, solution,
                                    solution_html, solutions_file, solutions_folder)

CHAPTERS_DIR = Path(__file__).resolve().parent.parent / "chapters"
SOLUTIONS_DIR = CHAPTERS_DIR / "solutions"
SOLUTION_FILES = sorted(SOLUTIONS_DIR.glob("[0-9][0-9]-*.py"))


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _solution_cells(chapter: Path) -> list[dict]:
    cells = json.loads(chapter.read_text(encoding="utf-8"))["cells"]
    return [c for c in cells if c["cell_type"] == "code" and "solution" in c["metadata"].get("tags", [])]


def test_there_are_solution_files():
    assert SOLUTION_FILES, f"no solutions file in {SOLUTIONS_DIR}"


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.stem)
def test_a_chapter_calls_each_of_its_solutions_once_in_order(path: Path):
    chapter = CHAPTERS_DIR / (path.stem + ".ipynb")
    assert chapter.exists(), f"{path.name} belongs to no chapter (expected {chapter.name})"
    cells = _solution_cells(chapter)
    called = [CALL.fullmatch(_source(c)) for c in cells]
    assert all(called), (f"{chapter.name}: every code solution calls solution('N.K') once its code is in "
                         f"{path.name}; these do not: {[_source(c)[:40] for c, m in zip(cells, called) if not m]}")
    sections = parse_solutions(path.read_text(encoding="utf-8"), str(path))
    assert [m.group(1) for m in called] == list(sections)
    number = int(path.name[:2])
    assert all(label.startswith(f"{number}.") for label in sections), f"{path.name} holds another chapter's solution"


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.stem)
def test_each_stored_solution_is_closed_and_shows_the_code_of_its_file(path: Path):
    """Stored from the file as it is now (an edited solution is re-run before it is committed), and nothing of
    it outside the closed element: no stream output, no figure beside it."""
    sections = parse_solutions(path.read_text(encoding="utf-8"), str(path))
    for cell in _solution_cells(CHAPTERS_DIR / (path.stem + ".ipynb")):
        label = CALL.fullmatch(_source(cell)).group(1)
        outputs = cell["outputs"]
        assert [o["output_type"] for o in outputs] == ["display_data"], f"solution {label} stored {outputs}"
        shown = "".join(outputs[0]["data"]["text/html"])
        assert shown.startswith(f"<details><summary>Solution {label} (click to show the code and its output)"
                                f"</summary>") and shown.endswith("</details>"), shown[:120]
        assert shown.count("<details") == 1 and shown.count("</details>") == 1
        assert html.escape(sections[label].code, quote=False) in shown, (
            f"solution {label} was stored from other code than {path.name} holds: re-run the chapter")
        assert set(outputs[0]["data"]) == {"text/html", "text/plain"}
        assert not re.search(r"\d\.\d", outputs[0]["data"]["text/plain"][0].replace(label, "")), \
            "the plain-text view gives a number away"


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.stem)
def test_solutions_draw_into_their_element(path: Path):
    # plt.show() would put the figure outside the closed element, in view.
    assert "plt.show(" not in path.read_text(encoding="utf-8"), f"{path.name}: a solution calls plt.show()"


def test_a_failing_solution_raises_at_its_line_of_the_file_after_printing(tmp_path, capsys):
    text = '"""Solutions."""\n\n# %% Solution 9.1\nprint("before")\nvalue = 1 / zero\n'
    section = parse_solutions(text, str(tmp_path / "09-x.py"))["9.1"]
    with pytest.raises(ZeroDivisionError) as error:
        run_solution(section, {"zero": 0})
    assert capsys.readouterr().out == "before\n"
    last = error.traceback[-1]
    assert (str(last.path), last.lineno + 1) == (str(tmp_path / "09-x.py"), 5)


def test_a_drawn_figure_is_held_back_as_a_png():
    plt = pytest.importorskip("matplotlib.pyplot")
    plt.close("all")
    section = SolutionSection('figure, axes = plt.subplots()\naxes.plot([0, 1], [1, 0])\nprint("drawn")')
    ran = run_solution(section, {"plt": plt})
    assert ran.output == "drawn\n" and len(ran.figures) == 1 and ran.figures[0].startswith(b"\x89PNG\r\n\x1a\n")
    assert plt.get_fignums() == []
    shown = solution_html("9.1", section.code, ran)
    assert shown.count('src="data:image/png;base64,') == 1 and shown.endswith("</details>")


def test_bad_labels_and_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="expected a solution label such as '4.2', got '4'"):
        solution("4")
    with pytest.raises(ValueError, match="expected a solutions folder"):
        solutions_folder(tmp_path)
    (tmp_path / "solutions").mkdir()
    with pytest.raises(ValueError, match=r"expected one solutions file 07-\*\.py .* found 0"):
        solutions_file(7, tmp_path / "solutions")
    with pytest.raises(ValueError, match="appears twice"):
        parse_solutions("# %% Solution 1.1\nx = 1\n# %% Solution 1.1\nx = 2\n")
    with pytest.raises(ValueError, match="found none"):
        parse_solutions("x = 1\n")


def test_solution_runs_in_the_callers_namespace(monkeypatch, tmp_path):
    folder = tmp_path / "solutions"
    folder.mkdir()
    (folder / "03-a-chapter.py").write_text("# %% Solution 3.1\nanswer = question * 2\nprint(answer)\n")
    monkeypatch.chdir(tmp_path)
    shown = []
    display = pytest.importorskip("IPython.display")
    monkeypatch.setattr(display, "display", lambda bundle, raw, display_id=False: shown.append(bundle))
    namespace = {"solution": solution, "question": 21}
    exec('solution("3.1")', namespace)  # the caller's globals, as a notebook cell's are
    assert namespace["answer"] == 42
    assert shown[-1]["text/html"].startswith("<details><summary>Solution 3.1 (click to show")
    assert "<pre>42</pre>" in shown[-1]["text/html"] and "42" not in shown[-1]["text/plain"]
