"""The book's website (``python3 run.py site``): built with warnings as errors, every link resolving, and every
page read in headless Chromium with the network cut off.

The build goes to a temporary folder (never ``site/`` or a tracked file). The browser reaches only the local
server: ``--host-resolver-rules`` maps every other host to nothing, and every request the pages make is read
from the DevTools network log, so a page that asks any other host for anything (a CDN's script, font or
style) fails the test even though the request could not succeed. On every page: no such request, no console
error, MathJax finished with no raw TeX left in the text, every image loaded; every solution hidden until
its summary is clicked; previous / next links in chapter order; the offline search finds chapter 6 for
"squeeze". Screenshots of the landing page and chapter 3 go to ``$FLOWLIB_FIGURES`` (the test command's
scratch folder) or the test's temporary folder, for a person to look at.
"""

from __future__ import annotations

import functools
import html
import http.server
import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from conftest import serve_on_localhost

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("site_build", ROOT / "docs" / "build.py")
site_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(site_build)

BUILD_BUDGET_S = 120  # the limit for a build on 2 cores


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The site built once for this module: ``{"out": folder, "seconds": build time}``."""
    tmp = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    site_build.build(out=tmp / "site", source=tmp / "src")
    return {"out": tmp / "site", "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- the build


def test_builds_in_time_with_every_chapter(built):
    assert built["seconds"] < BUILD_BUDGET_S, f"the build took {built['seconds']:.0f} s"
    pages = {p.stem for p in built["out"].glob("*.html")}
    for notebook in site_build.chapter_files():
        assert notebook.stem in pages
    assert {"results", "trainer", "speed", "flowlib", "search"} <= pages
    assert (built["out"] / "_static" / "mathjax" / "tex-chtml.js").is_file()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if d.get("id"):
            self.ids.add(d["id"])
        for key in ("href", "src"):
            if d.get(key) and not (tag == "link" and d.get("rel") in ("canonical",)):
                self.links.append(d[key])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(errors="replace"))
    return parser


def test_every_internal_link_and_anchor_resolves(built):
    out = built["out"]
    pages = [p for p in out.rglob("*.html") if p.relative_to(out).parts[0] not in ("_static", "_sources")]
    parsed = {p: _parse(p) for p in pages}
    broken = []
    for page, links in parsed.items():
        for link in links.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//") or link.startswith("javascript:"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(out)} -> {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(out)} -> {link} (no such anchor)")
    assert not broken, "\n".join(broken[:30])


def test_each_chapter_offers_its_stored_notebook(built):
    for notebook in site_build.chapter_files():
        html = (built["out"] / f"{notebook.stem}.html").read_text()
        assert f'href="_sources/{notebook.name}"' in html
        assert (built["out"] / "_sources" / notebook.name).read_bytes() == notebook.read_bytes()


def _summaries(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", s).strip() for s in re.findall(r"<summary[^>]*>(.*?)</summary>", html, flags=re.S)]


def test_solutions_are_collapsed_in_the_html(built):
    html = (built["out"] / "03-affine-coupling.html").read_text()
    assert "Solution 3.1" in _summaries(html)  # an answer in words
    assert "<details open" not in html


def test_a_solution_is_shown_as_its_closed_parts_in_their_order():
    from flowlib.book.solutions import parse_answers

    answers = parse_answers("## Solution 4.5\n\nBefore the code.\n\n## Solution 4.5, discussion\n\nAfter it.\n")
    element = [{"output_type": "display_data", "data": {"text/html": ["<details>...</details>"]}, "metadata": {}}]

    def cell(source, kept=None, cell_type="code"):
        meta = {"tags": ["solution"], **({"solution_output": kept} if kept else {})}
        return {"cell_type": cell_type, "id": "c", "source": source, "outputs": [], "metadata": meta}

    words, code, after = site_build.show_solution_collapsed(cell('# Solution 4.5\nsolution("4.5")', element), answers)
    assert words["source"].startswith('<details class="solution">\n<summary>Solution 4.5</summary>\n\nBefore')
    assert after["source"].startswith('<details class="solution">\n<summary>Solution 4.5, discussion</summary>')
    assert code["outputs"] == element and "remove-input" in code["metadata"]["tags"]
    assert "solution_output" not in code["metadata"]
    # chapter 4's solutions file holds code for 4.5: stored without its element, the site would show nothing of it
    with pytest.raises(ValueError, match="without the output of its code"):
        site_build.show_solution_collapsed(cell('# Solution 4.5\nsolution("4.5")'), {})
    for refused in (cell("# Solution 4.1\nprint(2)", element), cell("**Solution 4.1.** It is 2.", cell_type="markdown")):
        with pytest.raises(ValueError, match="chapters/solutions/"):  # its answer would be in the page's source
            site_build.show_solution_collapsed(refused, answers)


def test_a_solution_kept_in_its_file_shows_only_its_closed_element(built):
    page = (built["out"] / "01-change-of-variables.html").read_text()
    assert "Solution 1.1 (click to show the code and its output)" in _summaries(page)
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert 'solution("1.1")' not in text  # the cell's input is not shown, only the element it stored
    assert "<details open" not in page


def test_widget_cells_show_their_picture_and_caption(built):
    html = (built["out"] / "02-additive-coupling.html").read_text()
    assert "Run this cell in JupyterLab to use the widget" in html
    assert "Loading widget" not in html and "application/vnd.jupyter.widget-view" not in html


# ----------------------------------------------------------------------------- in the browser

browser_support = pytest.importorskip("browser_support")


@pytest.fixture(scope="module")
def server(built) -> Iterator[str]:
    """The built site served on 127.0.0.1; its base URL."""
    with serve_on_localhost(functools.partial(_QuietHandler, directory=str(built["out"]))) as url:
        yield url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (os.access(browser_support.CHROMIUM, os.X_OK) and os.access(browser_support.CHROMEDRIVER, os.X_OK)):
        pytest.skip(browser_support.INSTALL_HINT)
    cut_off = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",)
    with browser_support.chromium(tmp_path_factory.mktemp("profile"), cut_off, network_log=True) as d:
        d.set_page_load_timeout(60)
        yield d


def _requests(driver: Any) -> list[str]:
    """URLs of the network requests made since the last call (DevTools log; the browser's own chrome:// pages
    are not the network)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith(("chrome:", "chrome-untrusted:", "data:", "about:")):
                urls.append(url)
    return urls


