"""Caffe's shape rules, one function per layer type (the arithmetic of each layer's Reshape).

A rule takes the layer's LayerParameter and its bottom shapes and returns a ``ShapeResult``: the top
shapes, the shapes of the layer's parameter blobs, and its multiply-accumulates. The rules of the fork
types ``converters`` implements are in ``fork_shapes``; rules for further (custom) types are added with
``register_shape_rule`` (``converters.register_layer(..., shape=...)`` does that for a user's layer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from . import caffe_pb2
from .errors import ShapeError

Shape = tuple[int, ...]
LayerParameter = caffe_pb2.LayerParameter


@dataclass
class ShapeResult:
    tops: list[Shape]
    params: list[Shape] = field(default_factory=list)
    macs: int = 0


Rule = Callable[[LayerParameter, list[Shape]], ShapeResult]
_RULES: dict[str, Rule] = {}

# Layer types that only exist in training nets or feed data; shapes still known for info.
DATA_TYPES = {"Data", "ImageData", "MemoryData", "HDF5Data", "WindowData", "DummyData", "Input",
              "AnnotatedData", "DenseImageData", "VideoData"}
LOSS_TYPES = {"SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss",
              "MultinomialLogisticLoss", "ContrastiveLoss", "Accuracy"}
# Layers that only train or measure (losses, metrics, Silence): a deploy net does without them.
TRAINING_ONLY_TYPES = LOSS_TYPES | {"Silence"}


class UnknownLayer(Exception):
    """Raised by a rule registered for a type it serves only in part (a ``Python`` layer naming code
    nobody implemented): the layer counts as of an unknown type."""


def register_shape_rule(*types: str, replace: bool = False) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for t in types:
            if t in _RULES and not replace and _RULES[t] is not fn:
                raise ValueError(f"a shape rule for layer type '{t}' is already registered")
            _RULES[t] = fn
        return fn
    return deco


def shape_rule(layer_type: str) -> Optional[Rule]:
    return _RULES.get(layer_type)


def known_types() -> list[str]:
    return sorted(_RULES)


def infer(layer: LayerParameter, bottoms: list[Shape]) -> ShapeResult:
    rule = _RULES[layer.type]
    try:
        result = rule(layer, bottoms)
    except ShapeError:
        raise
    except (IndexError, ValueError, ZeroDivisionError) as exc:
        raise ShapeError(f"layer '{layer.name}' ({layer.type}): bottoms {_fmt(bottoms)} do not fit its "
                         f"parameters ({exc})") from None
    for s in result.tops:
        if any(d < 0 for d in s):
            raise ShapeError(f"layer '{layer.name}' ({layer.type}): computes a negative output shape {s} "
                             f"from bottoms {_fmt(bottoms)}; check kernel, pad and stride against the input size")
    return result


def _fmt(shapes: Sequence[Shape]) -> str:
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shapes)


def fail(layer: LayerParameter, message: str) -> None:
    raise ShapeError(f"layer '{layer.name}' ({layer.type}): {message}")


def canonical_axis(layer: LayerParameter, axis: int, num_axes: int, extra: int = 0) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    n = num_axes + extra
    if not -n <= axis < n:
        fail(layer, f"axis {axis} is out of range for a blob with {num_axes} axes")
    return axis + n if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: Optional[int] = None) -> int:
    return math.prod(shape[start:end])


def _cdiv(a: int, b: int) -> int:
    """C++ integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def same_shape(layer: LayerParameter, bottoms: list[Shape]) -> ShapeResult:
    return ShapeResult([bottoms[i] if i < len(bottoms) else bottoms[0] for i in range(len(layer.top))])


register_shape_rule("ReLU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold", "Clip",
                    "Swish", "ELU", "Dropout", "LRN", "Softmax")(same_shape)


@register_shape_rule("MVN")
def _mvn(layer, bottoms):
    """Caffe reshapes MVN's top with the legacy num/channels/height/width: 4 axes, missing ones 1."""
    x = tuple(bottoms[0])
    if len(x) > 4:
        fail(layer, f"MVN takes at most 4 axes (num, channels, height, width), got {_fmt([x])}")
    return ShapeResult([x + (1,) * (4 - len(x))])


@register_shape_rule("Split")
def _split(layer, bottoms):
    return ShapeResult([bottoms[0]] * len(layer.top))


