"""The cluster configs are checked against Ray's own schema and against seltune's CLI,
so they cannot drift from the Ray version or the `seltune sweep` options we ship."""

from __future__ import annotations

import shlex
from pathlib import Path

import ray
import yaml

from tuning import submit
from tuning.cli import build_parser

CLUSTER = Path(__file__).resolve().parents[3] / "cluster"


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    validate_config(config)  # raises on any schema violation
    head = config["available_node_types"][config["head_node_type"]]
    workers = {k: v for k, v in config["available_node_types"].items()
               if k != config["head_node_type"]}
    assert head is not None
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 1]
    assert gpu and all(v["min_workers"] < v["max_workers"] for v in gpu)  # autoscaling
    assert any("pip install" in c and "seltune" in c for c in config["setup_commands"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not any("ray stop" in c for c in starts)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert ray.__version__ in config["docker"]["image"]
    assert "--dashboard-host=127.0.0.1" in starts[0]


def _ray_pods(cluster_spec):
    yield cluster_spec["headGroupSpec"]["template"]["spec"]
    for group in cluster_spec["workerGroupSpecs"]:
        yield group["template"]["spec"]


def _check_cluster_spec(spec):
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]
                  ["limits"]]
    assert gpu_groups
    for g in gpu_groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] > 0
    mounts = set()
    for pod in _ray_pods(spec):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        for c in pod["containers"]:
            assert ray.__version__ in c["image"]
            for m in c["volumeMounts"]:
                if m["name"] in claims:
                    mounts.add((claims[m["name"]], m["mountPath"]))
    assert mounts == {("seltune-shared", "/mnt/shared")}  # every pod, same volume, same path


def test_raycluster_manifest():
    docs = _docs(CLUSTER / "k8s" / "raycluster.yaml")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"PersistentVolumeClaim", "RayCluster"}
    assert kinds["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert kinds["RayCluster"]["apiVersion"] == "ray.io/v1"
    _check_cluster_spec(kinds["RayCluster"]["spec"])


def test_rayjob_runs_a_valid_seltune_sweep_on_the_shared_volume():
    docs = _docs(CLUSTER / "k8s" / "rayjob.yaml")
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["seltune", "sweep"]
    args = build_parser().parse_args(argv[1:])
    assert args.address == "auto"
    assert args.storage.startswith("/mnt/shared/")
    assert args.max_failures >= 1 and args.gpus_per_trial > 0
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    # The RayJob's runtime env is the one `seltune submit` sends by default.
    assert runtime_env["env_vars"] == submit.load_runtime_env(
        submit.DEFAULT_RUNTIME_ENV)["env_vars"]
