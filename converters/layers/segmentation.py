"""Segmentation fork layers: Interp (PSPNet/DeepLab), the two forks' BN (SegNet/ENet and PSPNet),
and Upsample (SegNet's max-unpooling by a mask; the one-bottom nearest form). Their shape rules (and
DenseImageData's) are prototxt.fork_shapes'."""
from __future__ import annotations

import numpy as np

from prototxt.fork_shapes import bn_mode

from ..registry import LayerImpl, register_layer
from ._common import f32, shape_of, top_shape, nn_specs


# -- Interp -----------------------------------------------------------------------------------------

@register_layer("Interp")
class Interp(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def _args(self, layer, graph):
        p = layer.proto.interp_param
        h, w = graph.values[layer.tops[0]].shape[2:]
        return dict(crop=[-p.pad_beg, -p.pad_end], height=h, width=w)

    def torch(self, layer, graph):
        return nn_specs().Interp(**self._args(layer, graph)), []

    def onnx(self, layer, ctx):
        a = self._args(layer, ctx.graph)
        x = layer.bottoms[0]
        h, w = shape_of(layer, ctx)[2:]
        beg, end = a["crop"]
        if beg or end:
            x = ctx.node("Slice", [x, ctx.ints([beg, beg]), ctx.ints([h - end, w - end]), ctx.ints([2, 3])])[0]
        if (h - beg - end, w - beg - end) == (a["height"], a["width"]):
            ctx.node("Identity", [x], [layer.tops[0]])
            return
        ctx.node("Resize", [x, "", "", ctx.ints([a["height"], a["width"]], "sizes")], [layer.tops[0]],
                 mode="linear", coordinate_transformation_mode="align_corners", axes=[2, 3])


# -- BN ---------------------------------------------------------------------------------------------

def _bn_eps(layer) -> float:
    # SegNet's layer fixes var_eps_ = 1e-9 and has no eps field; PSPNet reads bn_param.eps
    return layer.proto.bn_param.eps if bn_mode(layer.proto) == "PSPNET" else 1e-9


@register_layer("BN")
class BN(LayerImpl):
    def torch(self, layer, graph):
        mode = bn_mode(layer.proto)
        names = ["weight", "bias", "mean", "variance"] if mode == "PSPNET" else ["weight", "bias"]
        return nn_specs().BN(shape_of(layer, graph)[1], mode, _bn_eps(layer)), names

    def onnx(self, layer, ctx):
        mode = bn_mode(layer.proto)
        x, y = layer.bottoms[0], layer.tops[0]
        scale, shift = (f32(b).reshape(1, -1, 1, 1) for b in layer.blobs[:2])
        if mode == "LEARN":  # this batch's statistics, var = E[x^2] - E[x]^2, as SegNet's layer
            axes = ctx.ints([0, 2, 3], "axes")
            mean = ctx.node("ReduceMean", [x, axes], keepdims=1)[0]
            square = ctx.node("ReduceMean", [ctx.node("Mul", [x, x])[0], axes], keepdims=1)[0]
            var = ctx.node("Sub", [square, ctx.node("Mul", [mean, mean])[0]])[0]
            std = ctx.node("Sqrt", [ctx.node("Add", [var, ctx.const(np.float32(1e-9), "eps")])[0]])[0]
            x = ctx.node("Div", [ctx.node("Sub", [x, mean])[0], std])[0]
        elif mode == "PSPNET":
            mean, var = (f32(b).reshape(1, -1, 1, 1) for b in layer.blobs[2:4])
            std = np.sqrt(var + np.float32(_bn_eps(layer)), dtype=np.float32)
            x = ctx.node("Div", [ctx.node("Sub", [x, ctx.const(mean, "mean")])[0], ctx.const(std, "std")])[0]
        scaled = ctx.node("Mul", [x, ctx.const(scale, "scale")])[0]
        ctx.node("Add", [scaled, ctx.const(shift, "shift")], [y])


# -- Upsample -----------------------------------------------------------------------------------------

@register_layer("Upsample")
class Upsample(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def torch(self, layer, graph):
        if len(layer.bottoms) == 1:
            return nn_specs().UpsampleNearest(layer.proto.upsample_param.scale), []
        return nn_specs().UpsampleMask(*graph.values[layer.tops[0]].shape[2:]), []

    def onnx(self, layer, ctx):
        x = layer.bottoms[0]
        if len(layer.bottoms) == 1:
            s = float(layer.proto.upsample_param.scale)
            ctx.node("Resize", [x, "", ctx.const(np.array([s, s], np.float32), "scales")], [layer.tops[0]],
                     mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor", axes=[2, 3])
            return
        # scatter each value to its mask position in a zero plane (N, C, H*W), as SegNet's loop
        h, w = top_shape(layer, ctx)[2:]
        flat = ctx.ints([0, 0, -1], "flat")
        values = ctx.node("Reshape", [x, flat])[0]
        index = ctx.node("Cast", [ctx.node("Reshape", [layer.bottoms[1], flat])[0]], to=7)[0]
        nc = ctx.node("Slice", [ctx.node("Shape", [x])[0], ctx.ints([0]), ctx.ints([2])])[0]
        size = ctx.node("Concat", [nc, ctx.ints([h * w], "plane")], axis=0)[0]
        zeros = ctx.node("ConstantOfShape", [size])[0]
        scattered = ctx.node("ScatterElements", [zeros, index, values], axis=2)[0]
        ctx.node("Reshape", [scattered, ctx.ints([0, 0, h, w])], [layer.tops[0]])

