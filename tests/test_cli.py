"""``python -m vif reproduce`` runs a registered experiment offline and writes its results as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SHAPE = {"settings", "correlations", "timings", "details", "parts"}  # Comparison.to_json(), every experiment


def test_reproduce_logistic_quick_writes_json(tmp_path):
    out = tmp_path / "logistic.json"
    subprocess.run([sys.executable, "-m", "vif", "reproduce", "logistic", "--quick", "--seed", "0", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    results = json.loads(out.read_text())
    assert results["experiment"] == "logistic" and results["quick"] is True
    assert set(results) == {"experiment", "quick", "seed", "options", "total_seconds", *SHAPE}
    assert results["settings"]["n_units_refitted"] == 60 and results["settings"]["n_train"] == 455
    assert results["correlations"]["vif"]["pearson"] >= 0.99
    assert set(results["timings"]) == {"vif", "if", "loo"}


def test_reproduce_ranking_quick_reports_every_estimate_against_exact_loo(tmp_path):
    out = tmp_path / "ranking.json"
    subprocess.run([sys.executable, "-m", "vif", "reproduce", "ranking", "--quick", "--loss", "softmax", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    results = json.loads(out.read_text())
    assert set(results["parts"]) == {"softmax"}
    entry = results["parts"]["softmax"]
    assert set(entry) == SHAPE  # the same shape as every other experiment's JSON, and as its parts
    assert entry["settings"]["synthetic"] is True and entry["settings"]["n_params"] == 101 * 9
    scores = entry["correlations"]
    assert scores["VIF-HO"]["pearson"] >= 0.99 and scores["VIF"]["pearson"] >= 0.98 and scores["IF"]["pearson"] >= 0.95
    assert scores["VIF_unmasked"]["pearson"] < scores["VIF"]["pearson"] - 0.05  # the pitfall


def test_unknown_experiment_is_rejected_with_the_choices():
    result = subprocess.run([sys.executable, "-m", "vif", "reproduce", "nope", "--out", "x.json"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr and "cox" in result.stderr



def _reproduce(capsys, *arguments):
    """``main`` in-process: argparse rejects bad values with exit code 2 before the experiment is loaded."""
    from vif.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "logistic", "--quick", *arguments])
    return exit_info.value.code, capsys.readouterr().err


def test_out_must_be_a_writable_file_path_checked_before_running(tmp_path, capsys):
    code, error = _reproduce(capsys, "--out", str(tmp_path))
    assert code == 2 and "--out" in error and "folder" in error
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, error = _reproduce(capsys, "--out", str(blocker / "results.json"))
    assert code == 2 and "is a file" in error
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root can write anywhere
            code, error = _reproduce(capsys, "--out", str(locked / "results.json"))
            assert code == 2 and "not writable" in error
    finally:
        locked.chmod(0o700)


def test_seed_must_lie_in_the_numpy_range(tmp_path, capsys):
    for seed in ("-1", str(2**32), "1.5"):
        code, error = _reproduce(capsys, "--seed", seed, "--out", str(tmp_path / "x.json"))
        assert code == 2 and "--seed" in error and "2**32" in error
        assert not (tmp_path / "x.json").exists()
