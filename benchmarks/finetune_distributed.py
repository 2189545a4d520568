"""Images per second of `zoo finetune` on 1 and on 2 processes (torch.distributed, gloo on CPU), googlenet
frozen to inception_4e, the frozen part recomputed every batch (random crops: the costly case).

    python benchmarks/finetune_distributed.py [--per-class 16] [--epochs 2] [--batch-size 4] [--nproc 1 2]

Each run is `python -m zoo finetune ... --nproc N` on all the machine's cores: one process gets torch's
and onnxruntime's defaults (a thread per core); N processes get torch 1 thread each (OMP_NUM_THREADS=1, as
torchrun sets it) and onnxruntime (the frozen part) cores/N threads each. images_per_s counts the images
of every process over process 0's training time (validation excluded). On a machine with fewer free cores
than processes the point is that it works and what the exchange of gradients costs, not a speed-up.

Measured on the 2-core development machine (shared with other jobs: load average 7-9, so the numbers
swing from run to run), --per-class 24, batch 4: 1 process 1.5 img/s, 2 processes 2.4 img/s (x1.6); an
earlier run with the one process limited to 1 torch thread: 5.1 vs 11.2 img/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _fixtures import REPO, fixture
from finetune import images


def run(prototxt: Path, weights: Path, data: Path, out: Path, nproc: int, args) -> list[float]:
    cmd = [sys.executable, "-m", "zoo", "finetune", str(prototxt), "--weights", str(weights), "--data", str(data),
           "--num-classes", "3", "--freeze-until", "inception_4e", "--epochs", str(args.epochs), "--batch-size",
           str(args.batch_size), "--device", "cpu", "--quiet", "-o", str(out), "--nproc", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)  # one process: torch's default, every core; N: torchrun's 1 per process
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return [m["images_per_s"] for m in json.loads((out / "metrics.json").read_text())["epochs"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=16, help="images per class (4 in 5 train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    prototxt, weights, _ = fixture("bvlc_googlenet_unit")
    tmp = Path(tempfile.mkdtemp(prefix="finetune-dist-bench-"))
    data = images(tmp / "data", args.per_class)
    rows = []
    for n in args.nproc:
        rates = run(prototxt, weights, data, tmp / f"n{n}", n, args)
        rows.append((n, statistics.median(rates)))
        print(f"{n} process(es): {', '.join(f'{r:.1f}' for r in rates)} img/s per epoch", flush=True)
    print(f"\ngooglenet finetune (frozen to inception_4e, recomputed), batch {args.batch_size} per process, "
          f"{os.cpu_count()} cores in every row")
    print(f"{'processes':>10}{'img/s':>10}{'x 1 process':>13}")
    for n, rate in rows:
        print(f"{n:>10}{rate:10.1f}{rate / rows[0][1]:13.2f}")


if __name__ == "__main__":
    main()
