"""Shared by the converter tests: load a reference fixture with its weights, run the converted
PyTorch module / ONNX model on the fixture's inputs and read any kept blob, compare as the
reference README says (float32, rtol=1e-4, atol=1e-4*max(1, max|ref|))."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from prototxt import load_net
from tests.helpers import make_weights

RTOL = 1e-4


def atol(ref: np.ndarray) -> float:
    return 1e-4 * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)


def close(got: np.ndarray, ref: np.ndarray) -> bool:
    """The reference README's comparison, exactly."""
    got = np.asarray(got)
    return got.shape == ref.shape and bool(np.allclose(got, ref, rtol=RTOL, atol=atol(ref)))


def violation(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / (atol + rtol*|ref|): <= 1 exactly where np.allclose passes."""
    got = np.asarray(got, dtype=np.float64)
    ref64 = ref.astype(np.float64)
    if got.shape != ref.shape:
        return float("inf")
    if not ref.size:
        return 0.0
    return float((np.abs(got - ref64) / (atol(ref) + RTOL * np.abs(ref64))).max())


def describe(got: np.ndarray, ref: np.ndarray) -> str:
    if np.asarray(got).shape != ref.shape:
        return f"shape {tuple(np.asarray(got).shape)} != Caffe's {ref.shape}"
    diff = np.abs(np.asarray(got, dtype=np.float64) - ref)
    return f"max |diff| {diff.max():.3g} = {violation(got, ref):.2f}x the tolerance (max |ref| {np.abs(ref).max():.3g})"


# -- fixtures --------------------------------------------------------------------------------------

def meta(fixture: Path) -> dict:
    path = fixture / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def real_weights(fixture: Path) -> Optional[Path]:
    """The corpus caffemodel a fixture ran with ('real: <path>' in meta.json), else None."""
    w = meta(fixture).get("weights") or ""
    if not w.startswith("real:"):
        return None
    return fixture.parent.parent.parent / "corpus" / w.split("real:", 1)[1].strip()


def io_arrays(fixture: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, kept blobs) of io.npz by Caffe blob name."""
    with np.load(fixture / "io.npz") as io:
        ins = {k[3:]: io[k] for k in io.files if k.startswith("in/")}
        outs = {k[4:]: io[k] for k in io.files if k.startswith("out/")}
    return ins, outs


@contextlib.contextmanager
def fixture_weights(fixture: Path, weights_cache):
    """The caffemodel the fixture's Caffe run loaded: the real corpus file, or make_weights.py's output
    (made once per cache folder; deleted after use unless the cache is kept, as they add up to ~8 GB)."""
    real = real_weights(fixture)
    if real is not None or not (fixture / "recipe.json").is_file():
        yield real
        return
    folder, keep = weights_cache
    path = make_weights(fixture, "layer", folder)
    try:
        yield path
    finally:
        if not keep:
            path.unlink(missing_ok=True)


def load_fixture(fixture: Path, weights_cache):
    """(graph with weights attached, inputs by Caffe name, kept blobs by Caffe name)."""
    ins, outs = io_arrays(fixture)
    with fixture_weights(fixture, weights_cache) as weights:
        graph = load_net(fixture / "net.prototxt", weights, input_shapes={k: v.shape for k, v in ins.items()})
    constant_fillers(graph)
    return graph, ins, outs


def constant_fillers(graph) -> None:
    """Give layers the caffemodel left without weights what Caffe ran them with: their fillers, where
    those are constant (models/opencv_dnn_layer_tests__shared_weights: a caffemodel layer goes to the
    FIRST net layer of its name, a second 'conv' keeps its filler init). The converters themselves
    refuse a net with such layers: the test reproduces Caffe's run, it is not a converter feature."""
    for layer in graph.layers:
        if not layer.param_shapes or layer.blobs:
            continue
        fillers = {}
        for desc, value in layer.proto.ListFields():
            if desc.message_type is None or isinstance(value, (list, tuple)) or not hasattr(value, "DESCRIPTOR"):
                continue
            for name in ("weight_filler", "bias_filler"):
                if name in value.DESCRIPTOR.fields_by_name:
                    fillers[name] = getattr(value, name)
        order = [fillers.get("weight_filler"), fillers.get("bias_filler")]
        blobs = []
        for shape, filler in zip(layer.param_shapes, order):
            if filler is None or filler.type != "constant":
                break
            blobs.append(np.full(shape, filler.value, dtype=np.float32))
        if len(blobs) == len(layer.param_shapes):
            layer.blobs = blobs


def comparable_blobs(graph, outs: dict[str, np.ndarray]) -> list[str]:
    """The kept blobs to compare: all but Caffe's own inserted Split copies (``*_split_*`` blobs the
    prototxt does not name; a real layer's top such as ``dummy_split_0`` is compared)."""
    names = set(graph.caffe_blobs())
    return [b for b in outs if b in names or "_split_" not in b]


# -- running ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def torch_cpu(threads: int = 2):
    """Caffe's numbers on CPU: ``threads`` intra-op threads and oneDNN (mkldnn) off. oneDNN's
    convolutions accumulate in another order than Caffe's im2col + GEMM; with them resnet50's kept
    blobs miss the tolerance by ~1.2x, without them the plain ATen kernels stay within it."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
            yield
    finally:
        torch.set_num_threads(before)


def torch_values(module, graph, inputs: dict[str, np.ndarray], blobs: Iterable[str], dtype=None,
                 device: str = "cpu") -> dict:
    """Run ``module`` on the inputs and capture the value each Caffe blob holds after the forward pass
    (``graph.final_value``) with a torch.fx Interpreter; also returns the call's output under ``None``.
    ``device``: where the module and its inputs run (the values come back as NumPy arrays)."""
    import torch
    from torch.fx import Interpreter

    dtype = dtype or torch.float32
    wanted = {module.value_nodes[graph.final_value(b)]: b for b in blobs}
    got: dict = {}

    class Recorder(Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if n.name in wanted:
                got[wanted[n.name]] = r.detach().to(torch.float64 if dtype == torch.float64 else torch.float32
                                                    ).cpu().numpy().copy()
            return r

    feeds = [torch.from_numpy(np.ascontiguousarray(inputs[graph.values[v].caffe_name])).to(device, dtype)
             for v in graph.inputs]
    with torch_cpu():
        got[None] = Recorder(module.to(device)).run(*feeds)
    return got


def ort_session(model, threads: int = 2, optimize: bool = True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def expose(model, values: Iterable[str]) -> None:
    """Add graph outputs for intermediate values (shape left to onnxruntime)."""
    from onnx import TensorProto, helper
    present = {o.name for o in model.graph.output}
    for v in values:
        if v not in present:
            model.graph.output.append(helper.make_tensor_value_info(v, TensorProto.FLOAT, None))
            present.add(v)


def ort_run(model, inputs: dict[str, np.ndarray], optimize: bool = True) -> dict[str, np.ndarray]:
    sess = ort_session(model, optimize=optimize)
    feeds = {i.name: np.ascontiguousarray(inputs[i.name], dtype=np.float32) for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def onnx_values(graph, inputs: dict[str, np.ndarray], blobs: Iterable[str]) -> dict[str, np.ndarray]:
    """Each blob's value from onnxruntime: net outputs from the model as shipped (BatchNorm/Scale
    folded into the convolution before them, default session options), intermediate blobs from
    ``to_onnx(graph, fold=False)`` with them exposed as extra outputs, since folding removes some
    intermediate values. That second model is an instrument, run as written: with graph optimizations
    on, onnxruntime folds BatchNorm into the convolution itself (in float32, even at its basic level),
    which is what fold=False is there to avoid. Where nothing folds, the shipped model gives every
    value. Blobs that are net inputs nothing rewrites are left out (passed through untouched)."""
    from converters import to_onnx
    from converters.fold import fold_affine

    blobs = list(blobs)
    final = {b: graph.final_value(b) for b in blobs}
    outputs = {b for b, v in final.items() if v in graph.outputs}
    inner = {b: v for b, v in final.items() if b not in outputs and graph.values[v].producer is not None}
    folds = bool(fold_affine(graph))
    model = to_onnx(graph)
    if not folds:  # nothing to fold: the shipped model holds every value
        expose(model, inner.values())
    got = ort_run(model, inputs)
    out = {b: got[final[b]] for b in outputs}
    del model
    if folds and inner:
        model = to_onnx(graph, fold=False)
        expose(model, inner.values())
        got = ort_run(model, inputs, optimize=False)
        del model
    out.update({b: got[v] for b, v in inner.items()})
    return out
