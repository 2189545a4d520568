"""`zoo verify`: PyTorch and onnxruntime (and reference arrays) blob by blob; the first layer where they part."""
from __future__ import annotations

import argparse

from zoo.cli.common import add_model_arguments, resolve_model

HELP = "run PyTorch and onnxruntime (and reference arrays) blob by blob; name the first divergence"
EXAMPLES = """\
examples:
  zoo verify deploy.prototxt --weights model.caffemodel
  zoo verify deploy.prototxt --weights model.caffemodel --reference io.npz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--reference", metavar="NPZ", help="reference arrays: in/<blob> inputs and out/<blob> blobs "
                                                      "(e.g. computed by real Caffe)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from converters import inference_io, verify
    model = resolve_model(args)
    graph = model.graph(dict(args.input_shape) or None)
    inputs = blobs = None
    if args.reference:
        data = np.load(args.reference)
        fed = inference_io(graph).inputs  # no label that only a left-out loss reads
        inputs = [data[f"in/{graph.values[v].caffe_name}"] for v in fed]
        blobs = {k[4:]: data[k] for k in data.files if k.startswith("out/") and "_split_" not in k}
        shapes = {graph.values[v].caffe_name: x.shape for v, x in zip(fed, inputs)}
        graph = model.graph({**dict(args.input_shape), **shapes})
    report = verify(graph, inputs=inputs, blobs=blobs)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
