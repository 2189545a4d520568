"""Mobile-net fork layers: ConvolutionDepthwise (MobileNet/ShuffleNet forks), ShuffleChannel
(farmingyard/ShuffleNet) and Axpy (hujie-frank/SENet)."""
from __future__ import annotations

import copy

from prototxt import shapes
from prototxt.shapes import ShapeResult

from ..registry import LayerImpl, register_layer
from ._common import shape_of, nn_specs
from .conv import Convolution


def depthwise_proto(proto, bottom):
    """The layer as the plain Convolution it is: group = the input's channels."""
    out = copy.deepcopy(proto)
    out.type = "Convolution"
    out.convolution_param.group = bottom[1]
    return out


def _depthwise_shape(layer, bottoms):
    return shapes.infer(depthwise_proto(layer, bottoms[0]), bottoms)


@register_layer("ConvolutionDepthwise", shape=_depthwise_shape)
class ConvolutionDepthwise(LayerImpl):
    def _as_convolution(self, layer, graph):
        conv = copy.copy(layer)
        conv.proto = depthwise_proto(layer.proto, shape_of(layer, graph))
        return conv

    def torch(self, layer, graph):
        return Convolution().torch(self._as_convolution(layer, graph), graph)

    def onnx(self, layer, ctx):
        Convolution().onnx(self._as_convolution(layer, ctx.graph), ctx)


def _shuffle_shape(layer, bottoms):
    group, channels = layer.shuffle_channel_param.group, bottoms[0][1]
    if group <= 0 or channels % group:
        shapes.fail(layer, f"{channels} channels do not split into {group} groups")
    return ShapeResult([bottoms[0]])


@register_layer("ShuffleChannel", shape=_shuffle_shape)
class ShuffleChannel(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def torch(self, layer, graph):
        return nn_specs().ShuffleChannel(layer.proto.shuffle_channel_param.group), []

    def onnx(self, layer, ctx):
        g = layer.proto.shuffle_channel_param.group
        shape = shape_of(layer, ctx)
        grouped = ctx.node("Reshape", [layer.bottoms[0], ctx.ints([0, g, shape[1] // g, -1])])[0]
        swapped = ctx.node("Transpose", [grouped], perm=[0, 2, 1, 3])[0]
        ctx.node("Reshape", [swapped, ctx.ints([0, *shape[1:]])], [layer.tops[0]])


def _axpy_shape(layer, bottoms):
    if len(bottoms) != 3:
        shapes.fail(layer, f"Axpy takes 3 bottoms (a, x, y), got {len(bottoms)}")
    a, x, y = bottoms
    if x != y or a[:2] != x[:2] or any(d != 1 for d in a[2:]):
        shapes.fail(layer, f"Axpy needs a (N, C, 1, 1) and x, y of one shape (N, C, H, W); got "
                           f"{a}, {x}, {y}")
    return ShapeResult([x])


@register_layer("Axpy", shape=_axpy_shape)
class Axpy(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def torch(self, layer, graph):
        return nn_specs().Axpy(), []

    def onnx(self, layer, ctx):
        a, x, y = layer.bottoms
        scaled = ctx.node("Mul", [x, a])[0]
        ctx.node("Add", [scaled, y], [layer.tops[0]])
