"""Sphinx extension: the reference list labelled and sorted author-year, like the citations in the text.

The text cites "Deng et al. (2025)" (``bibtex_reference_style: author_year``); pybtex's default list style
labels entries [1], [2], ... in citation order. This registers the pybtex style ``authoryear``: the unsrt
formatting, entries sorted by author, year and title, labelled "Deng et al., 2025" (with a, b, ... when two
entries would share a label). Select it with ``bibtex_default_style: authoryear``.
"""

from __future__ import annotations

import codecs
from collections import Counter
from collections.abc import Iterable, Iterator

import latexcodec  # noqa: F401 (registers the 'ulatex' codec)
from pybtex.database import Entry
from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.application import Sphinx


def _surname(person: object) -> str:
    """The surname as printed: LaTeX accents decoded to letters (Järvelin), braces dropped."""
    latex = " ".join(person.prelast_names + person.last_names)
    return codecs.decode(latex, "ulatex").replace("{", "").replace("}", "")


def author_year(entry: Entry) -> str:
    """``"Cox, 1972"``, ``"Koh and Liang, 2017"`` or ``"Deng et al., 2025"`` (editors or the key if no author)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    year = entry.fields.get("year", "n.d.")
    if not people:
        return f"{entry.key}, {year}"
    if len(people) == 1:
        names = _surname(people[0])
    elif len(people) == 2:
        names = f"{_surname(people[0])} and {_surname(people[1])}"
    else:
        names = f"{_surname(people[0])} et al."
    return f"{names}, {year}"


class AuthorYearLabels(BaseLabelStyle):
    """Author-year labels, made unique with a, b, ... in list order."""

    def format_labels(self, sorted_entries: Iterable[Entry]) -> Iterator[str]:
        """One label per entry, in the order given."""
        entries = list(sorted_entries)
        labels = [author_year(entry) for entry in entries]
        repeated, seen = Counter(labels), Counter()
        for label in labels:
            if repeated[label] > 1:
                seen[label] += 1
                yield f"{label}{'abcdefghijklmnopqrstuvwxyz'[seen[label] - 1]}"
            else:
                yield label


class AuthorYearStyle(UnsrtStyle):
    """unsrt formatting, sorted by author, year and title, with author-year labels."""

    default_label_style = AuthorYearLabels
    default_sorting_style = "author_year_title"


def setup(app: Sphinx) -> dict[str, object]:
    """Register the pybtex style ``authoryear``."""
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
