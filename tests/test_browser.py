"""The book in a real browser: JupyterLab and headless Chromium on chapter 2's playground.

What a reader does, done by a script. The test starts JupyterLab on a
temporary copy of ``chapters/``, listening on 127.0.0.1 only and requiring a
random token (new for every run), opens (with the token) the chapter with the
2D-density playground, runs Run > Run All Cells, changes the toy density and
the number of training steps, presses Train and waits for the fit. It fails if

* a widget did not render: "Error displaying widget" or "Loading widget..."
  is left on the page, ipywidgets shows its error widget, the playground
  (``.flowlib-playground``) never appears, or the widget manager extension is
  missing (then an output shows only the plain-text repr, ``VBox(children=...``);
* before Run All, the stored notebook does not show the caption of the
  playground's picture (what `flowlib.book.widgets.show` stores for front ends
  without widgets) or shows a widget error; after it, the playground's cell
  shows a picture or that caption beside the live widget;
* the playground did not open on a trained result (a test NLL), a density
  change replaced that result, or the plot (the ``<img>`` of the
  ``ipywidgets.Image`` with class ``flowlib-plot``) did not change, by its
  bytes, after the next training;
* the kernel reported an error: a traceback in any output, a cell left
  unexecuted, or the playground's status line not ending on a test NLL
  (a collapsed cell shows neither prompt nor output; the nbval tests run
  those; an exercise's solution kept in ``chapters/solutions/`` runs here
  like any cell and shows only its closed element).

The server gets ``FLOWLIB_QUICK=1`` and its own temporary config, runtime,
settings, workspace and IPython folders, so nothing is written to the
repository or the home folder; it is stopped with its kernels even when the
test fails.

Authentication: jupyter_server 2 reads the token from
``IdentityProvider.token`` (``ServerApp.token`` is its deprecated alias) and,
when that is not configured, from ``$JUPYTER_TOKEN``; an empty token turns
authentication off. The tests pass a fresh ``secrets.token_hex`` through
``$JUPYTER_TOKEN`` rather than on the command line, where any local user
could read it in the process list, and check, while the server runs, that a
request without it (or with a wrong one) is refused (403, or a redirect to
the login page), that one with it is accepted, and that the server listens
on 127.0.0.1 only. ``test_server_requires_a_token`` does these checks
without a browser.

A screenshot of the trained playground goes to ``$FLOWLIB_FIGURES`` when set,
else to the test's temporary folder, never into the tracked ``figures/``; the
kernel gets the same ``$FLOWLIB_FIGURES``, so the chapter's own figures do
not land there either. The README's picture, ``figures/browser-playground.png``,
is made only on request, by the same browser code, after a Train with the
playground's default settings (a fit, not the test's two-step run)::

    python tests/test_browser.py --readme-picture [PATH]

It needs Chromium and its driver from the system packages
(``/usr/bin/chromium`` and ``/usr/bin/chromedriver``; Debian:
``apt-get install chromium chromium-driver``) and is skipped without them.
Nothing here downloads a browser: the driver path is passed explicitly, so
Selenium Manager is never asked for one.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
CHAPTER = "02-additive-coupling.ipynb"
SCREENSHOT_NAME = "browser-playground.png"

# Seconds. Run All covers the whole chapter in quick mode on a small CPU.
SERVER_START_TIMEOUT = 60
PAGE_TIMEOUT = 60
RUN_ALL_TIMEOUT = 300
WIDGET_TIMEOUT = 60
TRAIN_TIMEOUT = 120
README_TRAIN_TIMEOUT = 600  # the playground's default training, on a busy small CPU

PLOT = "img.flowlib-plot, .flowlib-plot img"
#: Words of the caption that `flowlib.book.widgets.show` puts under a widget's picture for front ends without widgets.
STATIC_CAPTION = "Run this cell in JupyterLab to use the widget"
STDERR_MIME = "application/vnd.jupyter.stderr"

from browser_support import CHROMEDRIVER, CHROMIUM, INSTALL_HINT, chromium, needs_chromium  # noqa: E402
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402



# ----------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (kernels run in their own session, so a group kill misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _write_settings(settings: Path) -> None:
    """User settings for the run: no news or update checks (they would fetch from outside)."""
    path = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@dataclass(frozen=True)
class Server:
    """A running JupyterLab: its base URL (no trailing slash) and its token."""

    url: str
    token: str

    def authorized(self, path: str) -> str:
        """The URL of ``path`` with the token in the query, as a reader's browser opens it."""
        return f"{self.url}{path}{'&' if '?' in path else '?'}token={self.token}"


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, str]:
    """``(status, Location header)`` of a GET, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location") or ""
    finally:
        conn.close()


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on TCP ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
            found.add(str(ipaddress.ip_address(raw[:width])))
    return found


def check_requires_token(server: Server) -> None:
    """Assert the running ``server`` refuses requests without its token and listens on loopback only."""
    for path in ("/api/status", "/api/contents", "/api/kernels"):
        status, _ = _get(server.url + path)
        assert status == 403, f"GET {path} without the token answered {status}, expected 403"
        status, _ = _get(server.url + path, {"Authorization": "token " + secrets.token_hex(24)})
        assert status == 403, f"GET {path} with a wrong token answered {status}, expected 403"
    for path in ("/lab", f"/lab/tree/{CHAPTER}"):
        status, location = _get(server.url + path)
        assert status in (302, 303) and "/login" in location, (
            f"GET {path} without the token answered {status} {location!r}, expected a redirect to /login")
    status, _ = _get(server.authorized("/api/status"))
    assert status == 200, f"GET /api/status with the token answered {status}, expected 200"
    status, _ = _get(server.url + "/api/status", {"Authorization": f"token {server.token}"})
    assert status == 200, f"GET /api/status with the token in the header answered {status}, expected 200"
    port = urlsplit(server.url).port
    addresses = _listening_addresses(port)
    if addresses:  # empty where /proc/net is not there to read
        assert addresses == {"127.0.0.1"}, f"the server listens on {sorted(addresses)}, expected 127.0.0.1 only"


@contextmanager
def jupyterlab(root: Path, state: Path, figures: Path, extra_args: tuple[str, ...] = ()) -> Iterator[Server]:
    """Run JupyterLab on ``root`` at ``http://127.0.0.1:<free port>`` behind a fresh token.

    Yields the `Server` (base URL and token) once it answers an authorised
    request. Config, runtime, settings, workspaces, data and IPython folders
    live under ``state`` and the kernel's figures go to ``figures``, so
    nothing is written to the repository or the home folder. The server, its
    kernels and anything else it started are stopped on exit, also when the
    test failed. ``extra_args`` go to JupyterLab's command line.
    """
    dirs = {name: state / name for name in ("config", "runtime", "settings", "workspaces", "data", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    _write_settings(dirs["settings"])
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, as a reader gets it
    env.pop("JUPYTER_TOKEN_FILE", None)
    token = secrets.token_hex(24)
    env.update(
        JUPYTER_TOKEN=token,  # in the environment, not in argv, where other users could read it
        FLOWLIB_QUICK="1", PYTHONUNBUFFERED="1", FLOWLIB_FIGURES=str(figures),
        JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]), IPYTHONDIR=str(dirs["ipython"]),
    )
    port = _free_port()
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}", *extra_args,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = state / "jupyterlab.log"
    server = Server(f"http://127.0.0.1:{port}", token)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if _get(f"{server.url}/api/status", {"Authorization": f"token {token}"}, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not accept its token in {SERVER_START_TIMEOUT} s:\n"
                                   f"{log_path.read_text()}")
            time.sleep(0.3)
        yield server
    finally:
        started.update(_descendants(proc.pid))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in started:  # kernels left behind (own session) go by their id
            _kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- the browser


def _wait(driver: Any, timeout: float, what: str, condition: Callable[[Any], Any]) -> Any:
    """``condition(driver)`` once truthy, polled every 0.2 s; fails saying ``what`` timed out."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout} s waiting for {what}\n{_diagnostics(driver)}")


