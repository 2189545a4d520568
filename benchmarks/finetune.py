"""Finetuning speed of googlenet: `--freeze-until inception_4e` against full backprop, in one run, as
ratios, for epoch 1 and for later epochs (images per second of training, validation excluded).

    python benchmarks/finetune.py [--per-class 16] [--epochs 3] [--batch-size 8] [--device cpu]

Rows: full backprop (nothing frozen); the frozen part (to inception_4e, plus the parameter-free layers
after it) recomputed every batch with random crops, in onnxruntime and in torch under no_grad; and its
outputs cached (--cache-features: computed once, in epoch 1). Weights: the unit-scaled seeded googlenet
of ../shared/reference (the speed does not depend on the values). Target (issue): cached freezing
>= 5x full backprop from epoch 2.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

from _fixtures import REPO, fixture

sys.path.insert(0, str(REPO))


def images(root: Path, per_class: int) -> Path:
    """A three-class image folder (flat, checkerboard, stripes), 64x64: the transform resizes to 256."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for k, name in enumerate(("flat", "checker", "stripes")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            level = [np.full((64, 64), 128.0), (xx // 4 + yy // 4) % 2 * 255.0, (yy // 8) % 2 * 255.0][k]
            img = level[..., None] + rng.normal(0, 20, (64, 64, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=16, help="images per class (4 in 5 train)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    import torch

    from zoo.training.finetune import finetune
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    prototxt, weights, _ = fixture("bvlc_googlenet_unit")
    tmp = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    data = images(tmp / "data", args.per_class)
    runs = [("full backprop", dict()),
            ("frozen to 4e, onnxruntime, random crops", dict(freeze_until="inception_4e", frozen_runtime="onnxruntime")),
            ("frozen to 4e, torch no_grad, random crops", dict(freeze_until="inception_4e", frozen_runtime="torch")),
            ("frozen to 4e, cached (--cache-features)", dict(freeze_until="inception_4e", cache_features=True))]
    rows = []
    for i, (label, options) in enumerate(runs):
        result = finetune(str(prototxt), data, 3, weights=weights, epochs=args.epochs, batch_size=args.batch_size,
                          device=args.device, output=tmp / f"run{i}", progress=False, **options)
        rates = [m["images_per_s"] for m in result.metrics]
        later = statistics.median(rates[1:]) if len(rates) > 1 else float("nan")
        rows.append((label, rates[0], later))
        print(f"{label}: {', '.join(f'{r:.1f}' for r in rates)} img/s per epoch", flush=True)
    base1, base2 = rows[0][1], rows[0][2]
    print(f"\ngooglenet finetuning on {args.device} ({torch.get_num_threads()} torch threads), batch {args.batch_size}, "
          f"{args.per_class * 3 - len(range(0, args.per_class * 3, 5))} training images, {args.epochs} epochs; "
          f"training images/s (epoch 2+: median)")
    print(f"{'':44}{'epoch 1':>9}{'epoch 2+':>10}{'x full (1)':>12}{'x full (2+)':>13}")
    for label, e1, e2 in rows:
        print(f"{label:44}{e1:9.1f}{e2:10.1f}{e1 / base1:12.1f}{e2 / base2:13.1f}")


if __name__ == "__main__":
    main()
