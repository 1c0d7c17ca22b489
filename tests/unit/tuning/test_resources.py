"""Trials the cluster could never place are refused before anything is written
(issue 15, defect 5). No Ray started."""

from __future__ import annotations

import pytest

from core.errors import InputError
from tuning.sweep.resources import _visible_devices, check_resources, local_gpu_count, local_nodes

TWO_CPUS = [{"CPU": 2.0, "GPU": 0.0}]


def test_fitting_trials_pass():
    check_resources(TWO_CPUS, cpus_per_trial=2, gpus_per_trial=0)
    check_resources(TWO_CPUS, cpus_per_trial=0.5, gpus_per_trial=0)
    check_resources([{"CPU": 1}, {"CPU": 8, "GPU": 1}], cpus_per_trial=4, gpus_per_trial=0.25)


@pytest.mark.parametrize("kw,match", [
    (dict(gpus_per_trial=1), r"--gpus-per-trial=1: a trial would never start: this machine "
                             r"has no GPU: expected <= 0 \(leave it at 0"),
    (dict(cpus_per_trial=64), r"--cpus-per-trial=64: .* has 2 CPU\(s\): expected <= 2$"),
    (dict(num_cpus=0), r"--num-cpus=0: a local Ray with no CPUs runs no trial"),
])
def test_unsatisfiable_requests_are_one_line(kw, match):
    args = {"cpus_per_trial": 1, "gpus_per_trial": 0, **kw}
    with pytest.raises(InputError, match=match) as err:
        check_resources(TWO_CPUS, **args)
    assert "\n" not in str(err.value)


def test_per_node_not_total():
    # 2 + 2 CPUs in two nodes is not a 4-CPU node: a trial runs on one node
    with pytest.raises(InputError, match="largest node"):
        check_resources([{"CPU": 2}, {"CPU": 2}], cpus_per_trial=4, gpus_per_trial=0,
                        where="the cluster at 10.0.0.1:6379")
    with pytest.raises(InputError, match="no live node"):
        check_resources([], cpus_per_trial=1, gpus_per_trial=0)


def test_num_cpus_names_the_option():
    with pytest.raises(InputError, match=r"or a larger --num-cpus"):
        check_resources(local_nodes(1), cpus_per_trial=2, gpus_per_trial=0, num_cpus=1)


def test_gpu_count_without_torch(tmp_path, monkeypatch):
    assert _visible_devices("0,1") == 2 and _visible_devices("") == 0
    assert _visible_devices("-1") == 0 and _visible_devices("0,-1,2") == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert local_gpu_count(tmp_path / "none") == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (tmp_path / "gpus" / "0000:01:00.0").mkdir(parents=True)
    (tmp_path / "gpus" / "0000:02:00.0").mkdir()
    assert local_gpu_count(tmp_path / "gpus") == 2
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert local_gpu_count(tmp_path / "none") == 0


def test_sweep_refuses_before_writing(tmp_path):
    from tuning.sweep.options import SweepOptions
    from tuning.sweep.prepare import prepare_sweep

    storage = tmp_path / "runs"
    for kw in (dict(gpus_per_trial=1.0), dict(cpus_per_trial=64.0), dict(num_cpus=0)):
        opts = SweepOptions(data=str(tmp_path / "nope"), storage=str(storage), name="x", **kw)
        if kw.get("gpus_per_trial") and local_gpu_count() > 0:
            continue  # this machine has a GPU
        with pytest.raises(InputError, match=r"--(gpus|cpus)-per-trial|--num-cpus"):
            prepare_sweep(opts)
        assert not storage.exists()
