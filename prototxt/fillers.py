"""Caffe's fillers (filler.hpp): the initial values of a layer's blobs when no weights are stored.

Caffe keeps a net layer that the .caffemodel does not mention at its filler's values; the
deterministic fillers (constant, bilinear) therefore matter for conversion, the random ones for
training a new layer (their draws cannot match Caffe's RNG stream, only its distribution).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import caffe_pb2
from .errors import GraphError

FillerParameter = caffe_pb2.FillerParameter
FILLERS = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")  # filler.hpp


def _fmt(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _fans(shape) -> tuple[int, int]:
    count = math.prod(shape) if shape else 1
    fan_in = (count // shape[0] if shape[0] else 0) if shape else 1  # 0: refused by the filler that needs it
    fan_out = (count // shape[1] if shape[1] else 0) if len(shape) > 1 else count
    return fan_in, fan_out


def _n(filler: FillerParameter, shape) -> float:
    fan_in, fan_out = _fans(shape)
    if filler.variance_norm == FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_out if filler.variance_norm == FillerParameter.FAN_OUT else fan_in)


def fill(filler: Optional[FillerParameter], shape, rng: np.random.Generator) -> np.ndarray:
    """A float32 array of ``shape`` drawn as Caffe's filler of that type would (default: constant 0)."""
    shape = tuple(int(d) for d in shape)
    f = filler if filler is not None else FillerParameter()
    kind = f.type
    if kind == "constant":
        out = np.full(shape, f.value, dtype=np.float64)
    elif kind == "uniform":
        _require(math.isfinite(f.min) and math.isfinite(f.max) and f.min <= f.max,
                 f"the uniform filler needs finite min <= max (Caffe: CHECK_LE(a, b)), not min {f.min} max {f.max}")
        out = rng.uniform(f.min, f.max, shape)
    elif kind == "gaussian":
        _require(math.isfinite(f.mean) and math.isfinite(f.std) and f.std > 0,
                 f"the gaussian filler needs a finite mean and a positive std (Caffe: CHECK_GT(sigma, 0)), "
                 f"not mean {f.mean} std {f.std}")
        out = rng.normal(f.mean, f.std, shape)
    elif kind in ("xavier", "msra"):
        n = _n(f, shape)
        _require(n > 0, f"the {kind} filler needs a blob whose fan-in and fan-out are not 0, not {_fmt(shape)}")
        out = (rng.uniform(-math.sqrt(3.0 / n), math.sqrt(3.0 / n), shape) if kind == "xavier"
               else rng.normal(0.0, math.sqrt(2.0 / n), shape))
    elif kind == "positive_unitball":
        _require(len(shape) > 0 and shape[0] > 0, f"the positive_unitball filler needs a blob with a first axis "
                                                  f"(Caffe divides by it), not {_fmt(shape)}")
        out = rng.uniform(0, 1, shape)
        flat = out.reshape(shape[0], -1)
        out = (flat / flat.sum(axis=1, keepdims=True)).reshape(shape)
    elif kind == "bilinear":
        if len(shape) != 4:
            raise GraphError(f"the bilinear filler needs a 4-D blob (Caffe: 'Blob must be 4 dim.'), not {_fmt(shape)}")
        if shape[2] != shape[3]:
            raise GraphError(f"the bilinear filler needs a square kernel (Caffe: 'Filter must be square'), "
                             f"not {_fmt(shape)}")
        k = shape[3]
        factor = math.ceil(k / 2.0)
        center = (2 * factor - 1 - factor % 2) / (2.0 * factor)
        x = np.arange(k)
        w1 = 1 - np.abs(x / factor - center)
        out = np.broadcast_to(w1[:, None] * w1[None, :], shape).copy()
    else:
        raise GraphError(f"unknown filler type '{kind}'; Caffe's fillers are {', '.join(FILLERS)}")
    return out.astype(np.float32)


def _require(ok: bool, message: str) -> None:
    """Caffe CHECKs its filler parameters (numpy would raise a bare ValueError, or draw NaNs)."""
    if not ok:
        raise GraphError(message)


def layer_fillers(layer: caffe_pb2.LayerParameter, count: int) -> list[Optional[FillerParameter]]:
    """The filler of each of a layer's ``count`` blobs, as each layer type's LayerSetUp picks them."""
    t = layer.type
    def has(name):
        return layer.HasField(name)
    if t in ("Convolution", "Deconvolution") and has("convolution_param"):
        p = layer.convolution_param
        return [p.weight_filler, p.bias_filler][:count]
    if t == "InnerProduct":
        p = layer.inner_product_param
        return [p.weight_filler, p.bias_filler][:count]
    if t == "Embed":
        p = layer.embed_param
        return [p.weight_filler, p.bias_filler][:count]
    if t in ("LSTM", "RNN"):
        p = layer.recurrent_param
        fillers = [p.weight_filler] * count
        fillers[1] = p.bias_filler
        if t == "RNN" and count >= 1:
            fillers[-1] = p.bias_filler
        return fillers
    if t == "Scale":
        p = layer.scale_param
        one = FillerParameter(type="constant", value=1.0)
        return [p.filler if p.HasField("filler") else one, p.bias_filler][:count] if len(layer.bottom) == 1 \
            else [p.bias_filler][:count]
    if t == "Bias":
        return [layer.bias_param.filler][:count]
    if t == "PReLU":
        p = layer.prelu_param
        return [p.filler if p.HasField("filler") else FillerParameter(type="constant", value=0.25)]
    return [None] * count
