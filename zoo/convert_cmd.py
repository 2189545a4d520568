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
    p.add_argument("model", help="a Caffe deploy .prototxt, or a zoo model name / --card file with --weights")
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


def _resolve(args) -> tuple[str, str | None]:
    """(prototxt path, weights path) from a path, a zoo name or a user card."""
    from zoo.cli import CommandError
    model = args.model
    if args.card is None and (model.endswith(".prototxt") or os.path.sep in model or os.path.exists(model)):
        return model, args.weights
    from zoo import registry
    from zoo.download import cache_dir
    card = registry.load_user_card(args.card) if args.card else registry.get(model)
    arch = card.architecture_path()
    if arch is None:
        bundled = Path(__file__).parent / "models" / "arch" / f"{card.architecture}.prototxt"
        if not bundled.exists():
            raise CommandError(f"{card.name}: its deploy net is not bundled yet; pass the deploy .prototxt "
                               f"(zoo convert deploy.prototxt --weights {card.weights.filename})")
        arch = bundled
    weights = args.weights or str(cache_dir() / card.weights.filename)
    if not os.path.exists(weights):
        raise CommandError(f"{card.name}: weights not found at {weights}; run `zoo download {card.name}` "
                           f"or pass --weights FILE")
    return str(arch), weights


def _load(args):
    from prototxt import load_net
    prototxt, weights = _resolve(args)
    if weights is None:
        from zoo.cli import CommandError
        raise CommandError(f"{prototxt}: conversion needs the trained weights: pass --weights MODEL.caffemodel")
    return load_net(prototxt, weights, input_shapes=dict(args.input_shape) or None), prototxt


def run_convert(args: argparse.Namespace) -> int:
    from zoo.cli import note
    start = time.perf_counter()
    graph, prototxt = _load(args)
    graph.require_shapes()
    name = graph.name or Path(prototxt).stem
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    from converters import to_onnx
    from converters.onnx import save_onnx
    model = to_onnx(graph, opset=args.opset, dynamic_batch=not args.static_batch)
    onnx_path = out / f"{safe}.onnx"
    save_onnx(model, onnx_path)
    del model
    from converters.torch import export_folder, to_pytorch
    module = to_pytorch(graph)
    folder = export_folder(module, graph, out / f"{safe}_pytorch")
    print(f"wrote {onnx_path}")
    print(f"wrote {folder}/ (model.py, weights.pt)")
    if not args.no_verify:
        from converters.verify import verify
        report = verify(graph)
        for line in report.lines():
            print(line)
        if not report.ok:
            from zoo.cli import CommandError
            raise CommandError("PyTorch and onnxruntime disagree (see above); please report this net")
    sys.stdout.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)
    note(f"{time.perf_counter() - start:.1f} s, peak RSS {peak:.0f} MB")
    return 0


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
        from prototxt import load_net
        prototxt, weights = _resolve(args)
        graph = load_net(prototxt, weights, input_shapes=shapes)
    report = verify(graph, inputs=inputs, blobs=blobs)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
