"""Fuzzing the readers with mutated real files: random byte and token mutations and truncations of a
few small corpus prototxts and caffemodels go through ``load_net``, ``load_weights``, ``load_blob`` and
``zoo info``. Each case must end accepted or with one CaffeError line, within a time and memory bound;
any other exception is a bug in the reader that let it through.

A plain seeded loop (fixed seed, fixed count) rather than hypothesis: the cases are byte strings whose
interesting shapes are already known (truncations, punctuation, huge numbers, broken varints), CI must
run the same cases every time, and a failure prints its seed and case number to replay it.
"""
from __future__ import annotations

import io
import random
import re
import time
import tracemalloc
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Iterator

import pytest

from prototxt import CaffeError, load_blob, load_net, load_weights
from prototxt.graph import fill_missing
from tests.helpers import SHARED, shared_dir
from zoo.cli import main

SEED = 20261203
SECONDS_PER_CASE = 5.0      # a loaded 2-core machine; the readers take milliseconds on these files
TRACED_BYTES_PER_CASE = 256 << 20
MAX_BLOB = "16M"            # ZOO_MAX_BYTES for the fuzz: what a mutated net may make the fillers allocate

# (prototxt, caffemodel or None), small and covering V2, V1 and V0 nets, data layers and shared weights
NETS = [
    ("mtcnn/det1.prototxt", "mtcnn/det1.caffemodel"),
    ("opencv_dnn_layer_tests/caffe_2015/layer_convolution/layer_convolution.prototxt",
     "opencv_dnn_layer_tests/caffe_2015/layer_convolution/layer_convolution.caffemodel"),
    ("mnist_lenet/lenet.v1_layers.prototxt", None),
    ("cifar10_quick/cifar10_quick.v0.prototxt", None),
    ("cifar10_quick/cifar10_quick_train_test.prototxt", None),
    ("opencv_dnn_layer_tests/shared_weights.prototxt", None),
]
BLOBS = ["age_net/mean.binaryproto"]

# Fragments that reach the corners of the parser, the upgrader and the shape rules.
TOKENS = [b"{", b"}", b"<", b">", b"[", b"]", b":", b",", b";", b'"', b"'", b"\\", b"#", b"\n", b"\x00", b"\xff",
          b"-1", b"0", b"-0", b"1e999", b"-1e999", b"nan", b"inf", b"0x" + b"f" * 40, b"9" * 40, b"1" * 300 + b"a",
          b"4000000000", b"2147483648", b"-2147483649", b"0.5", b".5e-3f", b"true", b"layer", b"layers", b"input",
          b"input_dim: 0", b"input_dim: 100000", b'top: "data"', b'bottom: "data"', b'bottom: "nowhere"',
          b"num_output: 0", b"num_output: 4000000000", b"kernel_size: 0", b"stride: 0", b"pad: 100000",
          b"group: 0", b"axis: -9", b"axis: 9", b"dim: -1", b"dim: 0", b"include { phase: TRAIN }",
          b'param { name: "w" }', b"type: \"Bogus\"", b"type: \"Parameter\"", b"type: \"Tile\"",
          b"weight_filler { type: \"bilinear\" }", b"weight_filler { type: \"nope\" }", b"\\x4", b"\\777",
          b'name: "\xc3\x28"', b"\xe2\x82", b"layer {" * 50]


NUMBERS = [b"0", b"1", b"-1", b"2", b"3", b"7", b"-2147483648", b"2147483647", b"4294967295", b"65536", b"1000000",
           b"0.0", b"-0.5", b"1e30", b"nan", b"-inf"]
