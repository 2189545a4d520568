"""Caffe files in and out, and the intermediate graph every converter works on.

    from prototxt import load_net
    graph = load_net("deploy.prototxt", "weights.caffemodel")
"""
from .errors import (CaffeError, GraphError, InputShapeRequired, MissingBottomError, PrototxtSyntaxError,
                     ShapeError, SizeLimitError, UnsupportedLayers, WeightsError)
from .fillers import fill, layer_fillers
# The fork layer types' shape rules (SSD, segmentation, R-CNN, mobile nets) register on import, so that
# load_net knows a fork net's shapes without converters.
from . import fork_shapes  # noqa: F401
from .graph import (Graph, Layer, ParamSpec, Value, WeightsReport, attach_weights, build_graph, fill_missing, load_net,
                    load_solver, read_net, save_net, unique_name, NameSet)
from .shapes import DATA_TYPES, LOSS_TYPES, TRAINING_ONLY_TYPES
from .text import to_text
from .upgrade import upgrade_net, upgrade_solver
from .weights import load_blob, load_weights, read_caffemodel, write_blob, write_caffemodel

__all__ = [
    "CaffeError", "GraphError", "InputShapeRequired", "MissingBottomError", "PrototxtSyntaxError", "ShapeError",
    "SizeLimitError", "UnsupportedLayers", "WeightsError", "Graph", "Layer", "ParamSpec", "Value", "WeightsReport",
    "attach_weights", "build_graph",
    "load_net", "load_solver", "read_net", "save_net", "load_blob", "load_weights", "read_caffemodel",
    "write_blob", "write_caffemodel", "fill", "layer_fillers", "fill_missing", "unique_name", "NameSet", "DATA_TYPES",
    "LOSS_TYPES", "TRAINING_ONLY_TYPES", "to_text", "upgrade_net", "upgrade_solver",
]