def _diagnostics(driver: Any) -> str:
    """Errors from the browser console and the visible error texts, for failure messages."""
    lines = []
    try:
        for entry in driver.get_log("browser"):
            if entry.get("level") in ("SEVERE", "WARNING"):
                lines.append(f"console {entry['level']}: {entry['message'][:300]}")
    except WebDriverException:
        pass
    try:
        lines += [f"output: {t[:500]}" for t in driver.execute_script(_ERROR_OUTPUTS_JS)]
    except WebDriverException:
        pass
    return "\n".join(lines[-30:])


_ERROR_OUTPUTS_JS = f"""
return Array.from(document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="{STDERR_MIME}"]'))
  .map(e => e.textContent).filter(t => /Traceback|Error/.test(t));
"""

# The toolbar reads "idle" also before any kernel exists, so the kernel's name must be there too.
_KERNEL_READY_JS = """
const panel = document.querySelector('.jp-NotebookPanel');
const status = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
const name = panel && panel.querySelector('.jp-Toolbar-kernelName');
return Boolean(status && status.dataset.status === 'idle' && name
               && name.textContent.trim() && name.textContent.trim() !== 'No Kernel');
"""

# Without the widget manager extension a widget falls back to its text repr, "VBox(children=...".
_WIDGET_REPRS_JS = """
return Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/plain"]'))
  .map(e => e.textContent.trim()).filter(t => /^[A-Z]\\w*\\((children|value|description|options)=/.test(t));
"""

