"""Caffe files in and out, and the intermediate graph every converter works on.

    from prototxt import load_net
    graph = load_net("deploy.prototxt", "weights.caffemodel")
"""
from .errors import (CaffeError, GraphError, InputShapeRequired, MissingBottomError, PrototxtSyntaxError,
                     ShapeError, SizeLimitError, UnsupportedLayers, WeightsError)
from .graph import (Graph, Layer, ParamSpec, Value, WeightsReport, attach_weights, build_graph, load_net,
                    load_solver, read_net, save_net)
from .weights import load_blob, load_weights, read_caffemodel, write_blob, write_caffemodel

__all__ = [
    "CaffeError", "GraphError", "InputShapeRequired", "MissingBottomError", "PrototxtSyntaxError", "ShapeError",
    "SizeLimitError", "UnsupportedLayers", "WeightsError", "Graph", "Layer", "ParamSpec", "Value", "WeightsReport", "attach_weights", "build_graph",
    "load_net", "load_solver", "read_net", "save_net", "load_blob", "load_weights", "read_caffemodel",
    "write_blob", "write_caffemodel",
]
