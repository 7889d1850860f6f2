"""The stored form of the notebooks (`flowlib.book.notebook_format`), without a browser.

What JupyterLab writes back is checked in JupyterLab itself by ``tests/test_roundtrip.py``; here:
the writer gives nbformat's bytes, the form is idempotent, JupyterLab's rules for ``collapsed`` and the
kernel's spec, merged streams, collapsed solutions, and every stored notebook already in the form.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flowlib.book.notebook_format import (KERNELSPEC, collapse_solutions, dumps, format_file, format_notebook,
                                          jupyterlab_form, main)

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


@pytest.mark.parametrize("label, summary", [
    ("**Solution 4.1.**", "Solution 4.1"),
    ("**Solution 4.4, continued.**", "Solution 4.4, continued"),
    ("**Solution 7.2** (discussion).", "Solution 7.2, discussion"),
    ("**Solution 12.3 (what it shows).**", "Solution 12.3, what it shows"),
])
def test_a_markdown_solution_becomes_one_closed_details_element(label: str, summary: str) -> None:
    body = "The log-det is\n\n$$\\log|\\det J| = \\sum_i s_i,$$\n\nso $x_1$ passes.\n"
    cell = {"cell_type": "markdown", "id": "s", "metadata": dict(SOLUTION), "source": f"{label}\n\n{body}"}
    out = collapse_solutions(_nb(cell))["cells"][0]
    lines = out["source"].split("\n")
    assert lines[0] == f"<details><summary>{summary} (click to show)</summary>"
    # blank lines around the body: an HTML block ends there, so the body is read as Markdown (and math)
    assert lines[1] == "" and lines[-2] == "" and lines[-1] == "</details>"
    assert "\n".join(lines[2:-2]) == body.strip()
    assert out["metadata"] == {"tags": ["solution"]}  # shown, so JupyterLab renders the closed element
    assert collapse_solutions(_nb(out))["cells"][0] == out


def test_a_code_solution_written_into_its_cell_is_refused() -> None:
    # GitHub and nbconvert show a hidden cell's source: the refusal names the form that keeps the answer away.
    cell = _code(**SOLUTION)
    cell["source"] = "# Solution 4.1\nprint(2)"
    with pytest.raises(ValueError, match=r"solution\(\"4\.1\"\).*# %% Solution 4\.1.*print\(2\)"):
        format_notebook(_nb(cell))


def test_a_code_solution_kept_in_its_file_is_shown() -> None:
    # Its two lines give nothing away and its output is the closed element, so hiding it would only add a click.
    cell = _code(**SOLUTION)
    cell["source"] = '# Solution 4.1\nsolution("4.1")'
    out = format_notebook(_nb(cell))["cells"][0]
    assert out["source"] == cell["source"] and out["metadata"] == {"tags": ["solution"]}
    cell["source"] = '# Solution 4.1\nsolution("4.2")'  # a call to another solution is not the form
    with pytest.raises(ValueError, match="Solution 4.1"):
        format_notebook(_nb(cell))


def test_a_solution_without_its_label_is_refused() -> None:
    cell = {"cell_type": "markdown", "id": "s", "metadata": dict(SOLUTION), "source": "The answer is 4."}
    with pytest.raises(ValueError, match="label"):
        collapse_solutions(_nb(cell))


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
