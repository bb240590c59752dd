"""Headline results: each chapter writes its asserted numbers to JSON; one page collects them.

A chapter calls :func:`write_headlines` in its checks cell with the numbers it asserts (measured value,
target, whether the target is a floor or a ceiling, the figure that shows it). The "Results at a glance"
page calls :func:`collect_headlines` on the folder that holds every chapter's output folder and shows one
table; :func:`book_chapters` reads which chapters to expect from the book's ``_toc.yml``. Nothing on that page
is typed: every number comes from the run that wrote the JSON file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .errors import InputError

__all__ = ["HEADLINES_FILE", "Headline", "write_headlines", "read_headlines", "collect_headlines", "headlines_html",
           "book_chapters"]

HEADLINES_FILE = "headlines.json"


@dataclass(frozen=True)
class Headline:
    """One asserted result of a chapter.

    Attributes:
        result: what is measured, in words (e.g. "mean Pearson, VIF vs exact LOO, SUPPORT").
        kind: ``"accuracy"`` or ``"speed"`` (a speed-up ratio, measured in the same run).
        value: the measured number.
        target: the number the chapter set out to reach, or ``None`` for a number reported without one.
        asserted: the number the chapter's checks assert (``None``: the target itself). Lower than the
            target where a target was missed: the page then shows the target, the floor and the measurement.
        at_least: ``True`` if ``value`` must be ``>= target``, ``False`` if ``<= target``.
        figure: the page anchor of the figure or table that shows it (e.g. ``"fig-cox-scatter"``), or ``""``.
    """

    result: str
    kind: str
    value: float
    target: float | None = None
    asserted: float | None = None
    at_least: bool = True
    figure: str = ""

    def met(self) -> bool | None:
        """Whether the target holds (``None`` without a target)."""
        if self.target is None:
            return None
        return self.value >= self.target if self.at_least else self.value <= self.target


def write_headlines(out_dir: str | os.PathLike, chapter: str, headlines: list[Headline], *, quick: bool) -> Path:
    """Write a chapter's headlines to ``out_dir/headlines.json``; returns the path.

    ``chapter`` is the page name without suffix (``"02_cox"``), used for links. ``quick``: the run's size.
    """
    if not headlines:
        raise InputError(f"{chapter}: no headlines to write; pass the chapter's asserted results.")
    for headline in headlines:
        if headline.kind not in ("accuracy", "speed"):
            raise InputError(f"{chapter}: headline kind must be 'accuracy' or 'speed', got {headline.kind!r}.")
        if not math.isfinite(float(headline.value)):
            raise InputError(f"{chapter}: headline {headline.result!r} has a non-finite value {headline.value}.")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / HEADLINES_FILE
    rows = [{**asdict(headline), "value": float(headline.value)} for headline in headlines]
    path.write_text(json.dumps({"chapter": chapter, "quick": bool(quick), "headlines": rows}, indent=2) + "\n")
    return path


def read_headlines(path: str | os.PathLike) -> tuple[str, bool, list[Headline]]:
    """``(chapter, quick, headlines)`` from one file written by :func:`write_headlines`."""
    try:
        record = json.loads(Path(path).read_text())
        return record["chapter"], bool(record["quick"]), [Headline(**row) for row in record["headlines"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a headlines file written by vif.reporting.write_headlines ({error}). "
                         "Rerun the chapter that writes it.") from error


def collect_headlines(root: str | os.PathLike) -> pd.DataFrame:
    """One row per headline from every ``root/*/headlines.json``, ordered by chapter.

    Columns: ``chapter``, ``quick``, ``result``, ``kind``, ``value``, ``target``, ``asserted``, ``at_least``,
    ``met`` (whether the target holds; ``None`` without a target), ``figure``.
    An empty frame with these columns if nothing was found.
    """
    rows = []
    for path in sorted(Path(root).glob(f"*/{HEADLINES_FILE}")):
        chapter, quick, headlines = read_headlines(path)
        rows += [{"chapter": chapter, "quick": quick, **asdict(headline), "met": headline.met()}
                 for headline in headlines]
    columns = ["chapter", "quick", "result", "kind", "value", "target", "asserted", "at_least", "met", "figure"]
    return pd.DataFrame(rows, columns=columns).sort_values(["chapter"], kind="stable").reset_index(drop=True)


def headlines_html(table: pd.DataFrame) -> str:
    """The collected headlines as an HTML table with links to each chapter and to the figure that shows it.

    ``table`` comes from :func:`collect_headlines`. Columns: chapter (linked), result, measured value,
    target (with the asserted floor in brackets where it differs), whether the target is met, and a link to
    the figure or table. Accuracy values get four decimals, speed-ups one (``"x"`` appended); a missing
    target shows as an em dash.
    """
    def missing(value: object) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    def number(value: float, kind: str) -> str:
        return f"{value:.1f}x" if kind == "speed" else f"{value:.4f}"

    rows = []
    for _, row in table.iterrows():
        page, relation = f"{row['chapter']}.html", "\u2265" if row["at_least"] else "\u2264"
        target = "\u2014"
        if not missing(row["target"]):
            target = f"{relation}\u00a0{number(row['target'], row['kind'])}"
            if not missing(row["asserted"]) and row["asserted"] != row["target"]:
                target += f" (asserted {relation}\u00a0{number(row['asserted'], row['kind'])})"
        verdict = "\u2014" if missing(row["met"]) else ("met" if row["met"] else "<strong>missed</strong>")
        shown = "\u2014"
        if row["figure"]:
            kind = "table" if str(row["figure"]).startswith("tab-") else "figure"
            shown = f'<a href="{page}#{row["figure"]}">{kind}</a>'
        number_in_book = str(row["chapter"]).split("_")[0].lstrip("0") or "0"
        rows.append(f'<tr><td><a href="{page}">{number_in_book}</a></td><td>{row["result"]}</td>'
                    f'<td>{number(row["value"], row["kind"])}</td><td>{target}</td><td>{verdict}</td>'
                    f"<td>{shown}</td></tr>")
    head = "<tr><th>ch.</th><th>result</th><th>measured</th><th>target</th><th>met?</th><th>shown in</th></tr>"
    return (f'<div class="table-wrapper"><table class="table"><thead>{head}</thead><tbody>'
            f'{"".join(rows)}</tbody></table></div>')


def book_chapters(toc_path: str | os.PathLike) -> list[str]:
    """The numbered chapters of the book's table of contents, in its order: page names such as ``"02_cox"``.

    ``toc_path`` is the Jupyter Book ``_toc.yml``; a chapter is a listed file whose name starts with a digit
    (parts and nested sections included; a suffix such as ``.md`` is dropped). Reads the file with PyYAML,
    which the book's requirements install.
    """
    import yaml  # the book's dependency, not the package's: only the book calls this

    try:
        toc = yaml.safe_load(Path(toc_path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"{toc_path}: cannot read the book's table of contents ({error}). Pass the path of "
                         "_toc.yml (from a chapter's folder: '../_toc.yml').") from error
    files = []

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            files.append(entry.get("file", ""))
            walk(entry.get("sections", []))

    walk([{"file": toc.get("root", "")}, *toc.get("chapters", [])])
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return [Path(name).stem for name in files if Path(name).name[:1].isdigit()]
