"""``python -m vif reproduce`` runs a registered experiment offline and writes its results as JSON."""

from __future__ import annotations

import json
import subprocess
import sys


def test_reproduce_logistic_quick_writes_json(tmp_path):
    out = tmp_path / "logistic.json"
    subprocess.run([sys.executable, "-m", "vif", "reproduce", "logistic", "--quick", "--seed", "0", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    results = json.loads(out.read_text())
    assert results["experiment"] == "logistic" and results["quick"] is True
    assert results["n_units_refitted"] == 60 and results["n_train"] == 455
    assert results["vif"]["pearson"] >= 0.99
    assert set(results["seconds"]) == {"vif", "if", "loo"}


def test_reproduce_ranking_quick_reports_every_estimate_against_exact_loo(tmp_path):
    out = tmp_path / "ranking.json"
    subprocess.run([sys.executable, "-m", "vif", "reproduce", "ranking", "--quick", "--loss", "softmax", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    entry = json.loads(out.read_text())["losses"]["softmax"]
    assert entry["synthetic"] is True and entry["n_params"] == 101 * 9
    assert entry["VIF-HO"]["pearson"] >= 0.99 and entry["VIF"]["pearson"] >= 0.98 and entry["IF"]["pearson"] >= 0.95
    assert entry["VIF_unmasked"]["pearson"] < entry["VIF"]["pearson"] - 0.05  # the pitfall


def test_unknown_experiment_is_rejected_with_the_choices():
    result = subprocess.run([sys.executable, "-m", "vif", "reproduce", "nope", "--out", "x.json"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr and "cox" in result.stderr
