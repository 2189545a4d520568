"""Convolution and Deconvolution (grouped, dilated, asymmetric, N-d)."""
from __future__ import annotations

from prototxt.shapes import conv_geometry

from ..registry import LayerImpl, register_layer
from ._common import shape_of, nn_specs


def _geometry(layer, graph):
    g = conv_geometry(layer.proto, shape_of(layer, graph))
    if g.axis != 1:
        raise ValueError(f"layer '{layer.name}': convolution over axis {g.axis} is not supported (only axis 1)")
    return g


def conv_attrs(g) -> dict:
    return dict(kernel_shape=g.kernel, strides=g.stride, pads=g.pad + g.pad, dilations=g.dilation, group=g.group)


class _ConvFamily(LayerImpl):
    module = ""  # the converters.nn class
    op = ""      # the ONNX operator

    def torch(self, layer, graph):
        g = _geometry(layer, graph)
        module = getattr(nn_specs(), self.module)(g.channels, g.num_output, g.kernel, g.stride, g.pad, g.dilation,
                                                  g.group, g.bias, len(g.kernel))
        return module, ["weight", "bias"][:len(layer.param_shapes)]

    def onnx(self, layer, ctx, weight=None, bias=None, out=None):
        """Nodes of the layer; ``weight``/``bias``/``out`` replace its own when BatchNorm/Scale fold into it."""
        g = _geometry(layer, ctx.graph)
        inputs = [layer.bottoms[0], ctx.const(layer.blobs[0] if weight is None else weight, "weight")]
        if bias is not None or g.bias:
            inputs.append(ctx.const(layer.blobs[1] if bias is None else bias, "bias"))
        for i, b in enumerate(layer.bottoms):
            inputs[0] = b
            ctx.node(self.op, inputs, [out or layer.tops[i]], **conv_attrs(g))


@register_layer("Convolution")
class Convolution(_ConvFamily):
    folds_affine = True
    module, op = "Convolution", "Conv"


@register_layer("Deconvolution")
class Deconvolution(_ConvFamily):
    module, op = "Deconvolution", "ConvTranspose"
