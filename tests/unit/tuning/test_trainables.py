"""The trainable adapters (``tuning.trainables``): what they declare is what the core does,
one evaluation shape for every trainable, and no trainable branches outside them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tuning.trainables import TRAINABLES, Evaluation, for_checkpoint, get_trainable
from tuning.trainables.base import PER_GROUP, Adapter
from tuning.trainables.measure import MODULE, measure, render

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def measured():
    return measure()


def test_reported_metrics_are_what_the_core_trainers_report(measured):
    """Every trainer runs on its probe; the stored lists are exactly what they reported."""
    for name, adapter in TRAINABLES.items():
        assert adapter.reported == measured[name], (
            f"{name}: the core reports {measured[name]}, reported_metrics.py says "
            f"{adapter.reported}; run `python -m tuning.trainables.measure --write`")
    assert MODULE.read_text() == render(measured)


def test_reported_leaves_out_per_group_names_and_the_counter(measured):
    for name, adapter in TRAINABLES.items():
        assert adapter.iteration_key not in measured[name]
        assert not any(PER_GROUP.fullmatch(m) for m in measured[name])
        assert adapter.reports("worst_group_error") and adapter.reports("error_g3")
        assert not adapter.reports("no_such_metric")
    assert get_trainable("stage1").reports("msp_augrc")
    assert not get_trainable("argse-selective").reports("msp_augrc")


def test_probe_runs_make_the_expected_number_of_reports():
    """``expected_iterations`` (ASHA's ``max_t``) counts the reports a run makes."""
    import tempfile

    for adapter in TRAINABLES.values():
        config, bundle = adapter.probe()
        seen: list[dict] = []
        with tempfile.TemporaryDirectory() as work:
            adapter.train(config, bundle, lambda m, _d, seen=seen: seen.append(m),
                          device="cpu", workdir=work)
        assert len(seen) == adapter.expected_iterations(config), adapter.name
        assert all(adapter.iteration_key in m for m in seen), adapter.name


def test_declared_files_and_modules_are_the_cores():
    from core.argse import PRETRAIN_FILE, SELECTIVE_FILE
    from core.stage1.artifacts import HEAD_FILE

    assert get_trainable("argse-selective").checkpoint_file == SELECTIVE_FILE
    assert get_trainable("argse-pretrain").checkpoint_file == PRETRAIN_FILE
    assert get_trainable("stage1").checkpoint_file == HEAD_FILE
    import importlib

    for adapter in TRAINABLES.values():
        module = importlib.import_module(adapter.worker_module)
        assert any(getattr(module, n, None) is not None for n in
                   ("train_selective", "train_pretrain", "train_stage1")), adapter.name
        assert isinstance(adapter, Adapter)
        for key, _ in adapter.baseline_point:
            assert key in adapter.config_fields(), (adapter.name, key)
        assert adapter.coverage_key in adapter.config_fields()


def test_one_list_of_trainable_names():
    """The CLI's choices and subcommands are the registry's names, in its order."""
    from tuning.cli import build_parser
    from tuning.trainables.trial import FUNCTIONS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    train = sub.choices["train"]
    tsub = next(a for a in train._actions if a.dest == "trainable")
    assert list(tsub.choices) == list(TRAINABLES)
    sweep = sub.choices["sweep"]
    trainable = next(a for a in sweep._actions if a.dest == "trainable")
    assert list(trainable.choices) == list(TRAINABLES)
    assert list(FUNCTIONS) == list(TRAINABLES)
    assert all(fn.__name__ == name.replace("-", "_") for name, fn in FUNCTIONS.items())


def _trainable_branches(source: str, label: str) -> list[str]:
    """``x == "stage1"``-like comparisons (and ``in`` tests) against a trainable name or
    a bundle kind in the module text ``source``, as ``label:line``."""
    names = set(TRAINABLES) | {a.bundle_kind for a in TRAINABLES.values()}
    tree = ast.parse(source, filename=label)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            values = ([operand] if isinstance(operand, ast.Constant) else
                      list(operand.elts) if isinstance(operand, (ast.Tuple, ast.List, ast.Set))
                      else [])
            if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                found.append(f"{label}:{node.lineno}")
    return found


def test_no_trainable_branches_outside_the_adapters():
    """Only tuning/trainables/ knows a trainable by name; cli/data_cmd.py's bundle
    *import formats* are named ``argse``/``stage1`` too and may branch on them."""
    allowed = {ROOT / "tuning" / "cli" / "data_cmd.py"}
    found = []
    for path in sorted((ROOT / "tuning").rglob("*.py")):
        if (ROOT / "tuning" / "trainables") in path.parents or path in allowed:
            continue
        found += _trainable_branches(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, f"branches on a trainable name outside tuning/trainables: {found}"


def test_the_branch_finder_finds_branches():
    source = ('if spec.trainable == "stage1" or kind in ("argse", "y"):\n    pass\n'
              'if "argse-pretrain" != name:\n    pass\n'
              'if name == "stage12":\n    pass\n')
    assert sorted(_trainable_branches(source, "probe.py")) == ["probe.py:1", "probe.py:1",
                                                               "probe.py:3"]


def test_importing_the_adapters_loads_no_torch_or_ray():
    code = ("import sys\n"
            "import tuning.trainables, tuning.cli.train_cmd, tuning.cli.evaluate_cmd\n"
            "from tuning.trainables import TRAINABLES\n"
            "for a in TRAINABLES.values():\n"
            "    a.build_config({}); a.reported; a.worker_modules\n"
            "print(sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "[]"


def test_get_trainable_names_the_choices():
    with pytest.raises(ValueError) as info:
        get_trainable("nope")
    assert "--trainable" in str(info.value)
    assert "one of argse-selective, argse-pretrain, stage1" in str(info.value)


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A trained AR-GSE selective checkpoint and a Stage-1 artefacts directory, with
    their probe bundles (given a test split)."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for name in ("argse-selective", "stage1"):
        adapter = get_trainable(name)
        config, bundle = adapter.probe()
        result = adapter.train(config, bundle, None, device="cpu", workdir=root / name)
        summary = adapter.save_run(result, config, bundle, root / f"{name}-out",
                                   overwrite=False, device="cpu")
        out[name] = (adapter, bundle, root / f"{name}-out", summary)
    return out


def test_checkpoints_are_recognised_by_their_adapter(checkpoints, tmp_path):
    for name, (adapter, _, ckpt, _) in checkpoints.items():
        assert for_checkpoint(ckpt, "an export") is adapter, name
    ckpt = checkpoints["argse-selective"][2] / "gating_selective.ckpt"
    assert for_checkpoint(ckpt, "x").bundle_kind == "argse"
    with pytest.raises(ValueError) as info:
        for_checkpoint(tmp_path, "an export directory")
    assert str(info.value).endswith(
        "expected a *.ckpt file, or a directory with gating_selective.ckpt, "
        "gating_pretrained.ckpt or stage1_head.pth, or an export directory")


def test_one_evaluation_shape_for_every_trainable(checkpoints):
    """``evaluate`` gives ``Evaluation(metrics, baselines)`` for both kinds, equal to
    what each core evaluation returns; baselines only when asked."""
    from core.argse import load_predictor, model_metrics
    from core.argse.baselines import baseline_metrics
    from core.stage1 import evaluate_checkpoint
    from tuning.trainables.argse import fitted_baselines

    for name, (adapter, bundle, ckpt, _) in checkpoints.items():
        bare = adapter.evaluate(ckpt, bundle, "test", "cpu")
        full = adapter.evaluate(ckpt, bundle, "test", "cpu", baselines=True)
        assert isinstance(bare, Evaluation) and isinstance(full, Evaluation)
        assert bare.baselines == {} and full.baselines, name
        assert bare.metrics == full.metrics
        if name == "stage1":
            core = evaluate_checkpoint(ckpt, bundle, "test", "cpu")
            assert full.metrics == core["metrics"] and full.baselines == core["baselines"]
        else:
            predictor = load_predictor(ckpt, "cpu")
            assert full.metrics == model_metrics(predictor, bundle, "test")
            assert full.baselines == baseline_metrics(
                bundle, "test", predictor.eval_coverage, fitted_baselines(bundle))


def test_model_beside_baselines_is_the_train_result(checkpoints):
    """``seltune train``'s result and export's are assembled by the same function."""
    for name, (adapter, bundle, ckpt, summary) in checkpoints.items():
        at = summary["config"][adapter.coverage_key]
        beside = adapter.model_beside_baselines(adapter.checkpoint_path(ckpt), bundle, at,
                                                "cpu")
        assert list(beside) == ["val", "test", "baselines"], name
        for key in ("val", "test", "baselines"):  # Stage-1: evaluation == training
            assert beside[key] == summary[key], (name, key)
    verdict = checkpoints["argse-selective"][3]["verdict"]
    assert [v.split(":")[0] for v in verdict] == ["val", "test"]


def test_rule_scores_cover_the_model_and_the_baselines(checkpoints):
    from tuning.trainables.base import MODEL

    for name, (adapter, bundle, ckpt, summary) in checkpoints.items():
        names = list(summary["baselines"]["test"])
        s = adapter.rule_scores(bundle, ckpt, "test", coverage=0.7, device="cpu",
                                baselines=names)
        assert MODEL in s.rules and set(names) <= set(s.rules), name
        n = len(s.labels)
        for conf, pred in s.rules.values():
            assert conf.shape == (n,) and pred.shape == (n,)
        assert s.label_groups.shape == (n,) and s.label_groups.max() < s.num_groups


def test_fitted_baselines_are_fit_once_per_bundle_object(checkpoints):
    from tuning.trainables.argse import fitted_baselines

    _, bundle, _, _ = checkpoints["argse-selective"]
    first = fitted_baselines(bundle)
    assert fitted_baselines(bundle) is first
    import copy

    assert fitted_baselines(copy.copy(bundle)) is not first  # another object: fit again
