"""Pooling (MAX, AVE, STOCHASTIC at test time; CEIL/FLOOR; Caffe's padding rules) and SPP."""
from __future__ import annotations

import math

import numpy as np

from prototxt import caffe_pb2
from prototxt.shapes import pool_geometry

from ..registry import LayerImpl, register_layer
from ._common import nn_specs, shape_of

_METHODS = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}


def pool_pads(size: int, kernel: int, stride: int, pad: int, out: int) -> tuple[int, int]:
    """(right pad, crop) that make a floor-mode pooling over the explicitly padded input give `out`."""
    extra = (out - 1) * stride + kernel - size - pad
    return (extra, 0) if extra >= 0 else (0, -extra)


def pool_args(method: str, kernel, stride, pad, in_size, out_size) -> dict:
    """The arguments of converters.nn.Pooling, and of the ONNX nodes: the window geometry with the right
    pad and the crop (``pool_pads``) per spatial axis."""
    pads = [pool_pads(in_size[i], kernel[i], stride[i], pad[i], out_size[i]) for i in range(2)]
    return dict(method=method, kernel=list(kernel), stride=list(stride), pad=list(pad), in_size=list(in_size),
                out_size=list(out_size), right=[p[0] for p in pads], crop=[p[1] for p in pads])


def _args(layer, graph) -> dict:
    shape = shape_of(layer, graph)
    g = pool_geometry(layer.proto, shape)
    return pool_args(_METHODS[layer.proto.pooling_param.pool], g.kernel, g.stride, g.pad, shape[2:], g.out)


def ave_scale(a: dict) -> np.ndarray:
    """kernel area / Caffe's AVE divisor per output position (the window clipped to [-pad, size+pad))."""
    rows = []
    for i in range(2):
        k, s, p, size, out = a["kernel"][i], a["stride"][i], a["pad"][i], a["in_size"][i], a["out_size"][i]
        rows.append(np.array([min(o * s - p + k, size + p) - (o * s - p) for o in range(out)], dtype=np.float64))
    return (a["kernel"][0] * a["kernel"][1] / (rows[0][:, None] * rows[1][None, :])).astype(np.float32)


FLT_MIN = np.float32(1.17549435e-38)


def emit_stochastic(ctx, x: str, out: str, a: dict) -> None:
    """STOCHASTIC at test time (Caffe's GPU kernel): sum(x^2) / (FLT_MIN + sum(x)) over windows that
    start at o*stride (no padding: Caffe refuses it here), clipped to the input."""
    k, area = a["kernel"], np.float32(a["kernel"][0] * a["kernel"][1])
    right = [max(0, (a["out_size"][i] - 1) * a["stride"][i] + k[i] - a["in_size"][i]) for i in range(2)]
    if any(right):
        x = ctx.node("Pad", [x, ctx.ints([0, 0, 0, 0, 0, 0, right[0], right[1]])])[0]
    attrs = dict(kernel_shape=k, strides=a["stride"])
    total = ctx.const(area, "area")
    num = ctx.node("Mul", [ctx.node("AveragePool", [ctx.node("Mul", [x, x])[0]], **attrs)[0], total])[0]
    den = ctx.node("Mul", [ctx.node("AveragePool", [x], **attrs)[0], total])[0]
    den = ctx.node("Add", [den, ctx.const(FLT_MIN, "flt_min")])[0]
    ratio = ctx.node("Div", [num, den])[0]
    ctx.node("Slice", [ratio, ctx.ints([0, 0]), ctx.ints(a["out_size"]), ctx.ints([2, 3])], [out])


def emit_pool(ctx, x: str, out: str, a: dict) -> None:
    """ONNX nodes for one Caffe pooling window set (explicit pads, floor mode, AVE divisor map)."""
    if a["method"] == "STOCHASTIC":
        emit_stochastic(ctx, x, out, a)
        return
    if any(a["crop"]):
        ends = [a["in_size"][i] - a["crop"][i] for i in range(2)]
        x = ctx.node("Slice", [x, ctx.ints([0, 0]), ctx.ints(ends), ctx.ints([2, 3])])[0]
    onnx_pads = [a["pad"][0], a["pad"][1], a["right"][0], a["right"][1]]
    attrs = dict(kernel_shape=a["kernel"], strides=a["stride"])
    if a["method"] == "MAX":
        ctx.node("MaxPool", [x], [out], pads=onnx_pads, **attrs)
        return
    if any(onnx_pads):
        x = ctx.node("Pad", [x, ctx.ints([0, 0, onnx_pads[0], onnx_pads[1], 0, 0, onnx_pads[2], onnx_pads[3]])])[0]
    if a["method"] == "AVE":
        scale = ave_scale(a)
        if np.all(scale == 1.0):
            ctx.node("AveragePool", [x], [out], **attrs)
        else:
            avg = ctx.node("AveragePool", [x], **attrs)[0]
            ctx.node("Mul", [avg, ctx.const(scale, "divisor")], [out])
        return
    raise ValueError(f"unknown pooling method {a['method']}")


