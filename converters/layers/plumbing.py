"""Blob plumbing: Eltwise, Concat, Slice, Split, Flatten, Reshape, Crop, Tile, Reduction, ArgMax."""
from __future__ import annotations

import numpy as np

from ..registry import LayerImpl, register_layer
from ._common import canonical, shape_of, top_shape, nn_specs

_ELTWISE = {0: "PROD", 1: "SUM", 2: "MAX"}


@register_layer("Eltwise")
class Eltwise(LayerImpl):
    deterministic = True

    def _args(self, layer):
        p = layer.proto.eltwise_param
        return dict(op=_ELTWISE[p.operation], coeff=list(p.coeff))

    def torch(self, layer, graph):
        return nn_specs().Eltwise(**self._args(layer)), []

    def onnx(self, layer, ctx):
        a = self._args(layer)
        xs, y = list(layer.bottoms), layer.tops[0]
        if a["op"] == "SUM" and any(c != 1 for c in a["coeff"]):
            xs = [x if c == 1 else ctx.node("Mul", [x, ctx.const(np.float32(c), "coeff")])[0]
                  for x, c in zip(xs, a["coeff"])]
        op = {"SUM": "Sum", "PROD": "Mul", "MAX": "Max"}[a["op"]]
        if op == "Mul":
            acc = xs[0]
            for i, x in enumerate(xs[1:], 1):
                acc = ctx.node("Mul", [acc, x], [y] if i == len(xs) - 1 else None)[0]
            return
        ctx.node(op, xs, [y])


def concat_axis(layer, graph) -> int:
    p = layer.proto.concat_param
    return p.concat_dim if p.HasField("concat_dim") else canonical(p.axis, len(shape_of(layer, graph)))


