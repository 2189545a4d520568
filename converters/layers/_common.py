"""Small helpers shared by the layer families."""
from __future__ import annotations

import numpy as np

from prototxt.graph import Layer


def shape_of(layer: Layer, ctx_or_graph, i: int = 0) -> tuple[int, ...]:
    graph = getattr(ctx_or_graph, "graph", ctx_or_graph)
    return graph.values[layer.bottoms[i]].shape


def top_shape(layer: Layer, ctx, i: int = 0) -> tuple[int, ...]:
    return ctx.graph.values[layer.tops[i]].shape


def canonical(axis: int, n: int) -> int:
    return axis + n if axis < 0 else axis


def broadcast_shape(n_axes: int, axis: int, shape) -> list[int]:
    return [1] * axis + list(shape) + [1] * (n_axes - axis - len(shape))


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def nn_specs():
    """Module specs of converters.nn: ``nn_specs().ReLU(0.1)`` describes the module without importing torch."""
    from ..plan import nn_specs as specs
    return specs()


def pool_pads(size: int, kernel: int, stride: int, pad: int, out: int) -> tuple[int, int]:
    """(right pad, crop) that make a floor-mode pooling over the explicitly padded input give `out`."""
    extra = (out - 1) * stride + kernel - size - pad
    return (extra, 0) if extra >= 0 else (0, -extra)