_MATHJAX_DONE = """
const done = arguments[arguments.length - 1];
if (!document.querySelector('script[src*="mathjax"]')) { done("no math"); return; }  // Sphinx adds it where needed
const wait = (tries) => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done("done"), (e) => done("MathJax failed: " + e));
  } else if (tries > 300) { done("MathJax never started"); }
  else { setTimeout(() => wait(tries + 1), 100); }
};
wait(0);
"""

_TEXT_OUTSIDE_CODE = """
const article = document.querySelector("article") || document.body;
const copy = article.cloneNode(true);
copy.querySelectorAll("pre, code, script, style, .highlight, .MathJax_Preview").forEach(e => e.remove());
return copy.innerText;
"""


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    driver.set_script_timeout(60)
    state = driver.execute_async_script(_MATHJAX_DONE)
    assert state in ("done", "no math"), f"{url}: {state}"


def _page_problems(driver: Any, base: str, page: str) -> list[str]:
    _requests(driver)  # drop what came before
    _open(driver, base + page)
    problems = []
    outside = [u for u in _requests(driver) if not u.startswith(base)]
    problems += [f"request to another host: {u}" for u in outside]
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    problems += [f"console error: {e}" for e in errors]
    text = driver.execute_script(_TEXT_OUTSIDE_CODE)
    for raw in ("\\(", "\\[", "\\frac", "$$"):
        if raw in text:
            at = text.index(raw)
            problems.append(f"raw TeX {raw!r} left: ...{text[max(0, at - 60):at + 60]!r}...")
    if re.search(r"(?<![\w$])\$[^$\s][^$]*\$(?![\w$])", text):
        problems.append("raw $...$ left in the text")
    broken = driver.execute_script(
        "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    problems += [f"image not loaded: {src}" for src in broken]
    return [f"{page}: {p}" for p in problems]


@browser_support.needs_chromium
def test_every_page_reads_offline(built, server, driver):
    pages = sorted(str(p.relative_to(built["out"])) for p in built["out"].rglob("*.html")
                   if p.name not in ("genindex.html", "search.html", "index.html")
                   and p.relative_to(built["out"]).parts[0] not in ("_static", "_sources"))
    problems = []
    for page in pages:
        problems += _page_problems(driver, server, page)
    assert not problems, "\n".join(problems[:40])


@browser_support.needs_chromium
def test_solutions_open_only_when_clicked(server, driver):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(driver, server + "03-affine-coupling.html")
    details = driver.find_elements(By.CSS_SELECTOR, "details")
    solutions = [d for d in details if d.find_element(By.TAG_NAME, "summary").text.startswith("Solution")]
    assert len(solutions) >= 4
    for d in solutions:
        summary = d.find_element(By.TAG_NAME, "summary")
        inner = [e for e in d.find_elements(By.XPATH, "./*") if e.tag_name != "summary"]
        assert inner and not any(e.is_displayed() for e in inner), summary.text
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", summary)
        summary.click()
        # the theme fades an opened cell in (opacity 0 to 1 over 0.3 s), and an invisible element is not "displayed"
        try:
            WebDriverWait(driver, 5).until(lambda _: any(e.is_displayed() for e in inner))
        except TimeoutException:
            pytest.fail(f"{summary.text}: nothing shown after a click")


@browser_support.needs_chromium
def test_previous_and_next_follow_the_chapters(server, driver):
    from selenium.webdriver.common.by import By

    _open(driver, server + "03-affine-coupling.html")
    prev = driver.find_element(By.CSS_SELECTOR, "a.left-prev").get_attribute("href")
    nxt = driver.find_element(By.CSS_SELECTOR, "a.right-next").get_attribute("href")
    assert prev.endswith("02-additive-coupling.html") and nxt.endswith("04-images-as-data.html")
    _open(driver, server + "00-index.html")
    assert driver.find_element(By.CSS_SELECTOR, "a.right-next").get_attribute("href").endswith(
        "01-change-of-variables.html")


@browser_support.needs_chromium
def test_offline_search_finds_the_squeeze_chapter(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _requests(driver)
    driver.get(server + "search.html?q=squeeze")
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li") or "did not match" in d.page_source)
    hits = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#search-results li a")]
    assert any("06-squeeze.html" in h for h in hits), hits
    assert all(u.startswith(server) for u in _requests(driver))


@browser_support.needs_chromium
def test_screenshots_for_a_person(server, driver, tmp_path):
    folder = Path(os.environ.get("FLOWLIB_FIGURES") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    for page in ("00-index.html", "03-affine-coupling.html"):
        _open(driver, server + page)
        shot = folder / f"site-{page.removesuffix('.html')}.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_readme_stays_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 80
    for notebook in site_build.chapter_files():
        assert f"(chapters/{notebook.name})" in readme, f"README does not list {notebook.name}"
    for command in ("python3 run.py book", "python3 run.py test", "python3 run.py site"):
        assert command in readme
    for page in site_build.PAGES:
        assert f"(docs/{page}.md)" in readme


def test_references_link_to_the_bibliography(built):
    out = built["out"]
    for notebook in site_build.chapter_files():
        if notebook.stem in (site_build.FRONT, "bibliography"):
            continue
        html = (out / f"{notebook.stem}.html").read_text()
        assert "bibliography.html#arxiv-" in html, f"{notebook.stem}: no reference links to the bibliography"
    # ... whose arXiv links are well formed: the link text names the same paper as the address.
    bibliography = (out / "bibliography.html").read_text()
    links = re.findall(r'href="(https?://arxiv\.org/abs/[^"]+)"[^>]*>\s*arXiv:([0-9.]+)\s*<', bibliography)
    assert len(links) >= 10
    for url, number in links:
        assert url == f"https://arxiv.org/abs/{number}", (url, number)
