"""`zoo convert`: a Caffe net + weights to ONNX and a standalone PyTorch folder, then a check of both."""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from zoo.cli.common import CommandError, add_model_arguments, note, resolve_model

HELP = "convert a Caffe net + weights to ONNX and a standalone PyTorch folder, then check both"
EXAMPLES = """\
examples:
  zoo convert deploy.prototxt --weights model.caffemodel -o out/
  zoo convert deploy.prototxt --weights model.caffemodel --input-shape data=1,3,224,224 --no-verify
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("-o", "--output", metavar="DIR", type=Path, default=Path("."), help="output folder (default: .)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--no-verify", action="store_true", help="skip running both outputs on a seeded input")
    p.add_argument("--static-batch", action="store_true", help="keep the prototxt's batch size in the ONNX model")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    importer = None if args.no_verify else _import_torch_meanwhile()
    try:
        return _convert(args, start)
    finally:
        if importer is not None:  # never leave the interpreter while a thread is importing
            importer.join()


def _import_torch_meanwhile():
    """Import torch (needed only to verify) in a thread while the files are read and written: most of
    that work releases the GIL (AlexNet: 3.0 -> 2.45 s, median of 7 each, same machine)."""
    import importlib
    import threading

    def work():
        try:
            importlib.import_module("torch")
        except Exception:  # the verification says what is wrong when it imports torch itself
            pass
    thread = threading.Thread(target=work, name="import-torch", daemon=True)
    thread.start()
    return thread


def _convert(args: argparse.Namespace, start: float) -> int:
    resolved = resolve_model(args)
    graph = resolved.graph(dict(args.input_shape) or None)
    graph.require_shapes()
    name = graph.name or Path(resolved.source).stem
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    from converters import export_folder, save_onnx
    onnx_path = out / f"{safe}.onnx"
    model, arrays = save_onnx(graph, onnx_path, opset=args.opset, dynamic_batch=not args.static_batch)
    folder = export_folder(graph, out / f"{safe}_pytorch")  # no torch: it is imported only to verify
    print(f"wrote {onnx_path}")
    print(f"wrote {folder}/ (model.py, weights.pt)")
    if not args.no_verify:
        dynamic = not args.static_batch and all(_any_batch(l.type) for l in graph.layers)
        _verify_outputs(graph, model, arrays, dynamic)
    sys.stdout.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)
    note(f"{time.perf_counter() - start:.1f} s, peak RSS {peak:.0f} MB")
    return 0


def _any_batch(layer_type: str) -> bool:
    """Whether the layer runs at another batch than the net's (``LayerImpl.any_batch``; data layers do)."""
    from converters import implementation
    impl = implementation(layer_type)
    return impl is None or impl.any_batch


def _verify_outputs(graph, model, arrays, dynamic_batch: bool) -> None:
    """One seeded input through the PyTorch module and the ONNX model just written; the largest
    difference per output. Both run on the graph's own arrays (the PyTorch parameters are views of
    them, the ONNX weights are fed as inputs), so the check holds no second copy of the weights."""
    import numpy as np
    import onnx

    from converters import random_inputs, run_pytorch, to_pytorch
    from zoo.inference.runtime import session
    inputs = random_inputs(graph)
    if dynamic_batch:  # one item is enough to compare, and keeps the check cheap
        inputs = [x[:1] for x in inputs]
    expected = run_pytorch(to_pytorch(graph), inputs)
    light = onnx.ModelProto()
    light.CopyFrom(model)
    tensors = list(light.graph.initializer)
    del light.graph.initializer[:]
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors)
    sess = session(light.SerializeToString(), device="cpu", light=True)
    feeds = dict(arrays)
    feeds.update({i.name: x for i, x in zip(sess.get_inputs(), inputs)})
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    bad = []
    for name, ref in expected.items():
        diff = float(np.max(np.abs(got[name].astype(np.float64) - ref))) if ref.size else 0.0
        print(f"{name}: max |pytorch - onnxruntime| = {diff:.3g}")
        if not np.allclose(got[name], ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.max(np.abs(ref))))):
            bad.append(name)
    if bad:
        raise CommandError(f"PyTorch and onnxruntime disagree on {', '.join(bad)}; run `zoo verify` to find "
                           f"the first layer where they part")
