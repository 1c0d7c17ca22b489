"""Feature-extraction throughput (images/s) of ``core.extract`` on a tiny random DINOv3.

Builds a tiny random ``DINOv3ViTModel`` (hidden 64, 2 layers, patch 8, 64x64 input)
with ``save_pretrained``, writes ``--images`` random PNGs, and times
``core.extract.extract_features`` end to end (PNG decoding, preprocessing, forward,
CLS gather). The figure measures the pipeline's overhead, not a real backbone: a
DINOv3-L forward dominates on real data. Offline (HF_HUB_OFFLINE=1).

    python benchmarks/extract_throughput.py                # 512 images, batch 64
    python benchmarks/extract_throughput.py --quick        # 64 images
    python benchmarks/extract_throughput.py --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_tiny_model(path: Path, image_size: int) -> None:
    from core.extract import save_tiny_dinov3

    save_tiny_dinov3(path, image_size=image_size, hidden_size=64, patch_size=8, num_heads=4,
                     num_register_tokens=4)


def write_images(root: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"im{i:05d}.png")
        rows.append(f"im{i:05d}.png,{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--image-size", type=int, default=64, help="model input size")
    p.add_argument("--file-size", type=int, default=96, help="side of the PNG files")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.images = 64
    from core.extract import extract_features

    with tempfile.TemporaryDirectory(prefix="seltune-extract-bench-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        build_tiny_model(model, args.image_size)
        imgs = tmp / "images"
        imgs.mkdir()
        labels = write_images(imgs, args.images, args.file_size)
        extract_features(str(model), imgs, labels, batch_size=args.batch_size,
                         device=args.device)  # warm-up (imports, first-call costs)
        res = extract_features(str(model), imgs, labels, batch_size=args.batch_size,
                               device=args.device)
    import torch

    out = {"images": res.num_images, "seconds": res.seconds,
           "images_per_s": res.images_per_second, "batch_size": args.batch_size,
           "image_size": args.image_size, "device": args.device,
           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"extraction: {out['images']} images in {out['seconds']:.2f} s = "
              f"{out['images_per_s']:.0f} images/s (tiny DINOv3, {args.image_size}px, "
              f"batch {args.batch_size}, {args.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
