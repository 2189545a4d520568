"""Shared setup for the benchmarks: seeded caffemodels written from ../shared/reference recipes."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CACHE = Path(os.environ.get("ZOO_BENCH_CACHE", Path(tempfile.gettempdir()) / "caffezoo-bench"))


def fixture(name: str) -> tuple[Path, Path, dict]:
    """(net.prototxt, caffemodel, io arrays) of a reference model fixture, writing its weights once.
    ``name``: a folder of reference/models, or a path under reference/ (``fork/mobilenet_ssd_deploy_merged_bn``);
    a fixture whose net is a corpus file names it in ``source``."""
    folder = SHARED / "reference" / ("models" if "/" not in name else "") / name
    if not folder.exists():
        sys.exit(f"{folder} not found: the benchmarks need ../shared/reference beside the repository")
    CACHE.mkdir(parents=True, exist_ok=True)
    weights = CACHE / f"{name.replace('/', '__')}.caffemodel"
    if not weights.exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_weights.py"), str(folder / "recipe.json"),
                        str(weights)], check=True)
    import numpy as np
    io = np.load(folder / "io.npz")
    source = folder / "source"
    prototxt = SHARED / source.read_text().strip() if source.is_file() else folder / "net.prototxt"
    return prototxt, weights, {k: io[k] for k in io.files}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def bench(fn, repeat: int) -> float:
    """The median seconds of ``repeat`` calls after two warm-up calls (first runs allocate and pick kernels)."""
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)
