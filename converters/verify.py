"""Run the PyTorch module and the ONNX model (and reference arrays, when given) blob by blob and
report the first layer where they part."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from prototxt.fork_shapes import python_kind
from prototxt.graph import Graph


@dataclass
class BlobCheck:
    blob: str                 # Caffe blob name (final value) or unique value name
    layer: str                # producing layer
    torch_vs_onnx: Optional[float] = None
    torch_vs_reference: Optional[float] = None
    onnx_vs_reference: Optional[float] = None
    ok: bool = True
    shape: Optional[tuple[int, ...]] = None  # of the PyTorch value (how many proposals a proposal layer kept)
    random: bool = False      # computed from a layer that samples at test: random by design, not compared
    tied: bool = False        # computed from a max-pooling mask the backends broke a near-tie apart in


@dataclass
class VerifyReport:
    checks: list[BlobCheck] = field(default_factory=list)
    outputs: dict[str, float] = field(default_factory=dict)   # output -> max |torch - onnx|
    first_divergence: Optional[BlobCheck] = None
    random_layers: list[str] = field(default_factory=list)    # layers that sample at test (Monte Carlo dropout)
    ties: dict[str, tuple[int, int]] = field(default_factory=dict)  # mask blob -> (near-ties told apart, entries)

    @property
    def ok(self) -> bool:
        return self.first_divergence is None

    def lines(self) -> list[str]:
        out = [f"{name}: max |pytorch - onnxruntime| = {d:.3g}" for name, d in self.outputs.items()]
        skipped = sum(c.random for c in self.checks)
        if skipped:
            out.append(f"{skipped} blobs computed from {random_note(self.random_layers)} are random by design "
                       f"and were not compared")
        tied = sum(c.tied for c in self.checks)
        if tied:
            masks = ", ".join(f"'{m}' ({n} of {total})" for m, (n, total) in self.ties.items())
            out.append(f"max pooling masks {masks}: where a window's two largest values are equal within "
                       f"the tolerance (a near-tie each backend's rounding breaks its own way), the backends chose "
                       f"different positions; the {tied} blobs computed from those masks were not compared between "
                       f"them" + (" (each agrees with the reference in one of them)" if any(
                           c.tied and c.torch_vs_reference is not None for c in self.checks) else ""))
            skipped += tied
        if self.first_divergence:
            c = self.first_divergence
            out.append(f"first divergence at layer '{c.layer}' (blob '{c.blob}'): "
                       f"pytorch-onnx {_fmt(c.torch_vs_onnx)}, pytorch-reference {_fmt(c.torch_vs_reference)}, "
                       f"onnx-reference {_fmt(c.onnx_vs_reference)}")
        else:
            out.append(f"all {len(self.checks) - skipped} compared blobs agree")
        return out


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3g}"


@dataclass(frozen=True)
class ProposalFeed:
    """A proposal layer's inputs and output as net values: the image input its scores come from, the
    input its im_info ([[height, width, scale]]) bottom reads, and its rois top."""
    image: str
    im_info: str
    rois: str


def proposal_feeds(graph: Graph) -> list[ProposalFeed]:
    """Each py-faster-rcnn proposal layer (recognised as the converter recognises it, by its Python
    module and class) whose im_info bottom is a net input, with the 4-D net input its scores derive from."""
    by_name = {l.name: l for l in graph.layers}
    feeds = []
    for layer in graph.layers:
        if layer.type != "Python" or python_kind(layer.proto) != "proposal" or len(layer.bottoms) != 3:
            continue
        info = layer.bottoms[2]
        if info not in graph.inputs:
            continue
        images = [v for v in _input_ancestors(graph, by_name, layer.bottoms[0])
                  if v != info and graph.values[v].shape is not None and len(graph.values[v].shape) == 4]
        if len(images) == 1:
            feeds.append(ProposalFeed(images[0], info, layer.tops[0]))
    return feeds


def _input_ancestors(graph: Graph, by_name: dict, value: str) -> list[str]:
    """The net inputs ``value`` is computed from, in the graph's input order."""
    seen, stack, found = set(), [value], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        producer = graph.values[v].producer
        if producer is None or v in graph.inputs:
            found.add(v)
        else:
            stack.extend(by_name[producer].bottoms)
    return [v for v in graph.inputs if v in found]