# The pictures in the outputs of the cell that holds the given element, outside that element.
_PICTURES_BESIDE_JS = """
const area = arguments[0].closest('.jp-OutputArea');
return area ? Array.from(area.querySelectorAll('img')).filter(i => !arguments[0].contains(i)).length : -1;
"""

# The prompts of the code cells whose input shows. JupyterLab gives a collapsed cell (an exercise's solution
# written into its cell) an empty prompt of class jp-Placeholder-prompt instead, so those are left out; nbval
# still runs them.
_PROMPTS_JS = """
return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt:not(.jp-Placeholder-prompt)'))
  .map(e => e.textContent.trim());
"""

# The bytes behind the plot's blob: URL, hashed (the src alone changes on every redraw).
_PLOT_JS = f"""
const done = arguments[arguments.length - 1];
const img = document.querySelector('{PLOT}');
if (!img || !img.src || !img.complete || img.naturalWidth === 0) {{ done(null); return; }}
fetch(img.src).then(r => r.arrayBuffer()).then(b => crypto.subtle.digest('SHA-256', b))
  .then(h => done({{src: img.src, width: img.naturalWidth,
                    sha: Array.from(new Uint8Array(h), x => x.toString(16).padStart(2, '0')).join('')}}))
  .catch(() => done(null));
"""


def _plot(driver: Any) -> dict[str, Any] | None:
    return driver.execute_async_script(_PLOT_JS)


def _plot_changed(before: dict[str, Any]) -> Callable[[Any], dict[str, Any] | None]:
    def changed(driver: Any) -> dict[str, Any] | None:
        now = _plot(driver)
        return now if now and now["src"] != before["src"] and now["sha"] != before["sha"] else None
    return changed


def _notebook_text(driver: Any) -> str:
    return driver.execute_script("return document.querySelector('.jp-Notebook').textContent")


def _set_readout(driver: Any, widget: Any, value: str) -> None:
    """Type ``value`` into a slider's editable readout and press Enter (as a reader would)."""
    readout = widget.find_element(By.CSS_SELECTOR, ".widget-readout")
    readout.click()
    driver.execute_script("document.execCommand('selectAll', false, null)")
    readout.send_keys(value, Keys.ENTER)


def _run_all(driver: Any) -> None:
    """Run > Run All Cells from the menu bar."""
    menu = _wait(driver, PAGE_TIMEOUT, "the Run menu", lambda d: next(
        (e for e in d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text.strip() == "Run"), None))
    menu.click()
    item = _wait(driver, 10, "Run All Cells in the Run menu", lambda d: next(
        (e for e in d.find_elements(By.CSS_SELECTOR, '.lm-Menu-item[data-command="runmenu:run-all"]')
         if e.is_displayed()), None))
    item.click()


