"""Execute every chapter listed in ``_toc.yml`` through papermill with ``QUICK=True`` (CI sizes).

A failing cell (including a chapter's own threshold assertions) fails the test with its traceback.
The full-size (publication) runs are marked ``slow``: ``pytest -m slow``.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))
            for part in entry.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return files


def _chapters() -> list[Path]:
    """The toc's executable pages: MyST notebooks (with code cells) or .ipynb files."""
    chapters = []
    for name in _toc_files():
        markdown, notebook = ROOT / f"{name}.md", ROOT / f"{name}.ipynb"
        if notebook.exists():
            chapters.append(notebook)
        elif markdown.exists() and "{code-cell}" in markdown.read_text():
            chapters.append(markdown)
    return chapters


CHAPTERS = _chapters()


def test_every_chapter_is_listed_and_has_a_parameters_cell():
    assert len(CHAPTERS) >= 4, f"expected the four chapters in _toc.yml, found {CHAPTERS}"
    for path in CHAPTERS:
        notebook = jupytext.read(path)
        tagged = [cell for cell in notebook.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        source = tagged[0].source
        for name in ("QUICK", "SEED", "OUT_DIR"):
            assert f"{name} =" in source, f"{path.name}: the parameters cell must define {name}"


VISIBLE_LINE_LIMIT = 100  # characters; wider code runs off the right edge of the rendered page
HIDDEN = {"hide-input", "remove-input", "remove-cell", "hide-cell"}


def test_visible_code_lines_fit_the_page():
    """Code a reader sees on the page (cells not hidden or removed) has no line over the limit."""
    long_lines = []
    for path in CHAPTERS:
        for number, cell in enumerate(jupytext.read(path).cells):
            if cell.cell_type != "code" or HIDDEN & set(cell.get("metadata", {}).get("tags", [])):
                continue
            long_lines += [f"{path.name} cell {number}: {len(line)} characters: {line.strip()[:60]}"
                           for line in cell.source.splitlines() if len(line) > VISIBLE_LINE_LIMIT]
    assert not long_lines, "wrap these visible code lines:\n" + "\n".join(long_lines)


def _execute(path: Path, tmp_path: Path, quick: bool) -> None:
    notebook = jupytext.read(path)
    source = tmp_path / f"{path.stem}.ipynb"
    nbformat.write(notebook, source)
    executed = tmp_path / f"{path.stem}.executed.ipynb"
    papermill.execute_notebook(
        str(source),
        str(executed),
        parameters={"QUICK": quick, "OUT_DIR": str(tmp_path / "out")},
        kernel_name="python3",
        cwd=str(path.parent),
        progress_bar=False,
        execution_timeout=1800,
    )
    _check_glue(nbformat.read(executed, as_version=4), path.name)


def _check_glue(notebook: nbformat.NotebookNode, name: str) -> None:
    """What `make book -W` would reject: a glued numpy scalar (myst-nb cannot format its repr) or a key glued twice."""
    seen, problems = set(), []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if not record:
                continue
            key = record["name"]
            if key in seen:
                problems.append(f"glue key {key!r} is glued more than once")
            seen.add(key)
            text = output.get("data", {}).get(f"{record['mime_prefix']}text/plain", "")
            if text.startswith("np."):
                problems.append(f"glue key {key!r} holds a numpy scalar {text}: glue float(...) or int(...)")
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_chapter_executes_quick(path: Path, tmp_path: Path):
    _execute(path, tmp_path, quick=True)


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("path", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_chapter_executes_full_size(path: Path, tmp_path: Path):
    _execute(path, tmp_path, quick=False)
