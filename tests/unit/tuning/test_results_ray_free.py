"""The results layer reads what a sweep wrote without Ray: importing it, ``seltune
status`` and ``seltune export`` never load ``ray`` (status not even torch), and no
module in ``tuning/results/`` imports ``tuning.sweep``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from written_experiments import write_experiment

from tuning.experiment.records import ExportMetrics

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ("tuning.results.status", "tuning.results.selection", "tuning.results.export",
           "tuning.results.html_report", "tuning.results.baselines")


def _run(code: str) -> tuple[dict[str, bool], str]:
    """Run ``code`` in a fresh interpreter: which of ray / torch / tuning.sweep / optuna
    it loaded, and its stderr."""
    probe = ("\nimport json, sys\nprint(json.dumps({m: m in sys.modules for m in "
             "('ray', 'torch', 'tuning.sweep', 'optuna')}))\n")
    p = subprocess.run([sys.executable, "-c", code + probe], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def _loaded_after(code: str) -> dict[str, bool]:
    return _run(code)[0]


def test_the_results_modules_import_neither_ray_nor_torch():
    loaded = _loaded_after("".join(f"import {m}\n" for m in RESULTS))
    assert loaded == {"ray": False, "torch": False, "tuning.sweep": False, "optuna": False}


def test_nothing_in_results_imports_the_sweep_package():
    """Static: function-local imports count too."""
    found = []
    for path in sorted((ROOT / "tuning" / "results").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names
                      if n == "tuning.sweep" or n.startswith(("tuning.sweep.", "ray"))]
    assert not found


def test_the_report_does_not_import_export():
    loaded = _loaded_after("import sys\nimport tuning.results.html_report\n"
                           "assert 'tuning.results.export' not in sys.modules\n")
    assert not loaded["ray"]


def test_status_of_a_written_experiment_loads_neither_ray_nor_torch(tmp_path):
    from sweep_specs import make_spec

    from tuning.experiment.layout import write_json
    from tuning.experiment.spec import save_spec

    spec = make_spec(tmp_path, name="exp", coverage=0.7)
    (spec.path / "seltune").mkdir(parents=True)
    save_spec(spec)
    write_json(spec.path / "seltune" / "trials.json", {"trials": {"a": {
        "trial_id": "a", "order": 0, "status": "TERMINATED", "config": {"lr": 0.1},
        "dir": "trial_a", "iterations": 1, "error": None,
        "history": {"1": {"training_iteration": 1, "worst_group_error": 0.2,
                          "coverage": 0.7, "coverage_gap": 0.0}}}}})
    code = ("import sys\nfrom tuning.cli import main\n"
            f"assert main(['status', {str(spec.path)!r}]) == 0\n"
            f"assert main(['status', {str(spec.path)!r}, '--json']) == 0\n")
    loaded = _loaded_after(code)
    assert not loaded["ray"] and not loaded["torch"] and not loaded["tuning.sweep"]


@pytest.mark.parametrize("trainable,study", [("argse-selective", False), ("stage1", True)])
def test_export_never_loads_ray(tmp_path, trainable, study):
    """Without its study the history section fails: a note in the report, and the
    traceback on the export's stderr."""
    exp = write_experiment(tmp_path, trainable, study=study)
    out = tmp_path / "out"
    code = ("import sys\nfrom tuning.cli import main\n"
            f"assert main(['export', {str(exp)!r}, '--out', {str(out)!r}]) == 0\n")
    loaded, stderr = _run(code)
    assert not loaded["ray"] and not loaded["tuning.sweep"]
    assert loaded["torch"]  # it evaluated the checkpoint
    written = json.loads((out / "metrics.json").read_text())
    assert written["trial_id"] == "a" and written["operating_point"]["coverage"] == 0.7
    # metrics.json is the record's JSON: read and written back, nothing changes
    assert ExportMetrics.from_dict(written).to_dict() == written
    text = (out / "report.html").read_text()
    if study:
        assert "could not be drawn" not in text
        assert "Traceback" not in stderr
    else:
        assert "the optimisation history could not be drawn: KeyError" in text
        assert "ERROR seltune.report: report: section 'the optimisation history'" in stderr
        assert "Traceback (most recent call last)" in stderr and "KeyError" in stderr
