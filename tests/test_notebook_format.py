"""The stored form of the notebooks (`flowlib.book.notebook_format`), without a browser.

What JupyterLab writes back is checked in JupyterLab itself by ``tests/test_roundtrip.py``; here:
the writer gives nbformat's bytes, the form is idempotent, JupyterLab's rules for ``collapsed`` and the
kernel's spec, merged streams, solutions stored without output, and every stored notebook already in the form.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flowlib.book.notebook_format import (KERNELSPEC, SOLUTION_OUTPUT, dumps, format_file, format_notebook,
                                          jupyterlab_form, main, store_solutions)

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
NOTEBOOKS = sorted(CHAPTERS.glob("*.ipynb"))


def _nb(*cells: dict, **metadata: object) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": dict(metadata), "cells": list(cells)}


def _code(*outputs: dict, **metadata: object) -> dict:
    return {"cell_type": "code", "id": "c", "execution_count": 1, "source": "x", "metadata": dict(metadata),
            "outputs": list(outputs)}


def _stream(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_writer_gives_nbformats_bytes_and_the_form_is_idempotent(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    formatted = format_notebook(json.loads(path.read_text(encoding="utf-8")))
    text = dumps(formatted)
    assert text == nbformat.writes(nbformat.from_dict(formatted), version=nbformat.NO_CONVERT) + "\n"
    assert dumps(format_notebook(json.loads(text))) == text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_stored_notebook_is_in_the_stored_form(path: Path) -> None:
    """Else JupyterLab marks it edited or rewrites it on save: ``python3 run.py rebuild --format-only``."""
    assert not format_file(path, check=True), f"{path.name}: run python3 run.py rebuild --format-only"


def test_collapsed_follows_outputs_hidden_as_in_jupyterlab() -> None:
    nb = _nb(_code(jupyter={"outputs_hidden": True, "source_hidden": True}), _code(collapsed=False),
             {"cell_type": "markdown", "id": "m", "source": "", "metadata": {"jupyter": {"outputs_hidden": True}}},
             _code(collapsed=True, jupyter={"outputs_hidden": False}))
    metas = [c["metadata"] for c in jupyterlab_form(nb)["cells"]]
    assert metas[0] == {"collapsed": True, "jupyter": {"outputs_hidden": True, "source_hidden": True}}
    assert metas[1] == {"collapsed": False, "jupyter": {"outputs_hidden": False}}
    assert metas[2] == {"collapsed": True, "jupyter": {"outputs_hidden": True}}  # any cell type
    assert metas[3] == {"collapsed": True, "jupyter": {"outputs_hidden": True}}  # collapsed wins


def test_the_kernelspec_is_the_one_jupyterlab_writes_and_widget_state_goes() -> None:
    nb = _nb(kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"},
             widgets={"application/vnd.jupyter.widget-state+json": {}}, orig_nbformat=4)
    assert jupyterlab_form(nb)["metadata"] == {"kernelspec": KERNELSPEC}
    other = {"display_name": "Julia 1.10", "language": "julia", "name": "julia-1.10"}
    assert jupyterlab_form(_nb(kernelspec=other))["metadata"]["kernelspec"] == other


def test_consecutive_streams_of_one_name_merge() -> None:
    image = {"output_type": "display_data", "data": {"text/plain": "<Figure>"}, "metadata": {}}
    cell = _code(_stream("a\n"), _stream(["b", "\n"]), _stream("warn\n", "stderr"), _stream("c\n"), image,
                 _stream("0%\r100%\n"), _stream("d\n"))
    outputs = jupyterlab_form(_nb(cell))["cells"][0]["outputs"]
    assert [(o.get("name"), o.get("text")) for o in outputs] == [
        ("stdout", "a\nb\n"), ("stderr", "warn\n"), ("stdout", "c\n"), (None, None), ("stdout", "100%\nd\n")]


def test_an_older_notebook_format_is_refused() -> None:
    with pytest.raises(ValueError, match="4.5"):
        jupyterlab_form({"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": []})


SOLUTION = {"tags": ["solution"], "jupyter": {"outputs_hidden": True, "source_hidden": True}}


def _element(label: str) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/html": f'<details class="solution"><summary>Solution {label} (click to show the code and '
                                  f'its output)</summary>\n<pre>42</pre>\n</details>',
                     "text/plain": f"Solution {label}: its code is in chapters/solutions/04-x.py"}}


def _words(label: str) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/markdown": f"<details><summary>Solution {label} (click to show)</summary>\n\n$x$\n\n"
                                      f"</details>", "text/plain": f"Solution {label}: in chapters/solutions/04-x.md"}}


def test_a_solution_is_stored_without_output_its_code_part_kept_in_its_metadata() -> None:
    # GitHub shows every output, whatever the cell's metadata say, and may show inside a closed <details>.
    cell = _code(_words("4.1"), _element("4.1"), **SOLUTION)
    cell["source"] = '# Solution 4.1\nsolution("4.1")'
    out = format_notebook(_nb(cell))["cells"][0]
    assert out["source"] == cell["source"] and out["outputs"] == [] and out["execution_count"] == 1
    assert set(out["metadata"]) == {"tags", SOLUTION_OUTPUT}  # shown: hiding two lines would only add a click
    (kept,) = out["metadata"][SOLUTION_OUTPUT]  # the answer in words is read from its file again, so not kept
    assert "".join(kept["data"]["text/html"]) == _element("4.1")["data"]["text/html"]
    assert kept["data"]["text/html"][0].endswith("</summary>\n")  # lines, as nbformat stores an output's text
    assert format_notebook(_nb(out))["cells"][0] == out  # idempotent: an empty run keeps what was kept
    again = dict(out, outputs=[_words("4.1")])  # run again, the code part gone: nothing stale is kept
    assert SOLUTION_OUTPUT not in store_solutions(_nb(again))["cells"][0]["metadata"]


@pytest.mark.parametrize("source, cell_type, message", [
    ("# Solution 4.1\nprint(2)", "code", r"solution\(\"4\.1\"\).*# %% Solution 4\.1.*print\(2\)"),
    ('# Solution 4.1\nsolution("4.2")', "code", r"Solution 4\.1"),  # a call to another solution is not the form
    ("<details><summary>Solution 4.1 (click to show)</summary>\n\nIt is $\\ln 2$.\n\n</details>", "markdown",
     r"\.md under '## Solution 4\.1'"),
    ("The answer is 4.", "markdown", r"'## Solution N\.K'"),
])
def test_a_solution_written_into_its_cell_is_refused(source: str, cell_type: str, message: str) -> None:
    # GitHub shows a markdown cell's text and a code cell's source: the refusal names the form that keeps it away.
    cell = {"cell_type": cell_type, "id": "s", "metadata": dict(SOLUTION), "source": source}
    if cell_type == "code":
        cell.update(execution_count=None, outputs=[])
    with pytest.raises(ValueError, match=message):
        format_notebook(_nb(cell))


def test_the_command_formats_files_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(_nb(_code(_stream("a\n"), _stream("b\n")), kernelspec=dict(KERNELSPEC))))
    path.chmod(0o640)
    assert main(["--check", str(path)]) == 1
    assert "would reformat" in capsys.readouterr().out
    assert main([str(path)]) == 0
    assert re.search(r'"text": \[\n\s+"a\\n",\n\s+"b\\n"\n\s+\]', path.read_text())
    assert main(["--check", str(path)]) == 0
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left
    assert path.stat().st_mode & 0o777 == 0o640  # its permissions kept
