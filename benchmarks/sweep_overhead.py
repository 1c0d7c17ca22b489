"""Overhead of ``seltune sweep`` against a plain in-process Optuna loop.

The same N (default 32) argse-selective trials — configs drawn once from the
``argse-selective`` preset with a seeded random sampler and enqueued in both studies —
run to the end of the default schedule (no early stopping on either side):

- **serial**: ``optuna.Study.optimize`` in this process, one trial after another,
  ``train_selective`` called directly, once per torch thread count in
  ``--serial-threads`` (default ``1 2``: one core, or the whole machine for one trial
  at a time); the ratio is taken against the faster of them;
- **seltune**: ``seltune sweep`` in a subprocess on a fresh local Ray with ``--num-cpus``
  (default 2) and one CPU per trial (two trials at a time), ``--grace-period = --max-t``
  so ASHA stops nothing. Its wall time includes interpreter start, Ray start and stop.

The sides run ``--repeat`` times (default 3), interleaved round by round, because on
a 2-core machine one run varies by a second or two. Reported: every wall time, the
medians, the ratio median seltune / median of the faster serial loop (target <= 1),
each round's own ratio, the summed in-trial compute time, and the per-trial start-up
cost of seltune ``(slots * wall - sum of in-trial time) / N`` (what a trial pays for
being a Tune trial: scheduling, result and checkpoint handling; Ray start and stop
included). A PNG of the wall times goes to ``--plot``.

Usage::

    python benchmarks/sweep_overhead.py                 # 32 trials x 3 rounds, ~5 min
    python benchmarks/sweep_overhead.py --quick         # 4 short trials, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHORT = {"stageA_epochs": 1, "cycles": 1, "b1_epochs": 1}


def draw_configs(n: int, seed: int) -> list[dict]:
    """N parameter dicts from the argse-selective preset (seeded random sampler)."""
    import optuna

    from search_spaces import load_space
    from tuning.sweep.space import sample_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("argse-selective")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        params = sample_config(space, trial)
        out.append({k: v for k, v in params.items() if k in trial.params})
        study.tell(trial, 0.0)
    return out


def run_serial(configs: list[dict], bundle, fixed: dict, threads: int) -> dict:
    import optuna
    import torch

    from core.argse import SelectiveConfig, train_selective
    from core.config import config_from_dict
    from search_spaces import load_space
    from tuning.sweep.space import sample_config

    torch.set_num_threads(threads)
    space = load_space("argse-selective")
    study = optuna.create_study(direction="minimize")
    for c in configs:
        study.enqueue_trial(c)
    trial_times = []

    def objective(trial):
        cfg = config_from_dict(SelectiveConfig, {**fixed, **sample_config(space, trial)},
                               source="benchmark")
        best = []
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            train_selective(cfg, bundle, lambda m, d: best.append(m["worst_group_error"]),
                            device="cpu", workdir=work)
        trial_times.append(time.perf_counter() - t0)
        return min(best)

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=len(configs))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "trial_compute_s": sum(trial_times),
            "best": study.best_value, "threads": threads}


def run_seltune(configs: list[dict], data: str, fixed: dict, num_cpus: int,
                max_t: int) -> dict:
    import optuna

    work = Path(tempfile.mkdtemp(prefix="seltune-bench-"))
    name = "overhead"
    url = f"sqlite:///{work / 'study.db'}"
    study = optuna.create_study(study_name=name, storage=url, direction="minimize")
    for c in configs:
        study.enqueue_trial(c)
    cmd = [sys.executable, "-m", "tuning.cli", "sweep", "--data", data,
           "--num-samples", str(len(configs)), "--num-cpus", str(num_cpus),
           "--cpus-per-trial", "1", "--storage", str(work / "runs"), "--name", name,
           "--study-storage", url, "--grace-period", str(max_t), "--max-t", str(max_t),
           "--json", *[f"--set={k}={v}" for k, v in fixed.items()]]
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               RAY_TMPDIR=tempfile.mkdtemp(prefix="sb-ray-", dir="/tmp"))
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    status = json.loads(p.stdout)
    ledger = json.loads((work / "runs" / name / "seltune" / "trials.json").read_text())
    compute = 0.0
    for t in ledger["trials"].values():
        last = t["history"][max(t["history"], key=int)]
        compute += float(last.get("time_total_s", 0.0))
    from search_spaces import load_space

    names = set(load_space("argse-selective").names)
    ran = sorted(json.dumps({k: v for k, v in t["config"].items() if k in names},
                            sort_keys=True) for t in status["trials"])
    wanted = sorted(json.dumps(c, sort_keys=True) for c in configs)
    return {"wall_s": wall, "trial_compute_s": compute, "trials": len(status["trials"]),
            "best": status["best"]["metrics"]["worst_group_error"],
            "same_configs": ran == wanted, "experiment": str(work)}


def plot(result: dict, path: Path) -> None:
    """Wall time of every side per round (points) and their medians (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [(f"serial, {t} thread{'s' if t > 1 else ''}", [
        x["wall_s"] for r in result["rounds"] for x in r["serial_runs"] if x["threads"] == t])
        for t in sorted({x["threads"] for r in result["rounds"] for x in r["serial_runs"]})]
    sides.append((f"seltune sweep, {result['num_cpus']} CPUs",
                  [r["seltune"]["wall_s"] for r in result["rounds"]]))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (_label, walls) in enumerate(sides):
        ax.bar(i, statistics.median(walls), color="#9ecae1" if i < len(sides) - 1 else "#fdae6b")
        ax.scatter([i] * len(walls), walls, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(sides)), [label for label, _ in sides])
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"{result['trials']} argse-selective trials: median ratio "
                 f"{result['wall_ratio_seltune_over_serial']:.2f}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--serial-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 trials, 1+1 cycle schedule")
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved rounds of every side (medians are reported)")
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "sweep_overhead.png"),
                    help="PNG of the wall times per round ('' for none)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep_overhead.json"))
    args = ap.parse_args()

    from core.argse import SelectiveConfig
    from core.bundles import load_bundle
    from core.synth import ensure_default_bundle

    n = 4 if args.quick else args.trials
    fixed = SHORT if args.quick else {}
    cfg = SelectiveConfig(**fixed)
    max_t = 1 + cfg.cycles
    data = str(ensure_default_bundle("argse"))
    bundle = load_bundle(data)
    configs = draw_configs(n, args.seed)

    rounds = []
    for r in range(args.repeat):
        # Interleaved (serial at each thread count, then seltune) so that a change in
        # the machine's load hits every side of a round alike.
        serials = []
        for threads in args.serial_threads:
            serials.append(run_serial(configs, bundle, fixed, threads))
            print(f"round {r + 1}: serial ({threads} thread(s)) {serials[-1]['wall_s']:.1f} s "
                  f"for {n} trials", file=sys.stderr, flush=True)
        tuned = run_seltune(configs, data, fixed, args.num_cpus, max_t)
        print(f"round {r + 1}: seltune {tuned['wall_s']:.1f} s for {tuned['trials']} trials",
              file=sys.stderr, flush=True)
        serial = min(serials, key=lambda x: x["wall_s"])
        rounds.append({"serial_runs": serials, "serial": serial, "seltune": tuned,
                       "wall_ratio_seltune_over_serial": tuned["wall_s"] / serial["wall_s"]})
    slots = min(args.num_cpus, n)

    def median(values):
        return float(statistics.median(values))

    serial_median = {t: median([x["wall_s"] for r in rounds for x in r["serial_runs"]
                                if x["threads"] == t]) for t in args.serial_threads}
    seltune_median = median([r["seltune"]["wall_s"] for r in rounds])
    compute_median = median([r["seltune"]["trial_compute_s"] for r in rounds])
    best_serial = min(serial_median.values())
    result = {
        "trials": n, "schedule": {"stageA_epochs": cfg.stageA_epochs, "cycles": cfg.cycles,
                                  "b1_epochs": cfg.b1_epochs},
        "num_cpus": args.num_cpus, "repeat": args.repeat, "rounds": rounds,
        "median_wall_s": {"seltune": seltune_median,
                          **{f"serial_{t}_threads": v for t, v in serial_median.items()}},
        "wall_ratio_seltune_over_serial": seltune_median / best_serial,
        "round_ratios": [r["wall_ratio_seltune_over_serial"] for r in rounds],
        "seltune_startup_per_trial_s": (slots * seltune_median - compute_median) / n,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0]},
    }
    if args.plot:
        plot(result, Path(args.plot))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