def random_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """One seeded input per input of the converted net (``registry.inference_io``: no label that only a
    loss read): images-like values for 4-D inputs, small ones otherwise, except a proposal layer's
    im_info input: the true (height, width, 1.0) of its image input per image, so that its boxes are
    real ones (a random im_info describes an image under a pixel: the min-size filter keeps one box)."""
    from .registry import inference_io
    rng = np.random.default_rng(seed)
    fed = inference_io(graph).inputs
    out = {}
    for v in fed:
        shape = graph.values[v].shape
        if len(shape) == 4:
            out[v] = (rng.uniform(0, 255, shape) - 128).astype(np.float32)
        else:
            out[v] = rng.uniform(0, 1, shape).astype(np.float32)
    for feed in proposal_feeds(graph):
        if feed.im_info in out and out[feed.im_info].size == 3 * graph.values[feed.image].shape[0]:
            n, _, h, w = graph.values[feed.image].shape
            rows = np.tile(np.array([[h, w, 1.0]], np.float32), (n, 1))
            out[feed.im_info] = rows.reshape(out[feed.im_info].shape)
    return [out[v] for v in fed]


def random_note(layers: Sequence[str]) -> str:
    """Names the layers that sample at test, for the lines that say what was not compared."""
    shown = ", ".join(f"'{name}'" for name in layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
    return f"layers that sample at every forward pass ({shown})"


def compare(a: np.ndarray, b: np.ndarray, rtol: float) -> tuple[float, bool]:
    """(max |a - b|, whether a is within rtol and atol = rtol*max(1, max|b|) of b); inf, False on shapes."""
    if a.shape != b.shape:
        return float("inf"), False
    diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
    atol = rtol * max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return diff, bool(np.allclose(a, b, rtol=rtol, atol=atol))


def run_onnx_values(graph: Graph, inputs: Sequence[np.ndarray], values: Sequence[str], threads: int = 2):
    """Every requested graph value from onnxruntime (unfolded model, all values exposed)."""
    import onnxruntime as ort

    from .onnx import expose_outputs, to_onnx
    model = to_onnx(graph, fold=False, dynamic_batch=False)
    produced = {o for n in model.graph.node for o in n.output}
    expose_outputs(model, [v for v in values if v in produced])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ascontiguousarray(x, dtype=np.float32) for i, x in zip(sess.get_inputs(), inputs)}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def run_torch_values(graph: Graph, inputs: Sequence[np.ndarray]):
    import torch
    from torch.fx import Interpreter

    from .torch import to_pytorch
    module = to_pytorch(graph)
    env: dict[str, object] = {}

    class _Recorder(Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            env[n.name] = result
            return result

    with torch.no_grad():
        _Recorder(module).run(*[torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs])
    out = {}
    for value, node in module.value_nodes.items():
        t = env.get(node)
        if torch.is_tensor(t):
            out[value] = t.numpy()
    return out


def _near_ties(layer, value: str, torch_values: Mapping, onnx_values: Mapping, rtol: float):
    """For the mask top of a MAX pooling whose two backends' masks differ: (entries that differ, entries)
    when at every one of them the input values at the two chosen positions are equal within the tolerance
    (a near-tie float rounding breaks either way), else None (a real difference, reported as usual)."""
    if layer.type != "Pooling" or len(layer.tops) != 2 or value != layer.tops[1] or value not in onnx_values:
        return None
    a, b = torch_values[value], onnx_values[value]
    x = torch_values.get(layer.bottoms[0])
    if x is None or a.shape != b.shape or np.array_equal(a, b) or x.ndim != 4:
        return None
    n, c, _, _ = np.nonzero(a != b)
    plane = x.reshape(x.shape[0], x.shape[1], -1)
    ia, ib = a[a != b].astype(np.int64), b[a != b].astype(np.int64)
    if ia.min() < 0 or ib.min() < 0 or max(ia.max(), ib.max()) >= plane.shape[2]:
        return None
    atol = rtol * max(1.0, float(np.max(np.abs(x))))
    if np.all(np.abs(plane[n, c, ia].astype(np.float64) - plane[n, c, ib]) <= atol):
        return int(ia.size), int(a.size)
    return None


def _tied_vs_reference(check: BlobCheck, t: np.ndarray, o: Optional[np.ndarray], ref: np.ndarray, rtol: float) -> None:
    """A value the backends may rightly differ in (a near-tie in a mask) against the reference: Caffe broke
    the tie as one of them did, so it must agree with one; with neither, the conversion is wrong after the tie."""
    check.torch_vs_reference, ok = compare(t, ref, rtol)
    if o is not None:
        check.onnx_vs_reference, onnx_ok = compare(o, ref, rtol)
        ok = ok or onnx_ok
    check.ok &= ok


def verify(graph: Graph, inputs: Optional[Sequence[np.ndarray]] = None,
           blobs: Optional[Mapping[str, np.ndarray]] = None, rtol: float = 1e-4, seed: int = 0) -> VerifyReport:
    """Compare PyTorch and onnxruntime on every value, and both against reference ``blobs``
    (``{Caffe blob name: array}``, e.g. from real Caffe) where given."""
    inputs = list(inputs) if inputs is not None else random_inputs(graph, seed)
    torch_values = run_torch_values(graph, inputs)
    order = [v for l in graph.layers for v in l.tops if v in torch_values]
    onnx_values = run_onnx_values(graph, inputs, order)
    finals = {graph.final_value(name): name for name in (blobs or {})}
    from .registry import inference_io, random_layers, random_values
    report = VerifyReport(random_layers=random_layers(graph))
    sampled = random_values(graph)
    tied: set[str] = set()
    for layer in graph.layers:
        for v in layer.tops:
            if v not in torch_values:
                continue
            check = BlobCheck(graph.values[v].caffe_name if v in finals or v == graph.values[v].caffe_name else v,
                              layer.name, random=v in sampled, tied=bool(tied & set(layer.bottoms)))
            report.checks.append(check)
            if check.random:  # each backend (and Caffe) draws its own masks: equal only on average
                continue
            if not check.tied:
                ties = _near_ties(layer, v, torch_values, onnx_values, rtol)
                if ties is not None:
                    report.ties[check.blob] = ties
                    check.tied = True
            if check.tied:  # a mask the backends may both rightly differ in, or computed from one
                tied.add(v)
                if v in finals:
                    _tied_vs_reference(check, torch_values[v], onnx_values.get(v), np.asarray(blobs[finals[v]]), rtol)
                if not check.ok and report.first_divergence is None:
                    report.first_divergence = check
                continue
            t = torch_values[v]
            check.shape = tuple(t.shape)
            if v in onnx_values:
                check.torch_vs_onnx, ok = compare(t, onnx_values[v], rtol)
                check.ok &= ok
            if v in finals:
                ref = np.asarray(blobs[finals[v]])
                check.torch_vs_reference, ok = compare(t, ref, rtol)
                check.ok &= ok
                if v in onnx_values:
                    check.onnx_vs_reference, ok = compare(onnx_values[v], ref, rtol)
                    check.ok &= ok
            if not check.ok and report.first_divergence is None:
                report.first_divergence = check
    for o in inference_io(graph).outputs:
        if o in torch_values and o in onnx_values and o not in sampled and o not in tied:
            report.outputs[graph.values[o].caffe_name] = compare(torch_values[o], onnx_values[o], rtol)[0]
    return report
