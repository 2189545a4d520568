"""Converted nets compute Caffe's numbers: every reference fixture (reference/layers/* and
reference/models/*, computed by real BVLC Caffe) through ``to_pytorch`` and through ``to_onnx`` +
onnxruntime, every kept blob compared as the reference README says: float32,
rtol=1e-4, atol=1e-4*max(1, max|ref|).

Each fixture is loaded and run once for both backends (a small per-module cache); its generated
weights are deleted after loading unless $ZOO_TEST_CACHE keeps them.
"""
from __future__ import annotations

import copy
import gc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.converters.common import (close, comparable_blobs, describe, load_fixture, onnx_values, real_weights,
                                     torch_values, violation)
from tests.helpers import recipe, recipe_bytes, reference_fixtures, shared_params

pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")  # mkldnn.flags() says it

BIG = 50e6  # bytes of weights: fixtures above this are marked slow

BACKENDS = ("torch", "onnx")

# Kept blobs deep in BatchNorm nets that a backend does not bring within the tolerance. Not a semantic
# difference: a float64 evaluation of the same net misses Caffe's numbers by as much or more (pinned by
# test_known_drift_is_caffes_float32_rounding): it is Caffe's own float32 rounding, amplified through
# ~100 BatchNorm layers. The nets' final outputs pass. Measured max |diff| / tolerance (x86-64, torch
# 2.13 without oneDNN, onnxruntime 1.31 on the fold=False model, see common.onnx_values); float64 torch
# for comparison; a backend not listed passes for that blob:
KNOWN_DRIFT: dict[tuple[str, str], dict[str, float]] = {
    ("resnet101", "res4b19_branch2b"): {"torch": 1.32, "onnx": 1.56},            # float64: 1.55
    ("places365_resnet152", "res4b17_branch2b"): {"torch": 2.28, "onnx": 3.23},  # float64: 3.04
    ("places365_resnet152", "res4b27_branch2b"): {"torch": 3.74, "onnx": 6.55},  # float64: 5.22
    ("places365_resnet152", "fc365"): {"torch": 2.09, "onnx": 2.68},             # float64: 2.54
    ("inception_v3", "inception_c2_3x1"): {"onnx": 1.54, "torch": 1.51},          # float64: 1.31
}
# Where the float32 result lands depends on the CPU's GEMM kernels: torch gives 0.99x on the machine of
# earlier sessions and 1.51x on an AMD EPYC (AVX-512) one; those cases are xfail without strict.
CPU_DEPENDENT = {("inception_v3", "inception_c2_3x1", "torch")}
DRIFT_REASON = ("Caffe's own float32 rounding through ~100 BatchNorm layers: a float64 evaluation misses "
                "Caffe's value by as much (test_known_drift_is_caffes_float32_rounding)")

# Fixtures that ran with real trained weights: their top class must agree too.
REAL = ("mnist_lenet", "mnist_lenet_v1", "cifar10_quick", "cifar10_quick_v0", "mtcnn_det1", "mtcnn_det2", "mtcnn_det3")


def _weight_bytes(fixture: Path) -> int:
    if (fixture / "recipe.json").is_file():
        return recipe_bytes(recipe(fixture))
    real = real_weights(fixture)
    return real.stat().st_size if real is not None and real.is_file() else 0


FIXTURES = reference_fixtures()
SLOW = {f.name for f in FIXTURES if _weight_bytes(f) > BIG}


def _marks(name: str) -> list:
    return [pytest.mark.slow] if name in SLOW else []


# -- one run per fixture ---------------------------------------------------------------------------

@dataclass
class Results:
    ref: dict[str, np.ndarray]
    blobs: list[str]
    values: dict[str, dict] = field(default_factory=dict)        # backend -> {blob: array}
    errors: dict[str, BaseException] = field(default_factory=dict)  # backend -> what went wrong
    f64: dict[str, np.ndarray] = field(default_factory=dict)     # KNOWN_DRIFT blobs, float64 torch run
    softmax: dict[str, int] = field(default_factory=dict)        # net-output softmax blob -> its axis


_CACHE: dict[str, Results] = {}


def results(fixture: Path, weights_cache) -> Results:
    name = fixture.name
    if name in _CACHE:
        return _CACHE[name]
    drift_blobs = [b for (f, b) in KNOWN_DRIFT if f == name]
    for other in [k for k in _CACHE if not any(f == k for f, _ in KNOWN_DRIFT)]:
        del _CACHE[other]  # keep the latest fixture (both backends read it) and the drift fixtures
    gc.collect()
    graph, ins, outs = load_fixture(fixture, weights_cache)
    res = Results(outs, comparable_blobs(graph, outs))
    for layer in graph.layers:
        if layer.type == "Softmax" and layer.tops[0] in graph.outputs:
            ndim = len(graph.values[layer.tops[0]].shape)
            res.softmax[graph.values[layer.tops[0]].caffe_name] = layer.proto.softmax_param.axis % ndim
    try:
        from converters import to_pytorch
        module = to_pytorch(graph)
        res.values["torch"] = torch_values(module, graph, ins, res.blobs)
        res.values["torch"].pop(None)
        if drift_blobs:
            import torch
            wide = copy.deepcopy(module).double()
            wide.value_nodes = module.value_nodes
            res.f64 = torch_values(wide, graph, ins, drift_blobs, dtype=torch.float64)
            res.f64.pop(None)
            del wide
        del module
    except Exception as exc:  # reported by the torch cases
        res.errors["torch"] = exc
    gc.collect()
    try:
        res.values["onnx"] = onnx_values(graph, ins, res.blobs)
    except Exception as exc:
        res.errors["onnx"] = exc
    del graph
    gc.collect()
    _CACHE[name] = res
    return res


