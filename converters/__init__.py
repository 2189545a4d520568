"""Caffe graphs to PyTorch and ONNX, with Caffe's exact numbers.

    from prototxt import load_net
    from converters import to_pytorch, to_onnx
    graph = load_net("deploy.prototxt", "weights.caffemodel")
    module = to_pytorch(graph)          # torch.fx.GraphModule, eval mode
    model = to_onnx(graph)              # onnx.ModelProto (no torch import on this path)
    export_folder(graph, "net_pytorch") # model.py + weights.pt for plain torch (no torch import either)
    save_onnx(graph, "net.onnx")        # the ONNX model written to a file

The ONNX and folder paths never import torch: ``to_pytorch`` and ``verify`` import it lazily.
"""
from .registry import (InferenceIO, LayerImpl, implementation, inference_io, random_layers, random_values,
                       register_layer, registered_types)
# Loaded now (numpy only, no torch): a first `from .verify import ...` inside a function would set the
# package's attribute `verify` to the submodule, and `converters.verify(...)` after `converters.compare`
# or `random_inputs` in one process was "'module' object is not callable" (zoo convert then zoo verify).
from . import verify as _verify_module

# The layer families and plugins register now (no torch import: the families import numpy and prototxt),
# so that a plugin's shape rules (register_layer(..., shape=...)) hold for a net loaded after
# `import converters`; the fork types' rules are prototxt's own (prototxt.fork_shapes).
registered_types()


def to_onnx(graph, opset=None, dynamic_batch=True, fold=True):
    from .onnx import DEFAULT_OPSET, to_onnx as _to_onnx
    return _to_onnx(graph, opset=opset or DEFAULT_OPSET, dynamic_batch=dynamic_batch, fold=fold)


def save_onnx(graph, path, opset=None, dynamic_batch=True, outputs=(), shared_data=None):
    """Write ``graph`` as an ONNX file at ``path`` (atomically, weights streamed from the graph's arrays
    without a second copy in memory). Returns the model without initializer data and the arrays by
    initializer name, for a caller that runs the model on them. ``outputs``: graph values to output
    besides the net's own (e.g. Faster R-CNN's rois). ``shared_data``: a folder name beside ``path``
    keeping each large initializer once by content (``converters.onnx.write_model``), shared by every
    model written with it: a cache of one net at several input sizes holds its weights once."""
    from .onnx import DEFAULT_OPSET, build, expose_outputs, write_model
    model, arrays = build(graph, opset=opset or DEFAULT_OPSET, dynamic_batch=dynamic_batch)
    expose_outputs(model, outputs)
    write_model(model, arrays, path, shared_data=shared_data)
    return model, arrays


def to_pytorch(graph, training=False):
    from .torch import to_pytorch as _to_pytorch
    return _to_pytorch(graph, training=training)


def export_folder(graph, folder):
    """Write ``folder/model.py`` + ``folder/weights.pt`` (loads with plain torch, without this toolkit)."""
    from .folder import export_folder as _export
    return _export(graph, folder)


def run_pytorch(module, inputs):
    """Run a module from ``to_pytorch`` on numpy inputs (no autograd): {Caffe output name: array}."""
    from .torch import run
    return run(module, inputs)


def random_inputs(graph, seed=0):
    """One seeded array per net input (image-like values for 4-D inputs), as ``verify`` uses."""
    return _verify_module.random_inputs(graph, seed)


def compare(got, ref, rtol=1e-4):
    """(largest |got - ref|, whether they agree within rtol and atol = rtol * max(1, max|ref|))."""
    return _verify_module.compare(got, ref, rtol)


def random_note(layers):
    """Words naming the layers that sample at every forward pass (``random_layers``), for what was not compared."""
    return _verify_module.random_note(layers)


def proposal_feeds(graph):
    """Each py-faster-rcnn proposal layer whose im_info bottom is a net input (``ProposalFeed``: that input,
    the image input its scores come from, its rois top), as ``random_inputs`` feeds it."""
    return _verify_module.proposal_feeds(graph)


def verify(graph, inputs=None, blobs=None, **kwargs):
    return _verify_module.verify(graph, inputs=inputs, blobs=blobs, **kwargs)


__all__ = ["to_onnx", "save_onnx", "to_pytorch", "export_folder", "verify", "compare", "run_pytorch", "random_inputs",
           "inference_io", "InferenceIO", "random_layers", "random_values", "random_note", "proposal_feeds",
           "register_layer", "registered_types", "implementation", "LayerImpl"]
