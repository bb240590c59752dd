"""Sphinx extension: the API page is generated from the package's ``__all__`` lists, so it cannot miss a name.

In a page, a fenced block ``{vif-api}`` naming modules is replaced (on ``source-read``) by one section per
module, one heading level below the heading the block sits under::

    ```{vif-api} vif vif.tasks
    ```

Each section shows the module's docstring (``automodule``) and one autodoc entry per public name: the
module's ``__all__`` (or, without one, the public names it defines), in that order. A package's entries
that are modules get their own sections after it (``vif`` -> ``vif.fit``, ``vif.solvers``, ...), so
``vif.__all__`` decides which modules the page documents. A ``{vif-task-table}`` block is replaced by the
table of task classes (:func:`vif.tasks.task_classes`) with their units (the docstring of ``n_units``).

The tests call :func:`api_markdown` and :func:`documented_names` instead of building the book.
"""

from __future__ import annotations

import importlib
import inspect
import re
from types import ModuleType

from sphinx.application import Sphinx

BLOCK = re.compile(r"^```\{(vif-api|vif-task-table)\}[ \t]*([^\n]*)\n```[ \t]*$", re.MULTILINE)
HEADING = re.compile(r"^(#{1,6}) ", re.MULTILINE)


def public_names(module: ModuleType) -> list[str]:
    """``module.__all__``, or the public names the module defines (not those it imports) when it has none."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [name for name, value in vars(module).items() if not name.startswith("_")
            and getattr(value, "__module__", None) == module.__name__ and (inspect.isclass(value) or callable(value))]


def _entry(module: ModuleType, name: str) -> str:
    """The autodoc directive for ``module.name``: class (with its members), exception, function or data."""
    value, full = getattr(module, name), f"{module.__name__}.{name}"
    if inspect.isclass(value) and issubclass(value, BaseException):
        return f".. autoexception:: {full}\n   :members:"
    if inspect.isclass(value):
        return f".. autoclass:: {full}\n   :members:"
    if callable(value) and not hasattr(value, "__origin__"):  # a typing alias is data, not a function
        return f".. autofunction:: {full}"
    return f".. autodata:: {full}"


def _submodules(module: ModuleType) -> list[ModuleType]:
    return [getattr(module, name) for name in public_names(module) if inspect.ismodule(getattr(module, name))]


def _section(module: ModuleType, level: int) -> str:
    entries = [f".. automodule:: {module.__name__}"]
    entries += [_entry(module, name) for name in public_names(module) if not inspect.ismodule(getattr(module, name))]
    block = "\n".join(entries)
    return f"{'#' * level} `{module.__name__}`\n\n```{{eval-rst}}\n{block}\n```\n"


def api_markdown(modules: list[str], level: int = 2) -> str:
    """The MyST sections documenting ``modules`` (dotted names) and, for a package, the modules in its ``__all__``."""
    sections = []
    for name in modules:
        module = importlib.import_module(name)
        sections.append(_section(module, level))
        sections += [_section(submodule, level) for submodule in _submodules(module)]
    return "\n".join(sections)


def documented_names(modules: list[str]) -> set[str]:
    """Every dotted name :func:`api_markdown` documents for ``modules`` (modules and their members)."""
    text = api_markdown(modules)
    return set(re.findall(r"^\.\. auto\w+:: (\S+)$", text, re.MULTILINE))


def task_table_markdown() -> str:
    """A table of the task classes: module, class (linked to its entry), units (first line of ``n_units``'s doc)."""
    import vif.tasks

    rows = ["| module | task class | units |", "|---|---|---|"]
    for cls in vif.tasks.task_classes():
        units = inspect.getdoc(getattr(cls, "n_units", None)) or ""
        module = cls.__module__.rsplit(".", 1)[-1]
        rows.append(f"| `{module}` | {{class}}`~{cls.__module__}.{cls.__qualname__}` | "
                    f"{units.splitlines()[0] if units else ''} |")
    return "\n".join(rows) + "\n"


def expand(source: str) -> str:
    """``source`` with every ``{vif-api}`` / ``{vif-task-table}`` block replaced by what it stands for."""
    def replace(match: re.Match) -> str:
        if match.group(1) == "vif-task-table":
            return task_table_markdown()
        headings = HEADING.findall(source, 0, match.start())
        level = len(headings[-1]) + 1 if headings else 1
        return api_markdown(match.group(2).split(), level)

    return BLOCK.sub(replace, source)


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    source[0] = expand(source[0])


def drop_builtin_docstring(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    """Drop the docstring autodoc borrows from a constant's builtin type; keep a constant's own ``#:`` comment.

    Without a comment, autodoc documents ``vif.__version__`` with ``str(object='') -> str`` and ``BACKENDS``
    with the tuple docstring.
    """
    if what in ("data", "attribute") and type(obj).__module__ == "builtins" and lines and type(obj).__doc__:
        if lines[0].strip() == inspect.cleandoc(type(obj).__doc__).splitlines()[0].strip():
            lines.clear()


def setup(app: Sphinx) -> dict[str, object]:
    """Register the ``source-read`` hook and the docstring filter."""
    app.connect("source-read", _source_read)
    app.connect("autodoc-process-docstring", drop_builtin_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