def _mask_top(layer, a: dict) -> bool:
    """Whether the layer has Caffe's second top (MAX only: the argmax mask)."""
    if len(layer.tops) < 2:
        return False
    if a["method"] != "MAX":
        raise ValueError(f"layer '{layer.name}': only MAX pooling has a second (mask) top; {a['method']} has one top")
    return True


def emit_pool_mask(ctx, x: str, tops, a: dict) -> None:
    """MAX pooling and its mask: ONNX MaxPool's indices count over the whole (sliced) tensor; Caffe's
    mask is h*W + w within the channel plane of the input."""
    h, w = a["in_size"]
    pads = [pool_pads(a["in_size"][i], a["kernel"][i], a["stride"][i], a["pad"][i], a["out_size"][i]) for i in range(2)]
    hs, ws = h - pads[0][1], w - pads[1][1]
    if hs != h or ws != w:
        x = ctx.node("Slice", [x, ctx.ints([0, 0]), ctx.ints([hs, ws]), ctx.ints([2, 3])])[0]
    _, index = ctx.node("MaxPool", [x], [tops[0], ctx.tmp("indices")], kernel_shape=a["kernel"], strides=a["stride"],
                        pads=[a["pad"][0], a["pad"][1], pads[0][0], pads[1][0]])
    plane = ctx.node("Mod", [index, ctx.ints([hs * ws], "plane")])[0]
    if ws != w:
        row = ctx.node("Div", [plane, ctx.ints([ws], "width")])[0]
        col = ctx.node("Mod", [plane, ctx.ints([ws], "width")])[0]
        plane = ctx.node("Add", [ctx.node("Mul", [row, ctx.ints([w], "in_width")])[0], col])[0]
    ctx.node("Cast", [plane], [tops[1]], to=1)


@register_layer("Pooling")
class Pooling(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        a = _args(layer, graph)
        if _mask_top(layer, a):
            return nn_specs().MaxPoolingWithMask(**a), []
        if layer.proto.pooling_param.global_pooling and a["method"] != "STOCHASTIC":
            return nn_specs().GlobalPooling(a["method"]), []
        return nn_specs().Pooling(**a), []

    def onnx(self, layer, ctx):
        a = _args(layer, ctx.graph)
        if _mask_top(layer, a):
            emit_pool_mask(ctx, layer.bottoms[0], layer.tops, a)
            return
        if layer.proto.pooling_param.global_pooling and a["method"] != "STOCHASTIC":
            op = "GlobalMaxPool" if a["method"] == "MAX" else "GlobalAveragePool"
            ctx.node(op, [layer.bottoms[0]], [layer.tops[0]])
            return
        emit_pool(ctx, layer.bottoms[0], layer.tops[0], a)


def spp_levels(layer, graph) -> list[dict]:
    n, c, h, w = shape_of(layer, graph)
    method = _METHODS[layer.proto.spp_param.pool]
    levels = []
    for i in range(layer.proto.spp_param.pyramid_height):
        bins = 2 ** i
        kh, kw = math.ceil(h / bins), math.ceil(w / bins)
        ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        param = caffe_pb2.LayerParameter(name=layer.name, type="Pooling")
        p = param.pooling_param
        p.pool, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w = (
            layer.proto.spp_param.pool, kh, kw, kh, kw, ph, pw)
        if layer.proto.spp_param.pyramid_height == 1:
            p.ClearField("kernel_h"), p.ClearField("kernel_w"), p.ClearField("stride_h"), p.ClearField("stride_w")
            p.ClearField("pad_h"), p.ClearField("pad_w")
            p.global_pooling = True
        g = pool_geometry(param, (n, c, h, w))
        levels.append(pool_args(method, g.kernel, g.stride, g.pad, (h, w), g.out))
    return levels


@register_layer("SPP")
class SPP(LayerImpl):
    def torch(self, layer, graph):
        return nn_specs().SPP(spp_levels(layer, graph)), []

    def onnx(self, layer, ctx):
        levels = spp_levels(layer, ctx.graph)
        if len(levels) == 1:
            emit_pool(ctx, layer.bottoms[0], layer.tops[0], levels[0])
            return
        flat = []
        for i, a in enumerate(levels):
            pooled = ctx.tmp(f"level{i}")
            emit_pool(ctx, layer.bottoms[0], pooled, a)
            flat.append(ctx.node("Flatten", [pooled], axis=1)[0])
        ctx.node("Concat", flat, [layer.tops[0]], axis=1)
