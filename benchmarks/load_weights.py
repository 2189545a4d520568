"""How close prototxt.load_weights comes to just reading the file: time and peak memory.

For each caffemodel, in one run:
  time ratio   = median time to load it with prototxt.load_weights and sum every array
                 / median time to read the file's bytes and sum them as one float32 array
  memory ratio = peak RSS growth of a fresh process that loads it and sums every array / file size
Targets: time ratio <= 1.2, memory ratio <= 1.1. The file is read once before timing, so both sides
see a warm page cache.

Files: VGG19 (575 MB, an old V1 binary as the VGG-era weights are, written by
shared/tools/make_weights.py --format v1 from the vgg19 fixture's recipe), and a 2.5 GB file of a few
huge blobs written with prototxt.write_caffemodel (over protobuf's 2 GB limit: it must work at all).
Both are cached in $ZOO_BENCH_CACHE (default: <tmp>/caffezoo-bench).

    python benchmarks/load_weights.py [--repeats 5] [--skip-big]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prototxt import caffe_pb2, load_weights, write_caffemodel  # noqa: E402

SHARED = REPO.parent / "shared"
TIME_TARGET, MEMORY_TARGET = 1.2, 1.1
BIG_BYTES = 2_500_000_000
BIG_BLOBS = 5  # 500 MB each


def cache_dir() -> Path:
    path = Path(os.environ.get("ZOO_BENCH_CACHE") or Path(tempfile.gettempdir()) / "caffezoo-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def vgg19_v1() -> Path:
    out = cache_dir() / "vgg19.v1.caffemodel"
    if not out.is_file():
        recipe = SHARED / "reference" / "models" / "vgg19" / "recipe.json"
        if not recipe.is_file():
            sys.exit(f"{recipe} is missing: the shared fixtures belong beside the repo as ../shared")
        partial = out.with_suffix(".partial")
        print(f"writing {out} with make_weights.py --format v1 ...", flush=True)
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_weights.py"), str(recipe), str(partial),
                        "--format", "v1"], check=True)
        os.replace(partial, out)
    return out


def synthetic_big() -> Path | None:
    out = cache_dir() / "synthetic_2.5GB.caffemodel"
    if out.is_file():
        return out
    free = shutil.disk_usage(out.parent).free
    if free < BIG_BYTES * 1.2:
        print(f"skipping the 2.5 GB file: {free / 1e9:.1f} GB free in {out.parent}, need {BIG_BYTES * 1.2 / 1e9:.1f}")
        return None
    print(f"writing {out} ({BIG_BYTES / 1e9:.1f} GB) with prototxt.write_caffemodel ...", flush=True)
    per_blob = BIG_BYTES // BIG_BLOBS // 4
    rows = 1000

    def layers():  # one 500 MB array at a time: the writer streams, so memory stays at one blob
        rng = np.random.default_rng(0)
        for i in range(BIG_BLOBS):
            layer = caffe_pb2.LayerParameter(name=f"fc{i}", type="InnerProduct")
            yield layer.SerializeToString(), [rng.standard_normal((rows, per_blob // rows), dtype=np.float32)]
    write_caffemodel(out, "synthetic", layers())
    return out


# -- time ----------------------------------------------------------------------------------------

def read_and_sum(path: Path) -> float:
    with np.errstate(invalid="ignore", over="ignore"):  # tags and lengths read as floats may be NaN
        return float(np.fromfile(path, dtype="<f4", count=path.stat().st_size // 4).sum(dtype=np.float64))


def load_and_sum(path: Path) -> float:
    return sum(float(a.sum(dtype=np.float64)) for arrays in load_weights(path).values() for a in arrays)


def timed(fn, path: Path) -> float:
    start = time.perf_counter()
    fn(path)
    return time.perf_counter() - start


def time_ratio(path: Path, repeats: int) -> tuple[float, float]:
    read_and_sum(path)  # warm the page cache: both sides then read from memory
    base, load = [], []
    for _ in range(repeats):  # interleaved, so drift affects both alike
        base.append(timed(read_and_sum, path))
        load.append(timed(load_and_sum, path))
    return statistics.median(load), statistics.median(base)


# -- memory --------------------------------------------------------------------------------------

_MEMORY_PROBE = """
import sys
sys.path.insert(0, {repo!r})
import numpy as np
from prototxt import load_weights

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

before = status("VmRSS")
if sys.argv[1] == "load":
    total = sum(float(a.sum(dtype=np.float64)) for arrays in load_weights(sys.argv[2]).values() for a in arrays)
else:
    with np.errstate(invalid="ignore", over="ignore"):
        total = float(np.fromfile(sys.argv[2], dtype="<f4").sum(dtype=np.float64))
print(status("VmHWM") - before)
"""


def peak_growth(mode: str, path: Path) -> int:
    """Peak RSS of a fresh process doing the work, minus that process's RSS before it (interpreter, imports)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE.format(repo=str(REPO)), mode, str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


# -- report --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-big", action="store_true", help="only the VGG19 file")
    args = parser.parse_args()

    files = [("vgg19 (V1 binary)", vgg19_v1())]
    if not args.skip_big:
        big = synthetic_big()
        if big is not None:
            files.append((f"synthetic ({BIG_BLOBS} blobs, V2)", big))

    header = ("file", "size", "load+sum", "read+sum", "time ratio", "peak RSS", "read RSS", "memory ratio")
    rows = []
    for label, path in files:
        size = path.stat().st_size
        load_t, base_t = time_ratio(path, args.repeats)
        load_mem, read_mem = peak_growth("load", path), peak_growth("read", path)
        rows.append((label, f"{size / 1e6:,.0f} MB", f"{load_t:.3f} s", f"{base_t:.3f} s",
                     _verdict(load_t / base_t, TIME_TARGET), f"{load_mem / 1e6:,.0f} MB", f"{read_mem / 1e6:,.0f} MB",
                     _verdict(load_mem / size, MEMORY_TARGET)))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print(f"\nmedians of {args.repeats} interleaved runs after one warm-up read; targets: time ratio <= {TIME_TARGET}, "
          f"memory ratio <= {MEMORY_TARGET} (peak RSS growth / file size; 'read RSS' is the same for np.fromfile)")


def _verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f}" + ("" if ratio <= target else " OVER")


if __name__ == "__main__":
    main()
