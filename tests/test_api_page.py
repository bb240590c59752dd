"""The API page is generated from the package's ``__all__`` lists: every public name is on it, new modules join it,
and the docstrings it shows parse (a Raises entry that napoleon would split is caught here, without a build).

``tests/test_book_pages.py`` builds the page itself with ``-W -n``; these tests call the generator directly.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

import vif
import vif.tasks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
import api_reference  # noqa: E402 (the book's extension, not an installed module)

PAGE = ROOT / "book" / "api.md"
EXPANDED = api_reference.expand(PAGE.read_text())
DOCUMENTED = set(re.findall(r"^\.\. auto\w+:: (\S+)$", EXPANDED, re.MULTILINE))


def _public_modules() -> list[types.ModuleType]:
    """The modules whose names must all be on the page: ``vif``, what ``vif.__all__`` exports, the task modules."""
    exported = [getattr(vif, name) for name in vif.__all__ if inspect.ismodule(getattr(vif, name))]
    tasks = [importlib.import_module(f"vif.tasks.{name}") for name in vif.tasks.MODULES]
    return [vif, *exported, vif.tasks, *tasks]


@pytest.mark.parametrize("module", _public_modules(), ids=lambda module: module.__name__)
def test_every_public_name_is_on_the_api_page(module):
    assert module.__name__ in DOCUMENTED, f"{module.__name__} has no section on the API page"
    missing = [name for name in api_reference.public_names(module)
               if f"{module.__name__}.{name}" not in DOCUMENTED and not inspect.ismodule(getattr(module, name))]
    assert not missing, f"{module.__name__}: {missing} are public (its __all__) but not on the API page"


def test_the_page_types_no_names_and_the_extension_is_loaded():
    """Only ``{vif-api}`` blocks choose what is documented; without the extension they would not render."""
    assert not re.search(r"^\.\. auto\w+::", PAGE.read_text(), re.MULTILINE), "autodoc directives typed into api.md"
    assert "{vif-api}" not in EXPANDED and "{vif-task-table}" not in EXPANDED
    extensions = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["local_extensions"]
    assert extensions.get("api_reference") == "_ext"


def test_the_task_table_lists_every_task_class_with_its_units():
    table = api_reference.task_table_markdown()
    for cls in vif.tasks.task_classes():
        units = inspect.getdoc(cls.n_units)
        assert units, f"{cls.__qualname__}.n_units has no docstring (the API table's units column)"
        assert f"`~{cls.__module__}.{cls.__qualname__}` | {units.splitlines()[0]} |" in table


def test_a_new_module_or_name_in_all_joins_the_page_at_the_enclosing_level(monkeypatch):
    package, module = types.ModuleType("fakepkg"), types.ModuleType("fakepkg.extra")
    module.__all__, module.LIMIT, module.helper = ["helper", "LIMIT"], 3, lambda: None
    module.helper.__module__ = "fakepkg.extra"
    package.__all__, package.extra = ["extra"], module
    monkeypatch.setitem(sys.modules, "fakepkg", package)
    monkeypatch.setitem(sys.modules, "fakepkg.extra", module)
    text = api_reference.expand("# Page\n\n## Group\n\n```{vif-api} fakepkg\n```\n\nafter\n")
    assert "### `fakepkg`\n" in text and "### `fakepkg.extra`\n" in text
    assert ".. autofunction:: fakepkg.extra.helper\n.. autodata:: fakepkg.extra.LIMIT\n" in text
    assert text.endswith("\nafter\n")


def _objects() -> list[tuple[str, object]]:
    """Every object the page documents (classes with their public methods and properties)."""
    found = []
    for name in sorted(DOCUMENTED):
        parent, _, attribute = name.rpartition(".")
        value = getattr(importlib.import_module(parent), attribute) if parent else importlib.import_module(name)
        found.append((name, value))
        if inspect.isclass(value):
            found += [(f"{name}.{member}", inner) for member, inner in vars(value).items()
                      if not member.startswith("_") and (inspect.isfunction(inner) or isinstance(inner, property))]
    return found


ENTRY = re.compile(r"^[A-Za-z_][\w.]*: ")  # "InputError: what went wrong"


def test_raises_and_warns_entries_parse():
    """Napoleon reads each line at an entry's indent as a new ``Type: description`` entry: a continuation line must
    be indented further, or the page shows its words as a bold exception name (as it did for ``vif.influence``)."""
    bad = []
    for name, value in _objects():
        doc = inspect.getdoc(value) if callable(value) or inspect.ismodule(value) or isinstance(value, property) else None
        lines = (doc or "").splitlines()
        for number, line in enumerate(lines):
            if line not in ("Raises:", "Warns:"):
                continue
            indent = None
            for entry in lines[number + 1:]:
                if not entry.startswith(" ") or not entry.strip():
                    break
                depth = len(entry) - len(entry.lstrip())
                indent = depth if indent is None else indent
                if depth == indent and not ENTRY.match(entry.strip()):
                    bad.append(f"{name}: {entry.strip()[:70]!r}")
    assert not bad, ("Raises/Warns lines read as new entries (one 'Error: text' per exception; indent continuation "
                     "lines further):\n" + "\n".join(bad))
