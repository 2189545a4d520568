"""BatchNorm (Caffe's stored scale factor), Scale and Bias (one or two bottoms), LRN (both regions),
MVN and Softmax."""
from __future__ import annotations

import numpy as np

from ..registry import LayerImpl, register_layer
from ._common import broadcast_shape, canonical, f32, shape_of, nn_specs


def batch_norm_affine(layer) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with y = a*x + b per channel, from Caffe's stored sums [mean*s, var*s, s] (TEST phase)."""
    mean, var, s = (np.asarray(b, dtype=np.float64).reshape(-1) for b in layer.blobs[:3])
    factor = 0.0 if s[0] == 0 else 1.0 / s[0]
    a = 1.0 / np.sqrt(var * factor + layer.proto.batch_norm_param.eps)
    return a, -mean * factor * a


def global_stats(layer) -> bool:
    p = layer.proto.batch_norm_param
    return p.use_global_stats if p.HasField("use_global_stats") else True


@register_layer("BatchNorm")
class BatchNorm(LayerImpl):
    statistics = True

    def affine(self, layer):
        return batch_norm_affine(layer) if global_stats(layer) and layer.blobs else None

    def torch(self, layer, graph):
        shape = shape_of(layer, graph)
        p = layer.proto.batch_norm_param
        channels = shape[1] if len(shape) > 1 else 1
        use = p.use_global_stats if p.HasField("use_global_stats") else None
        return nn_specs().BatchNorm(channels, p.eps, p.moving_average_fraction, use), ["mean", "variance", "scale_factor"]

    def onnx(self, layer, ctx):
        if not global_stats(layer):  # Caffe normalises with this batch's own statistics
            x, n = layer.bottoms[0], len(shape_of(layer, ctx))
            axes = ctx.ints([d for d in range(n) if d != 1], "axes")
            centred = ctx.node("Sub", [x, ctx.node("ReduceMean", [x, axes], keepdims=1)[0]])[0]
            var = ctx.node("ReduceMean", [ctx.node("Mul", [centred, centred])[0], axes], keepdims=1)[0]
            eps = ctx.const(np.float32(layer.proto.batch_norm_param.eps), "eps")
            std = ctx.node("Sqrt", [ctx.node("Add", [var, eps])[0]])[0]
            ctx.node("Div", [centred, std], [layer.tops[0]])
            return
        a, b = batch_norm_affine(layer)
        emit_channel_affine(ctx, layer.bottoms[0], layer.tops[0], a, b, len(shape_of(layer, ctx)))


def emit_channel_affine(ctx, x: str, y: str, a, b, n_axes: int, axis: int = 1) -> None:
    view = broadcast_shape(n_axes, axis, [len(np.asarray(a).reshape(-1))])[1:] if axis == 1 else None
    if axis == 1 and n_axes >= 3:
        scale = ctx.const(f32(a), "scale")
        bias = ctx.const(f32(b), "bias")
        c = len(np.asarray(a).reshape(-1))
        mean = ctx.const(np.zeros(c, np.float32), "zero_mean")
        var = ctx.const(np.ones(c, np.float32), "unit_var")
        ctx.node("BatchNormalization", [x, scale, bias, mean, var], [y], epsilon=0.0)
        return
    shape = view if view is not None else [-1]
    m = ctx.node("Mul", [x, ctx.const(f32(a).reshape(shape), "scale")])[0]
    ctx.node("Add", [m, ctx.const(f32(b).reshape(shape), "bias")], [y])


def scale_geometry(layer, graph, param) -> tuple[int, list[int]]:
    shape = shape_of(layer, graph)
    if len(layer.bottoms) > 1:
        return canonical(param.axis, len(shape)), list(shape_of(layer, graph, 1))
    axis = canonical(param.axis, len(shape))
    end = len(shape) if param.num_axes == -1 else axis + param.num_axes
    return axis, list(shape[axis:end])


