"""Caffe graphs to PyTorch and ONNX, with Caffe's exact numbers.

    from prototxt import load_net
    from converters import to_pytorch, to_onnx
    graph = load_net("deploy.prototxt", "weights.caffemodel")
    module = to_pytorch(graph)          # torch.fx.GraphModule, eval mode
    model = to_onnx(graph)              # onnx.ModelProto (no torch import on this path)
    export_folder(graph, "net_pytorch") # model.py + weights.pt for plain torch (no torch import either)

The ONNX and folder paths never import torch: ``to_pytorch`` and ``verify`` import it lazily.
"""
from .registry import LayerImpl, register_layer, registered_types

# The built-in layer families (and plugins) register their shape rules now, so that a net loaded after
# `import converters` knows the fork types (no torch import: the families import numpy and prototxt).
registered_types()


def to_onnx(graph, opset=None, dynamic_batch=True, fold=True):
    from .onnx import DEFAULT_OPSET, to_onnx as _to_onnx
    return _to_onnx(graph, opset=opset or DEFAULT_OPSET, dynamic_batch=dynamic_batch, fold=fold)


def to_pytorch(graph, training=False):
    from .torch import to_pytorch as _to_pytorch
    return _to_pytorch(graph, training=training)


def export_folder(graph, folder):
    """Write ``folder/model.py`` + ``folder/weights.pt`` (loads with plain torch, without this toolkit)."""
    from .folder import export_folder as _export
    return _export(graph, folder)


def verify(graph, inputs=None, blobs=None, **kwargs):
    from .verify import verify as _verify
    return _verify(graph, inputs=inputs, blobs=blobs, **kwargs)


__all__ = ["to_onnx", "to_pytorch", "export_folder", "verify", "register_layer", "registered_types", "LayerImpl"]
