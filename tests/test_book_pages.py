"""The book's non-executed machinery, built in seconds: offline math and the API reference from the docstrings.

A small book with the project's own ``_config.yml`` (execution off) and the API page is built with
``-W -n``: every docstring must render without warnings and every cross-reference must resolve. The
built HTML must load MathJax from the book itself, so formulas render for a reader with no network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CDN = re.compile(r"""src=["']https?://[^"']*mathjax[^"']*["']""", re.IGNORECASE)
LOCAL = re.compile(r"""src=["'][^"':]*_static/mathjax/tex-chtml\.js["']""")


TABLE_PAGE = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Tables

```{code-cell} ipython3
import pandas as pd
from myst_nb import glue

glue("frame", pd.DataFrame({"a": [1, 2]}), display=False)
```

```{glue:figure} frame
:name: tab-frame

A glued data frame.
```

See {numref}`tab-frame`.
"""


def _build(tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "force"  # only the small table page has code
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "book/api",
                                                        "chapters": [{"file": "book/math"}, {"file": "book/tables"},
                                                                     {"file": "book/cites"}]}))
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "book" / "api.md", tmp_path / "book" / "api.md")
    shutil.copy(ROOT / "book" / "references.bib", tmp_path / "book" / "references.bib")
    shutil.copytree(ROOT / "_ext", tmp_path / "_ext")
    (tmp_path / "book" / "math.md").write_text("# Math\n\nInline $x^2$ and\n\n$$\\int_0^1 f(x)\\,dx$$\n")
    (tmp_path / "book" / "tables.md").write_text(TABLE_PAGE)
    bibliography = (ROOT / "book" / "references.md").read_text().split("\n", 1)[1]  # the book's own directive
    (tmp_path / "book" / "cites.md").write_text("# Cites\n\n{cite}`koh2017understanding,cox1972regression,"
                                                "deng2025vif,jarvelin2002ndcg`\n" + bibliography)
    result = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(tmp_path), "-W", "-n",
                             "--keep-going"], capture_output=True, text=True)
    warnings = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
                if ("WARNING" in line or "ERROR" in line) and not line.startswith("[IPKernelApp]")]  # kernel chatter
    assert result.returncode == 0 and not warnings, "\n".join(warnings) or result.stdout[-3000:]
    return tmp_path / "_build" / "html"


def _check_mathjax(html_root: Path) -> None:
    assert (html_root / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax is not copied into _static"
    pages_with_math = 0
    for page in html_root.rglob("*.html"):
        text = page.read_text(errors="ignore")
        assert not CDN.search(text), f"{page.name} loads MathJax from a CDN"
        if 'class="math' in text:  # a page with formulas must load the vendored MathJax
            pages_with_math += 1
            assert LOCAL.search(text), f"{page.name} does not load the vendored MathJax"
    assert pages_with_math, "no page with formulas was checked"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The small book, built once for every test below (each build starts a kernel: ~15 s)."""
    return _build(tmp_path_factory.mktemp("book"))


def test_api_reference_builds_without_warnings_and_math_is_served_offline(built):
    _check_mathjax(built)


def test_constants_do_not_borrow_their_types_docstring(built):
    # before: vif.__version__ read "str(object='') -> str ..." and five tuples "Built-in immutable sequence"
    text = next(built.rglob("api.html")).read_text()
    assert "str(object=" not in text and "Built-in immutable sequence" not in text
    assert "L2 penalty of the breast-cancer experiment" in text  # a constant's own #: comment stays


def test_a_glued_output_named_tab_is_numbered_as_a_table(built):
    page = (built / "book" / "tables.html").read_text()
    assert "Table 1 " in page and "Fig. 1" not in page, "the glued data frame is not numbered as a table"
    caption, content = page.index("A glued data frame."), page.index("<table")
    assert caption < content, "a table's caption goes above it"
    assert re.search(r'href="#tab-frame"[^>]*>.*?Table 1', page, re.S), "{numref} to it does not read Table 1"


def test_the_reference_list_is_author_year_like_the_citations(built):
    page = (built / "book" / "cites.html").read_text()
    labels = [re.sub(r"<[^>]+>", "", label)
              for label in re.findall(r'<span class="label"><span class="fn-bracket">\[</span>(.*?)<span', page)]
    # sorted by author, accents decoded
    assert labels == ["Cox, 1972", "Deng et al., 2025", "Järvelin and Kekäläinen, 2002", "Koh and Liang, 2017"], labels
    assert "doi.org/10.1111/j.2517-6161.1972.tb00899.x" in page, "the DOI is not linked"


def test_the_full_build_serves_math_offline_when_it_exists():
    built = ROOT / "_build" / "html"
    if (built / "index.html").exists():  # after `make book`; the test above covers a fresh clone
        _check_mathjax(built)
