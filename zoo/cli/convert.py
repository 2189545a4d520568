"""`zoo convert`: a Caffe net + weights to ONNX and a standalone PyTorch folder, then a check of both."""
from __future__ import annotations

import argparse
import os
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
    resolved = resolve_model(args)
    graph = resolved.graph(dict(args.input_shape) or None)
    graph.require_shapes()
    name = graph.name or Path(resolved.source).stem
    # the file names come from the model file: no path separators, no leading dot, no 10,000 characters
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")[:100] or "net"
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    from converters import export_folder, save_onnx
    onnx_path = out / f"{safe}.onnx"
    model, arrays = save_onnx(graph, onnx_path, opset=args.opset, dynamic_batch=not args.static_batch)
    folder = export_folder(graph, out / f"{safe}_pytorch")  # no torch: it is imported only to verify
    print(f"wrote {onnx_path}")
    print(f"wrote {folder}/ (model.py, weights.pt)")
    if child is not None:
        dynamic = not args.static_batch and all(_any_batch(l.type) for l in graph.layers)
        _verify_outputs(graph, model, arrays, dynamic, folder, child)
    sys.stdout.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)
    note(f"{time.perf_counter() - start:.1f} s, peak RSS {peak:.0f} MB")
    return 0


def _any_batch(layer_type: str) -> bool:
    """Whether the layer runs at another batch than the net's (``LayerImpl.any_batch``; data layers do)."""
    from converters import implementation
    impl = implementation(layer_type)
    return impl is None or impl.any_batch


def _verify_outputs(graph, model, arrays, dynamic_batch: bool, folder: str, child: FolderRunner) -> None:
    """One seeded input through the written PyTorch folder (imported in a fresh interpreter) and the
    ONNX model just written; the largest difference per output. onnxruntime runs on the graph's own
    arrays (fed as inputs), so this process holds no second copy of the weights."""
    import onnx

    from converters import compare, random_inputs, random_layers, random_note, random_values
    from zoo.inference.runtime import session
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
    bad, sampled = [], {graph.values[v].caffe_name for v in random_values(graph)}
    for name, ref, out in zip(names, expected, got):
        if name in sampled:  # each backend draws its own masks: equal only on average
            print(f"{name}: random by design, not compared (computed from {random_note(random_layers(graph))})")
            continue
        diff, ok = compare(out, ref, rtol=1e-4)  # shapes, then the reference README's tolerance
        print(f"{name}: max |pytorch - onnxruntime| = {diff:.3g}")
        if not ok:
            bad.append(name)
    if bad and _explained_by_pooling_ties(graph, inputs):
        return
    if bad:
        raise CommandError(f"PyTorch and onnxruntime disagree on {', '.join(bad)}; run `zoo verify` to find "
                           f"the first layer where they part")


def _explained_by_pooling_ties(graph, inputs) -> bool:
    """A net with max-pooling masks (SegNet, ENet) whose outputs disagree: compare every blob in this
    process (``converters.verify``, torch imported only now). True, with its lines printed, when the only
    difference is a near-tie in a mask (two window values equal within float32 rounding, which the
    backends' own rounding broke differently) and every blob before it agrees."""
    if not any(layer.type == "Pooling" and len(layer.tops) == 2 for layer in graph.layers):
        return False
    from converters import verify
    report = verify(graph, inputs)
    if not report.ok or not report.ties:
        return False
    for line in report.lines():
        print(line)
    return True