_NUMBER = re.compile(rb"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_STRING = re.compile(rb'"[^"\n]*"')


def mutate_text(data: bytes, rng: random.Random) -> bytes:
    """One to three edits. Most keep the syntax (a number or a quoted name swapped, a line deleted or
    repeated) to reach the upgrader and the shape rules; the rest break it (spans cut, repeated or
    replaced, tokens inserted, the file truncated)."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(9)
        if kind < 3 and _NUMBER.search(data):
            m = rng.choice(list(_NUMBER.finditer(data)))
            data = data[:m.start()] + rng.choice(NUMBERS) + data[m.end():]
        elif kind == 3 and _STRING.search(data):
            found = list(_STRING.finditer(data))
            m, other = rng.choice(found), rng.choice(found)
            data = data[:m.start()] + other.group() + data[m.end():]
        elif kind in (4, 5):
            lines = data.split(b"\n")
            k = rng.randrange(len(lines))
            lines[k:k + 1] = [] if kind == 4 else [lines[k], lines[k]]
            data = b"\n".join(lines)
        else:
            i = rng.randrange(len(data) + 1)
            j = min(len(data), i + rng.randint(1, 40))
            edits = [data[:i], data[:i] + data[j:], data[:j] + data[i:j] + data[j:],
                     data[:i] + bytes(rng.randrange(32, 127) for _ in range(j - i)) + data[j:],
                     data[:i] + b" " + rng.choice(TOKENS) + b" " + data[i:]]
            data = rng.choice(edits[:1] * (kind == 6) + edits[1:])
    return data


def mutate_binary(data: bytes, rng: random.Random) -> bytes:
    """Truncations, flipped bytes, broken varints, inserted and deleted bytes: near the start (where the
    headers of layers and blobs are) more often than in the float payload."""
    for _ in range(rng.randint(1, 3)):
        near = min(len(data), 2000) if rng.random() < 0.7 else len(data)
        i = rng.randrange(near + 1)
        kind = rng.randrange(5)
        if kind == 0:
            data = data[:i]
        elif kind == 1 and i < len(data):
            data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]
        elif kind == 2:
            data = data[:i] + b"\xff" * rng.randint(1, 11) + data[i:]
        elif kind == 3:
            data = data[:i] + data[i + rng.randint(1, 8):]
        else:
            data = data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 6))) + data[i:]
    return data


def bounded(label: str, fn: Callable[[], object]) -> None:
    """Run one case: accepted, or one CaffeError line; within the time and traced-memory bounds."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except CaffeError as exc:
        assert "\n" not in str(exc) and str(exc), f"{label}: not one line: {exc!r}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    took = time.perf_counter() - start
    assert took < SECONDS_PER_CASE, f"{label}: took {took:.1f} s"
    assert peak < TRACED_BYTES_PER_CASE, f"{label}: peaked at {peak >> 20} MiB"


def zoo_info(*argv: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["info", *argv])
    lines = err.getvalue().splitlines()
    errors = [l for l in lines if l.startswith("zoo: error: ")]
    assert code == 0 or (code == 1 and len(errors) == 1 and lines[-1] == errors[0]), (code, err.getvalue())


def _cases(files: list, count: int) -> list:
    return [pytest.param(f, count, id=Path(f[0] if isinstance(f, tuple) else f).name)
            for f in files] if SHARED.is_dir() else [pytest.param(None, 0, id="no-shared")]


@pytest.fixture(autouse=True)
def small_blob_limit(monkeypatch):
    monkeypatch.setenv("ZOO_MAX_BYTES", MAX_BLOB)


def mutants(name: str, mutate: Callable[[bytes, random.Random], bytes], path: Path,
            count: int) -> Iterator[tuple[int, str]]:
    """Write ``count`` mutants of corpus file ``name`` to ``path`` in turn: (case number, label)."""
    original = (shared_dir() / "corpus" / name).read_bytes()
    rng = random.Random(f"{SEED}:{name}:{path.name}")
    for case in range(count):
        path.write_bytes(mutate(original, rng))
        yield case, f"{name} case {case} (seed {SEED})"


@pytest.mark.parametrize("pair, count", _cases(NETS, 60))
def test_mutated_prototxts_load_or_fail_in_one_line(pair, count, tmp_path):
    prototxt, weights = pair
    weights = weights and shared_dir() / "corpus" / weights
    path = tmp_path / "net.prototxt"

    def load() -> None:
        graph = load_net(path, weights, strict_weights=False)
        if not graph.unknown_types and not graph.shape_problem:
            fill_missing(graph)

    for _, label in mutants(prototxt, mutate_text, path, count):
        bounded(label, load)
        bounded(label + " via zoo info", lambda: zoo_info(str(path)))


@pytest.mark.parametrize("pair, count", _cases([n for n in NETS if n[1]], 150))
def test_mutated_caffemodels_load_or_fail_in_one_line(pair, count, tmp_path):
    prototxt, weights = pair
    net = shared_dir() / "corpus" / prototxt
    path = tmp_path / "net.caffemodel"
    for case, label in mutants(weights, mutate_binary, path, count):
        bounded(label, lambda: load_weights(path))
        bounded(label + " against its net", lambda: load_net(net, path))
        if case % 5 == 0:
            bounded(label + " via zoo info", lambda: zoo_info(str(net), "--weights", str(path)))


@pytest.mark.parametrize("blob, count", _cases(BLOBS, 100))
def test_mutated_binaryprotos_load_or_fail_in_one_line(blob, count, tmp_path):
    path = tmp_path / "mean.binaryproto"
    for _, label in mutants(blob, mutate_binary, path, count):
        bounded(label, lambda: load_blob(path))


def random_bytes(_: bytes, rng: random.Random) -> bytes:
    return bytes(rng.randrange(1, 256) for _ in range(4000))


@pytest.mark.parametrize("pair, count", _cases(NETS[:2], 15))
def test_caffemodel_or_junk_given_as_the_prototxt_is_one_line(pair, count, tmp_path):
    path = tmp_path / "net.prototxt"
    for mutate in (mutate_binary, random_bytes):
        for _, label in mutants(pair[1], mutate, path, count):
            bounded(label + " as a prototxt", lambda: load_net(path))
