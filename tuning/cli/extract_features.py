"""``seltune data extract-features``: frozen DINOv2/DINOv3 features into a Stage-1 bundle.

``register(dsub)`` adds the ``extract-features`` parser to the ``seltune data``
subparsers (called by ``tuning/cli/data_cmd.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.device import DEVICE_CHOICES


def register(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "extract-features",
        help="run a frozen transformers backbone over images into a Stage-1 feature bundle",
        description="Run a frozen transformers vision backbone (AutoModel + "
        "AutoImageProcessor; DINOv2, DINOv3) over --images, keep the CLS token of each "
        "image, and write a feature bundle with train/val/test splits (stratified by "
        "label). Unreadable images are listed and skipped.")
    p.add_argument("--model", required=True, metavar="DIR_OR_ID",
                   help="save_pretrained directory or hub id (offline cache)")
    p.add_argument("--images", required=True, metavar="DIR", help="image root directory")
    p.add_argument("--labels", required=True, metavar="CSV",
                   help="CSV rows path,label[,group]; paths relative to --images")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="output bundle directory")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--split-ratios", default="0.7,0.15,0.15", metavar="TRAIN,VAL,TEST")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.atomic import check_output_path
    from core.bundles import save_bundle
    from core.errors import InputError
    from core.extract import check_model, extract_features, parse_split_ratios, read_labels_csv
    from tuning.terminal import console, print_json, progress

    ratios = parse_split_ratios(args.split_ratios)
    out = check_output_path(args.out, args.overwrite)
    # cheap input checks before the progress bar, so a bad path is one clean line
    if not Path(args.images).is_dir():
        raise InputError("no such directory", file=args.images, expected="the image root directory")
    read_labels_csv(args.labels)
    check_model(args.model)  # a missing local directory: at once, not after network retries
    err = console(stderr=True)
    with progress(stderr=True) as bar:
        task = bar.add_task("extract", total=None, status="")

        def on_batch(done: int, total: int) -> None:
            bar.update(task, total=total, completed=done)

        def on_skip(path: str, reason: str) -> None:
            bar.console.print(f"[yellow]skipped[/yellow] {path}: {reason}")

        result = extract_features(args.model, args.images, args.labels,
                                  batch_size=args.batch_size, device=args.device,
                                  split_ratios=ratios, seed=args.seed,
                                  on_batch=on_batch, on_skip=on_skip)
    save_bundle(result.bundle, out, overwrite=args.overwrite)
    b = result.bundle
    summary = {
        "bundle": str(out),
        "images": result.num_images,
        "skipped": len(result.skipped),
        "skipped_paths": [p for p, _ in result.skipped],
        "feature_dim": b.feature_dim,
        "num_classes": b.num_classes,
        "splits": {k: len(v) for k, v in b.splits.items()},
        "images_per_second": result.images_per_second,
    }
    err.print(f"{result.num_images} images -> {out} (D={b.feature_dim}, "
              + ", ".join(f"{k} {n}" for k, n in summary["splits"].items())
              + f"); skipped {len(result.skipped)} unreadable image(s)"
              + (": " + ", ".join(summary["skipped_paths"]) if result.skipped else ""))
    if args.json:
        print_json(summary)
    return 0