def _get(res: Results, backend: str) -> dict:
    if backend in res.errors:
        raise res.errors[backend]
    return res.values[backend]


# -- the checks ------------------------------------------------------------------------------------

def _cases():
    values, ids, marks = [], [], []
    for f in FIXTURES:
        for backend in BACKENDS:
            values.append((f, backend))
            ids.append(f"{f.name}-{backend}")
            marks.append(_marks(f.name))
    return shared_params(values, ids, marks)


@pytest.mark.parametrize("case", _cases())
def test_kept_blobs_match_caffe(case, weights_cache):
    fixture, backend = case
    res = results(fixture, weights_cache)
    got = _get(res, backend)
    bad, checked = [], 0
    for blob in res.blobs:
        if backend in KNOWN_DRIFT.get((fixture.name, blob), {}):
            continue  # test_known_drift
        if blob not in got:
            assert backend == "onnx", f"{blob}: no value"
            continue  # a net input nothing rewrites: passed through untouched
        checked += 1
        if not close(got[blob], res.ref[blob]):
            bad.append(f"{blob}: {describe(got[blob], res.ref[blob])}")
    assert not bad, f"{fixture.name} ({backend}) differs from Caffe: " + "; ".join(bad)
    assert checked


def _drift_cases():
    values, ids, marks = [], [], []
    by_name = {f.name: f for f in FIXTURES}
    for (name, blob), backends in KNOWN_DRIFT.items():
        if name not in by_name:
            continue
        for backend in backends:
            values.append((by_name[name], blob, backend))
            ids.append(f"{name}-{blob}-{backend}")
            strict = (name, blob, backend) not in CPU_DEPENDENT
            marks.append(_marks(name) + [pytest.mark.xfail(strict=strict, raises=AssertionError, reason=DRIFT_REASON)])
    return shared_params(values, ids, marks)


@pytest.mark.parametrize("case", _drift_cases())
def test_known_drift(case, weights_cache):
    """The blobs of KNOWN_DRIFT, under the same tolerance (xfail, strict: a change that brings them
    within it shows up)."""
    fixture, blob, backend = case
    res = results(fixture, weights_cache)
    got = _get(res, backend)[blob]
    assert close(got, res.ref[blob]), f"{fixture.name} {blob} ({backend}): {describe(got, res.ref[blob])}"


def _drift_pairs():
    by_name = {f.name: f for f in FIXTURES}
    pairs = [(by_name[n], b) for (n, b) in KNOWN_DRIFT if n in by_name]
    return shared_params(pairs, [f"{f.name}-{b}" for f, b in pairs], [_marks(f.name) for f, _ in pairs])


@pytest.mark.parametrize("case", _drift_pairs())
def test_known_drift_is_caffes_float32_rounding(case, weights_cache):
    """Why KNOWN_DRIFT is not a bug: the same net evaluated in float64 (near-exact math) is no closer
    to Caffe's numbers than our float32 results (each within 2x of the float64 error), and it misses
    the tolerance too: Caffe's float32 value is what is off from exact math."""
    fixture, blob = case
    res = results(fixture, weights_cache)
    ref = res.ref[blob]
    v64 = violation(res.f64[blob], ref)
    for backend in BACKENDS:
        v32 = violation(_get(res, backend)[blob], ref)
        assert v32 <= 2 * v64, (f"{fixture.name} {blob}: {backend} misses Caffe by {v32:.2f}x the tolerance but "
                                f"float64 math only by {v64:.2f}x: not just rounding any more")
    assert v64 > 1, f"{fixture.name} {blob}: float64 is within the tolerance ({v64:.2f}x): drop it from KNOWN_DRIFT"


def _real_cases():
    by_name = {f.name: f for f in FIXTURES}
    values = [(by_name[n], b) for n in REAL if n in by_name for b in BACKENDS]
    return shared_params(values, [f"{f.name}-{b}" for f, b in values])


@pytest.mark.parametrize("case", _real_cases())
def test_real_weights_top_class(case, weights_cache):
    """With trained weights the classification (argmax over the softmax's axis) is Caffe's."""
    fixture, backend = case
    res = results(fixture, weights_cache)
    got = _get(res, backend)
    probs = [b for b in res.softmax if b in res.ref]
    assert probs, f"{fixture.name}: no softmax output kept"
    for blob in probs:
        axis = res.softmax[blob]
        assert np.array_equal(np.argmax(got[blob], axis=axis), np.argmax(res.ref[blob], axis=axis)), blob
