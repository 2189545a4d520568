"""`zoo convert` and `zoo verify`: a Caffe net (+ weights) to ONNX and a standalone PyTorch folder."""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

def add_common(p: argparse.ArgumentParser) -> None:
    from zoo.cli import _input_shape
    p.add_argument("model", nargs="?", help="a Caffe deploy .prototxt or a zoo model name (or give --card FILE)")
    p.add_argument("--weights", metavar="CAFFEMODEL", help="the .caffemodel (default: the zoo cache for a model name)")
    p.add_argument("--card", metavar="FILE", help="a user model card (JSON) instead of a built-in name")
    p.add_argument("--input-shape", metavar="BLOB=N,C,H,W", action="append", type=_input_shape, default=[],
                   help="give or override the shape of a net input (repeatable)")


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("-o", "--output", metavar="DIR", type=Path, default=Path("."), help="output folder (default: .)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--no-verify", action="store_true", help="skip running both outputs on a seeded input")
    p.add_argument("--static-batch", action="store_true", help="keep the prototxt's batch size in the ONNX model")


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--reference", metavar="NPZ", help="reference arrays: in/<blob> inputs and out/<blob> blobs "
                                                      "(e.g. computed by real Caffe)")


def _resolve(args):
    """(prototxt path or built-in deploy NetParameter, weights path) from a path, a zoo name or a user card."""
    from zoo.cli import CommandError, UsageError
    model = args.model
    if (model is None) == (args.card is None):
        raise UsageError("give a deploy .prototxt or a model NAME, or --card FILE (one of them)")
    if args.card is None and (model.endswith(".prototxt") or os.path.sep in model or os.path.exists(model)):
        return model, args.weights
    from zoo import registry
    card = registry.load_user_card(args.card) if args.card else registry.get(model)
    if card.architecture_path is not None:
        source = str(card.architecture_path)
    else:
        from zoo.models import arch
        source = arch.build(card.architecture)
        source.name = card.name  # outputs are named after the card (age_net and gender_net are both "CaffeNet")
    weights = args.weights
    if weights is None:  # a zoo model: its weights from the cache, downloaded and verified the first time
        from zoo.fetch import fetch_weights
        path, status = fetch_weights(card)
        weights = str(path)
        if not status.startswith("verified"):
            from zoo.cli import note
            note(f"{card.name}: {status}")
    elif not os.path.exists(weights):
        raise CommandError(f"{weights}: no such file")
    return source, weights


def _read(source, weights: str, input_shapes=None):
    """The graph with weights of a prototxt path or of a built-in NetParameter."""
    from prototxt import attach_weights, build_graph, load_net
    import converters  # noqa: F401  (the fork layer types' shape rules)
    if isinstance(source, str):
        return load_net(source, weights, input_shapes=input_shapes)
    graph = build_graph(source, input_shapes=input_shapes, source=f"{source.name} (built-in architecture)")
    attach_weights(graph, weights)
    return graph


def _load(args):
    source, weights = _resolve(args)
    if weights is None:
        from zoo.cli import CommandError
        raise CommandError(f"{source}: conversion needs the trained weights: pass --weights MODEL.caffemodel")
    return _read(source, weights, dict(args.input_shape) or None), source if isinstance(source, str) else source.name


def run_convert(args: argparse.Namespace) -> int:
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
    from zoo.cli import note
    graph, prototxt = _load(args)
    graph.require_shapes()
    name = graph.name or Path(prototxt).stem
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    from converters.folder import export_folder
    from converters.onnx import DEFAULT_OPSET, build, write_model
    model, arrays = build(graph, opset=args.opset or DEFAULT_OPSET, dynamic_batch=not args.static_batch)
    onnx_path = out / f"{safe}.onnx"
    write_model(model, arrays, onnx_path)
    folder = export_folder(graph, out / f"{safe}_pytorch")  # no torch: it is imported only to verify
    print(f"wrote {onnx_path}")
    print(f"wrote {folder}/ (model.py, weights.pt)")
    if not args.no_verify:
        dynamic = not args.static_batch and not any(l.type in ("LSTM", "RNN", "Reshape") for l in graph.layers)
        _verify_outputs(graph, model, arrays, dynamic)
    sys.stdout.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)
    note(f"{time.perf_counter() - start:.1f} s, peak RSS {peak:.0f} MB")
    return 0


def _verify_outputs(graph, model, arrays, dynamic_batch: bool) -> None:
    """One seeded input through the PyTorch module and the ONNX model just written; the largest
    difference per output. Both run on the graph's own arrays (the PyTorch parameters are views of
    them, the ONNX weights are fed as inputs), so the check holds no second copy of the weights."""
    import numpy as np
    import onnx

    from converters.torch import run, to_pytorch
    from converters.verify import random_inputs
    from zoo.cli import CommandError
    from zoo.runtime import session
    inputs = random_inputs(graph)
    if dynamic_batch:  # one item is enough to compare, and keeps the check cheap
        inputs = [x[:1] for x in inputs]
    expected = run(to_pytorch(graph), inputs)
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


def run_verify(args: argparse.Namespace) -> int:
    import numpy as np

    from converters.verify import verify
    graph, _ = _load(args)
    inputs = blobs = None
    if args.reference:
        data = np.load(args.reference)
        inputs = [data[f"in/{graph.values[v].caffe_name}"] for v in graph.inputs]
        blobs = {k[4:]: data[k] for k in data.files if k.startswith("out/") and "_split_" not in k}
        shapes = {graph.values[v].caffe_name: x.shape for v, x in zip(graph.inputs, inputs)}
        graph = _read(*_resolve(args), shapes)
    report = verify(graph, inputs=inputs, blobs=blobs)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def load_card_graph(card, weights: str | None = None, batch: int | None = None):
    """(Graph with weights, weights path) of a model card: its architecture and its cached weights."""
    from zoo.cli import CommandError
    if weights is None:
        from zoo.fetch import fetch_weights
        weights = str(fetch_weights(card)[0])
    elif not os.path.exists(weights):
        raise CommandError(f"{weights}: no such file")
    shapes = {card.input.blob: (batch, *card.input.shape)} if batch else None
    if card.architecture_path is not None:
        source = str(card.architecture_path)
    else:
        from zoo.models import arch
        source = arch.build(card.architecture)
        source.name = card.name
    return _read(source, weights, shapes), weights
