"""Search quality: TPE + ASHA vs random search vs TPE without early stopping.

Each method runs ``--trials`` (default 32) argse-selective trials of the default
space on the default synthetic bundle with ``seltune sweep``, for each of ``--seeds``
(default 0 1 2); equal trial counts, same schedule (the seed's: Stage A 5 epochs,
6 cycles of 3 B1 epochs, ``max_t = 7`` reports):

- ``tpe_asha``: the default (TPE, ASHA grace 1, reduction factor 3);
- ``random``: random sampler, no early stopping (``--grace-period = --max-t``);
- ``tpe``: TPE, no early stopping.

Budget is counted in training epochs: a trial's first report costs ``stageA_epochs``,
each later one ``b1_epochs``. All reports of a sweep are ordered by their wall-clock
timestamps (``result.json``); the curve is the best ``worst_group_error`` (validation
side, any reported iteration, as ``seltune export`` selects) against the cumulative
epochs consumed. Reported: the final best of each method and seed, and the epochs
TPE+ASHA needed to reach random search's final best (target: at most a third of
random search's epochs). A PNG plot of the mean curves goes next to the JSON.

Usage::

    python benchmarks/search_quality.py                # 3 methods x 3 seeds x 32 trials
    python benchmarks/search_quality.py --quick        # 6 trials, 1 seed, short schedule
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {
    "tpe_asha": {"sampler": "tpe", "early_stopping": True},
    "random": {"sampler": "random", "early_stopping": False},
    "tpe": {"sampler": "tpe", "early_stopping": False},
}
QUICK = {"stageA_epochs": 2, "cycles": 3, "b1_epochs": 2}


def run_method(method: str, seed: int, trials: int, data: str, fixed: dict, max_t: int,
               num_cpus: int, storage: Path) -> Path:
    opts = METHODS[method]
    name = f"{method}-s{seed}"
    cmd = [sys.executable, "-m", "tuning.cli", "sweep", "--data", data,
           "--num-samples", str(trials), "--num-cpus", str(num_cpus), "--storage",
           str(storage), "--name", name, "--seed", str(seed), "--sampler", opts["sampler"],
           "--max-t", str(max_t), "--json",
           *[f"--set={k}={v}" for k, v in fixed.items()]]
    if not opts["early_stopping"]:
        cmd += ["--grace-period", str(max_t)]
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               RAY_TMPDIR=tempfile.mkdtemp(prefix="sq-ray-", dir="/tmp"))
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
    return storage / name


def curve(experiment: Path, stage_a: int, b1: int) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative epochs [R], best worst_group_error so far [R]) over all reports R."""
    events = []
    for result_file in experiment.glob("trial_*/result.json"):
        for line in result_file.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if "worst_group_error" not in r:
                continue
            it = int(r["training_iteration"])
            events.append((float(r["timestamp"]), r.get("time_total_s", 0.0),
                           stage_a if it == 1 else b1, float(r["worst_group_error"])))
    events.sort()
    epochs = np.cumsum([e[2] for e in events])
    best = np.minimum.accumulate([e[3] for e in events])
    return epochs, best


def epochs_to_reach(epochs: np.ndarray, best: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(best <= target + 1e-12)
    return float(epochs[hit[0]]) if hit.size else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_quality.json"))
    args = ap.parse_args()

    from core.argse import SelectiveConfig
    from core.synth import ensure_default_bundle

    fixed = QUICK if args.quick else {}
    trials = 6 if args.quick else args.trials
    seeds = args.seeds[:1] if args.quick else args.seeds
    cfg = SelectiveConfig(**fixed)
    max_t = 1 + cfg.cycles
    data = str(ensure_default_bundle("argse"))
    storage = Path(tempfile.mkdtemp(prefix="seltune-sq-"))

    runs: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    for seed in seeds:
        for method in METHODS:
            exp = run_method(method, seed, trials, data, fixed, max_t, args.num_cpus, storage)
            ep, best = curve(exp, cfg.stageA_epochs, cfg.b1_epochs)
            runs[method][seed] = {"epochs": ep.tolist(), "best": best.tolist(),
                                  "final_best": float(best[-1]),
                                  "total_epochs": float(ep[-1]), "experiment": str(exp)}
            print(f"{method} seed {seed}: best {best[-1]:.4f} after {ep[-1]:.0f} epochs",
                  file=sys.stderr, flush=True)

    summary = {}
    for seed in seeds:
        target = runs["random"][seed]["final_best"]
        r = runs["tpe_asha"][seed]
        reach = epochs_to_reach(np.array(r["epochs"]), np.array(r["best"]), target)
        summary[seed] = {
            "random_final_best": target,
            "random_epochs": runs["random"][seed]["total_epochs"],
            "tpe_final_best": runs["tpe"][seed]["final_best"],
            "tpe_asha_final_best": r["final_best"],
            "tpe_asha_epochs": r["total_epochs"],
            "tpe_asha_epochs_to_random_best": reach,
            "fraction_of_random_epochs": None if reach is None
            else reach / runs["random"][seed]["total_epochs"],
        }
    result = {"trials": trials, "seeds": seeds, "schedule": {
        "stageA_epochs": cfg.stageA_epochs, "cycles": cfg.cycles, "b1_epochs": cfg.b1_epochs},
        "summary": summary, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(runs, out.with_suffix(".png"))
    print(json.dumps({"summary": summary}, indent=2))


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = {"tpe_asha": "tab:red", "random": "tab:gray", "tpe": "tab:blue"}
    for method, by_seed in runs.items():
        for i, (_seed, r) in enumerate(sorted(by_seed.items())):
            ax.step(r["epochs"], r["best"], where="post", color=colors[method], alpha=0.8,
                    label=method if i == 0 else None, lw=1.4)
    ax.set_xlabel("training epochs consumed")
    ax.set_ylabel("best worst-group error (val)")
    ax.set_title("search quality: best so far vs budget (one line per seed)")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
