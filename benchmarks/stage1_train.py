"""One Stage-1 training on cached features: wall time and peak memory.

The workload of issue 4: 10k x 1024 float32 features (DINOv3-L width), binary labels,
15 epochs with the default Stage1Config (early stopping off so every epoch runs; the
per-epoch calibration on ``val_calib`` and metrics on ``val_select`` are included, as
in a Tune trial). The features come from ``core.synth.synth_stage1_bundle(dim=1024)``
(train 10k, val 3k, test 3k). Runs in a fresh subprocess so peak RSS (``ru_maxrss``)
is the training's own; on CUDA also ``torch.cuda.max_memory_allocated``.

    python benchmarks/stage1_train.py                 # 10k x 1024, 15 epochs, auto device
    python benchmarks/stage1_train.py --quick         # smoke: 2k x 256, 2 epochs
    python benchmarks/stage1_train.py --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _child(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from core.stage1 import Stage1Config, train_stage1
    from core.synth import synth_stage1_bundle

    t0 = time.perf_counter()
    bundle = synth_stage1_bundle(seed=0, dim=args.dim, sizes=(args.n, args.n_val, args.n_val))
    t_data = time.perf_counter() - t0
    cfg = Stage1Config(epochs=args.epochs, early_stop_patience=0,
                       batch_size=args.batch_size, hidden_dim=args.hidden_dim)
    epoch_times: list[float] = []
    last = [time.perf_counter()]

    def report(metrics, ckpt):
        now = time.perf_counter()
        epoch_times.append(now - last[0])
        last[0] = now

    if torch.cuda.is_available() and args.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    last[0] = t1
    res = train_stage1(cfg, bundle, report, device=args.device)
    wall = time.perf_counter() - t1
    out = {
        "n_train": args.n, "dim": args.dim, "epochs": args.epochs, "batch_size": args.batch_size,
        "hidden_dim": args.hidden_dim, "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall, "per_epoch_s": sum(epoch_times) / max(len(epoch_times), 1),
        "data_s": t_data,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "test_augrc": res.test["augrc"],
        "test_softmax_augrc": res.baselines["test"]["softmax_confidence"]["augrc"],
        "test_coverage": res.test["coverage"],
    }
    if torch.cuda.is_available() and args.device != "cpu":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="training rows")
    p.add_argument("--n-val", type=int, default=3_000, help="val and test rows")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2k x 256, 2 epochs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.n_val, args.dim, args.epochs = 2000, 600, 256, 2
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    cmd = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Stage-1 training {result['n_train']}x{result['dim']}, {result['epochs']} epochs "
              f"on {result['device']}: {result['wall_s']:.1f} s "
              f"({result['per_epoch_s']:.2f} s/epoch), peak RSS {result['peak_rss_mib']:.0f} MiB"
              + (f", CUDA peak {result['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in result
                 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
