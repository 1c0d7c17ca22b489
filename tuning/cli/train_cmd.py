"""``seltune train argse-pretrain|argse-selective|stage1``: one training, no Ray.

Argument parsing is shared here; the work is done by ``tuning.cli.train_argse`` and
``tuning.cli.train_stage1`` (each exposing ``run_train(args) -> int``).
"""

from __future__ import annotations

import argparse
import importlib

from core.device import DEVICE_CHOICES

TRAINERS = {
    "argse-pretrain": ("tuning.cli.train_argse", "AR-GSE gating, pretrain mode (mixture CE)"),
    "argse-selective": ("tuning.cli.train_argse",
                        "AR-GSE gating, selective mode (Stage A + B1/B2/B3 cycles)"),
    "stage1": ("tuning.cli.train_stage1",
               "Stage-1 exit-gate head on cached features, with post-hoc calibration"),
}


def add_common_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="bundle directory (see `seltune data`)")
    p.add_argument("--out", required=True, help="output directory for checkpoints and logs")
    p.add_argument("--config", help="JSON or YAML file of config keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable); VALUE is parsed as JSON")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="run one training without Ray")
    tsub = train.add_subparsers(dest="trainable", metavar="TRAINABLE", required=True)
    for name, (module, help_text) in TRAINERS.items():
        p = tsub.add_parser(name, help=help_text, description=help_text)
        add_common_train_args(p)
        p.set_defaults(func=_dispatch(module))


def _dispatch(module: str):
    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).run_train(args))

    return run
