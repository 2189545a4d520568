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


@pytest.mark.parametrize("_", shared_params([None], ["bvlc_googlenet"]))
def test_models_of_one_net_share_their_weights_on_disk(googlenet, _, tmp_path):
    """write_model(shared_data=...): each large initializer once, in a file named by its SHA-256, which
    every model of the net (here: a second one with an extra output, as zoo run's cache makes per input
    size or output set) refers to as external data; each model still gives Caffe's numbers."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from converters.onnx import build, write_model
    graph, _model, ins, outs = googlenet
    paths = [tmp_path / "googlenet.onnx", tmp_path / "googlenet-pool5.onnx"]
    for path in paths:
        model, arrays = build(graph)
        if path is paths[1]:
            model.graph.output.append(helper.make_tensor_value_info("pool5/7x7_s1", TensorProto.FLOAT, None))
        write_model(model, arrays, path, shared_data="weights", min_shared_bytes=1 << 16)
    shared = sorted((tmp_path / "weights").iterdir())
    big = [t for t in onnx.load(paths[0], load_external_data=False).graph.initializer if t.external_data]
    assert len(shared) == len({e.value for t in big for e in t.external_data if e.key == "location"}) > 10
    weight_bytes = sum(p.stat().st_size for p in shared)
    assert all(p.stat().st_size < weight_bytes / 10 for p in paths)  # the graphs hold no large weights
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    for path in paths:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        prob = sess.run(None, {"data": ins["data"]})[0]
        assert close(prob, outs["prob"]), describe(prob, outs["prob"])
