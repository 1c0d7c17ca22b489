"""`seltune submit` and the storage probe without a cluster: parsing, validation, messages."""

from __future__ import annotations

import json

import pytest

from core.errors import InputError
from tuning import submit
from tuning.cli import build_parser
from tuning.sweep import storage_check


def test_packaged_runtime_env_is_valid():
    env = submit.load_runtime_env(submit.DEFAULT_RUNTIME_ENV)
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_runtime_env_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "env.yaml"
    bad.write_text("env_vars:\n  OMP_NUM_THREADS: 1\n")
    with pytest.raises(InputError, match=rf"{bad}: env_vars=.*string values"):
        submit.load_runtime_env(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(InputError, match=r"list.*expected a mapping"):
        submit.load_runtime_env(bad)
    bad.write_text("env_vars: [unclosed\n")
    with pytest.raises(InputError, match="cannot parse"):
        submit.load_runtime_env(bad)
    with pytest.raises(InputError, match="no such file"):
        submit.load_runtime_env(tmp_path / "missing.yaml")
    good = tmp_path / "env.json"
    good.write_text(json.dumps({"env_vars": {"A": "1"}, "pip": ["x"]}))
    assert submit.load_runtime_env(good)["pip"] == ["x"]


def test_entrypoint_is_shell_quoted_seltune_command():
    ep = submit.build_entrypoint(["sweep", "--name", "a b", "--num-samples", "4"])
    assert ep == "seltune sweep --name 'a b' --num-samples 4"
    with pytest.raises(InputError, match="a command after `--`"):
        submit.build_entrypoint([])
    with pytest.raises(InputError, match=r"rm.*one of sweep"):
        submit.build_entrypoint(["rm", "-rf", "/"])


def test_follow_commands_point_at_job_and_experiment():
    lines = submit.follow_commands("http://h:8265", "raysubmit_1",
                                   ["sweep", "--storage", "/shared/exp", "--name", "s1"])
    assert lines[0] == "ray job logs --address http://h:8265 --follow raysubmit_1"
    assert "seltune status /shared/exp/s1" in lines
    generic = submit.follow_commands("http://h:8265", "j", ["sweep"])
    assert any(line.startswith("seltune status EXPERIMENT") for line in generic)


def test_address_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(InputError, match=r"--address=None.*job server URL"):
        submit.resolve_address(None, tmp_path)
    with pytest.raises(InputError, match=r"--address=.10\.0\.0\.1:6379.*http"):
        submit.resolve_address("10.0.0.1:6379", tmp_path)
    assert submit.resolve_address("http://h:8265", tmp_path) == ("http://h:8265", None)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://env:8265")
    assert submit.resolve_address(None, tmp_path)[0] == "http://env:8265"


def test_submit_cli_parses_everything_after_double_dash():
    args = build_parser().parse_args(
        ["submit", "--address", "http://h:8265", "--", "sweep", "--num-samples", "3",
         "--address", "auto"])
    assert args.address == "http://h:8265"
    assert args.seltune_args == ["--", "sweep", "--num-samples", "3", "--address", "auto"]


def test_cluster_cli_parses():
    args = build_parser().parse_args(["cluster", "up", "--nodes", "3", "--cpus-per-node", "1",
                                      "--gpus-per-node", "1", "--dir", "d", "--port", "7000"])
    assert (args.nodes, args.cpus_per_node, args.gpus_per_node, args.port) == (3, 1, 1, 7000)
    assert build_parser().parse_args(["cluster", "down"]).grace == 10.0


def test_probe_detects_a_different_directory_behind_the_same_path(tmp_path):
    probe_dir = tmp_path / ".seltune-probe-x"
    probe_dir.mkdir()
    (probe_dir / "driver").write_text("token-of-another-driver")
    out = storage_check._probe(str(tmp_path), str(probe_dir), "my-token", "node1")
    assert not out["ok"]
    assert "another directory" in out["error"]
    assert not (probe_dir / "node-node1").exists()


def test_probe_reports_a_missing_storage_and_writes_when_shared(tmp_path):
    out = storage_check._probe(str(tmp_path / "nope"), str(tmp_path / "nope" / "p"), "t", "n")
    assert not out["ok"] and "FileNotFoundError" in out["error"]
    probe_dir = tmp_path / "p"
    probe_dir.mkdir()
    (probe_dir / "driver").write_text("t")
    assert storage_check._probe(str(tmp_path), str(probe_dir), "t", "n")["ok"]
    assert (probe_dir / "node-n").read_text() == "t:n"
