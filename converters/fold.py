"""Fold per-channel affine layers (BatchNorm, Scale: ``LayerImpl.affine``) into the layer before them
that takes them into its weights (Convolution, InnerProduct: ``LayerImpl.folds_affine``), by exact
affine algebra.

Folding applies only where nothing else reads the intermediate values: the conv's output feeds the
BatchNorm alone, the BatchNorm's output the Scale alone, and none of them is a net output.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from prototxt.graph import Graph, Layer

from . import registry

Emitter = Callable[[Layer, object], None]


def _channel_affine(layer: Layer):
    """(a, b) per channel of a layer computing y = a*x + b over axis 1 (``LayerImpl.affine``); else None."""
    return registry.get(layer.type).affine(layer)


def fold_affine(graph: Graph) -> dict[str, Emitter]:
    plan: dict[str, Emitter] = {}
    by_name = {l.name: l for l in graph.layers}
    for layer in graph.layers:
        impl = registry.implementation(layer.type)
        if layer.name in plan or impl is None or len(layer.bottoms) != 1 or len(layer.tops) != 1:
            continue
        chain, value = [], layer.tops[0]
        a_total = b_total = None
        if not impl.folds_affine:  # an affine layer starts a chain of its own: one affine for all of it
            first = _channel_affine(layer)
            if first is None:
                continue
            a_total, b_total = first
        elif not layer.blobs:
            continue
        while True:
            nxt_name = graph.values[value].consumers[0] if len(graph.values[value].consumers) == 1 else None
            if value in graph.outputs or nxt_name is None:
                break
            nxt = by_name.get(nxt_name)
            affine = _channel_affine(nxt) if nxt is not None and nxt.name not in plan else None
            if affine is None or len(nxt.tops) != 1:
                break
            a, b = affine
            a_total, b_total = (a, b) if a_total is None else (a_total * a, b_total * a + b)
            chain.append(nxt)
            value = nxt.tops[0]
        if not chain:
            continue
        out = value
        for c in chain:
            plan[c.name] = lambda l, ctx: None
        plan[layer.name] = _folded_emitter(layer, impl, a_total, b_total, out)
    return plan


def _folded_emitter(layer: Layer, impl, a: np.ndarray, b: np.ndarray, out: str) -> Emitter:
    def emit(l, ctx):
        if not impl.folds_affine:
            from .layers.norm import emit_channel_affine
            emit_channel_affine(ctx, layer.bottoms[0], out, a, b, len(ctx.graph.values[layer.bottoms[0]].shape))
            return
        w = np.asarray(layer.blobs[0], dtype=np.float64)
        if layer.type == "InnerProduct" and layer.proto.inner_product_param.transpose:
            w = w.T
        bias = np.asarray(layer.blobs[1], dtype=np.float64) if len(layer.blobs) > 1 else np.zeros(w.shape[0])
        w = w * a.reshape([-1] + [1] * (w.ndim - 1))
        bias = bias * a + b
        impl.onnx(layer, ctx, weight=w.astype(np.float32), bias=bias.astype(np.float32), out=out)
    return emit
