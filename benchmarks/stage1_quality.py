"""Stage-1 exit scores against the training-free baselines at one operating point.

Issues 10 and 11: every Stage-1 result is judged at the same coverage
(``eval_coverage``, default 0.8) on the same split, beside calibrated max-softmax
(``msp``), DOCTOR and MaxLogit computed on the *same run's* logits. For each bundle,
seed, ``class_weights`` and ``exit_score`` this trains one head with the otherwise
default ``Stage1Config`` (no Ray) and reads the ``test`` split's metrics:

- ``augrc`` (coverage-free) and ``risk`` (selective risk at the operating point, i.e.
  ``selective_error`` with exactly ``round(0.8 N)`` samples accepted) of the model;
- the same for the three baselines of that run;
- ``coverage`` (realised at the operating point) and ``exit_cov`` (the deployed rule
  ``score >= tau``, tau fit on ``val_calib``: how the threshold transfers to test).

Bundles:

- ``default``: ``core.synth.synth_stage1_bundle(seed)`` (the default stage1 bundle for
  seed 0, 6000/3000/3000 x 64, three sources, one hard);
- ``breast_cancer``: scikit-learn's Wisconsin breast-cancer table (569 x 30, binary),
  standardised with the train split's statistics;
- ``digits_odd``: scikit-learn's 8x8 digits (1797 x 64 real images), "is the digit
  odd?", pixels standardised with the train split's statistics.

The scikit-learn bundles are split 50/25/25 stratified by label with the seed, so the
sd over seeds includes the split's noise. Each seed also seeds the training.

    .venv/bin/python benchmarks/stage1_quality.py                      # 3 seeds, all bundles
    .venv/bin/python benchmarks/stage1_quality.py --seeds 1 --bundles default --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUNDLES = ("default", "breast_cancer", "digits_odd")
EXIT_SCORES = ("gate", "msp", "combined")
CLASS_WEIGHTS = ("balanced", "none")
BASELINES = ("msp", "doctor", "maxlogit")


def sklearn_binary_bundle(name: str, seed: int, fractions=(0.5, 0.25, 0.25)):
    """A stage1 :class:`core.bundles.FeatureBundle` from a dataset shipped with sklearn.

    ``name``: ``breast_cancer`` (label = malignant) or ``digits_odd`` (label = odd
    digit). Rows are split ``fractions`` (train/val/test) stratified by label with
    ``seed``; features are standardised by the train split's mean and sd (the head
    has no input normalisation). No groups: metrics use one group per class.
    """
    from sklearn import datasets

    from core.bundles import FeatureBundle, FeatureSplit

    if name == "breast_cancer":
        data = datasets.load_breast_cancer()
        x, y = data.data, (data.target == 0).astype(np.int64)
    elif name == "digits_odd":
        data = datasets.load_digits()
        x, y = data.data, (data.target % 2 == 1).astype(np.int64)
    else:
        raise ValueError(f"bundle {name!r}: expected breast_cancer or digits_odd")
    rng = np.random.default_rng([seed, 0x5C1])
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        cut1 = round(fractions[0] * len(idx))
        cut2 = cut1 + round(fractions[1] * len(idx))
        for part, sl in zip(parts, (idx[:cut1], idx[cut1:cut2], idx[cut2:]), strict=True):
            part.append(sl)
    index = [np.sort(np.concatenate(p)) for p in parts]
    mean = x[index[0]].mean(axis=0)
    sd = x[index[0]].std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    splits = {split: FeatureSplit(((x[i] - mean) / sd).astype(np.float32), y[i])
              for split, i in zip(("train", "val", "test"), index, strict=True)}
    return FeatureBundle(num_classes=2, splits=splits)


def make_bundle(name: str, seed: int):
    if name == "default":
        from core.synth import synth_stage1_bundle

        return synth_stage1_bundle(seed)
    return sklearn_binary_bundle(name, seed)


def run_one(bundle, seed: int, class_weights: str, exit_score: str, overrides: dict) -> dict:
    from core.stage1 import train_stage1

    cfg = {"seed": seed, "class_weights": class_weights, "exit_score": exit_score,
           **overrides}
    t0 = time.perf_counter()
    res = train_stage1(cfg, bundle, device="cpu")
    test = res.test
    assert test is not None
    row: dict[str, Any] = {
        "augrc": test["augrc"], "risk": test["selective_error"],
        "worst_group_error": test["worst_group_error"], "coverage": test["coverage"],
        "coverage_gap": test["coverage_gap"], "exit_cov": test["exit_coverage"],
        "seconds": time.perf_counter() - t0, "best_epoch": res.best_epoch,
    }
    for name in BASELINES:
        b = res.baselines["test"][name]
        row[f"{name}_augrc"] = b["augrc"]
        row[f"{name}_risk"] = b["selective_error"]
        row[f"{name}_coverage"] = b["coverage"]
    return row


def _ms(values: list[float]) -> tuple[float, float]:
    return (statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float], digits: int = 4) -> str:
    m, s = _ms(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _best_baseline(row: dict, metric: str = "augrc") -> float:
    return min(row[f"{b}_{metric}"] for b in BASELINES)


def summarise(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Markdown table lines and one summary dict per (bundle, class_weights, exit_score).

    ``Δ`` is paired: per seed, the model's AUGRC minus the best baseline's AUGRC on the
    same run's logits, then mean ± sd over seeds (negative = the model is better).
    """
    keys = sorted({(r["bundle"], r["class_weights"], r["exit_score"]) for r in rows},
                  key=lambda k: (BUNDLES.index(k[0]), CLASS_WEIGHTS.index(k[1]),
                                 EXIT_SCORES.index(k[2])))
    lines = [
        "| bundle | class_weights | exit_score | model AUGRC | msp | DOCTOR | MaxLogit "
        "| Δ vs best baseline (paired) | model risk@0.8 | best baseline risk@0.8 "
        "| worst-group error | coverage | exit_cov |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out = []
    for key in keys:
        sel = [r for r in rows if (r["bundle"], r["class_weights"], r["exit_score"]) == key]
        delta = [r["augrc"] - _best_baseline(r) for r in sel]
        cols = [_fmt([r["augrc"] for r in sel])]
        cols += [_fmt([r[f"{b}_augrc"] for r in sel]) for b in BASELINES]
        cols += [_fmt(delta), _fmt([r["risk"] for r in sel]),
                 _fmt([_best_baseline(r, "risk") for r in sel]),
                 _fmt([r["worst_group_error"] for r in sel]),
                 _fmt([r["coverage"] for r in sel], 3), _fmt([r["exit_cov"] for r in sel], 3)]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cols) + " |")
        metrics = ("augrc", "risk", "coverage", "coverage_gap", "exit_cov", "worst_group_error",
                   *(f"{b}_augrc" for b in BASELINES), *(f"{b}_risk" for b in BASELINES))
        out.append({"bundle": key[0], "class_weights": key[1], "exit_score": key[2],
                    "n": len(sel), "delta_mean": _ms(delta)[0], "delta_sd": _ms(delta)[1],
                    "max_coverage_gap": max(r["coverage_gap"] for r in sel),
                    **{f"{m}_mean": _ms([r[m] for r in sel])[0] for m in metrics},
                    **{f"{m}_sd": _ms([r[m] for r in sel])[1] for m in metrics}})
    return lines, out


