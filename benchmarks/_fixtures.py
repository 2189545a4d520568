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


def bench(fns: dict, repeat: int) -> dict[str, list[float]]:
    """Seconds per run of each backend, ``repeat`` rounds that run every backend once in turn: on a shared
    machine the load drifts over a minute, and backends timed one after the other would see different loads.
    The ratios are taken round by round (``ratio``)."""
    for fn in fns.values():
        fn()
        fn()  # warm-up: first runs allocate and pick kernels
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def ratio(slow: list[float], fast: list[float]) -> float:
    """The median of the per-round ratios."""
    return median([s / f for s, f in zip(slow, fast)])
