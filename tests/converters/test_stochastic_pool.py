"""STOCHASTIC pooling at test time. Caffe implements it only on the GPU (StoPoolForwardTest in
pooling_layer.cu; the CPU path is NOT_IMPLEMENTED), so no CPU-Caffe fixture can hold it: the reference
here is that kernel's loop, transcribed: windows start at o*stride (Caffe refuses padding for
STOCHASTIC) and are clipped to the input; out = sum(x^2) / (FLT_MIN + sum(x)), accumulated in float32. (A window of mixed signs
summing to 0 divides by 0 or by FLT_MIN depending on the order of the additions: not a case to pin.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from converters import to_onnx, to_pytorch
from prototxt import load_net
from tests.converters.common import ort_session

FLT_MIN = np.float32(1.17549435e-38)


def test_padding_is_refused_as_caffe_does(tmp_path):
    """PoolingLayer::LayerSetUp: 'Padding implemented only for average and max pooling.'"""
    path = tmp_path / "net.prototxt"
    path.write_text('name: "p"\ninput: "data"\ninput_shape { dim: 1 dim: 1 dim: 7 dim: 7 }\n'
                    'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
                    '  pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 pad: 1 } }\n')
    with pytest.raises(Exception) as info:
        load_net(path).require_shapes()
    assert "only for MAX and AVE" in str(info.value)


def caffe_gpu_test_forward(x: np.ndarray, kernel, stride, out_size) -> np.ndarray:
    n, c, height, width = x.shape
    top = np.zeros((n, c, *out_size), np.float32)
    for ph in range(out_size[0]):
        for pw in range(out_size[1]):
            hstart, wstart = ph * stride[0], pw * stride[1]
            hend, wend = min(hstart + kernel[0], height), min(wstart + kernel[1], width)
            cumsum = np.full((n, c), FLT_MIN, np.float32)
            cumvalues = np.zeros((n, c), np.float32)
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    v = x[:, :, h, w]
                    cumsum = cumsum + v
                    cumvalues = cumvalues + v * v
            top[:, :, ph, pw] = cumvalues / cumsum
    return top


CASES = {
    "k3s2": "kernel_size: 3 stride: 2",                       # CEIL: the last window hangs over the edge
    "k2s2": "kernel_size: 2 stride: 2",
    "k4s3": "kernel_size: 4 stride: 3",
    "rect": "kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 3",
}


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_stochastic_test_time_is_caffes_gpu_kernel(tmp_path, case, backend):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "p"\ninput: "data"\ninput_shape { dim: 2 dim: 3 dim: 7 dim: 8 }\n'
                    'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
                    f'  pooling_param {{ pool: STOCHASTIC {CASES[case]} }} }}\n')
    graph = load_net(path)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 2, (2, 3, 7, 8)).astype(np.float32)  # post-ReLU activations, as it is used
    x[0, 0, :3, :3] = 0          # an all-zero window: 0 / FLT_MIN = 0
    x[1, 2] *= -1                # negative sums are divided as they are
    layer = graph.layer("pool")
    p = layer.proto.pooling_param
    kernel = (p.kernel_h or p.kernel_size, p.kernel_w or p.kernel_size)
    stride = (p.stride_h or p.stride, p.stride_w or p.stride)
    out_size = graph.values[layer.tops[0]].shape[2:]
    want = caffe_gpu_test_forward(x, kernel, stride, out_size)
    if backend == "torch":
        with torch.no_grad():
            got = to_pytorch(graph)(torch.from_numpy(x)).numpy()
    else:
        got = ort_session(to_onnx(graph)).run(None, {"data": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
