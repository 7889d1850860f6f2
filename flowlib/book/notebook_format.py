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
* solutions (cells tagged ``solution``) reveal nothing until asked
  (`collapse_solutions`): a markdown solution is one ``<details>`` element
  whose summary reads "Solution 4.2 (click to show)", closed in JupyterLab and
  in nbconvert's HTML, with the Markdown and math inside rendered
  once opened. A code solution whose cell only calls ``solution("4.2")``
  (`flowlib.book.solutions`: the code lives in ``chapters/solutions/``) shows
  its two lines and its output, itself a closed ``<details>`` element (how
  GitHub's notebook view treats that element is not checked here: it is
  reported to show what is inside). A code solution written into its own
  cell is refused: GitHub and plain nbconvert show every code cell's source
  and outputs, hidden or not, so it would give its answer away.

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

__all__ = ["KERNELSPEC", "jupyterlab_form", "collapse_solutions", "format_notebook", "dumps", "format_file",
           "replace_file"]

#: The ``kernelspec`` JupyterLab writes for ipykernel's ``python3`` kernel once it starts.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
SOLUTION_TAG = "solution"
#: The label of a markdown solution: its first line, ``**Solution 4.4, continued.**`` and the like.
_LABEL = re.compile(r"Solution (\d+\.\d+)\.?\s*(.*?)\.?")
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


def _summary(first_line: str) -> str:
    """``"Solution 4.4, continued"`` from a label line such as ``**Solution 4.4, continued.**``.

    >>> [_summary(s) for s in ("**Solution 4.1.**", "**Solution 7.2** (discussion).",
    ...                        "**Solution 1.5 (reading the numbers).**", "**Solution 9.2, continued.**")]
    ['Solution 4.1', 'Solution 7.2, discussion', 'Solution 1.5, reading the numbers', 'Solution 9.2, continued']
    """
    match = _LABEL.fullmatch(first_line.replace("**", "").strip())
    if match is None:
        raise ValueError(f"a markdown solution must start with its label ('**Solution N.M.**'), not {first_line!r}")
    qualifier = match.group(2).strip()
    if qualifier.startswith("(") and qualifier.endswith(")"):
        qualifier = qualifier[1:-1]
    qualifier = qualifier.lstrip(", ").strip()
    return f"Solution {match.group(1)}" + (f", {qualifier}" if qualifier else "")


def _collapsed_markdown(source: str) -> str:
    """A markdown solution's source inside ``<details>``: the summary alone shows until it is opened."""
    if source.startswith("<details>"):
        return source  # already collapsed
    first, _, body = source.partition("\n")
    # An HTML block ends at a blank line, so the body between the tags is read as Markdown (math included)
    # by JupyterLab, nbconvert and GitHub alike.
    return (f"<details><summary>{_summary(first)} (click to show)</summary>\n\n"
            f"{body.strip()}\n\n</details>")


def _shown(meta: dict) -> None:
    """Unhide a cell's source and outputs: remove ``collapsed``, ``source_hidden`` and ``outputs_hidden``."""
    meta.pop("collapsed", None)
    jupyter = {k: v for k, v in meta.pop("jupyter", {}).items() if k not in ("source_hidden", "outputs_hidden")}
    if jupyter:
        meta["jupyter"] = jupyter


def collapse_solutions(nb: dict) -> dict:
    """A copy of ``nb`` whose solution cells reveal nothing until the reader asks.

    A markdown solution becomes one closed ``<details>`` element (its source
    no longer hidden: JupyterLab renders the element, and would show a hidden
    cell's first line as raw text); a code solution that calls
    ``solution("N.K")`` is left open (its output is the closed element); a
    code solution with its code in the cell is refused (`ValueError`).
    Idempotent.

    >>> cell = {"cell_type": "markdown", "id": "s", "source": "**Solution 4.2.**\\n\\nIt is $\\\\ln 2$.",
    ...         "metadata": {"tags": ["solution"], "jupyter": {"source_hidden": True, "outputs_hidden": True}}}
    >>> out = collapse_solutions({"cells": [cell]})["cells"][0]
    >>> print(out["source"])
    <details><summary>Solution 4.2 (click to show)</summary>
    <BLANKLINE>
    It is $\\ln 2$.
    <BLANKLINE>
    </details>
    >>> out["metadata"]
    {'tags': ['solution']}
    """
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        meta = cell.setdefault("metadata", {})
        if SOLUTION_TAG not in meta.get("tags", []):
            continue
        if cell["cell_type"] == "markdown":
            cell["source"] = _collapsed_markdown(_text(cell["source"]))
            _shown(meta)
        elif cell["cell_type"] == "code" and CALL.fullmatch(_text(cell["source"])):
            _shown(meta)
        elif cell["cell_type"] == "code":
            label = re.match(r"# Solution (\d+\.\d+)", _text(cell["source"]))
            label = label.group(1) if label else "N.K"
            raise ValueError(
                f"a code solution's cell holds only {call_source(label)!r}, its code kept in "
                f"chapters/solutions/NN-<chapter>.py under '# %% Solution {label}' (flowlib.book.solutions); "
                f"got {_text(cell['source'])[:80]!r}")
    return nb


def format_notebook(nb: dict) -> dict:
    """The stored form of ``nb``: solutions collapsed, then JupyterLab's form. Idempotent."""
    return jupyterlab_form(collapse_solutions(nb))


def _split_lines(nb: dict) -> dict:
    """Multi-line strings as lists of lines, where nbformat's writer splits them (``v4.rwbase.split_lines``)."""
    nb = copy.deepcopy(nb)

    def split_bundle(bundle: dict) -> None:
        for mime, value in bundle.items():
            if isinstance(value, str) and (mime.startswith("text/") or mime in _SPLIT_MIMES):
                bundle[mime] = value.splitlines(True)

    for cell in nb["cells"]:
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(True)
        for bundle in cell.get("attachments", {}).values():
            split_bundle(bundle)
        for output in cell.get("outputs", []):
            if output.get("output_type") in ("execute_result", "display_data"):
                split_bundle(output.get("data", {}))
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
                                                 "solutions collapsed (nothing is executed).")
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
