"""Graph -> onnx.ModelProto, built directly (no torch on this path).

Value names are Caffe blob names (``name@layer`` for values an in-place layer overwrote later), node
names are Caffe layer names, weights are initializers (never graph inputs: that would block
onnxruntime's constant folding and fusions). BatchNorm and Scale fold into the convolution or
inner product before them when nothing else reads the intermediate value.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from prototxt.fileio import atomic_open
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
        self.arrays: dict[str, np.ndarray] = {}  # initializers, kept as numpy until written
        self._names: set[str] = set(graph.values)
        self._node_names: set[str] = set()  # nodes have their own namespace: a layer keeps its name beside its top
        self.layer: Optional[Layer] = None
        self.value_shapes: dict[str, list] = {}  # values whose shape only a run knows (DetectionOutput's rows)

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
        hint = self.layer.name if self.layer else op
        name, k = (hint if hint not in self._node_names else f"{hint}/{op}"), 1
        base = name
        while name in self._node_names:
            k += 1
            name = f"{base}_{k}"
        self._node_names.add(name)
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, **attrs))
        return outputs

    def const(self, array, suffix: str = "const", dtype=np.float32) -> str:
        name = self.tmp(suffix)
        self.arrays[name] = np.ascontiguousarray(np.asarray(array, dtype=dtype))
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


def build(graph: Graph, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
          fold: bool = True) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model with empty initializers (names, dims and types only) and their arrays, checked.

    Keeping the weights out of the protobuf until they are written saves two copies of them
    (the checker and the serializer would each make one).
    """
    registry.check_supported(graph)
    registry.check_weights(graph)
    ctx = OnnxContext(graph, opset)
    plan = fold_affine(graph) if fold else {}
    io = registry.inference_io(graph)
    for layer in graph.layers:
        if layer.type in registry.DATA_LAYERS or registry.get(layer.type).training_only:
            continue
        ctx.layer = layer
        emit = plan.get(layer.name) or registry.get(layer.type).onnx
        emit(layer, ctx)
    if io.dropped:
        warnings.warn(ConversionNote(io.note(graph)), stacklevel=3)
    dynamic = dynamic_batch and all(registry.get(l.type).dynamic_batch for l in graph.layers
                                    if l.type not in registry.DATA_LAYERS)
    headers = [TensorProto(name=name, data_type=_ONNX_TYPES[a.dtype], dims=list(a.shape))
               for name, a in ctx.arrays.items()]
    g = helper.make_graph(ctx.nodes, graph.name or "caffe_net",
                          [_value_info(graph, v, dynamic) for v in io.inputs],
                          [helper.make_tensor_value_info(v, TensorProto.FLOAT, ctx.value_shapes[v])
                           if v in ctx.value_shapes else _value_info(graph, v, dynamic) for v in io.outputs],
                          initializer=headers)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="caffezoo", producer_version="0.1")
    model.ir_version = IR_VERSION
    _check(model)
    return model, ctx.arrays


_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}


def _check(model: onnx.ModelProto) -> None:
    """onnx.checker on the structure: each initializer stands in as one value of its rank."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for t in probe.graph.initializer:
        ndim = len(t.dims)
        t.ClearField("dims")
        t.dims.extend([1] * ndim)
        if t.data_type == TensorProto.INT64:
            t.int64_data.append(0)
        else:
            t.float_data.append(0.0)
    onnx.checker.check_model(probe)


def to_onnx(graph: Graph, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
            fold: bool = True) -> onnx.ModelProto:
    """The graph as an ONNX model: inputs in Caffe's input order, outputs in Caffe's output order."""
    model, arrays = build(graph, opset, dynamic_batch, fold)
    for t in model.graph.initializer:
        t.raw_data = arrays[t.name].tobytes()
    return model


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    return _varint((number << 3) | 2) + _varint(length)


def _shared(tensor: TensorProto, raw: memoryview, folder: str, shared_data: str) -> TensorProto:
    """``tensor`` referring to its data in ``shared_data/<sha256>.bin`` under ``folder``, written once."""
    location = f"{shared_data}/{hashlib.sha256(raw).hexdigest()}.bin"
    target = os.path.join(folder, location)
    if not os.path.isfile(target) or os.path.getsize(target) != len(raw):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with atomic_open(target) as f:
            f.write(raw)
    out = TensorProto()
    out.CopyFrom(tensor)
    out.ClearField("raw_data")
    out.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = out.external_data.add()
        entry.key, entry.value = key, value
    return out


def expose_outputs(model: onnx.ModelProto, values: Sequence[str]) -> None:
    """Add ``values`` (float graph values, shapes left to the runtime) to ``model``'s outputs, those it lacks."""
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(v, TensorProto.FLOAT, None)
                              for v in dict.fromkeys(values) if v not in have)


def write_model(model: onnx.ModelProto, arrays: dict[str, np.ndarray], path, shared_data: Optional[str] = None,
                min_shared_bytes: int = 1 << 20) -> None:
    """Write ``model`` with its initializers' data streamed from ``arrays`` (no copy of the weights
    in memory); atomically (temp file, then rename). Readable by any ONNX loader: protobuf merges the
    graph's fields in any order. ``shared_data``: a folder name beside ``path`` where each initializer of
    at least ``min_shared_bytes`` is kept once, in a file named by its content's SHA-256, which the model
    refers to as ONNX external data: models of one net at several input sizes share one copy of its
    weights on disk."""
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    graph.ClearField("initializer")
    tensors = []
    for t in model.graph.initializer:
        data = arrays[t.name] if t.name in arrays else None
        raw = memoryview(np.ascontiguousarray(data)).cast("B") if data is not None else memoryview(b"")
        if shared_data is not None and data is not None and len(raw) >= min_shared_bytes:
            t = _shared(t, raw, os.path.dirname(os.path.abspath(os.fspath(path))), shared_data)
            data, raw = None, memoryview(b"")
        header = t.SerializeToString()
        body = len(header) + (len(_field(9, len(raw))) + len(raw) if data is not None else 0)
        tensors.append((header, raw, body, data is not None))
    graph_bytes = graph.SerializeToString()
    graph_len = len(graph_bytes) + sum(len(_field(5, body)) + body for _, _, body, _ in tensors)
    with atomic_open(path) as f:
        f.write(head.SerializeToString())
        f.write(_field(7, graph_len))
        f.write(graph_bytes)
        for header, raw, body, has_data in tensors:
            f.write(_field(5, body))
            f.write(header)
            if has_data:
                f.write(_field(9, len(raw)))
                f.write(raw)