def operand_view(n: int, axis: int, shape) -> list[int]:
    """The ONNX Reshape target that broadcasts an operand blob of ``shape`` from ``axis`` of an n-axes
    input: from axis 0 the operand holds the batch, which stays whatever it is at run time (0: copy)."""
    return broadcast_shape(n, axis, shape)[1:] if axis >= 1 else [0] + broadcast_shape(n, axis, shape)[1:]


def emit_scale(ctx, layer, axis, operand_shape, weight: str | None, bias) -> None:
    n = len(shape_of(layer, ctx))
    view = broadcast_shape(n, axis, operand_shape)[1:] if axis >= 1 else broadcast_shape(n, axis, operand_shape)
    x, y = layer.bottoms[0], layer.tops[0]
    if weight is not None:
        w = ctx.node("Reshape", [weight, ctx.ints(operand_view(n, axis, operand_shape))])[0] \
            if weight in ctx.graph.values else weight
        x = ctx.node("Mul", [x, w], None if bias is not None else [y])[0]
    if bias is not None:
        ctx.node("Add", [x, ctx.const(f32(bias).reshape(view), "bias")], [y])


@register_layer("Scale")
class Scale(LayerImpl):
    def affine(self, layer):
        p = layer.proto.scale_param
        if len(layer.bottoms) != 1 or not layer.blobs or p.axis != 1 or p.num_axes != 1:
            return None
        a = np.asarray(layer.blobs[0], dtype=np.float64).reshape(-1)
        b = np.asarray(layer.blobs[1], dtype=np.float64).reshape(-1) if p.bias_term else np.zeros_like(a)
        return a, b

    def torch(self, layer, graph):
        p = layer.proto.scale_param
        axis, shape = scale_geometry(layer, graph, p)
        own = len(layer.bottoms) == 1
        return nn_specs().Scale(axis, shape, own, p.bias_term), (["weight"] if own else []) + (["bias"] if p.bias_term else [])

    def onnx(self, layer, ctx):
        p = layer.proto.scale_param
        axis, shape = scale_geometry(layer, ctx.graph, p)
        n = len(shape_of(layer, ctx))
        view = broadcast_shape(n, axis, shape)[1:] if axis >= 1 else broadcast_shape(n, axis, shape)
        if len(layer.bottoms) > 1:
            weight = layer.bottoms[1]
            bias = layer.blobs[0] if p.bias_term else None
        else:
            weight = ctx.const(f32(layer.blobs[0]).reshape(view), "gamma")
            bias = layer.blobs[1] if p.bias_term else None
        emit_scale(ctx, layer, axis, shape, weight, bias)


@register_layer("Bias")
class Bias(LayerImpl):
    def torch(self, layer, graph):
        axis, shape = scale_geometry(layer, graph, layer.proto.bias_param)
        own = len(layer.bottoms) == 1
        return nn_specs().Bias(axis, shape, own), (["bias"] if own else [])

    def onnx(self, layer, ctx):
        axis, shape = scale_geometry(layer, ctx.graph, layer.proto.bias_param)
        n = len(shape_of(layer, ctx))
        view = broadcast_shape(n, axis, shape)[1:] if axis >= 1 else broadcast_shape(n, axis, shape)
        if len(layer.bottoms) > 1:
            b = ctx.node("Reshape", [layer.bottoms[1], ctx.ints(operand_view(n, axis, shape))])[0]
            ctx.node("Add", [layer.bottoms[0], b], [layer.tops[0]])
        else:
            ctx.node("Add", [layer.bottoms[0], ctx.const(f32(layer.blobs[0]).reshape(view), "bias")], [layer.tops[0]])


