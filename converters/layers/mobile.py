"""Mobile-net fork layers: ConvolutionDepthwise (MobileNet/ShuffleNet forks), ShuffleChannel
(farmingyard/ShuffleNet) and Axpy (hujie-frank/SENet). Their shape rules are prototxt.fork_shapes'."""
from __future__ import annotations

import copy

from prototxt.fork_shapes import depthwise_proto

from ..registry import LayerImpl, register_layer
from ._common import shape_of, nn_specs
from .conv import Convolution


@register_layer("ConvolutionDepthwise")
class ConvolutionDepthwise(LayerImpl):
    def _as_convolution(self, layer, graph):
        conv = copy.copy(layer)
        conv.proto = depthwise_proto(layer.proto, shape_of(layer, graph))
        return conv

    def torch(self, layer, graph):
        return Convolution().torch(self._as_convolution(layer, graph), graph)

    def onnx(self, layer, ctx):
        Convolution().onnx(self._as_convolution(layer, ctx.graph), ctx)


@register_layer("ShuffleChannel")
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


@register_layer("Axpy")
class Axpy(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def torch(self, layer, graph):
        return nn_specs().Axpy(), []

    def onnx(self, layer, ctx):
        a, x, y = layer.bottoms
        scaled = ctx.node("Mul", [x, a])[0]
        ctx.node("Add", [scaled, y], [layer.tops[0]])
