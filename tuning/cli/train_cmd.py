"""``seltune train TRAINABLE``: one training, no Ray, one subcommand per trainable.

Runs in-process with a progress bar on stderr, writes ``--out`` atomically in the
trainable's own format and ends with the table of ``val`` and ``test`` metrics beside
every baseline at the config's operating point (``--json``: the trainable's
``train --json`` object, see ``Adapter.save_run``: AR-GSE ``{"val", "test",
"baselines": {"val", "test"}, "verdict", "config", "checkpoint"}``, Stage-1 the same
plus its calibration). AR-GSE metrics are recomputed from the written checkpoint by
the function ``seltune evaluate`` uses, so both commands print the same numbers.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from core.atomic import check_output_path
from core.config import build_config
from core.device import DEVICE_CHOICES, resolve_device
from tuning.terminal import console, print_train_result, progress
from tuning.trainables import TRAINABLES, get_trainable


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
    for name, adapter in TRAINABLES.items():
        p = tsub.add_parser(name, help=adapter.description, description=adapter.description)
        add_common_train_args(p)
        p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    adapter = get_trainable(args.trainable)
    config: Any = build_config(adapter.config_class, args.config, args.overrides)
    out = check_output_path(args.out, args.overwrite)
    device = str(resolve_device(args.device))
    bundle = adapter.load_bundle(args.data)
    with tempfile.TemporaryDirectory(prefix=f"seltune-{adapter.name}-") as work:
        with progress() as bar:
            task = bar.add_task(adapter.name, total=adapter.expected_iterations(config),
                                status="")
            done = [0]

            def report(metrics: dict[str, Any], checkpoint_dir: str) -> None:
                done[0] += 1
                bar.update(task, completed=done[0], status=adapter.progress_status(metrics))

            result = adapter.train(config, bundle, report, device=device, workdir=work)
            # a run that stops early (Stage-1's early stopping) ends a full bar
            bar.update(task, total=done[0], completed=done[0])
        with progress() as bar:  # the model and every baseline on val and test
            task = bar.add_task("model and baselines", total=None, status="")
            try:
                summary = adapter.save_run(
                    result, config, bundle, out, overwrite=args.overwrite, device=device,
                    on_step=lambda done, total: bar.update(task, completed=done, total=total))
            except BaseException:
                bar.update(task, visible=False)  # an error stays one line
                raise
    print_train_result(summary, args.json)
    for line in adapter.run_notes(result):
        console(stderr=True).print(line)
    return 0
