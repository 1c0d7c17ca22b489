"""``predictor.pt`` (issue 13): the TorchScript rule of an AR-GSE checkpoint and of a
Stage-1 artefacts directory decides exactly as seltune's predictor on every row, run in
a fresh interpreter where ``core`` and ``tuning`` cannot be imported (only torch)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from core.argse import (
    PretrainConfig,
    SelectiveConfig,
    load_predictor,
    train_pretrain,
    train_selective,
)
from core.argse.portable import write_portable_predictor
from core.bundles import FeatureBundle, FeatureSplit
from core.stage1 import Stage1Config, train_stage1
from core.stage1 import load_predictor as load_stage1_predictor
from core.stage1.portable import write_portable_predictor as write_stage1_portable

from .conftest import make_bundle

REPO = str(Path(__file__).resolve().parents[4])

#: The child: drop every way to import the project (the editable install's finder and
#: path hook, the repository on sys.path), forbid core/tuning outright, then load and
#: run predictor.pt on the saved inputs.
CHILD = textwrap.dedent('''
    import sys
    REPO = sys.argv[1]
    def project(p):  # the repository itself, not a virtualenv inside it
        return p in ("", ".", REPO) or (p.startswith(REPO + "/") and "site-packages" not in p)
    sys.path[:] = [p for p in sys.path if "__editable__" not in p and not project(p)]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path_importer_cache.clear()

    class _Forbid:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("core", "tuning"):
                raise ImportError(f"{name} must not be needed by predictor.pt")
            return None

    sys.meta_path.insert(0, _Forbid())
    import importlib.util
    for name in ("core", "tuning"):
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:
            spec = None
        assert spec is None, name
    import torch
    rule = torch.jit.load(sys.argv[2])
    inputs = torch.load(sys.argv[3])
    torch.save({k: rule(v) for k, v in inputs.items()}, sys.argv[4])
    print("loaded without seltune:", sorted(m for m in sys.modules if m.split(".")[0] in ("core", "tuning")))
''')


def run_without_seltune(predictor_pt: Path, inputs: dict[str, torch.Tensor], tmp: Path):
    torch.save(inputs, tmp / "inputs.pt")
    (tmp / "child.py").write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp / "child.py"), REPO, str(predictor_pt),
         str(tmp / "inputs.pt"), str(tmp / "outputs.pt")],
        cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "loaded without seltune: []" in proc.stdout
    return torch.load(tmp / "outputs.pt")


def _selective(**kw) -> SelectiveConfig:
    known = {f.name for f in dataclasses.fields(SelectiveConfig)}
    base = dict(stageA_epochs=1, cycles=1, b1_epochs=1, batch_size=64, mu_grid_points=11,
                hidden_dims=(32, 16), top_k=3)
    return SelectiveConfig(**{k: v for k, v in {**base, **kw}.items() if k in known})


@pytest.fixture(scope="module")
def argse_bundle():
    return make_bundle(num_experts=3, num_classes=12, num_groups=2, n=300)


@pytest.mark.parametrize("variant", ["plugin", "seed", "uniform_gate", "pretrain"])
def test_argse_predictor_pt_equals_decide_on_every_row(argse_bundle, tmp_path, variant):
    if variant == "pretrain":
        res = train_pretrain(PretrainConfig(epochs=1, batch_size=64, hidden_dims=(16,)),
                             argse_bundle, device="cpu", workdir=tmp_path / "w")
    else:
        kw = {"plugin": dict(margin="plugin"),
              "seed": dict(margin="seed", final_rule="none", uniform_check=False),
              "uniform_gate": dict(gate="uniform")}[variant]
        res = train_selective(_selective(**kw), argse_bundle, device="cpu",
                              workdir=tmp_path / "w")
    out = write_portable_predictor(res.checkpoint_file, tmp_path / "predictor.pt")
    inputs = {s: torch.from_numpy(np.array(argse_bundle.splits[s].logits))
              for s in ("tunev", "val", "test")}
    got = run_without_seltune(out, inputs, tmp_path)
    predictor = load_predictor(res.checkpoint_file, device="cpu")
    for split, logits in inputs.items():
        pred, accept, margin, _ = predictor.decide(logits)
        p, a, m = got[split]
        assert p.dtype == torch.int64 and a.dtype == torch.bool and m.dtype == torch.float32
        assert torch.equal(p, pred) and torch.equal(a, accept), split
        assert torch.equal(m, margin), split  # bit for bit, not only the decisions
    rule = torch.jit.load(str(out))
    assert list(rule.expert_names) == list(argse_bundle.expert_names)
    with pytest.raises(Exception, match="expert_logits must have shape"):
        rule(torch.zeros(2, 2, 12))


def _feature_bundle(seed=0, n=(400, 240, 200), d=8, c=3) -> FeatureBundle:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, c))
    splits = {}
    for name, m in zip(("train", "val", "test"), n):
        x = rng.normal(size=(m, d)).astype(np.float32)
        y = np.argmax(x @ w + rng.normal(size=(m, c)) * 1.5, axis=1)
        splits[name] = FeatureSplit(x, y, (x[:, 0] > 0.8).astype(np.int64))
    return FeatureBundle(num_classes=c, splits=splits, group_names=("main", "edge"))


STAGE1_CASES = [
    dict(calibrator="temperature", gate_calibrator="platt"),
    dict(calibrator="dirichlet", gate_calibrator="isotonic", gate_input="trunk+confidence"),
    dict(calibrator="matrix", exit_score="msp"),
    dict(calibrator="vector", gate_calibrator="isotonic", exit_score="combined"),
    dict(calibrator="none", exit_score="combined", gate_input="trunk+confidence"),
]


@pytest.mark.parametrize("case", STAGE1_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_stage1_predictor_pt_equals_predictor_on_every_row(tmp_path, case):
    known = {f.name for f in dataclasses.fields(Stage1Config)}
    if not set(case) <= known:
        pytest.skip(f"Stage1Config has no {sorted(set(case) - known)}")
    bundle = _feature_bundle()
    cfg = Stage1Config(epochs=2, hidden_dim=16, batch_size=64, early_stop_patience=0, **case)
    train_stage1(cfg, bundle, None, device="cpu").save(tmp_path / "art")
    out = write_stage1_portable(tmp_path / "art", tmp_path / "predictor.pt")
    inputs = {s: torch.from_numpy(bundle.splits[s].features) for s in ("train", "val", "test")}
    got = run_without_seltune(out, inputs, tmp_path)
    predictor = load_stage1_predictor(tmp_path / "art")
    for split, x in inputs.items():
        cls, probs, exit_ = predictor.predict(x.numpy())
        p, e, pr = got[split]
        assert p.dtype == torch.int64 and e.dtype == torch.bool and pr.dtype == torch.float64
        np.testing.assert_array_equal(p.numpy(), cls)
        np.testing.assert_array_equal(e.numpy(), exit_)
        np.testing.assert_array_equal(pr.numpy(), probs)
