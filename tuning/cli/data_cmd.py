"""``seltune data synth|import|inspect|extract-features``: make and look at bundles.

* ``synth --kind argse``: CIFAR-100-LT-shaped expert-logit bundle with three trained
  experts (``core.synth.synth_argse_bundle``); ``--kind digits``: the long-tailed
  scikit-learn ``digits`` example (real images, bundled, no download);
  ``--kind stage1``: the binary feature bundle for the Stage-1 exit gate.
* ``import --kind argse|stage1 --from DIR``: the layouts of ``core.importers``,
  including both layouts the AR-GSE repository writes (``--split-map``,
  ``--class-counts``, ``--imbalance``/``--max-count``, ``--experts`` for its choices).
* ``inspect BUNDLE``: splits, shapes, class counts, groups and per-expert accuracy /
  balanced accuracy / worst-group accuracy / per-group accuracy on every split.
* ``extract-features``: registered by ``tuning.cli.extract_features`` when present.

Notes go to stderr; ``--json`` prints exactly one object on stdout. Heavy imports
(numpy, torch, pyarrow) happen inside the command functions so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from typing import Any

from core.errors import InputError

SYNTH_KINDS = ("argse", "stage1", "digits")
IMPORT_KINDS = ("argse", "stage1")


def _int_list(text: str, field: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise InputError(field=field, value=text,
                         expected="comma-separated integers, e.g. 20 or 20,100")
    return values


def _name_list(text: str, field: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if not names:
        raise InputError(field=field, value=text, expected="comma-separated names")
    return names


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make, import and inspect data bundles",
                          description=__doc__.split("\n\n")[0])
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    p = dsub.add_parser(
        "synth", help="build a synthetic (or the digits example) bundle with trained experts",
        description="Build a bundle: --kind argse (CIFAR-100-LT-shaped, three trained "
        "experts), digits (long-tailed scikit-learn digits, real images), stage1 "
        "(binary feature bundle with a hard subgroup and label noise).",
    )
    p.add_argument("--kind", choices=SYNTH_KINDS, default="argse")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--classes", type=int, default=None,
                   help="number of classes C (argse only; default 100)")
    p.add_argument("--imbalance", type=float, default=None,
                   help="largest/smallest training class (argse: default 100, digits: 50)")
    p.add_argument("--experts", default=None,
                   help="comma-separated expert losses (argse, digits; default "
                   "ce,logit_adjust,balanced_softmax)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-boundaries", default=None,
                   help="comma-separated training-count boundaries of the groups "
                   "(default 20: tail = classes with <= 20 samples; 20,100 gives K=3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_synth)

    p = dsub.add_parser(
        "import", help="import the AR-GSE logit layout or Stage-1 .npz files",
        description="argse: DIR/<expert>/<split>_logits.{npy,npz,pt} [N, C] (an .npz may "
        "hold logits plus targets/labels), labels in DIR/<split>_labels.{npy,npz,pt} [N] or "
        "inside each logits file, class counts in DIR/class_counts.json or from "
        "--class-counts / --imbalance --max-count; splits tunev, val, test. Both layouts "
        "of the AR-GSE repository import as written: outputs/logits_fixed (npz with "
        "targets) and outputs/logits/<dataset> (float16 .pt; split aliases tuneV->tunev, "
        "val_lt->val (preferred) or val_small->val, test_lt->test). stage1: "
        "DIR/<split>.npz with features [N, D], labels [N], optional group [N] and path "
        "[N], splits train, val, test.",
    )
    p.add_argument("--kind", choices=IMPORT_KINDS, required=True)
    p.add_argument("--from", dest="src", required=True, metavar="DIR",
                   help="directory in the layout above")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--group-boundaries", default=None,
                   help="argse: comma-separated count boundaries (default 20)")
    p.add_argument("--experts", default=None,
                   help="argse: expert sub-directories to use, in order (a name may omit "
                   "the suffix _baseline; default: the AR-GSE repository's order ce, "
                   "logitadjust, balsoftmax for its experts, else all, sorted)")
    p.add_argument("--split-map", default=None, metavar="SRC=SPLIT,...",
                   help="argse: which source split each bundle split is read from, e.g. "
                   "tuneV=tunev,val_small=val,test_lt=test (default: the aliases above)")
    p.add_argument("--class-counts", default=None, metavar="FILE",
                   help="argse: JSON list of the C training class counts (instead of "
                   "DIR/class_counts.json)")
    p.add_argument("--imbalance", type=float, default=None, metavar="IF",
                   help="argse: CIFAR-LT counts n_c = floor(N * IF^(-c/(C-1))) with "
                   "--max-count N (CIFAR-100-LT: --imbalance 100 --max-count 500)")
    p.add_argument("--max-count", type=int, default=None, metavar="N",
                   help="argse: training count of the largest class, with --imbalance")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_import)

    p = dsub.add_parser(
        "inspect", help="splits, shapes, groups and per-expert accuracies of a bundle",
        description="Show a bundle: splits, shapes, class counts, groups and, for an "
        "expert-logit bundle, each expert's accuracy, balanced accuracy, worst-group "
        "accuracy and per-group (head/tail) accuracy on every split.",
    )
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_inspect)

    # The Stage-1 feature extractor registers its own parser under `data`.
    if importlib.util.find_spec("tuning.cli.extract_features") is not None:
        importlib.import_module("tuning.cli.extract_features").register(dsub)


# --------------------------------------------------------------------------- synth


def _reject(args: argparse.Namespace, names: tuple[str, ...], kind: str) -> None:
    for name in names:
        if getattr(args, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise InputError(field=flag, value=getattr(args, name),
                             expected=f"no {flag} with --kind {kind}")


def run_synth(args: argparse.Namespace) -> int:
    from core.atomic import check_output_path

    check_output_path(args.out, args.overwrite)  # fail before spending seconds on synth
    t0 = time.perf_counter()
    from core import synth

    kwargs: dict[str, Any] = {"seed": args.seed}
    if args.kind in ("argse", "digits"):
        if args.experts is not None:
            kwargs["experts"] = _name_list(args.experts, "--experts")
        if args.group_boundaries is not None:
            kwargs["group_boundaries"] = _int_list(args.group_boundaries, "--group-boundaries")
        if args.imbalance is not None:
            kwargs["imbalance"] = args.imbalance
    if args.kind == "argse":
        if args.classes is not None:
            kwargs["classes"] = args.classes
        bundle: Any = synth.synth_argse_bundle(**kwargs)
    elif args.kind == "digits":
        _reject(args, ("classes",), "digits")
        bundle = synth.digits_longtail_bundle(**kwargs)
    else:
        _reject(args, ("classes", "imbalance", "experts", "group_boundaries"), "stage1")
        bundle = synth.synth_stage1_bundle(**kwargs)
    return _save_and_report(bundle, args, time.perf_counter() - t0, "synth")


def _save_and_report(bundle, args: argparse.Namespace, seconds: float, verb: str) -> int:
    from core.bundles import save_bundle

    out = save_bundle(bundle, args.out, overwrite=args.overwrite)
    del bundle
    return _report_saved(out, args, seconds, verb)


def _report_saved(out, args: argparse.Namespace, seconds: float, verb: str) -> int:
    from core.bundles import load_bundle

    saved = load_bundle(out)
    rows = ", ".join(f"{k}={len(v)}" for k, v in saved.splits.items())
    _note(f"seltune data {verb}: wrote {out} ({saved.kind}, {rows}; {seconds:.1f} s)")
    _show(saved, args.json)
    return 0


# --------------------------------------------------------------------------- import


def run_import(args: argparse.Namespace) -> int:
    from core.atomic import check_output_path

    # --overwrite never replaces the source being imported (or a folder above it)
    check_output_path(args.out, args.overwrite, protect=(args.src,))
    t0 = time.perf_counter()
    from core import importers

    if args.kind == "argse":
        # notes are printed once the import succeeded: a bad input stays one line
        notes: list[str] = []
        kwargs: dict[str, Any] = {"note": notes.append}
        if args.group_boundaries is not None:
            kwargs["group_boundaries"] = _int_list(args.group_boundaries, "--group-boundaries")
        if args.experts is not None:
            kwargs["experts"] = _name_list(args.experts, "--experts")
        if args.split_map is not None:
            kwargs["split_map"] = importers.parse_split_map(args.split_map)
        kwargs.update(class_counts=args.class_counts, imbalance=args.imbalance,
                      max_count=args.max_count)
        from tuning.terminal import progress

        # streamed to --out one split at a time (core.importers.import_argse_bundle)
        with progress() as bar:
            task = bar.add_task("data import", total=None, status="expert files")
            try:
                out = importers.import_argse_bundle(
                    args.src, args.out, overwrite=args.overwrite,
                    on_step=lambda done, total: bar.update(task, completed=done, total=total),
                    **kwargs)
            except BaseException:
                bar.update(task, visible=False)  # a bad input stays one line
                raise
        for line in notes:
            _note(f"seltune data import: {line}")
        return _report_saved(out, args, time.perf_counter() - t0, "import")
    else:
        _reject(args, ("group_boundaries", "experts", "split_map", "class_counts",
                       "imbalance", "max_count"), "stage1")
        bundle = importers.import_stage1_dir(args.src)
    return _save_and_report(bundle, args, time.perf_counter() - t0, "import")


# --------------------------------------------------------------------------- inspect


def run_inspect(args: argparse.Namespace) -> int:
    from core.bundles import load_bundle

    _show(load_bundle(args.bundle), args.json)
    return 0


def _show(bundle, as_json: bool) -> None:
    from core.data_stats import bundle_summary
    from tuning.terminal import console, print_json, print_table

    summary = bundle_summary(bundle)
    if as_json:
        print_json(summary)
        return
    out = console()
    out.print(f"[bold]{summary['path'] or '<in memory>'}[/bold]: kind {summary['kind']}, "
              f"{summary['num_classes']} classes")
    if summary["kind"] == "argse":
        names = summary["group_names"]
        out.print(f"experts: {', '.join(summary['experts'])}")
        out.print(f"training samples: {sum(summary['class_counts'])} "
                  f"(largest class {max(summary['class_counts'])}, "
                  f"smallest {min(summary['class_counts'])})")
        groups = "; ".join(
            f"{n}: {c} classes, {s} training samples"
            for n, c, s in zip(names, summary["classes_per_group"],
                               summary["training_samples_per_group"], strict=True))
        out.print(f"groups (boundaries {summary['group_boundaries']}): {groups}")
        for split, info in summary["splits"].items():
            rows = [
                [e, m["accuracy"], m["balanced_accuracy"], m["worst_group_accuracy"],
                 *m["group_accuracy"]]
                for e, m in info["experts"].items()
            ]
            print_table(
                f"{split}: n={info['n']}, logits {info['shape']}, top-1 accuracy",
                ["expert", "acc", "bal. acc", "worst grp", *names],
                rows,
            )
    else:
        out.print(f"feature dim: {summary['feature_dim']}")
        gnames = summary.get("group_names")
        rows = []
        for split, info in summary["splits"].items():
            gc = info.get("group_counts")
            groups = "-" if gc is None else ", ".join(
                f"{gnames[g] if gnames and g < len(gnames) else g}={n}" for g, n in enumerate(gc))
            rows.append([split, info["n"], str(info["label_counts"]), groups])
        print_table("splits", ["split", "n", "label counts", "group counts"], rows)


__all__ = ["register", "run_import", "run_inspect", "run_synth"]
