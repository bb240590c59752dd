import json
from pathlib import Path

import pytest

from vif.errors import InputError
from vif.reporting import HEADLINES_FILE, Headline, book_chapters, collect_headlines, headlines_html, write_headlines


def test_headlines_round_trip_and_targets_are_judged_in_their_direction(tmp_path):
    write_headlines(tmp_path / "cox", "02_cox", [
        Headline("mean Pearson, VIF vs LOO", "accuracy", 0.995, 0.99, figure="fig-cox"),
        Headline("LOO / VIF seconds", "speed", 12.0, 100.0),
    ], quick=False)
    write_headlines(tmp_path / "intro", "01_influence", [Headline("max error", "accuracy", 1e-9, 1e-8, at_least=False)],
                    quick=True)
    table = collect_headlines(tmp_path)
    assert list(table["chapter"]) == ["01_influence", "02_cox", "02_cox"]
    assert list(table["met"]) == [True, True, False]
    assert list(table["quick"]) == [True, False, False]
    assert table.loc[1, "figure"] == "fig-cox"


def test_no_headlines_gives_an_empty_table_with_the_columns(tmp_path):
    table = collect_headlines(tmp_path)
    assert table.empty and "met" in table.columns


def test_bad_headlines_are_refused_with_the_reason(tmp_path):
    with pytest.raises(InputError, match="non-finite"):
        write_headlines(tmp_path, "x", [Headline("r", "accuracy", float("nan"), 0.9)], quick=True)
    with pytest.raises(InputError, match="kind"):
        write_headlines(tmp_path, "x", [Headline("r", "speedup", 2.0)], quick=True)
    with pytest.raises(InputError, match="no headlines"):
        write_headlines(tmp_path, "x", [], quick=True)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / HEADLINES_FILE).write_text(json.dumps({"chapter": "x"}))
    with pytest.raises(InputError, match="Rerun the chapter"):
        collect_headlines(tmp_path)


def test_the_html_table_links_chapters_and_figures_and_marks_missed_targets(tmp_path):
    write_headlines(tmp_path / "c", "06_contrastive", [
        Headline("LOO / VIF seconds", "speed", 31.2, 100.0, asserted=20.0),
        Headline("Pearson", "accuracy", 0.97, figure="fig-cl-scatter"),
    ], quick=False)
    html = headlines_html(collect_headlines(tmp_path))
    assert '<a href="06_contrastive.html">6</a>' in html
    assert '<a href="06_contrastive.html#fig-cl-scatter">figure</a>' in html
    assert "31.2x" in html and "\u2265\u00a0100.0x (asserted \u2265\u00a020.0x)" in html and "missed" in html
    assert "<td>0.9700</td><td>\u2014</td><td>\u2014</td>" in html  # no target: no verdict


def test_the_chapters_come_from_the_table_of_contents_in_its_order(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nparts:\n  - caption: Methods\n    chapters:\n"
                   "      - file: book/02_cox.md\n        sections:\n          - file: book/02b_extra\n"
                   "      - file: book/glance\n  - caption: More\n    chapters:\n      - file: book/01_influence\n")
    assert book_chapters(toc) == ["02_cox", "02b_extra", "01_influence"]
    book = book_chapters(Path(__file__).resolve().parents[1] / "_toc.yml")
    assert book[0] == "01_influence" and len(book) >= 7 and "glance" not in book
    with pytest.raises(InputError, match="_toc.yml"):
        book_chapters(tmp_path / "missing.yml")
