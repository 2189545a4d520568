"""Each step of prototxt.upgrade.UPGRADES is pure and idempotent on every corpus net, and the old
formats of one net upgrade to the same layers as its current-format deploy."""
from __future__ import annotations

import warnings

import pytest

from prototxt import PrototxtSyntaxError, caffe_pb2, load_net
from prototxt.text import parse_net_file, parse_solver_file
from prototxt.upgrade import UPGRADES, upgrade_net
from tests.helpers import corpus_nets, shared_params


def raw_net(path) -> caffe_pb2.NetParameter:
    """The net as written, not upgraded (a solver file's inline net for a solver)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fork *_param blocks
        try:
            return parse_net_file(path)
        except PrototxtSyntaxError:
            solver = parse_solver_file(path)
            return solver.net_param if solver.HasField("net_param") else solver.train_net_param


@pytest.mark.parametrize("net", shared_params(corpus_nets(), ids=corpus_nets()))
def test_each_upgrade_is_pure_and_idempotent(net, shared):
    current = raw_net(shared / "corpus" / net)
    for needs, upgrade in UPGRADES:
        before = current.SerializeToString(deterministic=True)
        result = upgrade(current)
        assert current.SerializeToString(deterministic=True) == before, f"{upgrade.__name__} changed its argument"
        assert not needs(result), f"{upgrade.__name__} leaves work for itself"
        again = upgrade(result)
        assert again == result, f"{upgrade.__name__} is not idempotent"
        if needs(current):
            current = result
        else:
            assert result == current, f"{upgrade.__name__} changed a net that did not need it"
    assert upgrade_net(current)[1] == []


def _comparable(layer: caffe_pb2.LayerParameter) -> caffe_pb2.LayerParameter:
    """The layer without what only training or naming conventions set: lr/decay mults and fillers."""
    out = caffe_pb2.LayerParameter()
    out.CopyFrom(layer)
    out.ClearField("param")
    for sub in (out.convolution_param, out.inner_product_param):
        sub.ClearField("weight_filler")
        sub.ClearField("bias_filler")
    if out.type == "Input":
        out.ClearField("name")  # Caffe names the layer it makes from input fields "input"
    return out


@pytest.mark.parametrize("old", ["deploy.v0.prototxt", "deploy.v1_layers.prototxt"])
def test_old_caffenet_formats_upgrade_to_the_v2_deploy(old, shared):
    folder = shared / "corpus" / "bvlc_reference_caffenet"
    upgraded, current = load_net(folder / old), load_net(folder / "deploy.prototxt")
    assert upgraded.upgrades and not current.upgrades
    assert [(l.name, l.type, l.param_shapes) for l in upgraded.layers[1:]] == \
        [(l.name, l.type, l.param_shapes) for l in current.layers[1:]]
    assert [_comparable(l.proto) for l in upgraded.layers] == [_comparable(l.proto) for l in current.layers]
    assert upgraded.caffe_blobs() == current.caffe_blobs()
