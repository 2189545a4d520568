"""Where the shared corpus and the Caffe reference fixtures are, and small readers for their tables.

The data lives beside the repository as ``../shared`` (never copied into it). Tests that need it
skip with a reason when it is absent; parametrised tests get one skipped case instead of none.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Optional

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MISSING = f"{SHARED} is missing: the shared corpus and Caffe reference fixtures belong beside the repo as ../shared"


def shared_dir() -> Path:
    """``<repo>/../shared``, or skip the calling test with the reason."""
    if not SHARED.is_dir():
        pytest.skip(MISSING)
    return SHARED


def shared_params(values: Iterable[Any], ids: Optional[Iterable[str]] = None,
                  marks: Optional[Iterable[Any]] = None) -> list[Any]:
    """Parameters for ``pytest.mark.parametrize``: one skipped case when ../shared is absent."""
    values = list(values)
    if not values:
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING), id="no-shared")]
    ids = list(ids) if ids is not None else [None] * len(values)
    marks = list(marks) if marks is not None else [()] * len(values)
    return [pytest.param(v, id=i, marks=m) for v, i, m in zip(values, ids, marks)]


def _tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@cache
def corpus_nets() -> list[str]:
    """Every net prototxt of the corpus (MANIFEST rows whose format is V0/V1/V2), as 'folder/file'."""
    manifest = SHARED / "corpus" / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    return [f"{r['folder']}/{r['file']}" for r in _tsv(manifest)
            if r["format"][:2] in ("V0", "V1", "V2") and (SHARED / "corpus" / r["folder"] / r["file"]).is_file()]


@cache
def parse_table() -> dict[str, dict[str, str]]:
    """reference/PARSE.tsv by corpus file: what BVLC Caffe's own parser said about each net."""
    path = SHARED / "reference" / "PARSE.tsv"
    return {r["file"]: r for r in _tsv(path)} if path.is_file() else {}


def type_list(cell: str) -> set[str]:
    return set() if cell in ("", "-") else set(cell.split(","))


def reference_fixtures() -> list[Path]:
    """The fixtures Caffe ran: reference/layers/* and reference/models/*."""
    ref = SHARED / "reference"
    return sorted(p for kind in ("layers", "models") for p in (ref / kind).glob("*") if (p / "shapes.json").is_file())


def fixture_inputs(fixture: Path) -> dict[str, tuple[int, ...]]:
    """The input shapes Caffe was reshaped to: the ``in/*`` arrays of io.npz."""
    with np.load(fixture / "io.npz") as io:
        return {k[3:]: io[k].shape for k in io.files if k.startswith("in/")}


def recipe(fixture: Path) -> dict[str, Any]:
    return json.loads((fixture / "recipe.json").read_text())


def recipe_bytes(rec: dict[str, Any]) -> int:
    """How many bytes of float32 weights a recipe describes."""
    return 4 * sum(math.prod(shape) for layer in rec["layers"] for shape in layer.get("blobs", []))


def recipe_formats(rec: dict[str, Any]) -> list[str]:
    """'layer' always; 'v1' too when the recipe gives V1 layer types (an old V1 binary, as VGG-era weights)."""
    return ["layer"] + (["v1"] if any("v1_type" in layer for layer in rec["layers"]) else [])


@cache
def make_weights_module() -> ModuleType:
    """shared/tools/make_weights.py, imported from its file (its ``weights(recipe)`` gives the arrays)."""
    path = shared_dir() / "tools" / "make_weights.py"
    spec = importlib.util.spec_from_file_location("make_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_weights(fixture: Path, fmt: str, folder: Path) -> Path:
    """The caffemodel make_weights.py writes for a fixture, made once per cache folder."""
    out = folder / f"{fixture.parent.name}__{fixture.name}.{fmt}.caffemodel"
    if not out.is_file():
        partial = out.with_name(out.name + f".{os.getpid()}.partial")
        cmd = [sys.executable, str(shared_dir() / "tools" / "make_weights.py"), str(fixture / "recipe.json"),
               str(partial)] + (["--format", "v1"] if fmt == "v1" else [])
        subprocess.run(cmd, check=True)
        os.replace(partial, out)
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape (0-d stays 0-d) and the same float32 bit patterns."""
    a = np.asarray(a, dtype="<f4")
    b = np.asarray(b, dtype="<f4")
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
