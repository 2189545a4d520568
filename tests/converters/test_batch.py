"""The ONNX batch axis is symbolic and the PyTorch module takes any batch: every reference fixture,
converted at its prototxt's declared batch, gives at the fixture's batch, at 1 and at 3 what the
net converted at that batch gives (which test_parity holds to Caffe's numbers), through both
backends. Big models run one extra batch only."""
from __future__ import annotations

import numpy as np
import pytest

from converters import to_onnx, to_pytorch
from prototxt import build_graph, load_net
from prototxt.errors import CaffeError
from tests.converters.common import close, describe, load_fixture, ort_run, torch_cpu
from tests.converters.test_parity import SLOW
from tests.helpers import reference_fixtures, shared_params

FIXTURES = reference_fixtures()
RECURRENT = ("LSTM", "RNN")  # their first axis is time: the ONNX model keeps it static


def _declared(fixture, ins: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The fixture's input shapes with the batch the prototxt declares (the fixture's where it declares none)."""
    try:
        graph = load_net(fixture / "net.prototxt")
        declared = {graph.values[v].caffe_name: graph.values[v].shape for v in graph.inputs}
    except CaffeError:
        declared = {}
    return {k: (declared[k][0] if declared.get(k) else x.shape[0], *x.shape[1:]) for k, x in ins.items()}


def _at(graph, shapes: dict[str, tuple[int, ...]]):
    """The same net (same weight arrays) with other input shapes."""
    other = build_graph(graph.proto, input_shapes=shapes, source=graph.source)
    for mine, theirs in zip(other.layers, graph.layers):
        mine.blobs = theirs.blobs
    return other


def _outputs(result, names) -> dict[str, np.ndarray]:
    if isinstance(result, dict):
        return {k: v.detach().numpy() for k, v in result.items()}
    return {names[0]: result.detach().numpy()}


def _run_torch(module, graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch
    with torch_cpu():
        out = module(*[torch.from_numpy(feeds[graph.values[v].caffe_name]) for v in module_inputs(graph)])
    return _outputs(out, module.output_names)


def module_inputs(graph) -> list[str]:
    from converters.registry import inference_io
    return inference_io(graph).inputs


def _cases():
    return shared_params(FIXTURES, [f.name for f in FIXTURES], [[pytest.mark.slow] if f.name in SLOW else []
                                                                  for f in FIXTURES])


@pytest.mark.parametrize("fixture", _cases())
def test_converted_at_one_batch_runs_at_others(fixture, weights_cache):
    graph, ins, _ = load_fixture(fixture, weights_cache)
    if any(l.type in RECURRENT for l in graph.layers):
        pytest.skip("recurrent: the first axis is time, and the ONNX model keeps every axis static")
    shapes = _declared(fixture, ins)
    base = _at(graph, shapes) if shapes != {k: x.shape for k, x in ins.items()} else graph
    declared = next(iter(shapes.values()))[0]
    fixture_batch = next(iter(ins.values())).shape[0]
    batches = [b for b in dict.fromkeys((fixture_batch, 3, 1)) if b != declared]
    if fixture.name in SLOW:
        batches = batches[:1]
    module, model = to_pytorch(base), to_onnx(base)
    bad, fixed = [], []
    for b in batches:
        feeds = {k: np.ascontiguousarray(np.take(x, np.arange(b) % x.shape[0], axis=0), dtype=np.float32)
                 for k, x in ins.items()}
        try:
            at_b = graph if b == fixture_batch else _at(graph, {k: (b, *s[1:]) for k, s in shapes.items()})
        except CaffeError as exc:  # the net itself names its batch (Reshape to 64x100x1x1): Caffe refuses too
            fixed.append(f"batch {b}: {exc}")
            continue
        want = _run_torch(to_pytorch(at_b), at_b, feeds)
        got = {"torch": _run_torch(module, base, feeds)}
        try:
            onnx = ort_run(model, feeds)
            got["onnx"] = {base.values[o].caffe_name: onnx[o] for o in onnx if o in base.values}
        except Exception as exc:  # noqa: BLE001 - reported with the others
            bad.append(f"batch {b} onnx: {str(exc).splitlines()[0][:300]}")
        for backend, values in got.items():
            for name, ref in want.items():
                if name not in values or not close(values[name], ref):
                    bad.append(f"batch {b} {backend} {name}: "
                               + (describe(values[name], ref) if name in values else "missing"))
    assert not bad, f"{fixture.name} converted at batch {declared}: " + "; ".join(bad)
    if len(fixed) == len(batches):
        pytest.skip(f"the net runs at one batch only: {fixed[0]}")
