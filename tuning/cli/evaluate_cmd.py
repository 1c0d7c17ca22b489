"""``seltune evaluate CKPT --data BUNDLE --split test``: recompute metrics from a checkpoint.

``CKPT`` is a checkpoint or an export directory (``seltune export --out DIR``: one
holding ``checkpoint/`` and ``metrics.json``; its ``checkpoint/`` is evaluated). The
trainable is recognised from the checkpoint's files (``Adapter.recognises``: an AR-GSE
``*.ckpt`` or a directory holding ``gating_selective.ckpt`` / ``gating_pretrained.ckpt``,
a Stage-1 directory holding ``stage1_head.pth``), which also checks the bundle before it
is read (``Adapter.check_bundle_dir``: an AR-GSE checkpoint's stored expert order must
be the bundle's). ``--json``: ``{"split", "metrics"}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.device import DEVICE_CHOICES
from tuning.terminal import print_metrics, progress
from tuning.trainables import for_checkpoint

EXPORT_CHECKPOINT = "checkpoint"
EXPORT_METRICS = "metrics.json"
_EXPORT_LAYOUT = "an export directory with checkpoint/ and metrics.json"


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint path of ``path``: ``path/checkpoint`` for an export directory,
    else ``path`` itself."""
    path = Path(path)
    if path.is_dir() and (path / EXPORT_CHECKPOINT).is_dir() and (path / EXPORT_METRICS).is_file():
        return path / EXPORT_CHECKPOINT
    return path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="recompute metrics of a checkpoint on a bundle split",
                       description="Recompute metrics of a checkpoint (or of an export "
                       "directory's checkpoint/) on a bundle split.")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="checkpoint file/directory, or an export directory")
    p.add_argument("--data", required=True, help="bundle directory")
    p.add_argument("--split", default="test")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checkpoint = resolve_checkpoint(args.checkpoint)
    adapter = for_checkpoint(checkpoint, _EXPORT_LAYOUT)
    adapter.check_bundle_dir(checkpoint, args.data)
    bundle = adapter.load_bundle(args.data)
    with progress() as bar:  # stderr: a long split shows its rows, --json stays clean
        task = bar.add_task(f"evaluate {args.split}", total=None, status="")
        try:
            result = adapter.evaluate(
                checkpoint, bundle, args.split, args.device,
                on_step=lambda done, total: bar.update(task, completed=done, total=total))
        except BaseException:
            bar.update(task, visible=False)  # an error stays one line
            raise
    print_metrics(args.split, result.metrics, args.json)
    return 0
