"""A sweep whose storage is an S3 bucket on a real S3-compatible server (moto's
standalone server on 127.0.0.1), through the ``seltune`` CLI on a real local Ray:
sweep, status / export by URI from an empty mirror, evaluate; the bad-storage errors;
a driver killed mid-sweep and resumed by URI from an empty mirror.

moto is not a dependency of seltune: ``moto[server]`` is pip-installed once into a cache
directory (``$XDG_CACHE_HOME/seltune/moto-server-...``) used only as the server
subprocess's PYTHONPATH, unless the venv already has it. The test skips, with the
reason, only when the package index cannot be reached.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixtures import REPO, _pip, _PipFailed, cached_target_install, group_pids

pytestmark = pytest.mark.integration

MOTO = "moto[server]==5.1.0"
BUCKET = "seltune-test"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
SCHEDULE = ["--set", "stageA_epochs=1", "--set", "cycles=3", "--set", "b1_epochs=1",
            "--set", "batch_size=128"]


def _moto_pythonpath() -> list[str]:
    """PYTHONPATH entries that make ``python -m moto.server`` work ([] if the venv has it)."""
    try:
        import flask  # noqa: F401  (the server's own dependency)
        import moto  # noqa: F401
        return []
    except ImportError:
        pass
    name = f"moto-server-{MOTO.split('==')[1]}-py{sys.version_info.major}{sys.version_info.minor}"

    def install(site: Path, log: list[str]) -> None:
        # A private --target used only by the server process: its packages never
        # shadow this venv's.
        if _pip(["install", "--target", str(site), MOTO], log, timeout=600).returncode != 0:
            raise _PipFailed("installing")

    target = cached_target_install(name, install, f"{MOTO} for the S3 server")
    return [str(target)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a private moto S3 server with an empty bucket ``BUCKET``."""
    import pyarrow.fs as pafs

    extra = _moto_pythonpath()
    port = _free_port()
    env = dict(os.environ, **AWS_ENV)
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(extra)
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                   "-p", str(port)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto server did not start:\n" +
                                       log.read_text()[-3000:]) from None
                time.sleep(0.2)
        os.environ.update(AWS_ENV)  # this process reads the bucket too
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()  # by pid: the server this fixture started
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def env(tmp_path) -> Iterator[dict[str, str]]:
    ray_tmp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")  # short: unix socket paths
    e = dict(os.environ, **AWS_ENV, RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1",
             RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO),
             SELTUNE_CACHE=str(tmp_path / "cache"))
    e.pop("RAY_ADDRESS", None)
    yield e
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from core.bundles import save_bundle
    from core.synth import synth_argse_bundle

    path = tmp_path_factory.mktemp("bundles") / "argse"
    save_bundle(synth_argse_bundle(classes=20, n_max=100, per_class=(15, 10, 20)), path)
    return path


def seltune(env, *args, ok=True, timeout=240) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "tuning.cli", *map(str, args)], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, f"seltune {' '.join(map(str, args))} failed:\n" \
            f"{p.stderr[-4000:]}"
    return p


def _s3(endpoint: str):
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")


