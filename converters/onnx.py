"""Graph -> onnx.ModelProto, built directly (no torch on this path).

Value names are Caffe blob names (``name@layer`` for values an in-place layer overwrote later), node
names are Caffe layer names, weights are initializers (never graph inputs: that would block
onnxruntime's constant folding and fusions). BatchNorm and Scale fold into the convolution or
inner product before them when nothing else reads the intermediate value.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from prototxt.graph import Graph, Layer

from . import registry
from .fold import fold_affine

DEFAULT_OPSET = 18
IR_VERSION = 8  # enough for opset 18; the newest IR versions are refused by the onnxruntime releases in use


class ConversionNote(UserWarning):
    """Something the conversion left out on purpose (training-only layers)."""


class OnnxContext:
    """What a layer implementation needs to emit its nodes."""

    def __init__(self, graph: Graph, opset: int):
        self.graph, self.opset = graph, opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set(graph.values)
        self.layer: Optional[Layer] = None

    def unique(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._names:
            k += 1
            name = f"{hint}_{k}"
        self._names.add(name)
        return name

    def tmp(self, suffix: str) -> str:
        return self.unique(f"{self.layer.name}/{suffix}" if self.layer else suffix)

    def node(self, op: str, inputs: Sequence[str], outputs: Optional[Sequence[str]] = None, **attrs) -> list[str]:
        outputs = list(outputs) if outputs is not None else [self.tmp(op.lower())]
        name = self.unique(self.layer.name if self.layer and not any(n.name == self.layer.name for n in self.nodes)
                           else f"{self.layer.name if self.layer else op}/{op}")
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, **attrs))
        return outputs

    def const(self, array, suffix: str = "const", dtype=np.float32) -> str:
        name = self.tmp(suffix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(array, dtype=dtype)), name))
        return name

    def ints(self, values: Sequence[int], suffix: str = "shape") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), suffix, dtype=np.int64)

    def shape(self, value: str) -> tuple[int, ...]:
        return self.graph.values[value].shape

    def blob(self, layer: Layer, i: int, suffix: Optional[str] = None) -> str:
        return self.const(np.asarray(layer.blobs[i], dtype=np.float32), suffix or f"blob{i}")


def _value_info(graph: Graph, value: str, dynamic_batch: bool) -> onnx.ValueInfoProto:
    shape = list(graph.values[value].shape)
    if dynamic_batch and shape:
        shape[0] = "N"
    return helper.make_tensor_value_info(graph.values[value].caffe_name if value in graph.inputs else value,
                                         TensorProto.FLOAT, shape)


def to_onnx(graph: Graph, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
            fold: bool = True) -> onnx.ModelProto:
    """The graph as an ONNX model: inputs in Caffe's input order, outputs in Caffe's output order."""
    registry.check_supported(graph)
    missing = [l.name for l in graph.layers if l.param_shapes and not l.blobs]
    if missing:
        raise ValueError(f"no weights for layers {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                         f"load the net with its .caffemodel")
    recurrent = any(l.type in ("LSTM", "RNN") for l in graph.layers)
    ctx = OnnxContext(graph, opset)
    plan = fold_affine(graph) if fold else {}
    dropped = []
    alias: dict[str, str] = {}
    for layer in graph.layers:
        if layer.type in registry.DATA_LAYERS:
            continue
        if layer.type in registry.TRAINING_ONLY:
            dropped.append(f"{layer.name} ({layer.type})")
            continue
        ctx.layer = layer
        if layer.name in plan:
            plan[layer.name](layer, ctx)
            continue
        registry.get(layer.type).onnx(layer, ctx)
    if dropped:
        warnings.warn(ConversionNote(f"left out training-only layers: {', '.join(dropped)}"), stacklevel=2)
    outputs = [o for o in graph.outputs if graph.layer(graph.values[o].producer).type not in registry.TRAINING_ONLY
               ] if graph.outputs else []
    outputs = [o for o in outputs if graph.values[o].producer is not None]
    # Inputs that an in-place layer rewrites keep their Caffe name; nodes refer to the unique name.
    for v in graph.inputs:
        if graph.values[v].caffe_name != v:
            alias[v] = graph.values[v].caffe_name
    if alias:
        for n in ctx.nodes:
            n.input[:] = [alias.get(i, i) for i in n.input]
    g = helper.make_graph(
        ctx.nodes, graph.name or "caffe_net",
        [_value_info(graph, v, dynamic_batch and not recurrent) for v in graph.inputs],
        [_value_info(graph, v, dynamic_batch and not recurrent) for v in outputs],
        initializer=ctx.initializers)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="caffezoo", producer_version="0.1")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def save_onnx(model: onnx.ModelProto, path) -> None:
    """Write atomically (temp file, then rename)."""
    import os
    import tempfile
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
