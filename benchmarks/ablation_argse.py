"""AR-GSE ablation against Plug-in[Worst] (issue 11): one change at a time.

Starts from Plug-in[Worst] (``gate=uniform``, ``final_rule=plugin``, fit on all of
``tunev``: exactly the training-free baseline) and changes one thing at a time towards
the seed's AR-GSE schedule, then towards the new default (a gate trained by the
balanced mixture NLL, cross-fitted over S1/S2). Every row is a
:class:`core.argse.config.SelectiveConfig` override set, trained with
:func:`core.argse.selective.train_selective` for each config seed (the seed moves the
S1/S2 split and the gate's init) and judged on ``test`` at the operating point
``eval_coverage`` (0.7): worst-group error there and the worst-group area over
rejection rates [0, 0.8] (both lower is better), mean ± sd over seeds.

Bundles: ``argse`` (the default synthetic bundle, C = 100), ``digits`` (long-tailed
scikit-learn digits, C = 10), ``c1000`` (a small C = 1000 synthetic bundle built here
by :func:`core.synth.synth_argse_bundle`, cached under ``--cache``), or a bundle path.

    .venv/bin/python benchmarks/ablation_argse.py --bundles argse,digits,c1000 --seeds 3 \\
        --json benchmarks/results/ablation_argse.json --markdown
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (row name, SelectiveConfig overrides). The first row is Plug-in[Worst] itself.
ROWS: list[tuple[str, dict]] = [
    ("Plug-in[Worst] (uniform gate, plug-in fit on tunev)", {"gate": "uniform"}),
    ("uniform gate, plug-in fit on S2 only (S1/S2 halving)",
     {"gate": "uniform", "cross_fit": False, "final_fit_split": "s2"}),
    ("learned gate: seed loss (Stage A + B1 selective), plug-in on tunev",
     {"gate_loss": "selective", "uniform_check": False}),
    ("  same, plug-in fit on S2",
     {"gate_loss": "selective", "final_fit_split": "s2", "uniform_check": False}),
    ("  same, mu by B3 grid+EMA, alpha by power iteration (final_rule none)",
     {"gate_loss": "selective", "final_rule": "none", "uniform_check": False}),
    ("  final_rule none, alpha by the seed's clamped fixed point",
     {"gate_loss": "selective", "final_rule": "none", "alpha_update": "seed",
      "uniform_check": False}),
    ("  final_rule none, thresholds as learnt by pinball (no quantile)",
     {"gate_loss": "selective", "final_rule": "none", "calibrate_thresholds": False,
      "uniform_check": False}),
    ("  final_rule none, seed margin",
     {"gate_loss": "selective", "final_rule": "none", "margin": "seed",
      "uniform_check": False}),
    ("  the seed's rule (seed margin + seed alpha, final_rule none)",
     {"gate_loss": "selective", "final_rule": "none", "margin": "seed",
      "alpha_update": "seed", "uniform_check": False}),
    ("learned gate: Stage A only (mixture NLL on S1), plug-in on tunev",
     {"gate_loss": "nll", "cross_fit": False, "uniform_check": False}),
    ("learned gate: balanced NLL on S1, plug-in on tunev",
     {"gate_loss": "balanced_nll", "cross_fit": False, "uniform_check": False}),
    ("learned gate: balanced NLL, plug-in on S2",
     {"gate_loss": "balanced_nll", "cross_fit": False, "final_fit_split": "s2",
      "uniform_check": False}),
    ("learned gate: plain NLL, cross-fit",
     {"gate_loss": "nll", "uniform_check": False}),
    ("learned gate: balanced NLL, cross-fit (no uniform check)", {"uniform_check": False}),
    ("new default (balanced NLL, cross-fit, uniform check)", {}),
]


def c1000_bundle(cache: Path):
    """A small ImageNet-LT-shaped bundle: C = 1000, imbalance 100, n_max 100 training
    rows for the head class, 10 / 5 / 10 rows per class in tunev / val / test."""
    from core.bundles import load_bundle, save_bundle
    from core.synth import synth_argse_bundle

    path = cache / "c1000"
    if not path.exists():
        save_bundle(synth_argse_bundle(classes=1000, imbalance=100.0, n_max=100,
                                       per_class=(10, 5, 10), dim=64, latent_dim=16, seed=0),
                    path)
    return load_bundle(path)


def get_bundle(name: str, cache: Path):
    from core.bundles import load_bundle
    from core.synth import ensure_default_bundle

    if name in ("argse", "digits"):
        return load_bundle(ensure_default_bundle(name))
    if name == "c1000":
        return c1000_bundle(cache)
    return load_bundle(name)


def run_row(bundle, overrides: dict, seeds: int, coverage: float) -> dict:
    from core.argse import load_predictor
    from core.argse.config import SelectiveConfig
    from core.argse.predictor import model_metrics
    from core.argse.selective import train_selective

    wge, area, secs, gates = [], [], [], []
    for seed in range(seeds):
        cfg = SelectiveConfig(**{**overrides, "seed": seed, "eval_coverage": coverage})
        t0 = time.perf_counter()
        res = train_selective(cfg, bundle)
        secs.append(time.perf_counter() - t0)
        m = model_metrics(load_predictor(res.checkpoint_dir), bundle, "test")
        wge.append(m["worst_group_error"])
        area.append(m["worst_group_area"])
        gates.append(res.logs[-1].get("gate"))
    return {"worst_group_error": wge, "worst_group_area": area, "seconds": secs,
            "gate": gates}


def _ms(xs) -> str:
    a = np.asarray(xs, dtype=float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.4f}"


def markdown(results: dict) -> str:
    names = list(results["bundles"])
    head = "| row | " + " | ".join(f"{b} worst-group err | {b} worst-group area"
                                  for b in names) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    for row, _ in ROWS:
        cells = []
        for b in names:
            r = results["bundles"][b].get(row)
            cells += ([_ms(r["worst_group_error"]), _ms(r["worst_group_area"])]
                      if r else ["—", "—"])
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", default="argse,digits,c1000")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--coverage", type=float, default=0.7)
    ap.add_argument("--rows", default="", help="comma-separated row indices (default all)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/seltune-ablation"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    pick = [int(i) for i in args.rows.split(",") if i] or list(range(len(ROWS)))
    results: dict = {"seeds": args.seeds, "coverage": args.coverage, "bundles": {}}
    for name in args.bundles.split(","):
        bundle = get_bundle(name, args.cache)
        out = results["bundles"].setdefault(name, {})
        for i in pick:
            row, overrides = ROWS[i]
            out[row] = run_row(bundle, overrides, args.seeds, args.coverage)
            print(f"[{name}] {row}: wge {_ms(out[row]['worst_group_error'])} "
                  f"area {_ms(out[row]['worst_group_area'])} gate {out[row]['gate']} "
                  f"({sum(out[row]['seconds']):.0f} s)", flush=True)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
