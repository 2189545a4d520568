"""Caffe semantics the reference fixtures do not reach, each against a transcription of Caffe's C++
(BVLC master, src/caffe/layers/<type>_layer.cpp), in both backends: ArgMax's tie order, Bias with a
second bottom, scalar and negative-axis Scale, MVN on fewer than 4 axes, Clip with min > max, Exp
and Log with base/scale/shift, a Parameter layer's output."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from converters import to_onnx, to_pytorch
from converters.torch import run
from prototxt import load_net
from prototxt.errors import CaffeError
from tests.converters.common import close, ort_session

BACKENDS = ["torch", "onnx"]


def _graph(tmp_path, inputs: dict, body: str, blobs: dict | None = None):
    head = "".join(f'input: "{n}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n' for n, s in inputs.items())
    path = tmp_path / "net.prototxt"
    path.write_text('name: "t"\n' + head + body)
    graph = load_net(path)
    for name, arrays in (blobs or {}).items():
        graph.layer(name).blobs = [np.asarray(a, np.float32) for a in arrays]
    return graph


def _run(graph, feeds: dict, backend: str) -> dict:
    names = [graph.values[v].caffe_name for v in graph.inputs]
    if backend == "torch":
        module = to_pytorch(graph)
        return run(module, [feeds[n] for n in names])
    sess = ort_session(to_onnx(graph))
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {n: feeds[n] for n in names})))


def _argmax_caffe(x: np.ndarray, axis, top_k: int, out_max_val: bool) -> np.ndarray:
    """argmax_layer.cpp: partial_sort of (value, index) pairs with std::greater: equal values -> the
    higher index first."""
    if axis is None:
        flat = x.reshape(x.shape[0], -1)
        out = np.zeros((x.shape[0], 2 if out_max_val else 1, top_k), np.float32)
        for i, row in enumerate(flat):
            pairs = sorted(((v, j) for j, v in enumerate(row)), reverse=True)[:top_k]
            out[i, 0] = [j for _, j in pairs]
            if out_max_val:
                out[i, 1] = [v for v, _ in pairs]
        return out.reshape(out.shape + (1,) * max(0, x.ndim - 3)) if x.ndim >= 3 else out
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,), np.float32)
    for index in np.ndindex(moved.shape[:-1]):
        pairs = sorted(((v, j) for j, v in enumerate(moved[index])), reverse=True)[:top_k]
        out[index] = [v for v, _ in pairs] if out_max_val else [j for _, j in pairs]
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param", ["top_k: 2", "top_k: 3 out_max_val: true", "axis: 1 top_k: 2", "axis: 3",
                                   "axis: -1 out_max_val: true"])
def test_argmax_ties_take_the_highest_index(tmp_path, backend, param):
    rng = np.random.default_rng(0)
    x = np.maximum(rng.integers(-2, 4, (2, 3, 2, 5)), 0).astype(np.float32)  # ReLU-like: many ties
    graph = _graph(tmp_path, {"x": x.shape}, f'layer {{ name: "am" type: "ArgMax" bottom: "x" top: "am" '
                                             f'argmax_param {{ {param} }} }}\n')
    p = graph.layer("am").proto.argmax_param
    want = _argmax_caffe(x, p.axis if p.HasField("axis") else None, p.top_k, p.out_max_val)
    got = _run(graph, {"x": x}, backend)["am"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_with_a_second_bottom_adds_it(tmp_path, backend):
    """bias_layer.cpp: top = bottom[0] + broadcast(bottom[1]) (the PyTorch form multiplied)."""
    rng = np.random.default_rng(1)
    x, b = rng.standard_normal((2, 3, 4, 5)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    graph = _graph(tmp_path, {"x": x.shape, "b": b.shape},
                   'layer { name: "bias" type: "Bias" bottom: "x" bottom: "b" top: "y" bias_param { axis: 1 } }\n')
    got = _run(graph, {"x": x, "b": b}, backend)["y"]
    np.testing.assert_allclose(got, x + b[None, :, :, None], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer_type", ["Scale", "Bias"])
def test_scalar_parameter(tmp_path, backend, layer_type):
    """num_axes: 0 -> a 0-axis blob broadcast over everything (scale_layer.cpp sets axis_ = 0)."""
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    param = "scale_param" if layer_type == "Scale" else "bias_param"
    graph = _graph(tmp_path, {"x": x.shape}, f'layer {{ name: "s" type: "{layer_type}" bottom: "x" top: "y" '
                                             f'{param} {{ axis: 1 num_axes: 0 }} }}\n', {"s": [np.float32(1.5)]})
    assert graph.layer("s").param_shapes == [()]
    got = _run(graph, {"x": x}, backend)["y"]
    np.testing.assert_allclose(got, x * 1.5 if layer_type == "Scale" else x + 1.5, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_negative_axis(tmp_path, backend):
    """CanonicalAxisIndex(-2) of a 3-axis input is 1: the blob covers axes 1.. (num_axes -1)."""
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((2, 4, 5)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    graph = _graph(tmp_path, {"x": x.shape}, 'layer { name: "s" type: "Scale" bottom: "x" top: "y" '
                                             'scale_param { axis: -2 num_axes: -1 } }\n', {"s": [g]})
    assert graph.layer("s").param_shapes == [(4, 5)]
    np.testing.assert_allclose(_run(graph, {"x": x}, backend)["y"], x * g, rtol=1e-6)


def test_scale_axis_out_of_range(tmp_path):
    with pytest.raises(CaffeError) as info:
        _graph(tmp_path, {"x": (2, 4, 5)}, 'layer { name: "s" type: "Scale" bottom: "x" top: "y" '
                                           'scale_param { axis: 3 } }\n').require_shapes()
    assert "axis 3" in str(info.value)


def _mvn_caffe(x: np.ndarray, normalize_variance: bool, across: bool, eps: float) -> np.ndarray:
    """mvn_layer.cpp: top is (num, channels, height, width) with missing axes 1; statistics over each
    of num (across_channels) or num*channels rows of count/num values; std + eps."""
    shape4 = x.shape + (1,) * (4 - x.ndim)
    rows = x.reshape(shape4[0] if across else shape4[0] * shape4[1], -1).astype(np.float32)
    y = rows - rows.mean(1, keepdims=True)
    if normalize_variance:
        y = y / (np.sqrt((y * y).mean(1, keepdims=True)) + np.float32(eps))
    return y.reshape(shape4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 6), (2, 3, 5)])
@pytest.mark.parametrize("param", ["", "across_channels: true", "normalize_variance: false"])
def test_mvn_on_fewer_axes(tmp_path, backend, shape, param):
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    graph = _graph(tmp_path, {"x": shape}, f'layer {{ name: "mvn" type: "MVN" bottom: "x" top: "y" '
                                           f'mvn_param {{ {param} }} }}\n')
    p = graph.layer("mvn").proto.mvn_param
    want = _mvn_caffe(x, p.normalize_variance, p.across_channels, p.eps)
    assert graph.values["y"].shape == want.shape
    got = _run(graph, {"x": x}, backend)["y"]
    assert got.shape == want.shape and close(got, want)


def test_mvn_refuses_five_axes(tmp_path):
    with pytest.raises(CaffeError) as info:
        _graph(tmp_path, {"x": (1, 2, 3, 4, 5)}, 'layer { name: "mvn" type: "MVN" bottom: "x" top: "y" }\n'
               ).require_shapes()
    assert "at most 4 axes" in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lo, hi", [(-0.5, 0.5), (1.0, -1.0)])
def test_clip(tmp_path, backend, lo, hi):
    """clip_layer.cpp: max(min, min(x, max)); with min > max every value is min."""
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
    graph = _graph(tmp_path, {"x": x.shape}, f'layer {{ name: "c" type: "Clip" bottom: "x" top: "y" '
                                             f'clip_param {{ min: {lo} max: {hi} }} }}\n')
    want = np.maximum(np.float32(lo), np.minimum(x, np.float32(hi)))
    np.testing.assert_array_equal(_run(graph, {"x": x}, backend)["y"], want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base, scale, shift", [(-1, 1, 0), (2.0, 0.5, 1.0), (-1, -0.3, 2.0), (10.0, 1.0, 0),
                                                (-1, 1.0, 90.0)])
def test_exp(tmp_path, backend, base, scale, shift):
    """exp_layer.cpp: outer_scale * exp(inner_scale * x), inner = ln(base)*scale, outer = base^shift
    in float: shift 90 overflows to inf in Caffe whatever x is."""
    x = np.linspace(-95, 3, 40, dtype=np.float32).reshape(2, 20) if shift == 90 else \
        np.linspace(-3, 3, 40, dtype=np.float32).reshape(2, 20)
    graph = _graph(tmp_path, {"x": x.shape}, f'layer {{ name: "e" type: "Exp" bottom: "x" top: "y" '
                                             f'exp_param {{ base: {base} scale: {scale} shift: {shift} }} }}\n')
    log_base = np.float32(1) if base == -1 else np.log(np.float32(base))
    inner = np.float32(log_base * np.float32(scale))
    with np.errstate(over="ignore"):
        outer = np.float32(1) if shift == 0 else (np.exp(np.float32(shift)) if base == -1 else
                                                  np.power(np.float32(base), np.float32(shift)))
        want = (outer * np.exp(inner * x)).astype(np.float32)
    got = _run(graph, {"x": x}, backend)["y"]
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base, scale, shift", [(-1, 1, 0), (2.0, 0.5, 1.0), (10.0, 2.0, 0.5)])
def test_log(tmp_path, backend, base, scale, shift):
    """log_layer.cpp: log(scale*x + shift) * base_scale, base_scale = 1/ln(base)."""
    x = np.linspace(0.1, 5, 40, dtype=np.float32).reshape(2, 20)
    graph = _graph(tmp_path, {"x": x.shape}, f'layer {{ name: "l" type: "Log" bottom: "x" top: "y" '
                                             f'log_param {{ base: {base} scale: {scale} shift: {shift} }} }}\n')
    base_scale = np.float32(1) if base == -1 else np.float32(1) / np.log(np.float32(base))
    want = np.log(np.float32(scale) * x + np.float32(shift)) * base_scale
    np.testing.assert_allclose(_run(graph, {"x": x}, backend)["y"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_layer_output(tmp_path, backend):
    """A Parameter layer's top is its blob; as a net output it comes back as a plain array."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "net.prototxt"
    path.write_text('name: "t"\nlayer { name: "p" type: "Parameter" top: "p" '
                    'parameter_param { shape { dim: 2 dim: 3 } } }\n')
    graph = load_net(path)
    graph.layer("p").blobs = [w]
    if backend == "torch":
        got = run(to_pytorch(graph), [])["p"]
    else:
        got = ort_session(to_onnx(graph)).run(None, {})[0]
    np.testing.assert_array_equal(got, w)
    assert not isinstance(got, torch.Tensor)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_dropout_without_train_scaling(tmp_path, backend, ratio):
    """caffe-fast-rcnn's Dropout with scale_train false (py-faster-rcnn ZF's drop6/drop7): at test the input
    times 1 / scale_, scale_ = 1 / (1 - ratio) in float; Caffe's own Dropout stays the identity."""
    body = (f'layer {{ name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param {{ dropout_ratio: {ratio} '
            f'scale_train: false }} }}\nlayer {{ name: "c" type: "Dropout" bottom: "x" top: "z" '
            f'dropout_param {{ dropout_ratio: {ratio} }} }}\n')
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    got = _run(_graph(tmp_path, {"x": (2, 5)}, body), {"x": x}, backend)
    scale = np.float32(1.0 / (1.0 - float(np.float32(ratio))))
    assert np.array_equal(got["y"], x * np.float32(1.0 / float(scale)))
    assert np.array_equal(got["z"], x)


def test_dropout_without_train_scaling_trains_unscaled(tmp_path):
    """In training (zoo train) the kept values pass unscaled and the others are 0."""
    body = 'layer { name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { scale_train: false } }\n'
    module = to_pytorch(_graph(tmp_path, {"x": (64, 64)}, body)).train()
    x = torch.rand(64, 64) + 1
    torch.manual_seed(0)
    y = module(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept]) and 0.4 < kept.float().mean() < 0.6
