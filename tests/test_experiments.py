"""The experiment back-ends' shape: no experiment imports another, no plotting in them, one cache, one PBRF."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "src" / "vif" / "experiments"
PLOTTING = EXPERIMENTS.parent / "plotting.py"


def _imports(path: Path) -> set[str]:
    """Module names imported by ``path``: relative ones as written (``".cox"``, ``"._setups"``), absolute in full."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names.add(module)
            if node.level == 1 and not node.module:  # from . import cox
                names |= {f".{alias.name}" for alias in node.names}
    return names


BACK_ENDS = sorted(path for path in EXPERIMENTS.glob("*.py") if not path.name.startswith("_"))


@pytest.mark.parametrize("path", BACK_ENDS, ids=lambda path: path.stem)
def test_no_experiment_imports_another_or_plots(path):
    imported = _imports(path)
    siblings = {f".{other.stem}" for other in BACK_ENDS} | {f"vif.experiments.{other.stem}" for other in BACK_ENDS}
    assert not imported & siblings, f"{path.name} imports {sorted(imported & siblings)}: share a private helper instead"
    assert not {name for name in imported if name.split(".")[0] in {"matplotlib", "seaborn"} or name.endswith("plotting")}


def test_plotting_is_independent_of_the_experiments():
    assert not {name for name in _imports(PLOTTING) if "experiments" in name}


@pytest.mark.parametrize("path", BACK_ENDS, ids=lambda path: path.stem)
def test_one_cache_mechanism(path):
    """Results are cached only through the fingerprinted ``vif.leave_one_out`` cache (no pickles keyed by hand)."""
    text = path.read_text()
    assert "torch.save" not in text and "pickle" not in text and "hashlib" not in text


def test_contrastive_run_is_a_comparison():
    """The contrastive back-end's building blocks on a tiny configuration, in the shared vocabulary."""
    import torch

    from vif.experiments import Comparison
    from vif.experiments import contrastive as experiment

    config = experiment.Settings(n_train=10, n_test=4, n_pairs=3, n_components=5, dim=3, weight_decay=0.1,
                                 n_cold=2, n_sweep=4)
    out = experiment.run(config)
    assert isinstance(out, Comparison) and set(out.truth) == {"warm", "cold", "pbrf"}
    assert set(out.correlations) >= {"vif", "if", "naive", "anchor", "positive", "negative", "vif-gn", "pbrf"}
    assert out.details["cold_minus_warm_max"] < 1e-5
    found = out.estimates
    assert torch.allclose(found["anchor"] + found["positive"] + found["negative"], found["if"], atol=1e-10)
    assert torch.allclose(found["naive"], found["anchor"], atol=1e-10)
    assert set(out.to_json()) == {"settings", "correlations", "timings", "details", "parts"}
