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
    """The graph with weights of a prototxt path or of a built-in NetParameter; weights that fit no
    layer of it are refused, layers they leave without weights named in a warning."""
    from prototxt import attach_weights, build_graph, load_net
    if isinstance(source, str):
        graph = load_net(source, weights, input_shapes=input_shapes)
    else:
        graph = build_graph(source, input_shapes=input_shapes, source=f"{source.name} (built-in architecture)")
        attach_weights(graph, weights)
    _check_weights(graph, source if isinstance(source, str) else graph.source, weights)
    return graph


def _check_weights(graph, prototxt: str, weights: str) -> None:
    """Caffe copies weights by layer name and keeps the filler init of the rest: with the wrong
    .caffemodel that is a net of random weights, converted without a word."""
    import warnings

    from zoo.cli import CommandError
    report = graph.weights_report
    weighted = [l.name for l in graph.layers if l.param_shapes]
    if report is None or not weighted:
        return
    if not report.matched:
        raise CommandError(f"{weights}: no layer of {prototxt} has weights there (none of its {len(weighted)} "
                           f"layers with weights is named in it); pass the .caffemodel trained with this prototxt")
    if report.missing:
        warnings.warn(f"{weights}: no stored weights for {len(report.missing)} of the {len(weighted)} layers with "
                      f"weights of {prototxt}, they keep their filler init: {', '.join(report.missing)}", stacklevel=2)


def _load(args):
    source, weights = _resolve(args)
    if weights is None:
        from zoo.cli import CommandError
        raise CommandError(f"{source}: conversion needs the trained weights: pass --weights MODEL.caffemodel")
    return _read(source, weights, dict(args.input_shape) or None), source if isinstance(source, str) else source.name


def run_convert(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    child = None if args.no_verify else FolderRunner()
    try:
        return _convert(args, start, child)
    finally:
        if child is not None:
            child.close()


class FolderRunner:
    """A fresh interpreter that imports the WRITTEN model.py of a folder and runs it, as its user will:
    started at once, so that it imports torch while the files are read and written (most of that work
    releases the GIL: AlexNet 3.0 -> 2.45 s); this process never imports torch to convert."""

    SCRIPT = """if True:
        import importlib.util, json, os, sys
        import numpy as np
        import torch
        request = sys.stdin.readline()
        if request:
            folder, feeds, results = json.loads(request)
            spec = importlib.util.spec_from_file_location("model", os.path.join(folder, "model.py"))
            model = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(model)
            with np.load(feeds) as data, torch.no_grad():
                out = model.load()(*[torch.from_numpy(data[f"arr_{i}"]) for i in range(len(data.files))])
            np.savez(results, *[v.numpy() for v in (out.values() if isinstance(out, dict) else [out])])
    """

    def __init__(self):
        import subprocess
        # this process's own import path (a user's layer modules, this toolkit) but not the interpreter's:
        # its stdlib and site-packages come first in the child anyway
        inside = tuple(os.path.join(os.path.abspath(p), "") for p in {sys.prefix, sys.base_prefix})
        path = [p or os.getcwd() for p in sys.path if not os.path.join(os.path.abspath(p or "."), "").startswith(inside)]
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(path)})

    def run(self, folder: str, inputs) -> list:
        """The outputs of the folder's net on ``inputs``, in its output order."""
        import json
        import tempfile

        import numpy as np

        from zoo.cli import CommandError
        with tempfile.TemporaryDirectory(prefix="zoo-verify.") as tmp:
            feeds, results = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
            np.savez(feeds, *inputs)
            _, err = self.proc.communicate(json.dumps([os.path.abspath(folder), feeds, results]) + "\n")
            if self.proc.returncode != 0:
                last = [line for line in err.splitlines() if line.strip()][-1:] or [f"exit {self.proc.returncode}"]
                raise CommandError(f"{folder}/model.py failed in a fresh interpreter: {last[0].strip()}")
            with np.load(results) as data:
                return [data[f"arr_{i}"] for i in range(len(data.files))]

    def close(self) -> None:
        if self.proc.returncode is None:  # never asked: the conversion failed or was not verified
            self.proc.kill()  # it only imported torch: nothing to finish
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


def _convert(args: argparse.Namespace, start: float, child: "FolderRunner | None") -> int:
    from zoo.cli import note
    graph, prototxt = _load(args)
    graph.require_shapes()
    name = graph.name or Path(prototxt).stem
    # the file names come from the model file: no path separators, no leading dot, no 10,000 characters
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")[:100] or "net"
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
    if child is not None:
        dynamic = not args.static_batch and not any(l.type in ("LSTM", "RNN", "Reshape") for l in graph.layers)
        _verify_outputs(graph, model, arrays, dynamic, folder, child)
    sys.stdout.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)
    note(f"{time.perf_counter() - start:.1f} s, peak RSS {peak:.0f} MB")
    return 0


def _verify_outputs(graph, model, arrays, dynamic_batch: bool, folder: str, child: FolderRunner) -> None:
    """One seeded input through the written PyTorch folder (imported in a fresh interpreter) and the
    ONNX model just written; the largest difference per output. onnxruntime runs on the graph's own
    arrays (fed as inputs), so this process holds no second copy of the weights."""
    import onnx

    from converters.verify import compare, random_inputs
    from zoo.cli import CommandError
    from zoo.runtime import session
    inputs = random_inputs(graph)
    if dynamic_batch:  # one item is enough to compare, and keeps the check cheap
        inputs = [x[:1] for x in inputs]
    light = onnx.ModelProto()
    light.CopyFrom(model)
    tensors = list(light.graph.initializer)
    del light.graph.initializer[:]
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors)
    sess = session(light.SerializeToString(), device="cpu", light=True)
    feeds = dict(arrays)
    feeds.update({i.name: x for i, x in zip(sess.get_inputs(), inputs)})
    got = sess.run(None, feeds)
    expected = child.run(folder, inputs)
    names = [graph.values[o.name].caffe_name if o.name in graph.values else o.name for o in sess.get_outputs()]
    if len(expected) != len(got):
        raise CommandError(f"{folder}/model.py gives {len(expected)} outputs, the ONNX model {len(got)}")
    bad = []
    for name, ref, out in zip(names, expected, got):
        diff, ok = compare(out, ref, rtol=1e-4)  # shapes, then the reference README's tolerance
        print(f"{name}: max |pytorch - onnxruntime| = {diff:.3g}")
        if not ok:
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
        from converters.registry import inference_io
        fed = inference_io(graph).inputs
        inputs = [data[f"in/{graph.values[v].caffe_name}"] for v in fed]
        blobs = {k[4:]: data[k] for k in data.files if k.startswith("out/") and "_split_" not in k}
        shapes = {graph.values[v].caffe_name: x.shape for v, x in zip(fed, inputs)}
        graph = _read(*_resolve(args), {**dict(args.input_shape), **shapes})
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
