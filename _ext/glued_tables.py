"""Sphinx extension: a glued output named ``tab-...`` is a numbered *table* ("Table n"), not a figure.

myst-nb's ``{glue:figure}`` is the way to give an executed DataFrame a caption and a label, but it makes
a figure, so the page would call it "Fig. n". Every ``{glue:figure}`` whose ``:name:`` starts with
``tab-`` becomes a :class:`glued_table` node: numbered with the tables (``numfig_format["table"]``), its
caption above the content, and ``{numref}`` to it reads "Table n".
"""

from __future__ import annotations

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform

TABLE_PREFIX = "tab-"


class glued_table(nodes.General, nodes.Element):  # noqa: N801 (docutils names nodes in lower case)
    """A captioned executed output (usually a DataFrame) numbered as a table."""


class GluedFigureToTable(SphinxTransform):
    """Replace each figure labelled ``tab-...`` by a :class:`glued_table` with its caption first."""

    default_priority = 500  # after myst-nb has pasted the glued outputs, before labels are collected

    def apply(self, **kwargs: object) -> None:
        """Swap the nodes in place; the document's id map points at the new node."""
        for figure in list(self.document.findall(nodes.figure)):
            if not any(name.startswith(TABLE_PREFIX) for name in figure["names"]):
                continue
            captions = [child for child in figure.children if isinstance(child, nodes.caption)]
            others = [child for child in figure.children if not isinstance(child, nodes.caption)]
            table = glued_table("", *captions, *others, ids=figure["ids"], names=figure["names"],
                                classes=["glued-table", *figure["classes"]])
            figure.replace_self(table)
            for node_id in table["ids"]:
                self.document.ids[node_id] = table


def visit_glued_table(translator: object, node: glued_table) -> None:
    """Open a ``div.glued-table`` carrying the node's ids (the caption writes "Table n")."""
    translator.body.append(translator.starttag(node, "div", CLASS="glued-table"))


def depart_glued_table(translator: object, node: glued_table) -> None:
    """Close the ``div``."""
    translator.body.append("</div>\n")


def setup(app: Sphinx) -> dict[str, object]:
    """Register the node as an enumerable of type ``table`` and the transform."""
    app.add_enumerable_node(glued_table, "table", html=(visit_glued_table, depart_glued_table))
    app.add_transform(GluedFigureToTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
