"""InnerProduct, Embed, Parameter and the recurrent layers (LSTM, RNN)."""
from __future__ import annotations

import numpy as np

from ..registry import LayerImpl, register_layer
from ._common import canonical, f32, shape_of, nn_specs


@register_layer("InnerProduct")
class InnerProduct(LayerImpl):
    folds_affine = True

    def _args(self, layer, graph):
        p = layer.proto.inner_product_param
        shape = shape_of(layer, graph)
        axis = canonical(p.axis, len(shape))
        k = int(np.prod(shape[axis:]))
        return dict(in_features=k, out_features=p.num_output, axis=axis, bias=p.bias_term, transpose=p.transpose)

    def torch(self, layer, graph):
        return nn_specs().InnerProduct(**self._args(layer, graph)), ["weight", "bias"][:len(layer.param_shapes)]

    def onnx(self, layer, ctx, weight=None, bias=None, out=None):
        a = self._args(layer, ctx.graph)
        w = f32(layer.blobs[0] if weight is None else weight)
        w = w.T if a["transpose"] and weight is None else w  # folded weights come in (out, in) already
        b = None if not (a["bias"] or bias is not None) else f32(layer.blobs[1] if bias is None else bias)
        x, shape = layer.bottoms[0], shape_of(layer, ctx)
        out = out or layer.tops[0]
        if a["axis"] == 1:
            if len(shape) > 2:
                x = ctx.node("Flatten", [x], axis=1)[0]
            inputs = [x, ctx.const(w, "weight")] + ([ctx.const(b, "bias")] if b is not None else [])
            ctx.node("Gemm", inputs, [out], transB=1)
            return
        if len(shape) > a["axis"] + 1:
            x = ctx.node("Reshape", [x, ctx.ints([0] * a["axis"] + [-1])])[0]
        y = ctx.node("MatMul", [x, ctx.const(np.ascontiguousarray(w.T), "weight_t")],
                     None if b is not None else [out])[0]
        if b is not None:
            ctx.node("Add", [y, ctx.const(b, "bias")], [out])


@register_layer("Embed")
class Embed(LayerImpl):
    def torch(self, layer, graph):
        p = layer.proto.embed_param
        return nn_specs().Embed(p.input_dim, p.num_output, p.bias_term), ["weight", "bias"][:len(layer.param_shapes)]

    def onnx(self, layer, ctx):
        idx = ctx.node("Cast", [layer.bottoms[0]], to=7)[0]  # int64
        y = ctx.node("Gather", [ctx.blob(layer, 0, "weight"), idx], None if len(layer.blobs) > 1 else [layer.tops[0]])
        if len(layer.blobs) > 1:
            ctx.node("Add", [y[0], ctx.blob(layer, 1, "bias")], [layer.tops[0]])


@register_layer("Parameter")
class Parameter(LayerImpl):
    def torch(self, layer, graph):
        return nn_specs().Parameter(list(layer.param_shapes[0])), ["weight"]

    def onnx(self, layer, ctx):
        ctx.node("Identity", [ctx.blob(layer, 0, "value")], [layer.tops[0]])


def _recurrent_args(layer, graph, recurrent: int):
    """Module arguments; ``recurrent`` hidden-state blobs ((h, c) of LSTM, h of RNN) are bottoms after
    x, cont and the optional static input, and tops after the output, when expose_hidden is set."""
    p = layer.proto.recurrent_param
    x = shape_of(layer, graph)
    exposed = recurrent if p.expose_hidden else 0
    static = int(np.prod(shape_of(layer, graph, 2)[1:])) if len(layer.bottoms) > 2 + exposed else 0
    return dict(input_size=int(np.prod(x[2:])), hidden=p.num_output, static_size=static,
                expose_hidden=bool(p.expose_hidden))


def _initial_states(layer, ctx, a, recurrent: int) -> list[str]:
    """The t=0 hidden states as (N, H) values: the exposed bottoms, else zeros (a fresh Caffe net)."""
    t_steps, n = shape_of(layer, ctx)[:2]
    if not a["expose_hidden"]:
        return [ctx.const(np.zeros((n, a["hidden"]), np.float32), "zeros")] * recurrent
    first = 2 + (1 if a["static_size"] else 0)
    return [ctx.node("Reshape", [b, ctx.ints([n, a["hidden"]])])[0] for b in layer.bottoms[first:first + recurrent]]


def _final_states(layer, ctx, a, states: list[str]) -> None:
    """The hidden states after the last step as the (1, N, H) tops after the output (expose_hidden)."""
    if a["expose_hidden"]:
        for state, top in zip(states, layer.tops[1:]):
            ctx.node("Unsqueeze", [state, ctx.ints([0], "axis")], [top])