def _ls(endpoint: str, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = _s3(endpoint).get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}",
                                                          recursive=True,
                                                          allow_not_found=True))
    return sorted(i.path[len(BUCKET) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_sweep_status_export_evaluate_in_s3(s3_endpoint, env, bundle, tmp_path):
    storage = f"s3://{BUCKET}/runs?endpoint_override={s3_endpoint}&scheme=http"
    study = f"sqlite:///{tmp_path / 'study.db'}"
    p = seltune(env, "sweep", "--data", bundle, "--num-samples", 4, "--num-cpus", 2,
                "--storage", storage, "--study-storage", study, "--name", "sel",
                "--seed", 1, *SCHEDULE, "--json")
    status = json.loads(p.stdout)
    uri = f"s3://{BUCKET}/runs/sel?endpoint_override={s3_endpoint}&scheme=http"
    assert status["path"] == uri
    assert sum(status["counts"].values()) == 4
    assert set(status["counts"]) <= {"TERMINATED", "STOPPED"}

    # Everything is in the bucket: Tune's state and checkpoints, seltune's files (the
    # driver lock released), and not the mirror marker.
    files = _ls(s3_endpoint, "runs/sel")
    assert "runs/sel/tuner.pkl" in files
    for name in ("sweep.json", "trials.json", "asha_state.json"):
        assert f"runs/sel/seltune/{name}" in files
    assert "runs/sel/seltune/driver.json" not in files
    assert "runs/sel/seltune/remote.json" not in files
    trial_dirs = {f.split("/")[2] for f in files if f.split("/")[2].startswith("trial_")}
    assert len(trial_dirs) == 4
    assert all(any(f.startswith(f"runs/sel/{d}/checkpoint_") for f in files)
               for d in trial_dirs)
    with _s3(s3_endpoint).open_input_stream(f"{BUCKET}/runs/sel/seltune/trials.json") as f:
        ledger = json.loads(f.read())
    assert len(ledger["trials"]) == 4

    # Another machine: no local mirror. status by URI (the query at the end) ...
    shutil.rmtree(tmp_path / "cache" / "remote")
    again = json.loads(seltune(env, "status", uri, "--json").stdout)
    assert again["counts"] == status["counts"] and again["best"] == status["best"]
    # ... and export by NAME --storage URI, then evaluate reproduces the test metrics.
    shutil.rmtree(tmp_path / "cache" / "remote")
    out = tmp_path / "export"
    seltune(env, "export", "sel", "--storage", storage, "--out", out, "--json")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"]["experiment"] == uri
    seen = ledger["trials"][metrics["trial_id"]]["history"][str(metrics["iteration"])]
    assert metrics["val"]["worst_group_error"] == pytest.approx(seen["worst_group_error"])
    ev = json.loads(seltune(env, "evaluate", out / "checkpoint", "--data", bundle,
                            "--split", "test", "--device", "cpu", "--json").stdout)
    assert ev["metrics"] == metrics["test"]

    # The name is taken in the bucket (even with no mirror here).
    shutil.rmtree(tmp_path / "cache" / "remote")
    p = seltune(env, "sweep", "--data", bundle, "--storage", storage, "--study-storage",
                study, "--name", "sel", *SCHEDULE, ok=False)
    assert p.returncode != 0 and "already exists" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("storage, needs_study, message", [
    ("s3://no-such-bucket/runs?endpoint_override={ep}&scheme=http", True,
     "bucket 'no-such-bucket' does not exist"),
    ("nosuchscheme://bucket/runs", True, "pyarrow cannot open it"),
    (f"s3://{BUCKET}/runs?endpoint_override={{ep}}&scheme=http", False, "--study-storage"),
])
def test_bad_storage_is_one_line(s3_endpoint, env, bundle, tmp_path, storage, needs_study,
                                 message):
    storage = storage.format(ep=s3_endpoint)
    study = ["--study-storage", f"sqlite:///{tmp_path / 'study.db'}"] if needs_study else []
    p = seltune(env, "sweep", "--data", bundle, "--storage", storage, *study,
                "--name", "bad", *SCHEDULE, ok=False, timeout=60)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode != 0 and message in p.stderr, p.stderr
    assert len(lines) == 1 and storage in lines[0], p.stderr  # one line naming the value
    assert not (tmp_path / "cache" / "remote").exists() or \
        not list((tmp_path / "cache" / "remote").rglob("sweep.json"))
    assert not _ls(s3_endpoint, "runs/bad")


def test_killed_driver_resumed_by_uri(s3_endpoint, env, bundle, tmp_path):
    storage = f"s3://{BUCKET}/runs?endpoint_override={s3_endpoint}&scheme=http"
    num = 6
    driver = subprocess.Popen(
        [sys.executable, "-m", "tuning.cli", "sweep", "--data", str(bundle), "--num-samples",
         str(num), "--num-cpus", "2", "--storage", storage, "--study-storage",
         f"sqlite:///{tmp_path / 'study.db'}", "--name", "killed", "--seed", "3",
         "--set", "stageA_epochs=1", "--set", "cycles=3", "--set", "b1_epochs=2",
         "--set", "batch_size=64"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)  # its own process group: the local Ray it starts too
    fs = _s3(s3_endpoint)
    try:
        deadline = time.time() + 150
        while time.time() < deadline and driver.poll() is None:
            try:  # read from the bucket: what another machine would see
                with fs.open_input_stream(f"{BUCKET}/runs/killed/seltune/trials.json") as f:
                    trials = json.loads(f.read())["trials"]
            except (OSError, ValueError):
                trials = {}
            if sum(t["status"] == "TERMINATED" for t in trials.values()) >= 2:
                break
            time.sleep(0.3)
        assert driver.poll() is None, "sweep ended before it could be killed: " + \
            driver.stderr.read().decode()[-2000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        time.sleep(1)
        for pid in group_pids(driver.pid):  # the killed driver's local Ray, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # Killed mid-sweep; the dead driver's lock is in the bucket.
    with fs.open_input_stream(f"{BUCKET}/runs/killed/seltune/trials.json") as f:
        at_kill = json.loads(f.read())["trials"]
    assert len(at_kill) < num or any(t["status"] != "TERMINATED" for t in at_kill.values())
    assert "runs/killed/seltune/driver.json" in _ls(s3_endpoint, "runs/killed")
    # The resume starts from an empty mirror: everything comes from the bucket.
    shutil.rmtree(tmp_path / "cache" / "remote")
    ray_tmp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")
    uri = f"s3://{BUCKET}/runs/killed?endpoint_override={s3_endpoint}&scheme=http"
    # Tune's pickles in a bucket are not signed: unpickled only when the user trusts it
    refused = seltune(dict(env, RAY_TMPDIR=ray_tmp), "resume", uri, "--num-cpus", 2, ok=False)
    lines = [x for x in refused.stderr.splitlines() if x.startswith("seltune: error:")]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert "tuner.pkl: in object storage" in lines[0] and "--trust-experiment" in lines[0]
    p = seltune(dict(env, RAY_TMPDIR=ray_tmp), "resume", uri, "--num-cpus", 2, "--json",
                "--trust-experiment")
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert f"resuming {uri}" in p.stderr
    status = json.loads(p.stdout)
    ids = [t["trial_id"] for t in status["trials"]]
    assert len(ids) == len(set(ids)) == num
    assert set(status["counts"]) <= {"TERMINATED", "STOPPED"}
    with fs.open_input_stream(f"{BUCKET}/runs/killed/seltune/trials.json") as f:
        assert len(json.loads(f.read())["trials"]) == num  # the resumed ledger, uploaded
    assert "runs/killed/seltune/driver.json" not in _ls(s3_endpoint, "runs/killed")
