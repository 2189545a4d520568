"""`zoo verify`: PyTorch and onnxruntime (and reference arrays) blob by blob; the first layer where they part."""
from __future__ import annotations

import argparse

from zoo.cli.common import CommandError, add_model_arguments, one_line, resolve_model

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


def read_reference(path: str, fed: list, names: set[str]) -> tuple[list, dict]:
    """(the inputs in/<blob> of the fed values, the reference blobs out/<blob> the net has) of an .npz,
    or one line naming the file and what is wrong with it."""
    import zipfile

    import numpy as np
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise CommandError(f"--reference {path}: a single array, not an .npz of in/<blob> and out/<blob> arrays")
        with data:
            arrays = {k: data[k] for k in data.files if k.startswith("in/") or
                      (k.startswith("out/") and "_split_" not in k and k[4:] in names)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CommandError(f"--reference {path}: not a readable .npz ({one_line(str(exc))[:200]})") from None
    missing = [f"in/{v.caffe_name}" for v in fed if f"in/{v.caffe_name}" not in arrays]
    if missing:
        raise CommandError(f"--reference {path}: no {', '.join(missing)} array (the net's input"
                           f"{'s' if len(fed) > 1 else ''}: {', '.join(f'in/{v.caffe_name}' for v in fed)})")
    inputs = [arrays[f"in/{v.caffe_name}"] for v in fed]
    for v, x in zip(fed, inputs):
        if v.shape is not None and (x.ndim != len(v.shape) or x.dtype.kind not in "fiu"):
            raise CommandError(f"--reference {path}: in/{v.caffe_name} is {x.dtype} {tuple(x.shape)}; the net's input "
                               f"'{v.caffe_name}' is {len(v.shape)}-D, e.g. {tuple(v.shape)}")
    return inputs, {k[4:]: x for k, x in arrays.items() if k.startswith("out/")}


def run(args: argparse.Namespace) -> int:
    from converters import inference_io, verify
    model = resolve_model(args)
    graph = model.graph(dict(args.input_shape) or None)
    inputs = blobs = None
    if args.reference:
        fed = inference_io(graph).inputs  # no label that only a left-out loss reads
        inputs, blobs = read_reference(args.reference, [graph.values[v] for v in fed], set(graph.caffe_blobs()))
        shapes = {graph.values[v].caffe_name: x.shape for v, x in zip(fed, inputs)}
        graph = model.graph({**dict(args.input_shape), **shapes})
    report = verify(graph, inputs=inputs, blobs=blobs)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