@register_layer("LRN")
class LRN(LayerImpl):
    deterministic = True

    def _args(self, layer):
        p = layer.proto.lrn_param
        region = "ACROSS_CHANNELS" if p.norm_region == 0 else "WITHIN_CHANNEL"
        return dict(size=p.local_size, alpha=p.alpha, beta=p.beta, k=p.k, region=region)

    def torch(self, layer, graph):
        return nn_specs().LRN(**self._args(layer)), []

    def onnx(self, layer, ctx):
        a = self._args(layer)
        x, y = layer.bottoms[0], layer.tops[0]
        n = a["size"]
        pre = (n - 1) // 2
        sq = ctx.node("Mul", [x, x])[0]
        if a["region"] == "ACROSS_CHANNELS":
            # The channel-window mean as a 2-D average pool over (C, H*W), then the power by square roots:
            # measured 3-8x faster in onnxruntime (CPU) than its own LRN kernel, which took half of
            # GoogLeNet's time (benchmarks/inference.py).
            shape = shape_of(layer, ctx)
            planes = ctx.node("Reshape", [sq, ctx.ints([0, 1, shape[1], -1])])[0]
            avg = ctx.node("AveragePool", [planes], kernel_shape=[n, 1], strides=[1, 1],
                           pads=[pre, 0, n - 1 - pre, 0], count_include_pad=1)[0]
            avg = ctx.node("Reshape", [avg, ctx.ints([0] + list(shape[1:]))])[0]
            k = a["k"]
        else:
            avg = ctx.node("AveragePool", [sq], kernel_shape=[n, n], strides=[1, 1],
                           pads=[pre, pre, n - 1 - pre, n - 1 - pre], count_include_pad=1)[0]
            k = 1.0
        base = ctx.node("Add", [ctx.node("Mul", [avg, ctx.const(np.float32(a["alpha"]), "alpha")])[0],
                                ctx.const(np.float32(k), "k")])[0]
        emit_divide_by_power(ctx, x, base, a["beta"], y)


def emit_divide_by_power(ctx, x: str, base: str, beta: float, y: str) -> None:
    """y = x * base^-beta, by square roots for Caffe's usual betas (Pow is slow in onnxruntime)."""
    if beta == 0.75:
        r1 = ctx.node("Sqrt", [base])[0]
        denom = ctx.node("Mul", [r1, ctx.node("Sqrt", [r1])[0]])[0]
    elif beta == 0.5:
        denom = ctx.node("Sqrt", [base])[0]
    elif beta == 1.0:
        denom = base
    else:
        ctx.node("Mul", [x, ctx.node("Pow", [base, ctx.const(np.float32(-beta), "neg_beta")])[0]], [y])
        return
    ctx.node("Div", [x, denom], [y])


@register_layer("MVN")
class MVN(LayerImpl):
    deterministic = True

    def _args(self, layer):
        p = layer.proto.mvn_param
        return dict(normalize_variance=p.normalize_variance, across_channels=p.across_channels, eps=p.eps)

    def torch(self, layer, graph):
        return nn_specs().MVN(**self._args(layer)), []

    def onnx(self, layer, ctx):
        a = self._args(layer)
        shape = shape_of(layer, ctx)
        axes = [1, 2, 3] if a["across_channels"] else [2, 3]
        x, y = layer.bottoms[0], layer.tops[0]
        if len(shape) < 4:  # Caffe's MVN works on (num, channels, height, width); missing axes are 1
            x = ctx.node("Reshape", [x, ctx.ints([-1, *shape[1:]] + [1] * (4 - len(shape)))])[0]
        mean = ctx.node("ReduceMean", [x, ctx.ints(axes, "axes")], keepdims=1)[0]
        centred = ctx.node("Sub", [x, mean], None if a["normalize_variance"] else [y])[0]
        if a["normalize_variance"]:
            var = ctx.node("ReduceMean", [ctx.node("Mul", [centred, centred])[0], ctx.ints(axes, "axes")], keepdims=1)[0]
            std = ctx.node("Add", [ctx.node("Sqrt", [var])[0], ctx.const(np.float32(a["eps"]), "eps")])[0]
            ctx.node("Div", [centred, std], [y])


@register_layer("Softmax")
class Softmax(LayerImpl):
    def torch(self, layer, graph):
        return nn_specs().Softmax(canonical(layer.proto.softmax_param.axis, len(shape_of(layer, graph)))), []

    def onnx(self, layer, ctx):
        axis = canonical(layer.proto.softmax_param.axis, len(shape_of(layer, ctx)))
        ctx.node("Softmax", [layer.bottoms[0]], [layer.tops[0]], axis=axis)
