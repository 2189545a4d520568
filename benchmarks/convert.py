"""`zoo convert` wall time and peak RSS for AlexNet and GoogLeNet (seeded weights), each in a fresh
process (what a user runs), with and without the verification run, against two floors measured in
the same run: a plain read of the weights file, and `import torch` (the verification runs the
PyTorch module, so it pays for torch; writing the files never imports it).

    python benchmarks/convert.py [--repeat 3]

Targets (issue 3): AlexNet under 3 s and under 1.5x its weights' size in peak RSS.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _fixtures import fixture, median

READ = "import sys, numpy as np; d = open(sys.argv[1], 'rb').read(); np.frombuffer(d[: len(d) // 4 * 4], np.float32).sum()"


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a child process (RUSAGE_CHILDREN of a fresh wrapper)."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:]); dt = time.perf_counter() - t; "
               "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True)
    wall, rss = out.stdout.split()[-2:]
    return float(wall), float(rss)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch_wall, torch_rss = (median(x) for x in zip(*[timed([sys.executable, "-c", "import torch"])
                                                        for _ in range(args.repeat)]))
    print(f"floor: `import torch` alone {torch_wall:.2f} s, peak RSS {torch_rss:.0f} MB")
    print(f"{'model':<16}{'weights MB':>11}{'mode':>12}{'wall s':>9}{'peak MB':>9}{'RSS/size':>10}{'vs read':>9}")
    for name in ("bvlc_alexnet", "bvlc_googlenet"):
        prototxt, weights, _ = fixture(name)
        size_mb = os.path.getsize(weights) / 2**20
        read_wall = median([timed([sys.executable, "-c", READ, str(weights)])[0] for _ in range(args.repeat)])
        for mode, extra in (("verify", []), ("no-verify", ["--no-verify"])):
            runs = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as out:
                    runs.append(timed([sys.executable, "-m", "zoo", "convert", str(prototxt), "--weights", str(weights),
                                       "-o", out, *extra]))
            wall, rss = median([r[0] for r in runs]), median([r[1] for r in runs])
            print(f"{name:<16}{size_mb:>11.0f}{mode:>12}{wall:>9.2f}{rss:>9.0f}{rss / size_mb:>10.2f}"
                  f"{wall / read_wall:>8.1f}x")
    print("(peak RSS includes the Python interpreter, torch and onnxruntime themselves)")


if __name__ == "__main__":
    main()
