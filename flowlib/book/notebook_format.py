"""The form the chapters are stored in: what JupyterLab 4 writes back, with solutions that reveal nothing.

A notebook opened in JupyterLab and saved again must keep its bytes, and
opening it must not mark it edited (else closing asks to save, and saving
rewrites the file). JupyterLab loads the file into its model and, on save,
sends the model's JSON to jupyter_server, which writes it with nbformat.
Measured on JupyterLab 4.6 (``tests/test_roundtrip.py`` checks every stored
chapter), three things change on the way:

* cell metadata: JupyterLab keeps ``collapsed`` and ``jupyter.outputs_hidden``
  equal. A cell with ``collapsed`` gets ``outputs_hidden`` set to it; else a
  cell with ``jupyter.outputs_hidden`` gets ``collapsed`` added, whatever its
  type (``YBaseCell.setMetadata`` in ``@jupyter/ydoc``);
* notebook metadata: when the kernel starts, JupyterLab writes its spec into
  ``kernelspec`` (``name``, ``display_name``, ``language``), which marks the
  notebook edited when it differs; ipykernel names ``python3``
  "Python 3 (ipykernel)". It also writes the kernel's ``language_info``, whose
  ``version`` is the reader's Python: that one the book cannot choose;
* the file: nbformat's writer, keys sorted, indent 1, non-ASCII characters
  as they are, each multi-line string as a list of lines, a final newline.

The stored form (`format_notebook`) is that form plus three choices that
JupyterLab keeps as they are:

* consecutive stream outputs of one name are merged into one, with carriage
  returns applied as a terminal would (what JupyterLab shows, and stores when
  it runs a cell itself);
* no widget state (``metadata.widgets``): the widget cells store a picture;
* solutions (cells tagged ``solution``) reveal nothing in any view
  (`store_solutions`): a solution's cell only calls ``solution("4.2")``
  (`flowlib.book.solutions`: the answers live in ``chapters/solutions/``)
  and is stored without output, so JupyterLab, nbconvert and GitHub show its
  two lines alone until the reader runs it. The element its code part
  showed when the chapter ran is kept in the cell's metadata,
  ``solution_output``, which no view shows, for the book's website. A
  solution written into its cell, in words or in code, is refused: GitHub
  shows a markdown cell's text and a code cell's source and outputs whatever
  the cell's metadata say, and whether it keeps a ``<details>`` element
  closed cannot be relied on.

``python -m flowlib.book.notebook_format [--check] NOTEBOOK ...`` rewrites
notebooks in this form (atomically, only those that change); with
``--check`` it writes nothing and exits 1 when one would change.

>>> nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"widgets": {}}, "cells": [
...     {"cell_type": "code", "id": "a", "execution_count": 1, "source": "print(1); print(2)",
...      "metadata": {"jupyter": {"outputs_hidden": True}},
...      "outputs": [{"output_type": "stream", "name": "stdout", "text": "1\\n"},
...                  {"output_type": "stream", "name": "stdout", "text": "2\\n"}]}]}
>>> text = dumps(format_notebook(nb))
>>> print(text)  # doctest: +NORMALIZE_WHITESPACE
{
 "cells": [
  {
   "cell_type": "code",
   "execution_count": 1,
   "id": "a",
   "metadata": {
    "collapsed": true,
    "jupyter": {
     "outputs_hidden": true
    }
   },
   "outputs": [
    {
     "name": "stdout",
     "output_type": "stream",
     "text": [
      "1\\n",
      "2\\n"
     ]
    }
   ],
   "source": [
    "print(1); print(2)"
   ]
  }
 ],
 "metadata": {},
 "nbformat": 4,
 "nbformat_minor": 5
}
>>> dumps(format_notebook(json.loads(text))) == text  # idempotent
True
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from pathlib import Path

from ..files import write_atomically
from .solutions import CALL, call_source

__all__ = ["KERNELSPEC", "SOLUTION_OUTPUT", "jupyterlab_form", "store_solutions", "format_notebook", "dumps",
           "format_file", "replace_file"]

#: The ``kernelspec`` JupyterLab writes for ipykernel's ``python3`` kernel once it starts.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
SOLUTION_TAG = "solution"
#: The cell metadata that keeps what a solution's code part showed when its chapter ran (no view shows it).
SOLUTION_OUTPUT = "solution_output"
# Strings nbformat stores as lists of lines: sources, stream text, and these outputs (plus every text/*).
_SPLIT_MIMES = ("application/javascript", "image/svg+xml")


def _text(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


def _carriage_returns(text: str) -> str:
    r"""``text`` as a terminal shows it: what follows a ``\r`` overwrites its line from the start.

    >>> _carriage_returns("10%\r50%\r100%\nnext\r\n")
    '100%\nnext\n'
    """
    lines = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown)
    return "\n".join(lines)


def _merged_streams(outputs: list[dict]) -> list[dict]:
    """``outputs`` with each run of stream outputs of one name merged into one."""
    merged: list[dict] = []
    for output in outputs:
        output = dict(output)
        if output.get("output_type") == "stream":
            output["text"] = _text(output["text"])
            last = merged[-1] if merged else None
            if last is not None and last.get("output_type") == "stream" and last["name"] == output["name"]:
                last["text"] += output["text"]
                continue
        merged.append(output)
    for output in merged:
        if output.get("output_type") == "stream" and "\r" in output["text"]:
            output["text"] = _carriage_returns(output["text"])
    return merged


def _jupyterlab_cell_metadata(metadata: dict) -> dict:
    """``collapsed`` and ``jupyter.outputs_hidden`` made equal, as JupyterLab's cell model does on load."""
    metadata = copy.deepcopy(metadata)
    if metadata.get("collapsed") is not None:
        metadata["jupyter"] = {**metadata.get("jupyter", {}), "outputs_hidden": metadata["collapsed"]}
    elif metadata.get("jupyter", {}).get("outputs_hidden") is not None:
        metadata["collapsed"] = metadata["jupyter"]["outputs_hidden"]
    return metadata