@register_layer("LSTM")
class LSTM(LayerImpl):
    dynamic_batch = any_batch = False

    def torch(self, layer, graph):
        a = _recurrent_args(layer, graph, 2)
        names = ["weight_xc", "bias_c"] + (["weight_xc_static"] if a["static_size"] else []) + ["weight_hc"]
        return nn_specs().LSTM(**a), names

    def onnx(self, layer, ctx):
        a = _recurrent_args(layer, ctx.graph, 2)
        h = a["hidden"]
        t_steps, n = shape_of(layer, ctx)[:2]
        blobs = list(layer.blobs)
        w_xc, b_c = blobs[0], blobs[1]
        w_static = blobs[2] if a["static_size"] else None
        w_hc = blobs[-1]
        x = ctx.node("Reshape", [layer.bottoms[0], ctx.ints([t_steps, n, -1])])[0]
        gx = ctx.node("MatMul", [x, ctx.const(f32(w_xc).T, "w_xc_t")])[0]
        gx = ctx.node("Add", [gx, ctx.const(b_c, "b_c")])[0]
        if w_static is not None:
            s = ctx.node("Reshape", [layer.bottoms[2], ctx.ints([n, -1])])[0]
            gs = ctx.node("MatMul", [s, ctx.const(f32(w_static).T, "w_static_t")])[0]
            gx = ctx.node("Add", [gx, gs])[0]
        w_hc_t = ctx.const(f32(w_hc).T, "w_hc_t")
        h_prev, c_prev = _initial_states(layer, ctx, a, 2)
        outs = []
        for t in range(t_steps):
            g_t = ctx.node("Gather", [gx, ctx.ints([t], "t")], axis=0)[0]
            g_t = ctx.node("Reshape", [g_t, ctx.ints([n, 4 * h])])[0]
            cont = ctx.node("Gather", [layer.bottoms[1], ctx.ints([t], "t")], axis=0)[0]
            keep = ctx.node("Reshape", [cont, ctx.ints([n, 1])])[0]
            hc = ctx.node("Mul", [h_prev, keep])[0]
            gates = ctx.node("Add", [g_t, ctx.node("MatMul", [hc, w_hc_t])[0]])[0]
            i, f, o, g = ctx.node("Split", [gates, ctx.ints([h] * 4, "split")], [ctx.tmp(s) for s in "ifog"], axis=1)
            i, f, o = (ctx.node("Sigmoid", [v])[0] for v in (i, f, o))
            g = ctx.node("Tanh", [g])[0]
            fc = ctx.node("Mul", [ctx.node("Mul", [keep, f])[0], c_prev])[0]
            c_prev = ctx.node("Add", [fc, ctx.node("Mul", [i, g])[0]])[0]
            h_prev = ctx.node("Mul", [o, ctx.node("Tanh", [c_prev])[0]])[0]
            outs.append(ctx.node("Unsqueeze", [h_prev, ctx.ints([0], "axis")])[0])
        ctx.node("Concat", outs, [layer.tops[0]], axis=0)
        _final_states(layer, ctx, a, [h_prev, c_prev])


@register_layer("RNN")
class RNN(LayerImpl):
    dynamic_batch = any_batch = False

    def torch(self, layer, graph):
        a = _recurrent_args(layer, graph, 1)
        names = ["weight_xh", "bias_h"] + (["weight_xh_static"] if a["static_size"] else []) + [
            "weight_hh", "weight_ho", "bias_o"]
        return nn_specs().RNN(**a), names

    def onnx(self, layer, ctx):
        a = _recurrent_args(layer, ctx.graph, 1)
        h = a["hidden"]
        t_steps, n = shape_of(layer, ctx)[:2]
        blobs = list(layer.blobs)
        w_xh, b_h = blobs[0], blobs[1]
        w_static = blobs[2] if a["static_size"] else None
        w_hh, w_ho, b_o = blobs[-3:]
        x = ctx.node("Reshape", [layer.bottoms[0], ctx.ints([t_steps, n, -1])])[0]
        pre = ctx.node("Add", [ctx.node("MatMul", [x, ctx.const(f32(w_xh).T, "w_xh_t")])[0], ctx.const(b_h, "b_h")])[0]
        if w_static is not None:
            s = ctx.node("Reshape", [layer.bottoms[2], ctx.ints([n, -1])])[0]
            pre = ctx.node("Add", [pre, ctx.node("MatMul", [s, ctx.const(f32(w_static).T, "w_static_t")])[0]])[0]
        w_hh_t, w_ho_t, b_o_c = ctx.const(f32(w_hh).T, "w_hh_t"), ctx.const(f32(w_ho).T, "w_ho_t"), ctx.const(b_o, "b_o")
        h_prev, = _initial_states(layer, ctx, a, 1)
        outs = []
        for t in range(t_steps):
            p_t = ctx.node("Reshape", [ctx.node("Gather", [pre, ctx.ints([t], "t")], axis=0)[0], ctx.ints([n, h])])[0]
            keep = ctx.node("Reshape", [ctx.node("Gather", [layer.bottoms[1], ctx.ints([t], "t")], axis=0)[0],
                                        ctx.ints([n, 1])])[0]
            rec = ctx.node("MatMul", [ctx.node("Mul", [h_prev, keep])[0], w_hh_t])[0]
            h_prev = ctx.node("Tanh", [ctx.node("Add", [p_t, rec])[0]])[0]
            o = ctx.node("Tanh", [ctx.node("Add", [ctx.node("MatMul", [h_prev, w_ho_t])[0], b_o_c])[0]])[0]
            outs.append(ctx.node("Unsqueeze", [o, ctx.ints([0], "axis")])[0])
        ctx.node("Concat", outs, [layer.tops[0]], axis=0)
        _final_states(layer, ctx, a, [h_prev])
