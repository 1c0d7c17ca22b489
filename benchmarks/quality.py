"""Tuned AR-GSE against the training-free baselines (issue 11).

Per bundle and sweep seed: ``seltune sweep`` (default space ``argse-selective``,
default schedule, ``--trials`` trials, operating point 0.7) then ``seltune export``;
from the export's ``metrics.json`` the tuned model's ``test`` numbers and
``baselines.test`` (Chow on the best expert — best on test, i.e. flattered — and on the
uniform mixture, Plug-in[Balanced], Plug-in[Worst]): worst-group error at the operating
point and worst-group area over rejection rates [0, 0.8], mean ± sd over seeds.
Bundles as in ``benchmarks/ablation_argse.py`` (``argse``, ``digits``, ``c1000``).

    .venv/bin/python benchmarks/quality.py --bundles argse,digits,c1000 --seeds 3 \\
        --trials 32 --json benchmarks/results/quality.json --markdown

Target (issue 11): never worse than Plug-in[Worst] within one sd on any bundle, and
better by >= 5 % relative on at least one.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.ablation_argse import c1000_bundle  # noqa: E402

BASELINES = ("chow:best_expert", "chow:mixture", "plugin_balanced", "plugin_worst")
KEYS = ("worst_group_error", "worst_group_area")


def bundle_path(name: str, cache: Path) -> Path:
    from core.synth import ensure_default_bundle

    if name in ("argse", "digits"):
        return ensure_default_bundle(name)
    if name == "c1000":
        c1000_bundle(cache)
        return cache / "c1000"
    return Path(name)


def seltune(env, *args) -> str:
    p = subprocess.run([sys.executable, "-m", "tuning.cli", *map(str, args)], env=env,
                       cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"seltune {' '.join(map(str, args))} failed:\n{p.stderr[-3000:]}")
    return p.stdout


def one_sweep(env, data: Path, seed: int, trials: int, storage: Path, name: str) -> dict:
    seltune(env, "sweep", "--data", data, "--num-samples", trials, "--seed", seed,
            "--storage", storage, "--name", name, "--json")
    out = storage / f"{name}-export"
    seltune(env, "export", storage / name, "--out", out, "--json")
    m = json.loads((out / "metrics.json").read_text())
    base = m["baselines"]["test"]
    experts = [k for k in base if k.startswith("chow:") and k != "chow:mixture"]
    best = min(experts, key=lambda k: base[k]["worst_group_error"])
    row = {"tuned": {k: m["test"][k] for k in KEYS}, "gate": m.get("config", {}).get("gate"),
           "coverage": m["test"]["coverage"], "chow_best_expert_name": best}
    row["chow:best_expert"] = {k: base[best][k] for k in KEYS}
    for b in BASELINES[1:]:
        row[b] = {k: base[b][k] for k in KEYS}
    return row


def _ms(xs) -> str:
    a = np.asarray(xs, dtype=float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.4f}"


def markdown(results: dict) -> str:
    lines = ["| bundle | rule | worst-group err @0.7 | worst-group area |", "|---|---|---:|---:|"]
    for bname, runs in results["bundles"].items():
        for rule in ("tuned", *BASELINES):
            lines.append(f"| {bname} | {rule} | "
                         + " | ".join(_ms([r[rule][k] for r in runs]) for k in KEYS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default="argse,digits,c1000")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/seltune-ablation"))
    ap.add_argument("--storage", type=Path, default=None,
                    help="where sweeps go (default: a temporary directory)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    storage = args.storage or Path(tempfile.mkdtemp(prefix="seltune-quality-"))
    ray_tmp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")  # short: unix socket paths
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    results: dict = {"seeds": args.seeds, "trials": args.trials, "bundles": {}}
    for bname in args.bundles.split(","):
        data = bundle_path(bname, args.cache)
        runs = results["bundles"].setdefault(bname, [])
        for seed in range(args.seeds):
            row = one_sweep(env, data, seed, args.trials, storage,
                            f"q-{Path(bname).name}-s{seed}")
            runs.append(row)
            print(f"[{bname} seed {seed}] tuned {row['tuned']} gate {row['gate']} "
                  f"plugin_worst {row['plugin_worst']}", flush=True)
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