def jupyterlab_form(nb: dict) -> dict:
    """A copy of notebook ``nb`` as JupyterLab 4 writes it back after opening it (see the module docstring).

    Also merges stream outputs and drops widget state, which JupyterLab would
    keep; nothing here changes what the notebook shows. Idempotent.
    """
    if nb.get("nbformat") != 4 or nb.get("nbformat_minor", 0) < 5:
        raise ValueError(f"expected nbformat 4.5 or later (cells with ids), got "
                         f"{nb.get('nbformat')}.{nb.get('nbformat_minor')}")
    nb = copy.deepcopy(nb)
    meta = nb["metadata"]
    for key in ("widgets", "orig_nbformat", "orig_nbformat_minor", "signature"):
        meta.pop(key, None)
    if meta.get("kernelspec", {}).get("name") == KERNELSPEC["name"]:
        meta["kernelspec"] = dict(KERNELSPEC)
    for cell in nb["cells"]:
        cell["source"] = _text(cell["source"])
        cell["metadata"] = _jupyterlab_cell_metadata(cell.get("metadata", {}))
        if cell["cell_type"] == "code":
            cell["outputs"] = _merged_streams(cell.get("outputs", []))
    return nb


def _shown(meta: dict) -> None:
    """Unhide a cell's source and outputs: remove ``collapsed``, ``source_hidden`` and ``outputs_hidden``."""
    meta.pop("collapsed", None)
    jupyter = {k: v for k, v in meta.pop("jupyter", {}).items() if k not in ("source_hidden", "outputs_hidden")}
    if jupyter:
        meta["jupyter"] = jupyter


def _split_bundle(bundle: dict) -> None:
    """Split a MIME bundle's multi-line strings into lists of lines in place, as nbformat's writer does."""
    for mime, value in bundle.items():
        if isinstance(value, str) and (mime.startswith("text/") or mime in _SPLIT_MIMES):
            bundle[mime] = value.splitlines(True)


def _kept(output: dict) -> dict:
    """A solution's output as its metadata keeps it: text as a list of lines (so a diff shows the lines)."""
    output = copy.deepcopy(output)
    _split_bundle(output.get("data", {}))
    return output