def open_and_run(driver: Any, server: Server, notebook: str) -> Any:
    """Open ``notebook`` at ``server`` (with its token), Run All, assert it ran and its widgets rendered; the playground."""
    driver.get(server.authorized(f"/lab/tree/{notebook}"))
    _wait(driver, PAGE_TIMEOUT, "the notebook to open", lambda d: d.find_elements(
        By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook .jp-CodeCell"))
    _wait(driver, PAGE_TIMEOUT, "the kernel to start", lambda d: d.execute_script(_KERNEL_READY_JS))
    # the file browser off, so the notebook gets the width (and the screenshot shows the book)
    for tab in driver.find_elements(By.CSS_SELECTOR, ".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current"):
        tab.click()
    # before it runs, the stored notebook (untrusted, without widget state) shows the widgets' pictures and captions
    _wait(driver, PAGE_TIMEOUT, "the stored playground's caption", lambda d: STATIC_CAPTION in _notebook_text(d))
    assert "Error displaying widget" not in _notebook_text(driver), "a stored widget output shows an error"

    _run_all(driver)
    _wait(driver, 30, "Run All to start (a [*] prompt)",
          lambda d: any("*" in p for p in d.execute_script(_PROMPTS_JS)))
    _wait(driver, RUN_ALL_TIMEOUT, "every cell to finish",
          lambda d: not any("*" in p for p in d.execute_script(_PROMPTS_JS)))
    _wait(driver, PAGE_TIMEOUT, "the kernel to be idle after Run All",
          lambda d: d.execute_script(_KERNEL_READY_JS))

    # the kernel: no traceback anywhere, every code cell has an execution count
    errors = driver.execute_script(_ERROR_OUTPUTS_JS)
    assert not errors, "the kernel reported an error:\n" + "\n\n".join(errors)
    prompts = driver.execute_script(_PROMPTS_JS)
    assert prompts and all(p.strip("[]: ").isdigit() for p in prompts), f"cells left unrun: {prompts}"

    # the widgets: every widget output rendered, the playground among them
    reprs = driver.execute_script(_WIDGET_REPRS_JS)
    assert not reprs, f"widgets shown as plain text (is jupyterlab_widgets installed?): {reprs}"
    playground = _wait(driver, WIDGET_TIMEOUT, "the playground widget (.flowlib-playground)",
                       lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, ".flowlib-playground")), None))
    _wait(driver, WIDGET_TIMEOUT, "every widget to finish loading",
          lambda d: "Loading widget..." not in _notebook_text(d))
    text = _notebook_text(driver)
    assert "Error displaying widget" not in text, f"a widget failed to render\n{_diagnostics(driver)}"
    assert not driver.find_elements(By.CSS_SELECTOR, ".jupyter-widgets-error-widget"), \
        f"a widget failed to render (ipywidgets' error widget is shown)\n{_diagnostics(driver)}"
    # live, the cell shows the widget alone: not also the picture and caption that stand in for it elsewhere
    pictures = driver.execute_script(_PICTURES_BESIDE_JS, playground)
    assert pictures == 0, f"the playground's cell shows {pictures} pictures beside the widget"
    assert STATIC_CAPTION not in text, "a widget cell shows its caption although the widget runs"
    return playground


def check_playground_chapter(driver: Any, server: Server, notebook: str, screenshot: Path) -> None:
    """Open ``notebook`` in JupyterLab at ``server`` (with its token), run it, use the playground; assert it all works."""
    playground = open_and_run(driver, server, notebook)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", playground)
    first = _wait(driver, WIDGET_TIMEOUT, "the plot image to load", _plot)
    assert first["width"] > 100, f"the plot is {first['width']} px wide"
    status = playground.find_element(By.CSS_SELECTOR, ".flowlib-status")
    assert "test NLL" in status.text, f"the playground did not open on a trained result: {status.text!r}"

    # change a control: another density is for the next Train, and the result stays
    select = Select(playground.find_element(By.CSS_SELECTOR, ".flowlib-density select"))
    current = select.first_selected_option.text
    choice = next(o.text for o in select.options if o.text != current)
    select.select_by_visible_text(choice)
    _wait(driver, WIDGET_TIMEOUT, f"the status to name {choice!r} for the next Train",
          lambda d: f"fit {choice}" in status.text)
    kept = _plot(driver)
    assert kept and kept["sha"] == first["sha"], "a density change replaced the trained picture"
    assert "test NLL" in status.text

    # a short training run on the chosen density replaces the picture
    steps = playground.find_element(By.CSS_SELECTOR, ".flowlib-steps")
    minimum = steps.find_element(By.CSS_SELECTOR, "[aria-valuemin]").get_attribute("aria-valuemin")
    wanted = str(2 * int(float(minimum)))
    _set_readout(driver, steps, wanted)
    _wait(driver, 10, f"the steps slider to read {wanted}", lambda d: steps.find_element(
        By.CSS_SELECTOR, ".widget-readout").text.strip() == wanted)
    button = playground.find_element(By.CSS_SELECTOR, ".flowlib-train")
    button.click()
    trained = _wait(driver, TRAIN_TIMEOUT, "training to finish and the plot to redraw", _plot_changed(first))
    _wait(driver, 10, "the Train button to be enabled again", lambda d: button.is_enabled())
    assert "error" not in status.text.lower(), f"training failed: {status.text}"
    assert status.text.startswith(choice) and "test NLL" in status.text, \
        f"training did not report a test NLL for {choice}: {status.text!r}"
    assert trained["sha"] != first["sha"]
    errors = driver.execute_script(_ERROR_OUTPUTS_JS)
    assert not errors, "the kernel reported an error:\n" + "\n\n".join(errors)

    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", playground)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(screenshot)), "could not save the screenshot"


