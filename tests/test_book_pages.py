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

import yaml

ROOT = Path(__file__).resolve().parents[1]
CDN = re.compile(r"""src=["']https?://[^"']*mathjax[^"']*["']""", re.IGNORECASE)
LOCAL = re.compile(r"""src=["'][^"':]*_static/mathjax/tex-chtml\.js["']""")


def _build(tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "book/api",
                                                        "chapters": [{"file": "book/math"}]}))
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "book" / "api.md", tmp_path / "book" / "api.md")
    shutil.copy(ROOT / "book" / "references.bib", tmp_path / "book" / "references.bib")
    (tmp_path / "book" / "math.md").write_text("# Math\n\nInline $x^2$ and\n\n$$\\int_0^1 f(x)\\,dx$$\n")
    result = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(tmp_path), "-W", "-n",
                             "--keep-going"], capture_output=True, text=True)
    warnings = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
                if "WARNING" in line or "ERROR" in line]
    assert result.returncode == 0 and not warnings, "\n".join(warnings) or result.stdout[-3000:]
    return tmp_path / "_build" / "html"


def _check_mathjax(html_root: Path) -> None:
    assert (html_root / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax is not copied into _static"
    for page in html_root.rglob("*.html"):
        text = page.read_text(errors="ignore")
        if "mathjax" not in text.lower():
            continue
        assert LOCAL.search(text), f"{page.name} does not load the vendored MathJax"
        assert not CDN.search(text), f"{page.name} loads MathJax from a CDN"


def test_api_reference_builds_without_warnings_and_math_is_served_offline(tmp_path):
    _check_mathjax(_build(tmp_path))


def test_the_full_build_serves_math_offline_when_it_exists():
    built = ROOT / "_build" / "html"
    if (built / "index.html").exists():  # after `make book`; the test above covers a fresh clone
        _check_mathjax(built)
