"""Fork layer types other than SSD's, on both backends (PyTorch module, ONNX on onnxruntime), against
the forks' own numbers: the real-Caffe fixtures (../shared/reference/fork_caffe), OpenCV's fixtures
where OpenCV computes what Caffe does (../shared/reference/fork), and NumPy transcriptions of the
forks' C++/Python (plain loops, odd unequal sizes) for the types no fixture covers."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from converters import export_folder, to_onnx, to_pytorch
from converters.layers.rcnn import PythonLayerNote
from converters.torch import run
from prototxt import CaffeError, UnsupportedLayers, load_net
from tests.converters.common import (RTOL, atol, close, describe, fixture_weights, io_arrays, load_fixture, onnx_values,
                                     ort_run, torch_cpu, torch_values)
from tests.helpers import SHARED, shared_dir

pytestmark = [pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning"),
              pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")]

FORK = SHARED / "reference" / "fork"
FORK_CAFFE = SHARED / "reference" / "fork_caffe"


def _net(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _both(graph, inputs: dict) -> tuple[dict, dict]:
    """Every net output by the PyTorch module and by onnxruntime."""
    module = to_pytorch(graph)
    with torch_cpu():
        got_torch = run(module, [inputs[n] for n in module.input_names])
    return got_torch, ort_run(to_onnx(graph), inputs)


def _check(got: dict, ref: dict) -> None:
    for name, r in ref.items():
        assert close(got[name], r), f"{name}: {describe(got[name], r)}"


def _fixture_both(graph, ins, outs, blobs=None):
    blobs = list(blobs or outs)
    got_torch = torch_values(to_pytorch(graph), graph, ins, blobs)
    got_onnx = onnx_values(graph, ins, blobs)
    for b in blobs:
        assert close(got_torch[b], outs[b]), f"torch {b}: {describe(got_torch[b], outs[b])}"
        assert close(got_onnx[b], outs[b]), f"onnx {b}: {describe(got_onnx[b], outs[b])}"


# -- fixtures computed by a real fork Caffe ---------------------------------------------------------------------

def test_segnet_basic_bn_and_mask_upsample_real_caffe(weights_cache):
    """SegNet's BN (INFERENCE: x * scale + shift, blobs [1,C,1,1]), MAX pooling with its mask top and
    the mask Upsample (with pad_out_h), on both backends, against the fork Caffe's numbers."""
    fixture = shared_dir() / "reference" / "fork_caffe" / "models" / "segnet_basic_inference"
    graph, ins, outs = load_fixture(fixture, weights_cache)
    _fixture_both(graph, ins, outs)


def test_segnet_upsample_with_mask_is_maxunpool(tmp_path):
    """layers/maxunpool_k2s2: the fork Caffe's MaxUnPool runs SegNet Upsample's loop; our Upsample with
    the same output size (7x9 from 4x5) and the pooling mask top (h*W + w, as float) match it exactly."""
    fixture = shared_dir() / "reference" / "fork_caffe" / "layers" / "maxunpool_k2s2"
    text = (fixture / "net.prototxt").read_text()
    text, n = re.subn(r'type: "MaxUnPool"(.*?)max_unpool_param \{ dst_h: 7 dst_w: 9 \}',
                      r'type: "Upsample"\1upsample_param { upsample_h: 7 upsample_w: 9 }', text)
    assert n == 1
    graph = load_net(_net(tmp_path, text))
    ins, outs = io_arrays(fixture)
    got_torch = torch_values(to_pytorch(graph), graph, ins, outs)
    got_onnx = onnx_values(graph, ins, outs)
    for b in outs:
        assert np.array_equal(got_torch[b], outs[b]) and np.array_equal(got_onnx[b], outs[b]), b


# -- OpenCV fixtures ------------------------------------------------------------------------------------------

def _opencv_fixture(name: str, weights_cache):
    """(graph, inputs, stored blobs) of an OpenCV fixture: its corpus prototxt with its seeded weights."""
    fixture = shared_dir() / "reference" / "fork" / name
    ins, outs = io_arrays(fixture)
    with fixture_weights(fixture, weights_cache) as weights:
        source = SHARED / (fixture / "source").read_text().strip()
        graph = load_net(source, weights, input_shapes={k: v.shape for k, v in ins.items()})
    return graph, ins, outs


def test_interp_opencv_fixture(weights_cache):
    """OpenCV's Interp is DeepLab/PSPNet's align-corners bilinear (corpus layer_interp.prototxt)."""
    graph, ins, outs = _opencv_fixture("opencv_layer_interp", weights_cache)
    _fixture_both(graph, ins, outs)


@pytest.mark.parametrize("name", ["shufflenet_v1", "shufflenet_v2"])
def test_shufflenet_opencv_fixture(name, weights_cache):
    """ConvolutionDepthwise (group = channels) and ShuffleChannel. OpenCV stored shufflenet_v1's
    'resx16_conv2' as the depthwise convolution's own output (before the in-place BatchNorm/Scale that
    Caffe's blob holds last), so that one blob is left out; the blobs after it are compared."""
    graph, ins, outs = _opencv_fixture(name, weights_cache)
    blobs = [b for b in outs if b != "resx16_conv2"]
    _fixture_both(graph, ins, outs, blobs)