def take_readme_picture(driver: Any, server: Server, notebook: str, picture: Path) -> str:
    """Run ``notebook``, press the playground's Train with its default settings, wait for the fit, save a screenshot.

    Returns the playground's status line (the test NLL of the fit).
    """
    playground = open_and_run(driver, server, notebook)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", playground)
    first = _wait(driver, WIDGET_TIMEOUT, "the plot image to load", _plot)
    button = playground.find_element(By.CSS_SELECTOR, ".flowlib-train")
    button.click()
    _wait(driver, README_TRAIN_TIMEOUT, "the default training to finish and the plot to redraw", _plot_changed(first))
    _wait(driver, 10, "the Train button to be enabled again", lambda d: button.is_enabled())
    status = playground.find_element(By.CSS_SELECTOR, ".flowlib-status").text
    assert "test NLL" in status and "error" not in status.lower(), f"the training did not end well: {status!r}"
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", playground)
    time.sleep(1)  # let the page settle after the scroll
    picture.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(picture)), "could not save the screenshot"
    return status


# ----------------------------------------------------------------------------- the test


def _scratch_figures(tmp_path: Path) -> Path:
    """``$FLOWLIB_FIGURES`` when set, else a folder in ``tmp_path``: never the tracked ``figures/``."""
    folder = Path(os.environ.get("FLOWLIB_FIGURES") or tmp_path / "figures")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_server_requires_a_token(tmp_path: Path) -> None:
    """The server the browser test drives refuses requests without its token (no browser needed)."""
    pytest.importorskip("jupyterlab", reason="needs jupyterlab (pip install -r requirements.txt)")
    root = tmp_path / "root"
    root.mkdir()
    (root / CHAPTER).write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with jupyterlab(root, tmp_path / "state", tmp_path / "figures") as server:
        assert len(server.token) >= 32
        check_requires_token(server)


@needs_chromium
def test_playground_in_jupyterlab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = CHAPTERS / CHAPTER
    assert notebook.exists(), f"{notebook} is missing"
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager is skipped anyway (explicit driver)
    root = tmp_path / "chapters"
    shutil.copytree(CHAPTERS, root)  # the stored notebooks stay as they are
    figures = _scratch_figures(tmp_path)
    with jupyterlab(root, tmp_path / "state", figures) as server, chromium(tmp_path / "profile") as driver:
        check_requires_token(server)
        check_playground_chapter(driver, server, CHAPTER, figures / SCREENSHOT_NAME)


# ----------------------------------------------------------------------------- the README's picture


def make_readme_picture(picture: Path) -> str:
    """Save the README's picture: chapter 2's playground in JupyterLab after Train with its default settings.

    The same browser code as the test; the chapters run from a temporary copy
    in quick mode (the playground's settings do not depend on it), the chapter's
    own figures go to a temporary folder, and only ``picture`` is written.
    Returns the playground's status line.
    """
    import tempfile

    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        raise SystemExit(INSTALL_HINT)
    os.environ["SE_OFFLINE"] = "true"
    with tempfile.TemporaryDirectory(prefix="flowlib-readme-") as tmp:
        tmp_path = Path(tmp)
        root = tmp_path / "chapters"
        shutil.copytree(CHAPTERS, root)
        with jupyterlab(root, tmp_path / "state", tmp_path / "figures") as server, \
                chromium(tmp_path / "profile") as driver:
            return take_readme_picture(driver, server, CHAPTER, picture)


def main(argv: list[str] | None = None) -> int:
    """``python tests/test_browser.py --readme-picture [PATH]``: write the README's picture (default figures/)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--readme-picture", nargs="?", const=str(ROOT / "figures" / SCREENSHOT_NAME), metavar="PATH",
                        help=f"where to save it (default: figures/{SCREENSHOT_NAME})")
    args = parser.parse_args(argv)
    if args.readme_picture is None:
        parser.error("nothing to do: the tests run under pytest; pass --readme-picture to make the README's picture")
    status = make_readme_picture(Path(args.readme_picture).resolve())
    print(f"saved {args.readme_picture}: {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
