"""The ONNX model as shipped (bvlc_googlenet): Caffe's names, a symbolic batch, weights as
initializers only, a valid model onnxruntime runs at any batch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from converters import to_onnx
from tests.converters.common import close, describe, load_fixture, ort_session
from tests.helpers import SHARED, shared_params

FIXTURE = SHARED / "reference" / "models" / "bvlc_googlenet"


@pytest.fixture(scope="module")
def googlenet(weights_cache):
    if not FIXTURE.is_dir():
        pytest.skip(f"{FIXTURE} is missing")
    graph, ins, outs = load_fixture(FIXTURE, weights_cache)
    return graph, to_onnx(graph), ins, outs


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("_", shared_params([None], ["bvlc_googlenet"]))
def test_names_batch_and_initializers(googlenet, _):
    graph, model, _ins, _outs = googlenet
    g = model.graph
    assert [i.name for i in g.input] == ["data"]
    assert [o.name for o in g.output] == ["prob"]
    assert _dims(g.input[0]) == ["N", 3, 224, 224]
    assert _dims(g.output[0]) == ["N", 1000]
    initializers = {t.name for t in g.initializer}
    assert initializers and not initializers & {i.name for i in g.input}, "an initializer is also a graph input"
    assert len(initializers) == len(g.initializer)
    # every weight is an initializer: the graph's inputs are the net's, its constants carry the weights
    n_weights = sum(int(np.prod(s)) for l in graph.layers for s in l.param_shapes)
    assert sum(int(np.prod(t.dims)) for t in g.initializer) >= n_weights
    node_names = {n.name for n in g.node}
    assert {"conv1/7x7_s2", "inception_3a/1x1", "loss3/classifier", "prob"} <= node_names
    assert len(node_names) == len(g.node)
    assert model.ir_version <= 9
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) >= 13
    onnx.checker.check_model(model, full_check=True)
    onnx.checker.check_model(model.SerializeToString())


@pytest.mark.parametrize("_", shared_params([None], ["bvlc_googlenet"]))
def test_runs_at_any_batch(googlenet, _):
    graph, model, ins, outs = googlenet
    sess = ort_session(model)
    x = ins["data"]
    (full,) = sess.run(None, {"data": x})
    assert close(full, outs["prob"]), describe(full, outs["prob"])
    (one,) = sess.run(None, {"data": x[:1]})
    assert one.shape == (1, 1000)
    np.testing.assert_allclose(one[0], full[0], rtol=1e-5, atol=1e-6)
    three = np.concatenate([x, x[:1]])
    (got,) = sess.run(None, {"data": three})
    assert got.shape == (3, 1000)
    np.testing.assert_allclose(got[:2], full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], full[0], rtol=1e-5, atol=1e-6)