@pytest.mark.parametrize("name", ["se_resnet50", "se_resnext50"])
def test_se_nets_opencv_fixture_with_its_axpy_operands(name, weights_cache):
    """SENet's axpy_layer.cpp computes top = a * x + y (bottoms a, x, y: it copies bottom[2], then
    adds a * bottom[1]); OpenCV's importer computes a * y + x, and these fixtures were calibrated with
    it. To measure the rest of the net (53 BatchNorms, 16 SE blocks) against them, the graph's Axpy
    bottoms x and y are swapped here; the fixture README's tolerance for these nets: 2e-2 of max|ref|,
    prob's top-1 and top-5 set equal."""
    graph, ins, outs = _opencv_fixture(name, weights_cache)
    for layer in graph.layers:
        if layer.type == "Axpy":
            layer.bottoms[1], layer.bottoms[2] = layer.bottoms[2], layer.bottoms[1]
    got_torch = torch_values(to_pytorch(graph), graph, ins, outs)
    got_onnx = onnx_values(graph, ins, outs)
    for b, ref in outs.items():
        if graph.layer(graph.values[graph.final_value(b)].producer).type == "ReLU":
            ref = np.maximum(ref, 0)  # OpenCV stored the Axpy's own output; Caffe's blob ends after the in-place ReLU
        for got in (got_torch[b], got_onnx[b]):
            assert np.abs(got - ref).max() <= 2e-2 * np.abs(ref).max(), f"{b}: {describe(got, ref)}"
    ref_top = np.argsort(-outs["prob"].ravel())[:5]
    for got in (got_torch["prob"], got_onnx["prob"]):  # the same top 5 (se_resnet50's 2nd and 3rd differ by 0.1%)
        top = np.argsort(-got.ravel())[:5]
        assert top[0] == ref_top[0] and set(top) == set(ref_top), (top, ref_top)


def test_axpy_is_a_times_x_plus_y(tmp_path):
    """axpy_layer.cpp's loop: top = y, then top[n, c] += a[n, c] * x[n, c] (N != C != H != W)."""
    graph = load_net(_net(tmp_path, 'input: "a" input_shape { dim: 2 dim: 3 dim: 1 dim: 1 }\n'
                                    'input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                                    'input: "y" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                                    'layer { name: "axpy" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z" }\n'))
    rng = np.random.default_rng(3)
    ins = {k: rng.standard_normal(graph.values[k].shape).astype(np.float32) for k in ("a", "x", "y")}
    ref = ins["y"].copy()
    for n in range(2):
        for c in range(3):
            ref[n, c] += ins["a"][n, c, 0, 0] * ins["x"][n, c]
    for got in _both(graph, ins):
        _check(got, {"z": ref})


# -- NumPy transcriptions: Interp -------------------------------------------------------------------------------

def interp_reference(x: np.ndarray, pad_beg: int, pad_end: int, h2: int, w2: int) -> np.ndarray:
    """caffe_cpu_interp2 (PSPNet/DeepLab interp.cpp) on the crop [-pad_beg, size + pad_end), float32."""
    n, c, height, width = x.shape
    h1, w1, off = height + pad_beg + pad_end, width + pad_beg + pad_end, -pad_beg
    out = np.zeros((n, c, h2, w2), np.float32)
    if (h1, w1) == (h2, w2):
        return x[:, :, off:off + h1, off:off + w1].copy()
    rh = np.float32(h1 - 1) / np.float32(h2 - 1) if h2 > 1 else np.float32(0)
    rw = np.float32(w1 - 1) / np.float32(w2 - 1) if w2 > 1 else np.float32(0)
    for i in range(h2):
        h1r = np.float32(rh * np.float32(i))
        hi = int(h1r)
        hp = 1 if hi < h1 - 1 else 0
        l1 = np.float32(h1r - np.float32(hi))
        l0 = np.float32(1) - l1
        for j in range(w2):
            w1r = np.float32(rw * np.float32(j))
            wi = int(w1r)
            wp = 1 if wi < w1 - 1 else 0
            m1 = np.float32(w1r - np.float32(wi))
            m0 = np.float32(1) - m1
            y, xx = off + hi, off + wi
            out[:, :, i, j] = (l0 * (m0 * x[:, :, y, xx] + m1 * x[:, :, y, xx + wp])
                               + l1 * (m0 * x[:, :, y + hp, xx] + m1 * x[:, :, y + hp, xx + wp]))
    return out