def verdict(summary: list[dict], default: tuple[str, str]) -> list[str]:
    """Per bundle: the default config against the best baseline of its own runs (paired)
    and against the best baseline of any class_weights (by mean AUGRC); the best config."""
    lines = []
    for bundle in BUNDLES:
        sel = [s for s in summary if s["bundle"] == bundle]
        if not sel:
            continue
        base = min((s[f"{b}_augrc_mean"], s[f"{b}_augrc_sd"], b, s["class_weights"])
                   for s in sel for b in BASELINES)
        best = min(sel, key=lambda s: s["augrc_mean"])
        parts = [f"- {bundle}:"]
        dflt = [s for s in sel if (s["class_weights"], s["exit_score"]) == default]
        if dflt:
            d = dflt[0]
            parts.append(
                f"default ({default[0]}/{default[1]}) AUGRC {d['augrc_mean']:.4f} ± "
                f"{d['augrc_sd']:.4f}, paired Δ vs its best baseline {d['delta_mean']:+.4f} ± "
                f"{d['delta_sd']:.4f}; vs the best baseline of any run ({base[2]}, {base[3]}) "
                f"{base[0]:.4f} ± {base[1]:.4f}: "
                + ("no worse within one sd;" if d["augrc_mean"] <= base[0] + base[1]
                   else "WORSE by more than one sd;"))
        parts.append(f"best config {best['class_weights']}/{best['exit_score']} "
                     f"{best['augrc_mean']:.4f} ± {best['augrc_sd']:.4f}; "
                     f"largest |coverage - 0.8| {max(s['max_coverage_gap'] for s in sel):.4f}.")
        lines.append(" ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--bundles", default=",".join(BUNDLES))
    ap.add_argument("--exit-scores", default=",".join(EXIT_SCORES))
    ap.add_argument("--class-weights", default=",".join(CLASS_WEIGHTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Stage1Config overrides for every run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stage1_quality.json"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from core.config import parse_overrides

    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    bundles = [b for b in args.bundles.split(",") if b]
    rows = []
    for bundle_name in bundles:
        for seed in range(args.seeds):
            bundle = make_bundle(bundle_name, seed)
            for cw, es in itertools.product(args.class_weights.split(","),
                                            args.exit_scores.split(",")):
                row = run_one(bundle, seed, cw, es, overrides)
                row.update(bundle=bundle_name, seed=seed, class_weights=cw, exit_score=es)
                rows.append(row)
                print(f"{bundle_name} seed {seed} {cw}/{es}: augrc {row['augrc']:.4f} "
                      f"(msp {row['msp_augrc']:.4f} doctor {row['doctor_augrc']:.4f} "
                      f"maxlogit {row['maxlogit_augrc']:.4f}) cov {row['coverage']:.4f} "
                      f"{row['seconds']:.1f}s", file=sys.stderr)
    lines, summary = summarise(rows)
    from core.stage1 import Stage1Config

    default = (Stage1Config().class_weights, Stage1Config().exit_score)
    lines += ["", *verdict(summary, default)]
    result = {"command": "benchmarks/stage1_quality.py " + " ".join(argv or sys.argv[1:]),
              "overrides": overrides, "rows": rows, "summary": summary, "table": lines}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