@register_layer("Concat")
class Concat(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().Concat(concat_axis(layer, graph)), []

    def onnx(self, layer, ctx):
        ctx.node("Concat", list(layer.bottoms), [layer.tops[0]], axis=concat_axis(layer, ctx.graph))


def _slice(layer, graph) -> tuple[int, list[int]]:
    p = layer.proto.slice_param
    axis = p.slice_dim if p.HasField("slice_dim") else canonical(p.axis, len(shape_of(layer, graph)))
    return axis, [graph.values[t].shape[axis] for t in layer.tops]


@register_layer("Slice")
class Slice(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().Slice(*_slice(layer, graph)), []

    def onnx(self, layer, ctx):
        axis, sizes = _slice(layer, ctx.graph)
        if len(sizes) == 1:
            ctx.node("Identity", [layer.bottoms[0]], [layer.tops[0]])
            return
        ctx.node("Split", [layer.bottoms[0], ctx.ints(sizes, "split")], list(layer.tops), axis=axis)


@register_layer("Split")
class Split(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().Split(len(layer.tops)), []

    def onnx(self, layer, ctx):
        for t in layer.tops:
            ctx.node("Identity", [layer.bottoms[0]], [t])


def reshape_args(layer, graph) -> dict:
    x = shape_of(layer, graph)
    if layer.type == "Flatten":
        p = layer.proto.flatten_param
        start, end = canonical(p.axis, len(x)), canonical(p.end_axis, len(x)) + 1
        return dict(start=start, end=end, dims=[-1])
    p = layer.proto.reshape_param
    start = p.axis + len(x) + 1 if p.axis < 0 else p.axis
    end = None if p.num_axes == -1 else start + p.num_axes
    return dict(start=start, end=end, dims=list(p.shape.dim))


@register_layer("Reshape")
class Reshape(LayerImpl):
    deterministic = True
    any_batch = False  # its dims may fix the batch size

    def torch(self, layer, graph):
        return nn_specs().Reshape(**reshape_args(layer, graph)), []

    def onnx(self, layer, ctx):
        a = reshape_args(layer, ctx.graph)
        x, out = shape_of(layer, ctx), top_shape(layer, ctx)
        end = len(x) if a["end"] is None else a["end"]
        # Leading axes copy (keeps the batch symbolic); Caffe's 0 and -1 mean what ONNX's do at the same index;
        # the tail after the reshaped range is static.
        dims = [0] * a["start"] + list(a["dims"]) + list(x[end:])
        if a["start"] == 0 and dims and dims[0] not in (0, -1) and -1 not in dims:
            dims = list(out)
        if layer.type == "Flatten" and a["start"] == 1 and end == len(x):
            ctx.node("Flatten", [layer.bottoms[0]], [layer.tops[0]], axis=1)
            return
        ctx.node("Reshape", [layer.bottoms[0], ctx.ints(dims)], [layer.tops[0]])


@register_layer("Flatten")
class Flatten(Reshape):
    any_batch = True


def crop_args(layer, graph) -> dict:
    x = shape_of(layer, graph)
    p = layer.proto.crop_param
    axis = canonical(p.axis, len(x))
    n = len(x) - axis
    offsets = list(p.offset)
    offsets = offsets * n if len(offsets) == 1 else (offsets or [0] * n)
    return dict(axis=axis, offsets=offsets)


@register_layer("Crop")
class Crop(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().Crop(**crop_args(layer, graph)), []

    def onnx(self, layer, ctx):
        a = crop_args(layer, ctx.graph)
        ref = shape_of(layer, ctx, 1)
        axes = list(range(a["axis"], a["axis"] + len(a["offsets"])))
        starts = a["offsets"]
        ends = [o + ref[ax] for o, ax in zip(starts, axes)]
        ctx.node("Slice", [layer.bottoms[0], ctx.ints(starts, "starts"), ctx.ints(ends, "ends"), ctx.ints(axes, "axes")],
                 [layer.tops[0]])


@register_layer("Tile")
class Tile(LayerImpl):
    def torch(self, layer, graph):
        p = layer.proto.tile_param
        return nn_specs().Tile(canonical(p.axis, len(shape_of(layer, graph))), p.tiles), []

    def onnx(self, layer, ctx):
        p = layer.proto.tile_param
        n = len(shape_of(layer, ctx))
        reps = [1] * n
        reps[canonical(p.axis, n)] = p.tiles
        ctx.node("Tile", [layer.bottoms[0], ctx.ints(reps, "repeats")], [layer.tops[0]])


_REDUCTIONS = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}


@register_layer("Reduction")
class Reduction(LayerImpl):
    def _args(self, layer, graph):
        p = layer.proto.reduction_param
        return dict(op=_REDUCTIONS[p.operation], axis=canonical(p.axis, len(shape_of(layer, graph))), coeff=p.coeff)

    def torch(self, layer, graph):
        return nn_specs().Reduction(**self._args(layer, graph)), []

    def onnx(self, layer, ctx):
        a = self._args(layer, ctx.graph)
        n = len(shape_of(layer, ctx))
        axes = ctx.ints(list(range(a["axis"], n)), "axes")
        op = {"SUM": "ReduceSum", "ASUM": "ReduceL1", "SUMSQ": "ReduceSumSquare", "MEAN": "ReduceMean"}[a["op"]]
        last = a["coeff"] == 1
        y = ctx.node(op, [layer.bottoms[0], axes], [layer.tops[0]] if last else None, keepdims=0)[0]
        if not last:
            ctx.node("Mul", [y, ctx.const(np.float32(a["coeff"]), "coeff")], [layer.tops[0]])


@register_layer("ArgMax")
class ArgMax(LayerImpl):
    def _args(self, layer, graph):
        p = layer.proto.argmax_param
        axis = canonical(p.axis, len(shape_of(layer, graph))) if p.HasField("axis") else None
        return dict(axis=axis, top_k=p.top_k, out_max_val=p.out_max_val)

    def torch(self, layer, graph):
        return nn_specs().ArgMax(**self._args(layer, graph)), []

    @staticmethod
    def _top(ctx, x, k, axis: int, size: int):
        """(values, float indices) of Caffe's top k: of equal values the highest index first. ONNX TopK
        puts the lowest index first, so it runs on the input reversed along the axis."""
        rev = ctx.node("Slice", [x, ctx.ints([-1]), ctx.ints([-2**63]), ctx.ints([axis]), ctx.ints([-1])])[0]
        values, idx = ctx.node("TopK", [rev, ctx.ints([k], "k")], [ctx.tmp("values"), ctx.tmp("indices")], axis=axis)
        idx = ctx.node("Sub", [ctx.ints([size - 1], "last"), idx])[0]
        return values, ctx.node("Cast", [idx], to=1)[0]

    def onnx(self, layer, ctx):
        a = self._args(layer, ctx.graph)
        x, shape = layer.bottoms[0], shape_of(layer, ctx)
        if a["axis"] is not None:
            values, idx = self._top(ctx, x, a["top_k"], a["axis"], shape[a["axis"]])
            ctx.node("Identity", [values if a["out_max_val"] else idx], [layer.tops[0]])
            return
        flat = ctx.node("Flatten", [x], axis=1)[0]
        values, idx = self._top(ctx, flat, a["top_k"], 1, int(np.prod(shape[1:])))
        parts = [idx, values] if a["out_max_val"] else [idx]
        parts = [ctx.node("Unsqueeze", [p, ctx.ints([1], "axis")])[0] for p in parts]
        stacked = ctx.node("Concat", parts, axis=1)[0] if len(parts) > 1 else parts[0]
        ctx.node("Reshape", [stacked, ctx.ints([0] + list(top_shape(layer, ctx)[1:]))], [layer.tops[0]])
