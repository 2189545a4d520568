"""The NCCL path on a machine with GPUs: `zoo train` on every visible GPU (one process each, NCCL) against
one process with iter_size N on one GPU, over the same sub-batches (a Caffe reference solver case).

    python benchmarks/nccl_check.py [--nproc N]     # default: every visible GPU (at least 2)

Checks: each process reports NCCL and its own GPU (cuda:LOCAL_RANK); the learning rates are identical and
the final weights agree within 1e-5 relative; process 0 alone printed and wrote. Exits 0 with a message and
checks nothing where there is no CUDA (or fewer than 2 GPUs). Run from the repository root.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CASE = REPO.parent / "shared" / "reference" / "solvers" / "sgd_step_lrmult"
ITERS = 12


def _feed(path: Path, passes: int) -> None:
    batches = np.load(CASE / "batches.npz")
    np.savez(path, **{f"{b}_{i}_{k}": batches[f"{b}_{(i + k * ITERS // passes) % ITERS}"]
                      for b in ("data", "label") for i in range(ITERS) for k in range(passes)})


def _solver(path: Path, iter_size: int) -> None:
    path.write_text((CASE / "solver.prototxt").read_text() + f"\niter_size: {iter_size}\n")


def _train(cmd: list[str], solver: Path, feed: Path, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([*cmd, "train", "--solver", str(solver), "--weights", "init.caffemodel", "--feed", str(feed),
                           "--device", "cuda", "--log-json", str(out / "log.json"),
                           "--output", str(out / "final.caffemodel")],
                          cwd=CASE, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"FAILED: {' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc", type=int, help="processes (GPUs); default: every visible GPU")
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("nccl_check: no CUDA here; nothing checked (run it on a machine with 2 or more GPUs)")
        return 0
    n = args.nproc or torch.cuda.device_count()
    if n < 2 or n > torch.cuda.device_count():
        print(f"nccl_check: {torch.cuda.device_count()} GPU(s) visible, {n} processes asked; needs 2 or more GPUs, "
              f"one per process; nothing checked")
        return 0
    if not torch.distributed.is_nccl_available():
        sys.exit("FAILED: this torch has no NCCL")
    if not CASE.is_dir():
        sys.exit(f"FAILED: {CASE} is missing (../shared/reference beside the repository)")
    tmp = Path(tempfile.mkdtemp(prefix="nccl-check-"))
    _feed(tmp / "feed.npz", n)
    _solver(tmp / "one.prototxt", n)
    _solver(tmp / "many.prototxt", 1)
    _train([sys.executable, "-m", "zoo"], tmp / "one.prototxt", tmp / "feed.npz", tmp / "one")
    stdout = _train([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--rdzv-backend",
                     "c10d", "--rdzv-endpoint", "127.0.0.1:0", "-m", "zoo"], tmp / "many.prototxt", tmp / "feed.npz",
                    tmp / "many")
    problems = []
    if stdout.count("Using device") != 1 or f"process 0 of {n} (nccl)" not in stdout:
        problems.append(f"expected one 'Using device cuda ..., process 0 of {n} (nccl)' line; got:\n{stdout[:800]}")
    one, many = (json.loads((tmp / d / "log.json").read_text()) for d in ("one", "many"))
    if [e["lr"] for e in one] != [e["lr"] for e in many]:
        problems.append("the learning rates differ")
    from prototxt import load_weights
    a, b = load_weights(tmp / "one" / "final.caffemodel"), load_weights(tmp / "many" / "final.caffemodel")
    worst = 0.0
    for name in a:
        for x, y in zip(a[name], b[name]):
            err = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-6 * max(1.0, float(np.abs(x).max())))))
            worst = max(worst, err)
    if worst > 1e-5:
        problems.append(f"final weights differ by {worst:.3g} relative (allowed 1e-5)")
    nccl = ".".join(map(str, torch.cuda.nccl.version()))
    print(f"nccl_check: {n} GPUs ({torch.cuda.get_device_name(0)}), NCCL {nccl}: "
          f"{n} processes vs 1 process with iter_size {n}: largest relative weight difference {worst:.3g}")
    for p in problems:
        print(f"FAILED: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
