"""``seltune train stage1`` and ``seltune evaluate`` for Stage-1 checkpoints.

``run_train(args)`` trains one Stage-1 head on a feature bundle (no Ray), writes the
artefacts directory ``--out`` atomically and prints the model beside the
softmax-confidence baseline (``--json``: ``{"val", "test", "baselines", "config",
"checkpoint", ...}``). ``run_evaluate(args)`` recomputes the metrics of such a
directory on a bundle split (``--json``: ``{"split", "metrics"}``).
"""

from __future__ import annotations

import argparse


def run_train(args: argparse.Namespace) -> int:
    from core.atomic import check_output_path
    from core.bundles import load_feature_bundle
    from core.config import build_config
    from core.stage1 import Stage1Config, train_stage1
    from tuning.terminal import print_train_result, progress

    config = build_config(Stage1Config, args.config, args.overrides)
    out = check_output_path(args.out, args.overwrite)
    bundle = load_feature_bundle(args.data)
    with progress(stderr=True) as bar:
        task = bar.add_task("stage1", total=config.epochs, status="")

        def report(metrics: dict, checkpoint_dir: str) -> None:
            bar.update(task, completed=int(metrics["epoch"]),
                       status=f"val augrc {metrics['augrc']:.4f} "
                       f"cov {metrics['coverage']:.3f} ece {metrics['ece']:.4f}")

        result = train_stage1(config, bundle, report, device=args.device)
        bar.update(task, total=result.epochs_run, completed=result.epochs_run)
    result.save(out, overwrite=args.overwrite)
    print_train_result(result.to_dict(checkpoint=out), args.json)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from core.bundles import load_feature_bundle
    from core.stage1 import evaluate_checkpoint
    from tuning.terminal import print_metrics

    bundle = load_feature_bundle(args.data)
    result = evaluate_checkpoint(args.checkpoint, bundle, args.split, args.device)
    print_metrics(args.split, result["metrics"], args.json)
    return 0
