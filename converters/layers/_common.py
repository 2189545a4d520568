"""Small helpers shared by the layer families."""
from __future__ import annotations

import numpy as np

from prototxt.graph import Layer

from ..specs import nn_specs  # noqa: F401 - the layer families describe their modules with it


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