def store_solutions(nb: dict) -> dict:
    """A copy of ``nb`` whose solution cells reveal nothing in any view (see the module docstring).

    A solution cell must hold only ``# Solution N.K`` and ``solution("N.K")``
    (else `ValueError`); it is stored shown, without outputs. When it holds
    outputs (its chapter has just run), those of its code part move into its
    metadata's ``solution_output``; its answers in words (Markdown outputs) are
    dropped, as they are read from their file again. Idempotent.

    >>> element = {"output_type": "display_data", "metadata": {},
    ...            "data": {"text/html": "<details><summary>Solution 4.2 (click to show ...)</summary>\\n42</details>",
    ...                     "text/plain": "Solution 4.2: its code is in chapters/solutions/04-x.py"}}
    >>> words = {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": "<details>...</details>"}}
    >>> cell = {"cell_type": "code", "id": "s", "execution_count": 7, "source": '# Solution 4.2\\nsolution("4.2")',
    ...         "metadata": {"tags": ["solution"]}, "outputs": [words, element]}
    >>> out = store_solutions({"cells": [cell]})["cells"][0]
    >>> out["outputs"], out["metadata"]["solution_output"][0]["data"]["text/html"]
    ([], ['<details><summary>Solution 4.2 (click to show ...)</summary>\\n', '42</details>'])
    >>> store_solutions({"cells": [out]})["cells"][0] == out
    True
    """
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        meta = cell.setdefault("metadata", {})
        if SOLUTION_TAG not in meta.get("tags", []):
            continue
        source = _text(cell["source"])
        if cell["cell_type"] != "code" or not CALL.fullmatch(source):
            label = re.search(r"Solution (\d+\.\d+)", source)
            label = label.group(1) if label else "N.K"
            raise ValueError(
                f"a solution's cell holds only {call_source(label)!r}: its answer in words goes into "
                f"chapters/solutions/NN-<chapter>.md under '## Solution {label}', its code into "
                f"chapters/solutions/NN-<chapter>.py under '# %% Solution {label}' (flowlib.book.solutions); "
                f"got a {cell['cell_type']} cell {source[:80]!r}")
        _shown(meta)
        if cell.get("outputs"):
            shown = [_kept(o) for o in cell["outputs"] if "text/markdown" not in o.get("data", {})]
            if shown:
                meta[SOLUTION_OUTPUT] = shown
            else:
                meta.pop(SOLUTION_OUTPUT, None)
        cell["outputs"] = []
    return nb


def format_notebook(nb: dict) -> dict:
    """The stored form of ``nb``: solutions stored without output, then JupyterLab's form. Idempotent."""
    return jupyterlab_form(store_solutions(nb))


def _split_lines(nb: dict) -> dict:
    """Multi-line strings as lists of lines, where nbformat's writer splits them (``v4.rwbase.split_lines``)."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(True)
        for bundle in cell.get("attachments", {}).values():
            _split_bundle(bundle)
        for output in cell.get("outputs", []):
            if output.get("output_type") in ("execute_result", "display_data"):
                _split_bundle(output.get("data", {}))
            elif output.get("output_type") == "stream" and isinstance(output.get("text"), str):
                output["text"] = output["text"].splitlines(True)
    return nb


def dumps(nb: dict) -> str:
    """The text jupyter_server writes for ``nb`` (nbformat's ``write``): keys sorted, indent 1, final newline."""
    text = json.dumps(_split_lines(nb), sort_keys=True, indent=1, ensure_ascii=False, separators=(",", ": "))
    return text if text.endswith("\n") else text + "\n"


def replace_file(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically, keeping ``dest``'s permissions (``rw-r--r--`` for a new file).

    `write_atomically`'s temporary file is private (``rw-------``); a stored
    notebook or figure must stay readable as git checked it out.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     replace_file(Path(d, "a.txt"), b"flow")
    ...     oct(Path(d, "a.txt").stat().st_mode & 0o777)
    '0o644'
    """
    mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644

    def write(f) -> None:
        f.write(data)
        if hasattr(os, "fchmod"):
            os.fchmod(f.fileno(), mode)

    write_atomically(dest, write)


def format_file(path: Path, check: bool = False) -> bool:
    """Put the notebook at ``path`` in the stored form; True when that changes it (``check``: write nothing)."""
    before = path.read_text(encoding="utf-8")
    after = dumps(format_notebook(json.loads(before)))
    if after == before:
        return False
    if not check:
        replace_file(path, after.encode("utf-8"))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowlib.book.notebook_format",
                                     description="Store notebooks in the form JupyterLab writes back, "
                                                 "solutions stored without output (nothing is executed).")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a notebook would change")
    args = parser.parse_args(argv)
    changed = [path for path in args.notebooks if format_file(path, check=args.check)]
    for path in changed:
        print(f"{'would reformat' if args.check else 'reformatted'} {path}")
    print(f"{len(changed)} of {len(args.notebooks)} notebooks {'to reformat' if args.check else 'reformatted'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
