"""Soak: one sweep of 24 fast trials, killed at random times (SIGKILL or SIGINT) and
resumed, round after round (issue 15).

Each round starts the driver (``seltune sweep`` the first time, ``seltune resume``
after), waits a random time, sends SIGKILL to the driver or SIGINT to its process group
(what Ctrl-C does), and stops what is left of that process group by pid. After the
rounds one last resume runs the sweep to its end. Figures (all must be 0):

- ``lost``: trials that were finished at some round and are not finished at the end,
  plus the shortfall from ``num_samples`` finished trials;
- ``duplicated``: trial ids told to the study more than once (orphans excluded), or
  finished trials beyond ``num_samples``;
- ``rerun``: finished trials whose ``result.json`` changed after they finished;
- ``orphaned``: ``trial_*`` directories the ledger does not name;
- ``running_in_study``: study trials of the sweep still RUNNING at the end;
- ``lost_in_ledger``: running trials a resume abandoned instead of continuing them
  (``replaced_in_ledger``, not required to be 0, counts those that ran again from the
  start with the same parameters because no usable Ray snapshot was left);
- ``processes_left_after_resume``: processes of the final resume's group left behind
  (a killed driver's own leftovers are counted apart, ``processes_left_by_kills``).

Usage: ``python benchmarks/soak.py [--rounds 20] [--samples 24] [--seed 0] [--out F]``
(about 10 minutes on 2 CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "stageA_epochs=1", "--set", "cycles=2", "--set", "b1_epochs=1"]


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def _stop_group(pgid: int) -> int:
    """SIGKILL what is left of process group ``pgid`` (by pid); how many were left."""
    left = _group_pids(pgid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return len(left)


def _env(ray_tmp: str) -> dict[str, str]:
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    env.pop("SELTUNE_FAULT", None)
    return env


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _finished(exp: Path) -> dict[str, bytes]:
    """Finished trials (TERMINATED in the ledger) and their result.json bytes."""
    ledger = _read(exp / "seltune" / "trials.json") or {"trials": {}}
    out = {}
    for tid, t in ledger["trials"].items():
        result = exp / (t.get("dir") or f"trial_{tid}") / "result.json"
        if t.get("status") == "TERMINATED" and result.is_file():
            out[tid] = result.read_bytes()
    return out


def run(rounds: int, samples: int, seed: int, work: Path) -> dict:
    from core.bundles import save_bundle
    from core.synth import synth_argse_bundle

    rng = random.Random(seed)
    bundle = work / "argse"
    save_bundle(synth_argse_bundle(classes=20, n_max=100, per_class=(15, 10, 20)), bundle)
    storage, name = work / "runs", "soak"
    exp = storage / name
    sweep = [sys.executable, "-m", "tuning.cli", "sweep", "--data", str(bundle),
             "--num-samples", str(samples), "--num-cpus", "2", "--storage", str(storage),
             "--name", name, "--seed", str(seed), *FAST]
    resume = [sys.executable, "-m", "tuning.cli", "resume", str(exp), "--num-cpus", "2"]
    seen_finished: dict[str, bytes] = {}
    log, left_by_kills = [], 0
    for i in range(rounds):
        ray_tmp = tempfile.mkdtemp(prefix="soak-ray-", dir="/tmp")
        cmd = sweep if i == 0 else resume
        p = subprocess.Popen(cmd, env=_env(ray_tmp), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait, how = rng.uniform(4.0, 20.0), rng.choice(["SIGKILL", "SIGINT"])
        try:
            p.wait(timeout=wait)
            how = "none (ended)"
        except subprocess.TimeoutExpired:
            if how == "SIGKILL":
                os.kill(p.pid, signal.SIGKILL)
            else:
                os.killpg(p.pid, signal.SIGINT)
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            _, err = p.communicate()
        time.sleep(0.5)
        left = _stop_group(p.pid)
        left_by_kills += left
        shutil.rmtree(ray_tmp, ignore_errors=True)
        done = _finished(exp)
        for tid, data in done.items():
            seen_finished.setdefault(tid, data)
        log.append({"round": i, "after_s": round(wait, 1), "signal": how, "rc": p.returncode,
                    "finished": len(done), "processes_left": left,
                    "last_line": (err.strip().splitlines() or [""])[-1][:200]})
        print(json.dumps(log[-1]), flush=True)
        if p.returncode == 0 and len(done) >= samples:
            break
    ray_tmp = tempfile.mkdtemp(prefix="soak-ray-", dir="/tmp")
    final = subprocess.Popen(resume, env=_env(ray_tmp), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = final.communicate(timeout=900)
    time.sleep(0.5)
    left_final = _stop_group(final.pid)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"rounds": log, "final_rc": final.returncode, "final_stderr_tail": err[-400:],
            **figures(exp, samples, seen_finished), "processes_left_after_resume": left_final,
            "processes_left_by_kills": left_by_kills}


def figures(exp: Path, samples: int, seen_finished: dict[str, bytes]) -> dict:
    import optuna

    from tuning.experiment.spec import load_spec

    end = _finished(exp)
    spec = load_spec(exp)
    ledger = json.loads((exp / "seltune" / "trials.json").read_text())
    asha = _read(exp / "seltune" / "asha_state.json") or {}
    stopped = set(asha.get("stopped", {}))
    ended = {tid for tid, t in ledger["trials"].items() if t["status"] in ("TERMINATED",
                                                                           "ERROR")}
    study = optuna.load_study(study_name=spec.study_name, storage=spec.study_storage)
    told = [t.user_attrs.get("ray_trial_id") for t in study.trials
            if "orphaned" not in t.user_attrs and "warm_start_from" not in t.user_attrs]
    named = {t.get("dir") or f"trial_{tid}" for part in ("trials", "lost")
             for tid, t in ledger.get(part, {}).items()}
    return {
        "finished_at_end": len(ended),
        "stopped_by_asha": len(stopped & ended),
        "lost": sum(1 for tid in seen_finished if tid not in end) + max(0, samples - len(ended)),
        "duplicated": (len(told) - len(set(told))) + max(0, len(ended) - samples),
        "rerun": sum(1 for tid, data in seen_finished.items()
                     if tid in end and end[tid] != data),
        "orphaned": len([p for p in exp.glob("trial_*") if p.name not in named]),
        "running_in_study": sum(t.state.name == "RUNNING" for t in study.trials),
        "lost_in_ledger": len(ledger.get("lost", {})),
        # running at a kill with no usable Ray snapshot: run again with the same params
        "replaced_in_ledger": len(ledger.get("replaced", {})),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seltune-soak-"))
    try:
        result = run(args.rounds, args.samples, args.seed, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    bad = [k for k in ("lost", "duplicated", "rerun", "orphaned", "running_in_study",
                       "lost_in_ledger", "processes_left_after_resume") if result[k]]
    print("soak: " + ("all figures 0" if not bad else "NOT 0: " + ", ".join(bad)),
          file=sys.stderr)
    return 1 if bad or result["final_rc"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