@pytest.mark.parametrize("param, out_hw", [
    ("zoom_factor: 3", (13, 19)),
    ("shrink_factor: 2", (3, 4)),
    ("height: 11 width: 4", (11, 4)),
    ("shrink_factor: 2 zoom_factor: 3", (7, 10)),
    ("zoom_factor: 2 pad_beg: -1 pad_end: -2", (3, 7)),
    ("height: 5 width: 7 pad_beg: -1", (5, 7)),
], ids=["zoom", "shrink", "size", "shrink+zoom", "zoom+crop", "size+crop-same"])
def test_interp_numpy_transcription(tmp_path, param, out_hw):
    graph = load_net(_net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 5 dim: 7 }\n'
                                    f'layer {{ name: "interp" type: "Interp" bottom: "x" top: "y" interp_param {{ {param} }} }}\n'))
    assert graph.values["y"].shape == (2, 3) + out_hw
    p = graph.layer("interp").proto.interp_param
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 7)).astype(np.float32)
    ref = interp_reference(x, p.pad_beg, p.pad_end, *out_hw)
    for got in _both(graph, {"x": x}):
        _check(got, {"y": ref})


# -- NumPy transcriptions: the two BN layers, nearest Upsample ------------------------------------------------

def _bn_net(tmp_path, bn_param: str, n_params: int = 0) -> Path:
    params = "param { lr_mult: 1 } " * n_params
    return _net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 5 dim: 7 }\n'
                          f'layer {{ name: "bn" type: "BN" bottom: "x" top: "y" {params}bn_param {{ {bn_param} }} }}\n')


def test_pspnet_bn(tmp_path):
    """PSPNet's BN at test: blobs slope, bias, mean, variance, each (1, C, 1, 1);
    y = slope * (x - mean) / sqrt(variance + eps) + bias."""
    graph = load_net(_bn_net(tmp_path, "slope_filler { type: 'constant' value: 1 } "
                                       "bias_filler { type: 'constant' value: 0 } frozen: true eps: 0.001", 4))
    assert graph.layer("bn").param_shapes == [(1, 3, 1, 1)] * 4
    rng = np.random.default_rng(7)
    slope, bias, mean = (rng.standard_normal((1, 3, 1, 1)).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2, (1, 3, 1, 1)).astype(np.float32)
    graph.layer("bn").blobs = [slope, bias, mean, var]
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    ref = np.empty_like(x)
    for c in range(3):
        ref[:, c] = slope[0, c] * (x[:, c] - mean[0, c]) / np.sqrt(var[0, c] + np.float32(0.001)) + bias[0, c]
    for got in _both(graph, {"x": x}):
        _check(got, {"y": ref})


@pytest.mark.parametrize("mode", ["INFERENCE", "LEARN"])
def test_segnet_bn(tmp_path, mode):
    """SegNet's BN: INFERENCE is x * scale + shift; LEARN normalises with this batch's statistics
    (var = E[x^2] - E[x]^2, eps 1e-9) whatever the phase, as its Forward_cpu has no phase test."""
    graph = load_net(_bn_net(tmp_path, f"bn_mode: {mode}"))
    assert graph.layer("bn").param_shapes == [(1, 3, 1, 1)] * 2
    rng = np.random.default_rng(8)
    scale, shift = (rng.standard_normal((1, 3, 1, 1)).astype(np.float32) for _ in range(2))
    graph.layer("bn").blobs = [scale, shift]
    x = (rng.standard_normal((2, 3, 5, 7)) + 0.5).astype(np.float32)
    ref = np.empty_like(x)
    for c in range(3):
        v = x[:, c].astype(np.float64)
        if mode == "LEARN":
            mean = v.mean()
            v = (v - mean) / np.sqrt((v * v).mean() - mean * mean + 1e-9)
        ref[:, c] = v * scale[0, c] + shift[0, c]
    for got in _both(graph, {"x": x}):
        _check(got, {"y": ref})