@register_shape_rule("Silence", "HDF5Output")
def _no_tops(layer, bottoms):
    return ShapeResult([])


# -- convolution family -----------------------------------------------------------------------

@dataclass
class ConvGeometry:
    axis: int
    channels: int
    kernel: list[int]
    stride: list[int]
    pad: list[int]
    dilation: list[int]
    group: int
    num_output: int
    bias: bool


def _per_axis(layer, values: Sequence[int], h: Optional[int], w: Optional[int], n: int, default: int,
              what: str) -> list[int]:
    if h is not None or w is not None:
        if n != 2:
            fail(layer, f"{what}_h/{what}_w can only be used for 2D convolution")
        if values:
            fail(layer, f"give either {what} or {what}_h/{what}_w, not both")
        return [h or 0, w or 0]
    if not values:
        return [default] * n
    if len(values) == 1:
        return [values[0]] * n
    if len(values) != n:
        fail(layer, f"{what} has {len(values)} values but the convolution has {n} spatial axes")
    return list(values)


def conv_geometry(layer: LayerParameter, bottom: Shape, filters: bool = True) -> ConvGeometry:
    """Caffe's BaseConvolutionLayer geometry; ``filters=False`` for Im2col, which has no num_output/group."""
    p = layer.convolution_param
    axis = canonical_axis(layer, p.axis, len(bottom))
    n = len(bottom) - axis - 1
    if n < 1:
        fail(layer, f"needs spatial axes after axis {axis}, input is {_fmt([bottom])}")
    opt = lambda f: getattr(p, f) if p.HasField(f) else None  # noqa: E731
    if not p.kernel_size and not (p.HasField("kernel_h") or p.HasField("kernel_w")):
        fail(layer, "no kernel_size given")
    kernel = _per_axis(layer, list(p.kernel_size), opt("kernel_h"), opt("kernel_w"), n, 0, "kernel")
    stride = _per_axis(layer, list(p.stride), opt("stride_h"), opt("stride_w"), n, 1, "stride")
    pad = _per_axis(layer, list(p.pad), opt("pad_h"), opt("pad_w"), n, 0, "pad")
    dilation = list(p.dilation) or [1]
    dilation = dilation * n if len(dilation) == 1 else dilation
    if len(dilation) != n:
        fail(layer, f"dilation has {len(dilation)} values but the convolution has {n} spatial axes")
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        fail(layer, f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    channels, group = bottom[axis], p.group
    if not filters:
        return ConvGeometry(axis, channels, kernel, stride, pad, dilation, 1, 0, False)
    if group <= 0 or channels % group or p.num_output % group:
        fail(layer, f"group {group} must divide both the input channels ({channels}) and num_output "
                    f"({p.num_output})")
    if p.num_output <= 0:
        fail(layer, "num_output must be positive")
    return ConvGeometry(axis, channels, kernel, stride, pad, dilation, group, p.num_output, p.bias_term)


def _check_same_bottoms(layer, bottoms):
    for b in bottoms[1:]:
        if b != bottoms[0]:
            fail(layer, f"all bottoms must have the same shape, got {_fmt(bottoms)}")


@register_shape_rule("Convolution")
def _convolution(layer, bottoms):
    _check_same_bottoms(layer, bottoms)
    g = conv_geometry(layer, bottoms[0])
    spatial = []
    for i, size in enumerate(bottoms[0][g.axis + 1:]):
        extent = g.dilation[i] * (g.kernel[i] - 1) + 1
        out = _cdiv(size + 2 * g.pad[i] - extent, g.stride[i]) + 1
        if out <= 0:
            fail(layer, f"input {_fmt([bottoms[0]])} is smaller than the kernel extent {extent} "
                        f"(pad {g.pad[i]}) on spatial axis {i}")
        spatial.append(out)
    top = tuple(bottoms[0][:g.axis]) + (g.num_output,) + tuple(spatial)
    params = [(g.num_output, g.channels // g.group, *g.kernel)] + ([(g.num_output,)] if g.bias else [])
    macs = count(top) * (g.channels // g.group) * math.prod(g.kernel) * len(bottoms)
    return ShapeResult([top] * len(layer.top), params, macs)


@register_shape_rule("Deconvolution")
def _deconvolution(layer, bottoms):
    _check_same_bottoms(layer, bottoms)
    g = conv_geometry(layer, bottoms[0])
    spatial = []
    for i, size in enumerate(bottoms[0][g.axis + 1:]):
        extent = g.dilation[i] * (g.kernel[i] - 1) + 1
        spatial.append(g.stride[i] * (size - 1) + extent - 2 * g.pad[i])
    top = tuple(bottoms[0][:g.axis]) + (g.num_output,) + tuple(spatial)
    params = [(g.channels, g.num_output // g.group, *g.kernel)] + ([(g.num_output,)] if g.bias else [])
    macs = count(bottoms[0]) * (g.num_output // g.group) * math.prod(g.kernel) * len(bottoms)
    return ShapeResult([top] * len(layer.top), params, macs)


@register_shape_rule("Im2col")
def _im2col(layer, bottoms):
    g = conv_geometry(layer, bottoms[0], filters=False)
    spatial = [_cdiv(s + 2 * g.pad[i] - (g.dilation[i] * (g.kernel[i] - 1) + 1), g.stride[i]) + 1
               for i, s in enumerate(bottoms[0][g.axis + 1:])]
    top = tuple(bottoms[0][:g.axis]) + (g.channels * math.prod(g.kernel),) + tuple(spatial)
    return ShapeResult([top])


# -- pooling ----------------------------------------------------------------------------------

@dataclass
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    out: tuple[int, int]
    ceil: bool
    global_pooling: bool


def pool_geometry(layer: LayerParameter, bottom: Shape) -> PoolGeometry:
    p = layer.pooling_param
    if len(bottom) != 4:
        fail(layer, f"pooling needs a 4-axis input (N, C, H, W), got {_fmt([bottom])}")
    height, width = bottom[2], bottom[3]
    has = p.HasField
    # PoolingLayer::LayerSetUp's checks, in its words where they help
    for what in ("pad", "stride"):
        if has(f"{what}_h") != has(f"{what}_w") or (has(what) and has(f"{what}_h")):
            fail(layer, f"give {what}, or both {what}_h and {what}_w (Caffe: '{what} is {what} OR {what}_h and "
                        f"{what}_w are required')")
    pad = (p.pad_h, p.pad_w) if has("pad_h") else (p.pad, p.pad)
    stride = (p.stride_h, p.stride_w) if has("stride_h") else (p.stride, p.stride)
    if p.global_pooling:
        if has("kernel_size") or has("kernel_h") or has("kernel_w"):
            fail(layer, "global_pooling takes the whole input: give no kernel size")
        if pad != (0, 0) or stride != (1, 1):
            fail(layer, "global_pooling allows only pad 0 and stride 1")
        kernel = (height, width)
    else:
        if has("kernel_size"):  # Caffe's check is kernel_size XOR (kernel_h AND kernel_w)
            if has("kernel_h") and has("kernel_w"):
                fail(layer, "give either kernel_size or kernel_h/kernel_w, not both")
            kernel = (p.kernel_size, p.kernel_size)
        elif has("kernel_h") and has("kernel_w"):
            kernel = (p.kernel_h, p.kernel_w)
        else:
            fail(layer, "no kernel_size (or kernel_h and kernel_w) given")
    if min(kernel) <= 0 or min(stride) <= 0:
        fail(layer, f"kernel {kernel} and stride {stride} must be positive")
    if any(pad) and p.pool not in (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE):
        fail(layer, "padding is implemented only for MAX and AVE pooling (Caffe refuses it for STOCHASTIC)")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        fail(layer, f"pad {pad} must be smaller than the kernel {kernel}")
    ceil_mode = p.round_mode == caffe_pb2.PoolingParameter.CEIL
    if "ceil_mode" in p.DESCRIPTOR.fields_by_name and p.HasField("ceil_mode"):
        ceil_mode = p.ceil_mode  # the DenseNet/ResNeXt forks' switch: false means FLOOR
    rounding = math.ceil if ceil_mode else math.floor
    out = []
    for size, k, s, pd in zip((height, width), kernel, stride, pad):
        n = int(rounding((size + 2 * pd - k) / s)) + 1
        if any(pad) and (n - 1) * s >= size + pd:
            n -= 1  # the last window would start in the padding (checked on both axes once any pad is set)
        if n <= 0:
            fail(layer, f"input {height}x{width} is smaller than the kernel {kernel[0]}x{kernel[1]}")
        out.append(n)
    return PoolGeometry(kernel, stride, pad, (out[0], out[1]), ceil_mode, p.global_pooling)


@register_shape_rule("Pooling")
def _pooling(layer, bottoms):
    g = pool_geometry(layer, bottoms[0])
    top = (bottoms[0][0], bottoms[0][1]) + g.out
    return ShapeResult([top] * len(layer.top))


@register_shape_rule("SPP")
def _spp(layer, bottoms):
    n, c = bottoms[0][0], bottoms[0][1]
    h = layer.spp_param.pyramid_height
    if h < 1:
        fail(layer, "pyramid_height must be at least 1")
    if h == 1:
        return ShapeResult([(n, c, 1, 1)])
    for level in range(h):  # SPPLayer::GetPoolingParam; its pooling then needs pad < kernel
        bins = 2 ** level
        for size in bottoms[0][2:4]:
            kernel = -(-size // bins)
            pad = (kernel * bins - size + 1) // 2
            if pad >= kernel:
                fail(layer, f"pyramid level {level}: a {bottoms[0][2]}x{bottoms[0][3]} input is too small for "
                            f"{bins}x{bins} bins (pad {pad} >= kernel {kernel}); lower pyramid_height")
    return ShapeResult([(n, c * sum(4 ** i for i in range(h)))])


# -- fully connected, embedding, recurrent ----------------------------------------------------

@register_shape_rule("InnerProduct")
def _inner_product(layer, bottoms):
    p = layer.inner_product_param
    axis = canonical_axis(layer, p.axis, len(bottoms[0]))
    k = count(bottoms[0], axis)
    if p.num_output <= 0:
        fail(layer, "num_output must be positive")
    top = tuple(bottoms[0][:axis]) + (p.num_output,)
    weight = (k, p.num_output) if p.transpose else (p.num_output, k)
    params = [weight] + ([(p.num_output,)] if p.bias_term else [])
    return ShapeResult([top], params, count(bottoms[0], 0, axis) * k * p.num_output)


@register_shape_rule("Embed")
def _embed(layer, bottoms):
    p = layer.embed_param
    if p.input_dim <= 0 or p.num_output <= 0:
        fail(layer, "input_dim and num_output must be positive")
    params = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
    return ShapeResult([tuple(bottoms[0]) + (p.num_output,)], params)


@register_shape_rule("LSTM", "RNN")
def _recurrent(layer, bottoms):
    p = layer.recurrent_param
    x, cont = bottoms[0], bottoms[1]
    if len(x) < 2 or len(cont) != 2 or tuple(cont) != tuple(x[:2]):
        fail(layer, f"needs x (T, N, ...) and cont (T, N), got {_fmt(bottoms[:2])}")
    t, n, h = x[0], x[1], p.num_output
    k = count(x, 2)
    recurrent = 2 if layer.type == "LSTM" else 1  # hidden-state blobs: (h, c) or h
    exposed = recurrent if p.expose_hidden else 0  # their t=0 values are bottoms after x, cont (, static)
    static = count(bottoms[2], 1) if len(bottoms) > 2 + exposed else None
    for i, b in enumerate(bottoms[2 + (static is not None):], 2 + (static is not None)):
        if tuple(b) != (1, n, h):
            fail(layer, f"bottom {i} (a hidden state at t=0) must be (1, {n}, {h}), got {_fmt([b])}")
    if layer.type == "LSTM":
        params = [(4 * h, k), (4 * h,)] + ([(4 * h, static)] if static else []) + [(4 * h, h)]
        macs = t * n * 4 * h * (k + h) + (n * 4 * h * static if static else 0)
        tops = [(t, n, h)] + ([(1, n, h), (1, n, h)] if p.expose_hidden else [])
    else:
        params = [(h, k), (h,)] + ([(h, static)] if static else []) + [(h, h), (h, h), (h,)]
        macs = t * n * h * (k + 2 * h) + (n * h * static if static else 0)
        tops = [(t, n, h)] + ([(1, n, h)] if p.expose_hidden else [])
    return ShapeResult(tops[:len(layer.top)], params, macs)


@register_shape_rule("LSTMUnit")
def _lstm_unit(layer, bottoms):
    return ShapeResult([bottoms[0], bottoms[0]])


# -- normalisation and scaling ----------------------------------------------------------------

@register_shape_rule("BatchNorm")
def _batch_norm(layer, bottoms):
    c = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return ShapeResult([bottoms[0]], [(c,), (c,), (1,)])


@register_shape_rule("PReLU")
def _prelu(layer, bottoms):
    if len(bottoms[0]) < 2:
        fail(layer, "needs an input with at least 2 axes")
    param = () if layer.prelu_param.channel_shared else (bottoms[0][1],)
    return ShapeResult([bottoms[0]], [param])


def _scale_like(layer, bottoms, p, has_own_bias: bool) -> ShapeResult:
    x = bottoms[0]
    if len(bottoms) > 1:
        axis = canonical_axis(layer, p.axis, len(x))
        operand = tuple(bottoms[1])
        params = [operand] if has_own_bias else []
    else:
        axis = canonical_axis(layer, p.axis, len(x))
        end = len(x) if p.num_axes == -1 else axis + p.num_axes
        if p.num_axes < -1 or end > len(x):
            fail(layer, f"num_axes {p.num_axes} from axis {axis} does not fit a {len(x)}-axis input")
        operand = tuple(x[axis:end])
        params = [operand] + ([operand] if has_own_bias else [])
    if tuple(x[axis:axis + len(operand)]) != operand:
        fail(layer, f"operand shape {operand} does not match the input {_fmt([x])} from axis {axis}")
    return ShapeResult([x], params)


@register_shape_rule("Scale")
def _scale(layer, bottoms):
    return _scale_like(layer, bottoms, layer.scale_param, layer.scale_param.bias_term)


@register_shape_rule("Bias")
def _bias(layer, bottoms):
    result = _scale_like(layer, bottoms, layer.bias_param, False)
    if len(bottoms) == 1:
        result.params = result.params[:1]
    return result


@register_shape_rule("Eltwise")
def _eltwise(layer, bottoms):
    _check_same_bottoms(layer, bottoms)
    p = layer.eltwise_param
    if p.coeff and len(p.coeff) != len(bottoms):
        fail(layer, f"{len(p.coeff)} coeff values for {len(bottoms)} bottoms; give one per bottom")
    return ShapeResult([bottoms[0]])


# -- blob plumbing ----------------------------------------------------------------------------

@register_shape_rule("Concat")
def _concat(layer, bottoms):
    p = layer.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else canonical_axis(layer, p.axis, len(bottoms[0]))
    first = bottoms[0]
    if axis >= len(first):
        fail(layer, f"concat axis {axis} is out of range for {_fmt([first])}")
    for b in bottoms[1:]:
        if len(b) != len(first) or any(b[i] != first[i] for i in range(len(first)) if i != axis):
            fail(layer, f"bottoms {_fmt(bottoms)} differ outside the concat axis {axis}")
    top = list(first)
    top[axis] = sum(b[axis] for b in bottoms)
    return ShapeResult([tuple(top)])


@register_shape_rule("Slice")
def _slice(layer, bottoms):
    p = layer.slice_param
    x = bottoms[0]
    axis = p.slice_dim if p.HasField("slice_dim") else canonical_axis(layer, p.axis, len(x))
    dim, n = x[axis], len(layer.top)
    if p.slice_point:
        points = list(p.slice_point)
        if len(points) != n - 1:
            fail(layer, f"{len(points)} slice_point values for {n} tops; give one fewer than tops")
        bounds = [0] + points + [dim]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        if any(s <= 0 for s in sizes):
            fail(layer, f"slice_point {points} must increase strictly inside 0..{dim}")
    else:
        if dim % n:
            fail(layer, f"axis {axis} of size {dim} does not split evenly into {n} tops")
        sizes = [dim // n] * n
    return ShapeResult([tuple(x[:axis]) + (s,) + tuple(x[axis + 1:]) for s in sizes])


def _not_in_place(layer) -> None:
    if list(layer.top) == list(layer.bottom):
        fail(layer, f"{layer.type} cannot work in place (Caffe: 'does not allow in-place computation'); "
                    f"give its top another name")


@register_shape_rule("Flatten")
def _flatten(layer, bottoms):
    _not_in_place(layer)
    x = bottoms[0]
    start = canonical_axis(layer, layer.flatten_param.axis, len(x))
    end = canonical_axis(layer, layer.flatten_param.end_axis, len(x))
    return ShapeResult([tuple(x[:start]) + (count(x, start, end + 1),) + tuple(x[end + 1:])])


@register_shape_rule("Reshape")
def _reshape(layer, bottoms):
    _not_in_place(layer)
    p = layer.reshape_param
    x = bottoms[0]
    start = p.axis + len(x) + 1 if p.axis < 0 else p.axis
    if not 0 <= start <= len(x):
        fail(layer, f"axis {p.axis} is out of range for {_fmt([x])}")
    if p.num_axes < -1:
        fail(layer, "num_axes must be >= -1")
    end = len(x) if p.num_axes == -1 else start + p.num_axes
    if end > len(x):
        fail(layer, f"axis {p.axis} + num_axes {p.num_axes} is out of range for {_fmt([x])}")
    dims = list(p.shape.dim)
    if dims.count(-1) > 1:
        fail(layer, "at most one dim may be -1")
    new = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= len(x):
                fail(layer, f"dim {i} is 0 (copy) but the input has no axis {start + i}")
            new.append(x[start + i])
        elif d < -1:
            fail(layer, f"dim {d} is invalid; use a positive size, 0 to copy or -1 to infer")
        else:
            new.append(d)
    top = list(x[:start]) + new + list(x[end:])
    if -1 in top:
        known = math.prod(d for d in top if d != -1)
        if known == 0 or count(x) % known:
            fail(layer, f"cannot infer the -1 dim: {count(x)} values do not divide by {known}")
        top[top.index(-1)] = count(x) // known
    if count(top) != count(x):
        fail(layer, f"reshape to {tuple(top)} changes the count from {count(x)} to {count(top)}")
    return ShapeResult([tuple(top)])


@register_shape_rule("Crop")
def _crop(layer, bottoms):
    x, ref = bottoms[0], bottoms[1]
    p = layer.crop_param
    axis = canonical_axis(layer, p.axis, len(x))
    n = len(x) - axis
    offsets = list(p.offset)
    if len(offsets) not in (0, 1, n):
        fail(layer, f"{len(offsets)} offsets for {n} cropped axes; give none, one, or one per axis")
    offsets = offsets * n if len(offsets) == 1 else (offsets or [0] * n)
    if len(ref) < len(x):  # CropLayer reads the reference's first len(x) axes; more are allowed
        fail(layer, f"the reference {_fmt([ref])} has fewer axes than the input {_fmt([x])}")
    for i in range(n):
        if ref[axis + i] + offsets[i] > x[axis + i]:
            fail(layer, f"crop of size {ref[axis + i]} at offset {offsets[i]} does not fit axis {axis + i} "
                        f"of size {x[axis + i]}")
    return ShapeResult([tuple(x[:axis]) + tuple(ref[axis:len(x)])])


@register_shape_rule("Reduction")
def _reduction(layer, bottoms):
    axis = canonical_axis(layer, layer.reduction_param.axis, len(bottoms[0]))
    return ShapeResult([tuple(bottoms[0][:axis])])


@register_shape_rule("ArgMax")
def _argmax(layer, bottoms):
    p = layer.argmax_param
    x = bottoms[0]
    if p.HasField("axis"):
        axis = canonical_axis(layer, p.axis, len(x))
        if p.top_k > x[axis]:
            fail(layer, f"top_k {p.top_k} exceeds axis {axis} of size {x[axis]}")
        top = list(x)
        top[axis] = p.top_k
        return ShapeResult([tuple(top)])
    if p.top_k > count(x, 1):
        fail(layer, f"top_k {p.top_k} exceeds the {count(x, 1)} values per item")
    top = [1] * max(3, len(x))  # Caffe's ArgMaxLayer::Reshape: at least 3 top axes, even for an N x C input
    top[0], top[1], top[2] = x[0], 2 if p.out_max_val else 1, p.top_k
    return ShapeResult([tuple(top)])


@register_shape_rule("Tile")
def _tile(layer, bottoms):
    p = layer.tile_param
    axis = canonical_axis(layer, p.axis, len(bottoms[0]))
    if p.tiles < 1:
        fail(layer, "tiles must be at least 1")
    top = list(bottoms[0])
    top[axis] *= p.tiles
    return ShapeResult([tuple(top)])


@register_shape_rule("BatchReindex")
def _batch_reindex(layer, bottoms):
    return ShapeResult([(bottoms[1][0],) + tuple(bottoms[0][1:])])


@register_shape_rule("Parameter")
def _parameter(layer, bottoms):
    shape = tuple(layer.parameter_param.shape.dim)
    return ShapeResult([shape], [shape])


# -- losses and metrics -----------------------------------------------------------------------

@register_shape_rule("SoftmaxWithLoss")
def _softmax_loss(layer, bottoms):
    return ShapeResult([(), bottoms[0]][:len(layer.top)])


@register_shape_rule("EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss",
                     "MultinomialLogisticLoss", "ContrastiveLoss")
def _loss(layer, bottoms):
    return ShapeResult([()] * len(layer.top))


@register_shape_rule("Accuracy")
def _accuracy(layer, bottoms):
    axis = canonical_axis(layer, layer.accuracy_param.axis, len(bottoms[0]))
    return ShapeResult([(), (bottoms[0][axis],)][:len(layer.top)])


# -- inputs -----------------------------------------------------------------------------------

def _blob_shape(layer, shape: caffe_pb2.BlobShape) -> Shape:
    dims = tuple(shape.dim)
    if any(d < 0 for d in dims) or any(d > 1 << 31 for d in dims) or math.prod(dims) > 1 << 40:
        fail(layer, f"input shape {dims} has a negative or absurd dimension")
    return dims


@register_shape_rule("Input")
def _input(layer, bottoms):
    shapes = layer.input_param.shape
    if not shapes:
        raise UnknownInputShape(f"the net declares input{'s' if len(layer.top) > 1 else ''} "
                                f"{', '.join(layer.top)} without a shape")
    if len(shapes) not in (1, len(layer.top)):
        fail(layer, f"{len(shapes)} shapes for {len(layer.top)} tops; give one shape, or one per top")
    return ShapeResult([_blob_shape(layer, shapes[0 if len(shapes) == 1 else i]) for i in range(len(layer.top))])


@register_shape_rule("DummyData")
def _dummy_data(layer, bottoms):
    p = layer.dummy_data_param
    n = len(layer.top)
    if p.shape:
        if len(p.shape) not in (1, n):
            fail(layer, f"{len(p.shape)} shapes for {n} tops")
        return ShapeResult([_blob_shape(layer, p.shape[0 if len(p.shape) == 1 else i]) for i in range(n)])
    legacy = [p.num, p.channels, p.height, p.width]
    if any(len(v) not in (1, n) for v in legacy):
        fail(layer, "num/channels/height/width need one value, or one per top")
    return ShapeResult([tuple(v[0 if len(v) == 1 else i] for v in legacy) for i in range(n)])


@register_shape_rule("MemoryData")
def _memory_data(layer, bottoms):
    p = layer.memory_data_param
    return ShapeResult([(p.batch_size, p.channels, p.height, p.width), (p.batch_size,)][:len(layer.top)])


class UnknownInputShape(Exception):
    """A data layer whose data shape lives in its source (a database or files not at hand)."""


@register_shape_rule("ImageData")
def _image_data(layer, bottoms):
    p, t = layer.image_data_param, layer.transform_param
    channels = 3 if p.is_color else 1
    if t.crop_size:
        h = w = t.crop_size
    elif p.new_height and p.new_width:
        h, w = p.new_height, p.new_width
    else:
        raise UnknownInputShape("the image size comes from the images (no new_height/new_width or crop_size)")
    return ShapeResult([(p.batch_size, channels, h, w), (p.batch_size,)][:len(layer.top)])


@register_shape_rule("WindowData")
def _window_data(layer, bottoms):
    p, t = layer.window_data_param, layer.transform_param
    if not t.crop_size:
        raise UnknownInputShape("no crop_size")
    return ShapeResult([(p.batch_size, 3, t.crop_size, t.crop_size), (p.batch_size,)][:len(layer.top)])


@register_shape_rule("Data")
def _data(layer, bottoms):
    raise UnknownInputShape(f"the data shape is stored in its {caffe_pb2.DataParameter.DB.Name(layer.data_param.backend)} "
                            f"database '{layer.data_param.source}'")


@register_shape_rule("HDF5Data")
def _hdf5_data(layer, bottoms):
    raise UnknownInputShape(f"the data shapes are stored in the HDF5 files listed in '{layer.hdf5_data_param.source}'")


def data_batch_size(layer: LayerParameter) -> Optional[int]:
    for name in ("data_param", "image_data_param", "memory_data_param", "hdf5_data_param", "window_data_param"):
        if layer.HasField(name):
            return getattr(layer, name).batch_size
    return None
