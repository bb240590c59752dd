"""The project's plumbing stays consistent: one dependency list, workflows that parse, CI = README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_requirements_are_pinned_and_torch_is_the_cpu_pin():
    requirements = _requirements()
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line) for line in requirements), requirements
    assert "torch==2.13.0" in requirements


def test_conda_environment_installs_the_same_requirements_file():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert pip_sections == [["-r requirements.txt"]]
    assert "python=3.11" in environment["dependencies"]


def test_workflows_are_valid_and_call_the_makefile():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert {path.name for path in workflows} >= {"tests.yml", "book.yml"}
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, workflows)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    commands = " ".join(step.get("run", "") for path in workflows
                        for job in yaml.safe_load(path.read_text())["jobs"].values() for step in job.get("steps", []))
    assert "make test" in commands and "make book" in commands


def test_ci_runs_the_readme_test_command():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == ["make test"]
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme


def test_book_config_fails_on_errors_and_keeps_math_extensions():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    extensions = config["parse"]["myst_enable_extensions"]
    assert {"amsmath", "dollarmath", "colon_fence"} <= set(extensions)
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert config["execute"]["execute_notebooks"] == "cache"
    assert config["bibtex_bibfiles"] == ["book/references.bib"]


def test_the_book_collects_only_its_pages_not_tool_folders():
    """Sphinx reads every .md/.ipynb that exclude_patterns lets through; a stray one fails the -W build."""
    from sphinx.util.matching import Matcher

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    excluded = Matcher(config["exclude_patterns"])
    for made_by_tools in (".pytest_cache", ".ruff_cache", ".venv", "_build"):  # folders pruned like Sphinx does
        assert excluded(made_by_tools), made_by_tools
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = {toc["root"]} | {entry["file"] for entry in toc["chapters"]}
    found = set()
    for folder, subfolders, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT)
        subfolders[:] = [name for name in subfolders if not excluded(str(relative / name)) and name != ".git"]
        found |= {str((relative / name).with_suffix("")) for name in files
                  if name.endswith((".md", ".ipynb")) and not excluded(str(relative / name))}
    assert found == pages, found ^ pages
