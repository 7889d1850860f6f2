"""Sphinx settings of the book's website (built by ``python3 run.py site``; see docs/build.py).

The chapters are the stored notebooks, rendered without executing them
(``nb_execution_mode = "off"``). Nothing is fetched from the network: MathJax is
served from the site itself (``_static/mathjax``, copied from the pinned
``sphinx-mathjax-offline`` package by docs/build.py), the theme's fonts and scripts are its own.
"""

project = "Flow models"
author = "the authors of Flow models"
copyright = "2026, the authors of Flow models"
root_doc = "00-index"  # the landing page; index.html (in _extra) sends a browser there

extensions = ["myst_nb"]
nb_execution_mode = "off"
nb_merge_streams = True
# Widgets are stored without their state: show the picture and caption stored beside each one.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_render_markdown_format = "myst"  # Markdown outputs (a chapter's printed tables) get the same $math$ as its text
myst_dmath_double_inline = True  # $$...$$ inside a paragraph, as the chapters write it (and JupyterLab shows it)
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]
exclude_patterns = ["_build", "_extra", "results", "solutions", "benchmarks/README.md", "_flowlib-layout.md"]  # benchmarks/results/*.md are pages

# MathJax 3 from the site itself: docs/build.py copies the MathJax (scripts and woff fonts) of the pinned
# sphinx-mathjax-offline package into _static/mathjax.
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {"chtml": {"matchFontHeight": False}}

html_theme = "sphinx_book_theme"
html_title = "Flow models"
html_favicon = "_static/favicon.svg"
html_context = {"default_mode": "light"}
html_static_path = ["_static"]
html_extra_path = ["_extra"]
html_js_files = ["book.js"]
html_css_files = ["book.css"]
html_sourcelink_suffix = ""  # the download button offers the notebook itself
html_theme_options = {
    "use_download_button": True,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_last_updated_fmt = None
