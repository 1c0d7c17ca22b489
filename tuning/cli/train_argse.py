"""``seltune train argse-pretrain|argse-selective`` and ``seltune evaluate`` for AR-GSE.

Training runs in-process (no Ray) with a progress bar on stderr, writes into ``--out``
atomically::

    gating_pretrained.ckpt | gating_selective.ckpt   seed-format checkpoint
    trainer_state.pt                                 resumable state
    selective_training_logs.json                     per-epoch / per-cycle logs
    config.json                                      the full config used
    metrics.json                                     the ``--json`` result below

and ends with the table of ``val`` and ``test`` metrics beside every baseline, all at
the config's operating point (``eval_coverage``; pretrain: ``target_coverage``), and a
line per split saying which baselines the model beats (``--json``: ``{"val", "test",
"baselines": {"val", "test"}, "verdict", "config", "checkpoint"}``).
The model's metrics are computed from the written checkpoint by
:func:`core.argse.model_metrics`, the function ``seltune evaluate`` uses, so both
commands print the same numbers for a split.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

MODES = {"argse-pretrain": "pretrain", "argse-selective": "selective"}


def run_train(args: argparse.Namespace) -> int:
    from core.argse import (
        LOGS_FILE,
        PRETRAIN_FILE,
        SELECTIVE_FILE,
        PretrainConfig,
        SelectiveConfig,
        load_predictor,
        model_metrics,
        train_pretrain,
        train_selective,
    )
    from core.argse.baselines import baseline_metrics, fit_baselines
    from core.argse.checkpoint import STATE_FILE, save_json
    from core.atomic import atomic_dir, check_output_path
    from core.bundles import load_expert_bundle
    from core.config import build_config, config_to_dict
    from core.device import resolve_device
    from tuning.results.baselines import verdicts
    from tuning.terminal import console, print_train_result, progress

    mode = MODES[args.trainable]
    config: PretrainConfig | SelectiveConfig
    if mode == "pretrain":
        config = build_config(PretrainConfig, args.config, args.overrides)
        ckpt_name = PRETRAIN_FILE
    else:
        config = build_config(SelectiveConfig, args.config, args.overrides)
        ckpt_name = SELECTIVE_FILE
    out = check_output_path(args.out, args.overwrite)
    device = resolve_device(args.device)
    bundle = load_expert_bundle(args.data)
    total = config.epochs if isinstance(config, PretrainConfig) else config.cycles + 1
    unit = "epoch" if mode == "pretrain" else "cycle"

    with tempfile.TemporaryDirectory(prefix="seltune-argse-") as work, progress() as bar:
        task = bar.add_task(f"{args.trainable}", total=total, status="")

        def report(metrics: dict, checkpoint_dir: str) -> None:
            bar.update(task, advance=1, status=(
                f"{unit} {int(metrics.get(unit, 0))} loss {metrics.get('loss', float('nan')):.4f} "
                f"worst {metrics['worst_group_error']:.4f} cov {metrics['coverage']:.3f}"))

        if isinstance(config, PretrainConfig):
            result = train_pretrain(config, bundle, report, device=device, workdir=work)
        else:
            result = train_selective(config, bundle, report, device=device, workdir=work)
        src = Path(result.checkpoint_dir)
        with atomic_dir(out, overwrite=args.overwrite) as tmp:
            for name in (ckpt_name, STATE_FILE, LOGS_FILE):
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            save_json(config_to_dict(config), tmp / "config.json")
            ckpt_path = (out / ckpt_name).resolve()
            predictor = load_predictor(tmp / ckpt_name, device)
            splits = [s for s in ("val", "test") if s in bundle.splits]
            # model and baselines at one operating point (the config's eval coverage)
            coverage = (config.target_coverage if isinstance(config, PretrainConfig)
                        else config.eval_coverage)
            summary: dict = {s: model_metrics(predictor, bundle, s, coverage) for s in splits}
            fitted = fit_baselines(bundle)
            summary["baselines"] = {
                s: baseline_metrics(bundle, s, coverage, fitted) for s in splits}
            summary["verdict"] = verdicts({s: summary[s] for s in splits}, summary["baselines"],
                                          "worst_group_error", "min", coverage)
            summary["config"] = config_to_dict(config)
            summary["checkpoint"] = str(ckpt_path)
            save_json(summary, tmp / "metrics.json")
    print_train_result(summary, args.json)
    temps = ", ".join(f"{n}={t:.3f}" for n, t in result.temperatures.items())
    console(stderr=True).print(f"expert temperatures (fit on tunev): {temps}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from core.argse import load_predictor, model_metrics
    from core.bundles import load_expert_bundle
    from tuning.terminal import print_metrics

    predictor = load_predictor(args.checkpoint, args.device)
    bundle = load_expert_bundle(args.data)
    metrics = model_metrics(predictor, bundle, args.split)
    print_metrics(args.split, metrics, args.json)
    return 0
