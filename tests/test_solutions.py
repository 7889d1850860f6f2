"""The solutions kept in ``chapters/solutions/`` (flowlib.book.solutions): answers in words (``NN-*.md``) and
code (``NN-*.py``), shown only inside closed elements where they are called, stored from the files as they are
now, and nothing of them in any view of a stored chapter (GitHub shows sources and outputs).

The chapters' nbval run executes every ``solution("N.K")`` cell in the chapter's namespace; these tests check
the stored chapters and files against each other, and the runner's behaviour on a failing or drawing solution.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from flowlib.book.solutions import (CALL, SolutionSection, answer_bundle, parse_answers, parse_solutions,
                                    run_solution, solution, solution_html, solutions_file)

CHAPTERS_DIR = Path(__file__).resolve().parent.parent / "chapters"
SOLUTIONS_DIR = CHAPTERS_DIR / "solutions"
SOLUTION_FILES = sorted(SOLUTIONS_DIR.glob("[0-9][0-9]-*.py"))
ANSWER_FILES = sorted(SOLUTIONS_DIR.glob("[0-9][0-9]-*.md"))


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
    words = path.with_suffix(".md")
    answers = parse_answers(words.read_text(encoding="utf-8"), str(words)) if words.exists() else {}
    labels = sorted(set(sections) | set(answers), key=lambda label: int(label.split(".")[1]))
    assert [m.group(1) for m in called] == labels
    number = int(path.name[:2])
    assert all(label.startswith(f"{number}.") for label in labels), f"{path.name} holds another chapter's solution"


@pytest.mark.parametrize("path", ANSWER_FILES, ids=lambda p: p.stem)
def test_each_answers_file_belongs_to_a_chapter_and_its_solutions_file(path: Path):
    assert (CHAPTERS_DIR / (path.stem + ".ipynb")).exists(), f"{path.name} belongs to no chapter"
    answers = parse_answers(path.read_text(encoding="utf-8"), str(path))
    assert answers, f"{path.name} holds no '## Solution N.K' section"
    for label, parts in answers.items():
        assert label.startswith(f"{int(path.name[:2])}."), f"{path.name} holds another chapter's solution {label}"
        assert sum(p.before_code for p in parts) <= 1, f"{path.name}: solution {label} has two parts before its code"


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.stem)
def test_nothing_of_an_answer_shows_in_a_stored_chapter(path: Path):
    """What GitHub, nbconvert and JupyterLab show of a stored chapter (cell sources and outputs, whatever the
    metadata say) holds no answer in words, no solution's code and no solution's output."""
    chapter = json.loads((CHAPTERS_DIR / (path.stem + ".ipynb")).read_text(encoding="utf-8"))
    shown = []
    for cell in chapter["cells"]:
        shown.append(_source(cell))
        for output in cell.get("outputs", []):
            shown.append(json.dumps(output))
            shown += ["".join(v) if isinstance(v, list) else str(v) for v in output.get("data", {}).values()]
            shown.append("".join(output.get("text", "")))
    shown = " ".join(" ".join(shown).split())  # whitespace folded
    words = path.with_suffix(".md")
    answers = parse_answers(words.read_text(encoding="utf-8"), str(words)) if words.exists() else {}
    for label, parts in answers.items():
        for part in parts:
            assert " ".join(part.text.split())[:60] not in shown, f"{part.summary}'s answer shows in the chapter"
    for label, section in parse_solutions(path.read_text(encoding="utf-8"), str(path)).items():
        assert " ".join(section.code.split()) not in shown, f"solution {label}'s code shows in the chapter"
    for cell in _solution_cells(CHAPTERS_DIR / (path.stem + ".ipynb")):
        assert cell["outputs"] == [], f"{_source(cell)!r} is stored with outputs, which every view shows"


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.stem)
def test_each_stored_solution_is_closed_and_shows_the_code_of_its_file(path: Path):
    """Stored from the file as it is now (an edited solution is re-run before it is committed), and nothing of
    it outside the closed element: no stream output, no figure beside it."""
    sections = parse_solutions(path.read_text(encoding="utf-8"), str(path))
    for cell in _solution_cells(CHAPTERS_DIR / (path.stem + ".ipynb")):
        label = CALL.fullmatch(_source(cell)).group(1)
        if label not in sections:
            assert "solution_output" not in cell["metadata"], f"solution {label} has no code, yet stores its output"
            continue
        outputs = cell["metadata"].get("solution_output", [])
        assert [o["output_type"] for o in outputs] == ["display_data"], f"solution {label} stored {outputs}"
        shown = "".join(outputs[0]["data"]["text/html"])
        assert shown.startswith(f'<details class="solution"><summary>Solution {label} (click to show the code and '
                                f'its output)</summary>') and shown.endswith("</details>"), shown[:120]
        assert shown.count("<details") == 1 and shown.count("</details>") == 1
        assert html.escape(sections[label].code, quote=False) in shown, (
            f"solution {label} was stored from other code than {path.name} holds: re-run the chapter")
        assert set(outputs[0]["data"]) == {"text/html", "text/plain"}
        assert not re.search(r"\d\.\d", outputs[0]["data"]["text/plain"][0].replace(label, "")), \
            "the plain-text view gives a number away"


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.stem)
def test_solutions_print_and_draw_into_their_element(path: Path):
    # plt.show(), fig.show() and display() would put their output outside the closed element, in view.
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\.show\(|\bdisplay\(", text), f"{path.name}: a solution shows something outside its element"


def test_bad_answers_files_are_named():
    with pytest.raises(ValueError, match="line 4: expected a heading '## Solution N.K'.*'### Solution 1.2'"):
        parse_answers("## Solution 1.1\n\nOne.\n### Solution 1.2\n\nTwo.\n")
    with pytest.raises(ValueError, match="line 1: .*'## Solution 1.1.'"):  # a stray dot would make it text
        parse_answers("## Solution 1.1.\n\nOne.\n")
    with pytest.raises(ValueError, match="'Solution 1.1' appears twice"):
        parse_answers("## Solution 1.1\n\nOne.\n\n## Solution 1.1\n\nAgain.\n")
    with pytest.raises(ValueError, match="'Solution 1.1, discussion' in .* has no text"):
        parse_answers("## Solution 1.1, discussion\n\n## Solution 1.2\n\nTwo.\n")
    intro = "# Solutions\n\nThe solutions of a chapter.\n\n## Solution 1.1, what it shows\n\nOne.\n"
    (part,) = parse_answers(intro)["1.1"]
    assert (part.summary, part.text, part.before_code) == ("Solution 1.1, what it shows", "One.", False)
    bundle = answer_bundle(part, "chapters/solutions/01-x.md")
    assert bundle == {"text/markdown": "<details><summary>Solution 1.1, what it shows (click to show)</summary>"
                                       "\n\nOne.\n\n</details>",
                      "text/plain": "Solution 1.1, what it shows: in chapters/solutions/01-x.md"}


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


def test_bad_labels_files_and_markers_are_named(tmp_path):
    with pytest.raises(ValueError, match="expected a solution label such as '4.2', got '4'"):
        solution("4")
    with pytest.raises(ValueError, match=r"expected a solutions file 07-\*\.py in .*; found none"):
        solutions_file(7, [tmp_path / "solutions", tmp_path])
    with pytest.raises(ValueError, match="appears twice"):
        parse_solutions("# %% Solution 1.1\nx = 1\n# %% Solution 1.1\nx = 2\n")
    with pytest.raises(ValueError, match="found none"):
        parse_solutions("x = 1\n")
    # a marker slightly off would silently merge two solutions; code above the first marker would never run
    with pytest.raises(ValueError, match="line 3: expected a marker '# %% Solution N.K', got '#%% Solution 1.2'"):
        parse_solutions("# %% Solution 1.1\nx = 1\n#%% Solution 1.2\nx = 2\n")
    with pytest.raises(ValueError, match="code before the first"):
        parse_solutions("import os\n# %% Solution 1.1\nprint(os.sep)\n")
    assert list(parse_solutions('"""Doc."""\n# a comment\n# %% Solution 1.1\nx = 1\n')) == ["1.1"]


def test_the_first_folder_holding_the_file_wins(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "05-x.py").write_text("# %% Solution 5.1\n")
    assert solutions_file(5, [tmp_path / "a", tmp_path / "b"]) == tmp_path / "b" / "05-x.py"


class _Handle:
    def __init__(self, bundle: dict) -> None:
        self.shown = [bundle]

    def update(self, bundle: dict, raw: bool) -> None:
        self.shown.append(bundle)


@pytest.fixture
def notebook(monkeypatch, tmp_path):
    """A fake IPython: its namespace, and the display handles `solution` made; the chapter folder as cwd."""
    IPython = pytest.importorskip("IPython")
    folder = tmp_path / "solutions"
    folder.mkdir()
    (folder / "03-a-chapter.md").write_text("# Answers\n\n## Solution 3.1\n\nDouble it.\n\n"
                                            "## Solution 3.1, discussion\n\nAs printed.\n\n"
                                            "## Solution 3.2, discussion\n\nIt fails.\n\n"
                                            "## Solution 3.3\n\nIn words alone.\n")
    (folder / "03-a-chapter.py").write_text('"""Solutions."""\n\n# %% Solution 3.1\nanswer = question * 2\n'
                                            'print(answer)\nprint("a warning", file=sys.stderr)\n\n'
                                            '# %% Solution 3.2\nprint("half done")\nanswer = 1 / 0\n')
    monkeypatch.chdir(tmp_path)
    shell = type("Shell", (), {"user_ns": {"question": 21, "sys": __import__("sys")}})()
    handles: list[_Handle] = []

    def display(bundle, raw, display_id=False):
        handles.append(_Handle(bundle))
        return handles[-1]

    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setattr(IPython.display, "display", display)
    return shell.user_ns, handles


def test_solution_runs_in_the_notebooks_namespace_and_replaces_its_status_line(notebook):
    namespace, handles = notebook
    solution("3.1")
    assert namespace["answer"] == 42
    before, handle, after = handles  # the answer in words before the code, the code, the discussion after it
    assert before.shown == [answer_bundle(parse_answers("## Solution 3.1\n\nDouble it.")["3.1"][0],
                                          "chapters/solutions/03-a-chapter.md")]
    assert after.shown[0]["text/markdown"].startswith("<details><summary>Solution 3.1, discussion (click to show)")
    assert handle.shown[0] == {"text/plain": "Solution 3.1: running"}
    final = handle.shown[-1]
    assert final["text/html"].startswith('<details class="solution"><summary>Solution 3.1 (click to show')
    assert "<pre>42\na warning</pre>" in final["text/html"] and "42" not in final["text/plain"]


def test_a_failing_solution_says_so_and_raises(notebook, capsys):
    namespace, handles = notebook
    with pytest.raises(ZeroDivisionError):
        solution("3.2")
    code, after = handles  # the discussion after the code is shown all the same, above the error
    assert code.shown[-1] == {"text/plain": "Solution 3.2: failed (the error is below)"}
    assert "It fails." in after.shown[0]["text/markdown"]
    assert capsys.readouterr().out == "half done\n"


def test_a_solution_in_words_alone_is_shown_and_a_missing_one_is_named(notebook):
    namespace, handles = notebook
    solution("3.3")
    assert len(handles) == 1 and "In words alone." in handles[0].shown[0]["text/markdown"]
    with pytest.raises(ValueError, match=r"expected solution 3\.4 in .*03-a-chapter\.py or .*03-a-chapter\.md"):
        solution("3.4")


def test_outside_ipython_it_prints_the_code_and_output(monkeypatch, tmp_path, capsys):
    IPython = pytest.importorskip("IPython")
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "02-b.py").write_text("# %% Solution 2.1\nprint(x + 1)\n")
    monkeypatch.chdir(tmp_path)
    solution("2.1", {"x": 1})
    assert capsys.readouterr().out == "Solution 2.1 (chapters/solutions/02-b.py):\nprint(x + 1)\n--- its output:\n2\n"
