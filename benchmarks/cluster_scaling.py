"""Throughput scaling of ``seltune sweep`` over 1, 2 and 3 local Ray nodes (1 CPU each).

For each node count N a fresh local cluster is started with ``seltune cluster up``'s
library (``cluster/local.py``: one ``ray start --block`` per node, token auth, stopped
by pid), and the same sweep runs on it through the CLI (``seltune sweep --address``):
argse-selective, the default space with ``batch_size`` fixed (so every trial does the
same amount of work whatever TPE suggests), a short schedule, ``--grace-period =
--max-t`` (ASHA stops nothing), one CPU per trial. Ray therefore runs up to N trials
at once, one per node.

Reported per N: wall time of the sweep command (driver start, Ray connection, all
trials, shutdown; not the cluster start), trials/minute over it, the span from the
first trial's start to the last trial's end (excludes driver start-up and shutdown)
and trials/minute over that span, the summed in-trial time
(``time_total_s`` of each trial's last result), the speed-up over N = 1, and how many
trials each node ran (trials are mapped to nodes by the pid in their results and the
session membership of that pid, as every node has this machine's IP).

What one 2-core machine can and cannot show: see the note printed with the table and
``benchmarks/RESULTS.md``. In short, three 1-CPU "nodes" share two physical cores, and
each node brings its own raylet and agents, so going from 2 to 3 nodes cannot speed
anything up here; the numbers show that trials are spread over all nodes and what the
multi-node machinery costs, not real cluster scaling.

Usage::

    python benchmarks/cluster_scaling.py                  # N = 1,2,3; 12 trials each
    python benchmarks/cluster_scaling.py --num-samples 12 --nodes 1,2,3 --json
    python benchmarks/cluster_scaling.py --quick          # N = 1,2; 2 trials (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Each trial must run long enough (several seconds) that throughput is about trials,
# not about the driver's start-up: ~1 s trials finish before Ray even spreads them.
SCHEDULE = ["--set", "stageA_epochs=12", "--set", "cycles=2", "--set", "b1_epochs=12",
            "--set", "batch_size=64"]
QUICK_SCHEDULE = ["--set", "stageA_epochs=1", "--set", "cycles=2", "--set", "b1_epochs=1",
                  "--set", "batch_size=256"]
REPORTS = 3  # stage A + 2 cycles

NOTE = (
    "One machine with 2 physical cores: N 1-CPU nodes are N logical Ray nodes on the "
    "same 2 cores, each with its own raylet/agent processes, and other work competes "
    "for the CPU. N=1 -> 2 can at best halve the wall time; N=3 oversubscribes the "
    "cores, so no further speed-up is possible here. What this shows: Ray spreads "
    "trials over every node, and the per-node/per-trial overhead of the multi-node "
    "path. Real scaling needs real nodes (e.g. cluster/ray-cluster.yaml)."
)


def _run_one(nodes: int, num_samples: int, work: Path, seed: int,
             schedule: list[str]) -> dict:
    from cluster import local

    state = local.up(nodes, 1, directory=work / f"cluster-{nodes}")
    seen: dict[int, int] = {}
    stop = threading.Event()

    def track() -> None:  # pid -> node index, while trial workers live
        while not stop.is_set():
            for node in state.nodes:
                for pid in local.node_pids(node):
                    seen.setdefault(pid, node.index)
            stop.wait(0.25)

    tracker = threading.Thread(target=track, daemon=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               RAY_USAGE_STATS_ENABLED="0")
    local.apply_env(state, env)
    storage = work / "store"
    name = f"scale-{nodes}"
    cmd = [sys.executable, "-m", "tuning.cli", "sweep", "--address", state.address,
           "--num-samples", str(num_samples), "--storage", str(storage), "--name", name,
           "--cpus-per-trial", "1", "--device", "cpu", "--seed", str(seed),
           "--grace-period", str(REPORTS), "--max-t", str(REPORTS), *schedule, "--json"]
    try:
        tracker.start()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        tracker.join(timeout=5)
        local.down(state)
    if proc.returncode != 0:
        raise SystemExit(f"sweep on {nodes} node(s) failed:\n{proc.stderr[-3000:]}")
    status = json.loads(proc.stdout)
    in_trial = 0.0
    per_node = [0] * nodes
    starts, ends = [], []
    for path in (storage / name).glob("trial_*/result.json"):
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if rows:
            in_trial += rows[-1].get("time_total_s", 0.0)
            # Result timestamps are whole seconds: the span is +- 1 s.
            starts.append(rows[0]["timestamp"] - rows[0].get("time_this_iter_s", 0.0))
            ends.append(rows[-1]["timestamp"])
            node = seen.get(rows[0]["pid"])
            if node is not None:
                per_node[node] += 1
    finished = sum(v for k, v in status["counts"].items() if k in ("TERMINATED", "STOPPED"))
    span = max(ends) - min(starts) if starts else float("nan")
    return {"nodes": nodes, "trials": finished, "wall_s": round(wall, 2),
            "trials_per_min": round(finished / wall * 60.0, 2),
            "trial_span_s": round(span, 1),
            "trials_per_min_in_span": round(finished / span * 60.0, 2) if span > 0 else None,
            "in_trial_s": round(in_trial, 2), "trials_per_node": per_node,
            "counts": status["counts"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="1,2,3", help="comma-separated node counts")
    p.add_argument("--num-samples", type=int, default=12, help="trials per sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N = 1,2 with 2 trials (smoke test)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cluster_scaling.json"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    counts = [1, 2] if args.quick else [int(x) for x in args.nodes.split(",")]
    samples = 2 if args.quick else args.num_samples
    rows = []
    with tempfile.TemporaryDirectory(prefix="seltune-scaling-") as tmp:
        for n in counts:
            rows.append(_run_one(n, samples, Path(tmp) / f"n{n}", args.seed,
                                 QUICK_SCHEDULE if args.quick else SCHEDULE))
            print(f"[cluster_scaling] {rows[-1]}", file=sys.stderr, flush=True)
    base = rows[0]["wall_s"] if rows and rows[0]["nodes"] == 1 else None
    for r in rows:
        r["speedup_vs_1"] = round(base / r["wall_s"], 2) if base else None
    result = {"benchmark": "cluster_scaling", "num_samples": samples, "reports": REPORTS,
              "cpus_per_node": 1, "machine_cpus": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2), "rows": rows, "note": NOTE}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("| nodes | trials | wall (s) | trials/min | speed-up vs 1 | first trial start -> "
              "last trial end (s) | trials/min in that span | in-trial (s) | trials per node |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['nodes']} | {r['trials']} | {r['wall_s']} | {r['trials_per_min']} | "
                  f"{r['speedup_vs_1']} | {r['trial_span_s']} | {r['trials_per_min_in_span']} | "
                  f"{r['in_trial_s']} | {r['trials_per_node']} |")
        print(f"\n{NOTE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