def test_nearest_upsample(tmp_path):
    """The one-bottom Upsample: top[h, w] = bottom[h // scale, w // scale]."""
    graph = load_net(_net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                                    'layer { name: "up" type: "Upsample" bottom: "x" top: "y" upsample_param { scale: 3 } }\n'))
    x = np.random.default_rng(9).standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = np.empty((2, 3, 12, 15), np.float32)
    for h in range(12):
        for w in range(15):
            ref[:, :, h, w] = x[:, :, h // 3, w // 3]
    for got in _both(graph, {"x": x}):
        assert np.array_equal(got["y"], ref)


# -- NumPy transcriptions: ROIPooling, PSROIPooling, proposal ------------------------------------------------

def c_round(v: float) -> float:
    return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


def roi_pooling_reference(x, rois, ph_n, pw_n, scale):
    """Fast R-CNN's ROIPoolingLayer::Forward_cpu."""
    n, c, height, width = x.shape
    out = np.zeros((len(rois), c, ph_n, pw_n), np.float32)
    scale = np.float32(scale)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        sw, sh, ew, eh = (int(c_round(float(np.float32(v) * scale))) for v in roi[1:])
        rh, rw = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bh, bw = np.float32(rh) / np.float32(ph_n), np.float32(rw) / np.float32(pw_n)
        for ph in range(ph_n):
            for pw in range(pw_n):
                hs = min(max(int(math.floor(np.float32(ph) * bh)) + sh, 0), height)
                he = min(max(int(math.ceil(np.float32(ph + 1) * bh)) + sh, 0), height)
                ws = min(max(int(math.floor(np.float32(pw) * bw)) + sw, 0), width)
                we = min(max(int(math.ceil(np.float32(pw + 1) * bw)) + sw, 0), width)
                if he <= hs or we <= ws:
                    continue
                for ch in range(c):
                    best = -np.float32(3.4028235e38)
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if x[b, ch, h, w] > best:
                                best = x[b, ch, h, w]
                    out[r, ch, ph, pw] = best
    return out


def psroi_reference(x, rois, output_dim, group, scale):
    """R-FCN's PSROIPoolingForward kernel (psroi_pooling_layer.cu), one output element at a time."""
    n, c, height, width = x.shape
    out = np.zeros((len(rois), output_dim, group, group), np.float32)
    scale = np.float32(scale)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        sw = np.float32(c_round(roi[1])) * scale
        sh = np.float32(c_round(roi[2])) * scale
        ew = np.float32(c_round(roi[3]) + 1) * scale
        eh = np.float32(c_round(roi[4]) + 1) * scale
        bh = max(eh - sh, np.float32(0.1)) / np.float32(group)
        bw = max(ew - sw, np.float32(0.1)) / np.float32(group)
        for ct in range(output_dim):
            for ph in range(group):
                for pw in range(group):
                    hs = min(max(math.floor(np.float32(ph) * bh + sh), 0), height)
                    ws = min(max(math.floor(np.float32(pw) * bw + sw), 0), width)
                    he = min(max(math.ceil(np.float32(ph + 1) * bh + sh), 0), height)
                    we = min(max(math.ceil(np.float32(pw + 1) * bw + sw), 0), width)
                    if he <= hs or we <= ws:
                        continue
                    ch = (ct * group + ph) * group + pw
                    total = np.float32(0)
                    for h in range(hs, he):
                        for w in range(ws, we):
                            total += x[b, ch, h, w]
                    out[r, ct, ph, pw] = total / np.float32((he - hs) * (we - ws))
    return out


ROIS = np.array([[0, 3.5, 7.2, 60.0, 40.4],      # ordinary
                 [1, 0.0, 0.0, 200.0, 150.0],    # past the map: bins clipped
                 [1, 40.0, 8.0, 41.0, 9.0],      # smaller than a bin: empty bins -> 0
                 [0, -20.0, -8.0, 5.0, 100.0],   # negative start
                 [1, 24.0, 40.0, 24.0, 40.0],    # a point (halves round away from zero)
                 [0, 88.0, 8.5, 131.9, 87.5]], np.float32)


def _pool_net(tmp_path, shape, count: int, layer: str) -> Path:
    return _net(tmp_path, f'input: "x" input_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                          f'input: "rois" input_shape {{ dim: {count} dim: 5 }}\n' + layer)


def _roi_net(tmp_path, layer: str) -> Path:
    return _pool_net(tmp_path, (2, 18, 7, 9), len(ROIS), layer)


def test_roi_pooling(tmp_path):
    graph = load_net(_roi_net(tmp_path, 'layer { name: "pool" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
                                        'roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.0625 } }\n'))
    x = np.random.default_rng(11).standard_normal((2, 18, 7, 9)).astype(np.float32)
    ref = roi_pooling_reference(x, ROIS, 3, 4, 0.0625)
    assert (ref == 0).any()  # some bins are empty
    for got in _both(graph, {"x": x, "rois": ROIS}):
        assert np.array_equal(got["y"], ref)


def test_psroi_pooling(tmp_path):
    graph = load_net(_roi_net(tmp_path, 'layer { name: "ps" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" '
                                        'psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 3 } }\n'))
    x = np.random.default_rng(12).standard_normal((2, 18, 7, 9)).astype(np.float32)
    ref = psroi_reference(x, ROIS, 2, 3, 0.0625)
    for got in _both(graph, {"x": x, "rois": ROIS}):
        _check(got, {"y": ref})


EDGE_ROIS = np.array([[1, 100.0, 80.0, 300.0, 200.0],    # past the right and bottom edges: bins clipped
                      [0, 500.0, 20.0, 600.0, 60.0],     # completely right of the map: every bin empty -> 0
                      [1, -90.0, -70.0, -20.0, -30.0],   # completely above-left of the map: every bin empty -> 0
                      [0, 60.0, 50.0, 20.0, 10.0],       # degenerate (x2 < x1, y2 < y1): a one-cell ROI
                      [1, 8.0, 8.0, 8.0, 8.0],           # one point, batch index 1
                      [0, -7.9, -8.1, 151.9, 120.0]], np.float32)  # the whole map and a little more


def _random_rois(rng, count: int, batch: int, height: int, width: int, scale: float) -> np.ndarray:
    """ROIs of all sizes in image coordinates, some past the map's edges, on any batch item."""
    centre = rng.uniform(-0.2, 1.2, (count, 2)) * np.array([width, height]) / scale
    half = rng.uniform(0, 0.8, (count, 2)) * np.array([width, height]) / scale
    boxes = np.concatenate([centre - half, centre + half], 1)
    return np.concatenate([rng.integers(0, batch, (count, 1)), boxes], 1).astype(np.float32)


@pytest.mark.parametrize("kind", ["edges", "random"])
def test_roi_pooling_edge_and_random_rois(tmp_path, kind):
    """ROIs partly or completely off the map, degenerate, on batch item 1, and many random ones over a
    larger map (bins up to 10 cells: every range-max level the vectorised module uses)."""
    shape, pooled = ((2, 18, 7, 9), (3, 4)) if kind == "edges" else ((2, 5, 30, 41), (3, 2))
    rng = np.random.default_rng(21)
    rois = EDGE_ROIS if kind == "edges" else _random_rois(rng, 60, 2, *shape[2:], 0.0625)
    graph = load_net(_pool_net(tmp_path, shape, len(rois), 'layer { name: "pool" type: "ROIPooling" bottom: "x" '
                               f'bottom: "rois" top: "y" roi_pooling_param {{ pooled_h: {pooled[0]} '
                               f'pooled_w: {pooled[1]} spatial_scale: 0.0625 }} }}\n'))
    x = rng.standard_normal(shape).astype(np.float32)
    ref = roi_pooling_reference(x, rois, *pooled, 0.0625)
    if kind == "edges":
        assert not ref[1:3].any() and ref[0].any() and ref[3:].all()
    for got in _both(graph, {"x": x, "rois": rois}):
        assert np.array_equal(got["y"], ref)


@pytest.mark.parametrize("kind", ["edges", "random"])
def test_psroi_pooling_edge_and_random_rois(tmp_path, kind):
    """The same ROIs through R-FCN's PSROIPooling (group 3 over the small map, 2 over the larger one)."""
    shape, group = ((2, 18, 7, 9), 3) if kind == "edges" else ((2, 8, 30, 41), 2)
    rng = np.random.default_rng(22)
    rois = EDGE_ROIS if kind == "edges" else _random_rois(rng, 60, 2, *shape[2:], 0.0625)
    graph = load_net(_pool_net(tmp_path, shape, len(rois), 'layer { name: "ps" type: "PSROIPooling" bottom: "x" '
                               'bottom: "rois" top: "y" psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 '
                               f'group_size: {group} }} }}\n'))
    x = rng.standard_normal(shape).astype(np.float32)
    ref = psroi_reference(x, rois, 2, group, 0.0625)
    if kind == "edges":
        assert not ref[1:3].any() and ref[0].any()
    for got in _both(graph, {"x": x, "rois": rois}):
        _check(got, {"y": ref})


# py-faster-rcnn's generate_anchors() with its defaults (base 16, ratios 0.5/1/2, scales 8/16/32): the table
# of its docstring, which is the 1-based MATLAB output, minus 1 (the Python code starts from [0, 0, 15, 15])
ANCHORS = np.array([[-83, -39, 100, 56], [-175, -87, 192, 104], [-359, -183, 376, 200],
                    [-55, -55, 72, 72], [-119, -119, 136, 136], [-247, -247, 264, 264],
                    [-35, -79, 52, 96], [-79, -167, 96, 184], [-167, -343, 184, 360]], np.float64) - 1


def proposal_reference(scores, deltas, im_info, stride, pre_n=6000, post_n=300, thresh=0.7, min_size=16, stable=False):
    """rpn/proposal_layer.py's forward at TEST, with bbox_transform_inv, clip_boxes and py_cpu_nms: the rois
    top and the optional scores top (the kept boxes' foreground scores, (R, 1)). Its two sorts are numpy's
    unstable argsort reversed: equal scores come in no defined order; ``stable`` puts the lower index first."""
    def descending(v):
        return np.argsort(-v, kind="stable") if stable else v.argsort()[::-1]

    a = len(ANCHORS)
    scores = scores[:, a:, :, :]
    height, width = scores.shape[-2:]
    sx, sy = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
    shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).transpose()
    anchors = (ANCHORS.reshape((1, a, 4)) + shifts.reshape((1, -1, 4)).transpose((1, 0, 2))).reshape((-1, 4))
    deltas = deltas.transpose((0, 2, 3, 1)).reshape((-1, 4))
    scores = scores.transpose((0, 2, 3, 1)).reshape((-1, 1))
    boxes = anchors.astype(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    cx = deltas[:, 0] * widths + (boxes[:, 0] + 0.5 * widths)
    cy = deltas[:, 1] * heights + (boxes[:, 1] + 0.5 * heights)
    pw, ph = np.exp(deltas[:, 2]) * widths, np.exp(deltas[:, 3]) * heights
    props = np.stack([cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw, cy + 0.5 * ph], 1)
    info = im_info[0]
    props[:, 0::2] = np.maximum(np.minimum(props[:, 0::2], info[1] - 1), 0)
    props[:, 1::2] = np.maximum(np.minimum(props[:, 1::2], info[0] - 1), 0)
    ws, hs = props[:, 2] - props[:, 0] + 1, props[:, 3] - props[:, 1] + 1
    keep = np.where((ws >= min_size * info[2]) & (hs >= min_size * info[2]))[0]
    props, scores = props[keep], scores[keep]
    order = descending(scores.ravel())[:pre_n]
    props, scores = props[order], scores[order].ravel()
    x1, y1, x2, y2 = props[:, 0], props[:, 1], props[:, 2], props[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, kept = descending(scores), []
    while order.size > 0:
        i = order[0]
        kept.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        order = order[np.where(inter / (areas[i] + areas[order[1:]] - inter) <= thresh)[0] + 1]
    props, scores = props[kept[:post_n]], scores[kept[:post_n]].reshape(-1, 1)
    return np.hstack((np.zeros((len(props), 1), np.float32), props.astype(np.float32))), scores


PROPOSAL_NET = ('input: "score" input_shape { dim: 1 dim: 18 dim: 7 dim: 9 }\n'
                'input: "delta" input_shape { dim: 1 dim: 36 dim: 7 dim: 9 }\n'
                'input: "im_info" input_shape { dim: 1 dim: 3 }\n'
                'layer { name: "proposal" type: "Python" bottom: "score" bottom: "delta" bottom: "im_info" top: "rois"\n'
                '  python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "%s" } }\n')


def _proposal_net(tops: int = 1) -> str:
    """PROPOSAL_NET with feat_stride 16; with two tops, the second is py-faster-rcnn's optional scores top."""
    text = PROPOSAL_NET % "'feat_stride': 16"
    return text if tops == 1 else text.replace('top: "rois"', 'top: "rois" top: "scores"')


def _proposal_inputs(seed: int):
    rng = np.random.default_rng(seed)
    return {"score": rng.uniform(0, 1, (1, 18, 7, 9)).astype(np.float32),
            "delta": (0.4 * rng.standard_normal((1, 36, 7, 9))).astype(np.float32),
            "im_info": np.array([[103, 139, 1.3]], np.float32)}


@pytest.mark.parametrize("tops", [1, 2])
def test_proposal_layer_numpy_transcription(tmp_path, tops):
    """py-faster-rcnn's proposal layer, served by our own implementation, with a note saying so; with two
    tops, the second is the kept proposals' scores."""
    graph = load_net(_net(tmp_path, _proposal_net(tops)))
    assert graph.values["rois"].shape == (300, 5)  # at most post_nms_top_n rows
    ins = _proposal_inputs(13)
    rois, scores = proposal_reference(ins["score"], ins["delta"], ins["im_info"], 16)
    assert 20 < len(rois) < 7 * 9 * 9  # the min-size filter and NMS both removed boxes
    with pytest.warns(PythonLayerNote, match="rpn.proposal_layer.ProposalLayer is served by caffezoo's own"):
        got_torch, got_onnx = _both(graph, ins)
    for got in (got_torch, got_onnx):
        assert sorted(got) == ["rois", "scores"][:tops]
        assert got["rois"].shape == rois.shape
        assert np.allclose(got["rois"], rois, rtol=RTOL, atol=atol(rois))
        if tops == 2:
            assert np.array_equal(got["scores"], scores)  # the inputs' own values, picked


def test_proposal_equal_scores_lower_anchor_first(tmp_path):
    """Scores in steps of 0.05 (a saturated softmax ties the same way): where py-faster-rcnn's order is
    numpy's unstable sort's, both backends take the lower anchor index ((h, w, a) order) first."""
    graph = load_net(_net(tmp_path, _proposal_net(2)))
    ins = _proposal_inputs(17)
    ins["score"] = np.round(ins["score"] * 20) / np.float32(20)
    rois, scores = proposal_reference(ins["score"], ins["delta"], ins["im_info"], 16, stable=True)
    assert len(np.unique(scores)) < len(scores)  # kept boxes with equal scores
    for got in _both(graph, ins):
        assert close(got["rois"], rois) and np.array_equal(got["scores"], scores)


def test_proposal_anchors_are_generate_anchors():
    from prototxt.fork_shapes import generate_anchors
    got = generate_anchors(16, np.array([0.5, 1, 2]), np.array([8, 16, 32]))
    assert np.array_equal(got, ANCHORS)


def test_enet_spatial_dropout_is_identity_at_test(tmp_path):
    graph = load_net(_net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                                    'layer { name: "drop" type: "Python" bottom: "x" top: "y" python_param { '
                                    'module: "spatial_dropout" layer: "SpatialDropoutLayer" '
                                    'param_str: "{\'phase\': \'TEST\', \'p\': \'0.01\'}" } }\n'))
    x = np.random.default_rng(14).standard_normal((2, 3, 4, 5)).astype(np.float32)
    with pytest.warns(PythonLayerNote, match="test-time identity"):
        for got in _both(graph, {"x": x}):
            assert np.array_equal(got["y"], x)


# -- refusals: one line naming the layer --------------------------------------------------------------------------

@pytest.mark.parametrize("layer, words", [
    ('layer { name: "interp" type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 2 pad_beg: 1 } }',
     ["'interp'", "pad_beg 1", "<= 0"]),
    ('layer { name: "shuffle" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 2 } }',
     ["'shuffle'", "3 channels", "2 groups"]),
    ('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 } }',
     ["'pool'", "only MAX pooling has a second (mask) top"]),
    ('layer { name: "up" type: "Upsample" bottom: "x" bottom: "x" top: "y" upsample_param { scale: 3 pad_out_h: true } }',
     ["'up'", "pad_out_h/pad_out_w work only with scale 2"]),
    ('layer { name: "prop" type: "Python" bottom: "x" bottom: "x" bottom: "x" top: "r" python_param { '
     'module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "\'feat_stride\': 16, \'bogus\': 1" } }',
     ["'prop'", "unknown: bogus"]),
    ('layer { name: "prop2" type: "Python" bottom: "x" bottom: "x" bottom: "x" top: "r" python_param { '
     'module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "\'feat_stride\': 16" } }',
     ["'prop2'", "takes one image", "a batch of 2"]),
    ('layer { name: "prop3" type: "Python" bottom: "x" bottom: "x" bottom: "x" top: "r" python_param { '
     'module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "\'feat_stride\': (16, 16)" } }',
     ["'prop3'", "'feat_stride' must be a number from 1 to"]),
    ('layer { name: "prop4" type: "Python" bottom: "x" bottom: "x" bottom: "x" top: "r" python_param { '
     'module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "\'feat_stride\': 1e999" } }',
     ["'prop4'", "'feat_stride' must be a finite number"]),
    ('layer { name: "prop5" type: "Python" bottom: "x" bottom: "x" bottom: "x" top: "r" python_param { '
     'module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "\'feat_stride\': 16, \'scales\': {8: 1}" } }',
     ["'prop5'", "'scales' must be a finite number or a list"]),
])
def test_unsupported_fork_parameter_is_one_line(tmp_path, layer, words):
    path = _net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n' + layer + "\n")
    with pytest.raises((CaffeError, ValueError)) as info:
        graph = load_net(path)
        to_onnx(graph)
    text = str(info.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_unknown_python_layer_still_refused(tmp_path):
    graph = load_net(_net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                                    'layer { name: "py" type: "Python" bottom: "x" top: "y" '
                                    'python_param { module: "mine" layer: "Mine" } }\n'))
    with pytest.raises(UnsupportedLayers, match=r"'py' \(mine.Mine\)"):
        to_onnx(graph)


# -- the exported folder, one net per family ------------------------------------------------------------------------

FAMILY_NETS = {
    "mobile": ('input: "x" input_shape { dim: 2 dim: 6 dim: 5 dim: 7 }\n'
               'layer { name: "dw" type: "ConvolutionDepthwise" bottom: "x" top: "dw" '
               'convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }\n'
               'layer { name: "shuffle" type: "ShuffleChannel" bottom: "dw" top: "s" shuffle_channel_param { group: 3 } }\n'
               'layer { name: "gap" type: "Pooling" bottom: "s" top: "g" pooling_param { pool: AVE global_pooling: true } }\n'
               'layer { name: "sig" type: "Sigmoid" bottom: "g" top: "g" }\n'
               'layer { name: "axpy" type: "Axpy" bottom: "g" bottom: "s" bottom: "x" top: "y" }\n'),
    "segmentation": ('input: "x" input_shape { dim: 2 dim: 3 dim: 7 dim: 9 }\n'
                     'layer { name: "bn" type: "BN" bottom: "x" top: "b" bn_param { bn_mode: INFERENCE } }\n'
                     'layer { name: "pool" type: "Pooling" bottom: "b" top: "p" top: "mask" '
                     'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
                     'layer { name: "up" type: "Upsample" bottom: "p" bottom: "mask" top: "u" upsample_param { scale: 2 } }\n'
                     'layer { name: "interp" type: "Interp" bottom: "u" top: "y" interp_param { height: 5 width: 11 } }\n'),
    "rcnn": ('input: "feat" input_shape { dim: 1 dim: 18 dim: 7 dim: 9 }\n' + _proposal_net(tops=2) +
             'layer { name: "pool" type: "ROIPooling" bottom: "feat" bottom: "rois" top: "pooled" '
             'roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.0625 } }\n'
             'layer { name: "ps" type: "PSROIPooling" bottom: "feat" bottom: "rois" top: "ps" '
             'psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 3 } }\n'),
}


@pytest.mark.parametrize("family", sorted(FAMILY_NETS))
def test_exported_folder_imports_and_matches(tmp_path, family):
    graph = load_net(_net(tmp_path, FAMILY_NETS[family]))
    rng = np.random.default_rng(15)
    for layer in graph.layers:
        layer.blobs = [rng.standard_normal(s).astype(np.float32) for s in layer.param_shapes]
    ins = {graph.values[v].caffe_name: rng.standard_normal(graph.values[v].shape).astype(np.float32)
           for v in graph.inputs}
    if family == "rcnn":
        ins.update(_proposal_inputs(16))
    folder = export_folder(graph, tmp_path / "out")
    spec = importlib.util.spec_from_file_location(f"exported_{family}", os.path.join(folder, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.load()
    gm = to_pytorch(graph)
    feeds = [torch.from_numpy(ins[n]) for n in gm.input_names]
    with torch_cpu():
        want, got = gm(*feeds), net(*feeds)
    want = want if isinstance(want, dict) else {"out": want}
    got = got if isinstance(got, dict) else {"out": got}
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_no_proposal_left_pools_nothing(tmp_path):
    """An image scale that makes min_size larger than the image: no proposal, so zero ROIs to pool."""
    graph = load_net(_net(tmp_path, FAMILY_NETS["rcnn"]))
    ins = _proposal_inputs(3)
    ins["im_info"] = np.array([[103, 139, 20]], np.float32)  # boxes under 16 * 20 = 320 px dropped
    ins["feat"] = np.random.default_rng(4).standard_normal((1, 18, 7, 9)).astype(np.float32)
    for got in _both(graph, ins):
        assert {k: v.shape for k, v in got.items()} == {"pooled": (0, 18, 2, 3), "ps": (0, 2, 3, 3), "scores": (0, 1)}


def test_spatial_dropout_in_training_phase_is_not_served(tmp_path):
    """ENet's training nets set phase TRAIN in param_str: the layer then drops channels, so it is refused."""
    graph = load_net(_net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                                    'layer { name: "drop" type: "Python" bottom: "x" top: "y" python_param { '
                                    'module: "spatial_dropout" layer: "SpatialDropoutLayer" '
                                    'param_str: "{\'phase\': \'TRAIN\', \'p\': \'0.01\'}" } }\n'))
    with pytest.raises(UnsupportedLayers, match=r"'drop' \(spatial_dropout.SpatialDropoutLayer\)"):
        to_onnx(graph)


def test_interp_to_a_reference_blob_size(tmp_path):
    graph = load_net(_net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 5 dim: 7 }\n'
                                    'input: "ref" input_shape { dim: 2 dim: 1 dim: 9 dim: 4 }\n'
                                    'layer { name: "interp" type: "Interp" bottom: "x" bottom: "ref" top: "y" }\n'))
    x = np.random.default_rng(17).standard_normal((2, 3, 5, 7)).astype(np.float32)
    ref = interp_reference(x, 0, 0, 9, 4)
    for got in _both(graph, {"x": x, "ref": np.zeros((2, 1, 9, 4), np.float32)}):
        _check(got, {"y": ref})


@pytest.mark.parametrize("param, shape", [
    ("batch_size: 2 new_height: 11 new_width: 13", (2, 3, 11, 13)),
    ("batch_size: 1 new_height: 11 new_width: 13 crop_height: 5 crop_width: 7 is_color: false", (1, 1, 5, 7)),
])
def test_dense_image_data_becomes_an_input(tmp_path, param, shape):
    """SegNet/ENet's DenseImageData: (batch, 3 or 1, crop or new size); the label top (batch, 1, H, W)."""
    graph = load_net(_net(tmp_path, f'layer {{ name: "data" type: "DenseImageData" top: "data" top: "label" '
                                    f'dense_image_data_param {{ source: "list.txt" {param} }} }}\n'
                                    'layer { name: "relu" type: "ReLU" bottom: "data" top: "y" }\n'))
    assert graph.values["data"].shape == shape and graph.values["label"].shape == (shape[0], 1) + shape[2:]
    x = np.random.default_rng(18).standard_normal(shape).astype(np.float32)
    for got in _both(graph, {"data": x, "label": np.zeros((shape[0], 1) + shape[2:], np.float32)}):
        assert np.array_equal(got["y"], np.maximum(x, 0))


def max_pool_mask_reference(x, k, s, p, out_h, out_w):
    """PoolingLayer::Forward_cpu, MAX with a mask top: windows clipped to the input, the first strict
    maximum in scan order, its index h * W + w."""
    n, c, height, width = x.shape
    top = np.full((n, c, out_h, out_w), -np.float32(3.4028235e38), np.float32)
    mask = np.full((n, c, out_h, out_w), -1, np.float32)
    for ph in range(out_h):
        for pw in range(out_w):
            hs, ws = ph * s - p, pw * s - p
            he, we = min(hs + k, height), min(ws + k, width)
            hs, ws = max(hs, 0), max(ws, 0)
            for h in range(hs, he):
                for w in range(ws, we):
                    better = x[:, :, h, w] > top[:, :, ph, pw]
                    top[:, :, ph, pw] = np.where(better, x[:, :, h, w], top[:, :, ph, pw])
                    mask[:, :, ph, pw] = np.where(better, h * width + w, mask[:, :, ph, pw])
    return top, mask


@pytest.mark.parametrize("k, s, p", [(3, 2, 1), (2, 2, 0), (3, 3, 0)], ids=["pad", "k2s2", "ceil-partial"])
def test_max_pooling_mask_top(tmp_path, k, s, p):
    graph = load_net(_net(tmp_path, 'input: "x" input_shape { dim: 2 dim: 3 dim: 7 dim: 10 }\n'
                                    f'layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" top: "mask" '
                                    f'pooling_param {{ pool: MAX kernel_size: {k} stride: {s} pad: {p} }} }}\n'))
    out_h, out_w = graph.values["y"].shape[2:]
    x = np.random.default_rng(19).standard_normal((2, 3, 7, 10)).astype(np.float32)
    top, mask = max_pool_mask_reference(x, k, s, p, out_h, out_w)
    for got in _both(graph, {"x": x}):
        assert np.array_equal(got["y"], top) and np.array_equal(got["mask"], mask)
