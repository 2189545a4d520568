"""load -> save_net -> load gives the same graph, a prototxt any protobuf text parser reads, and the
same weights bit for bit."""
from __future__ import annotations

from google.protobuf import text_format

from prototxt import caffe_pb2, load_net, save_net
from tests.helpers import fixture_inputs, make_weights, reference_fixtures, same_bits, shared_params

import pytest


def structure(graph):
    return [(l.name, l.type, l.caffe_bottoms, l.caffe_tops, l.param_shapes) for l in graph.layers]


def round_trip(graph, folder, input_shapes=None, weights=True):
    prototxt, caffemodel = folder / "saved.prototxt", folder / "saved.caffemodel"
    save_net(graph, prototxt, caffemodel if weights else None)
    # The text is protobuf text format for caffe.NetParameter: protobuf's own parser reads it too.
    text_format.Parse(prototxt.read_text(), caffe_pb2.NetParameter())
    again = load_net(prototxt, caffemodel if weights else None, input_shapes=input_shapes)
    assert again.name == graph.name
    assert structure(again) == structure(graph)
    assert again.caffe_blobs() == graph.caffe_blobs()
    assert again.upgrades == []  # saved in the current format
    return again, caffemodel


def assert_same_weights(a, b):
    for la, lb in zip(a.layers, b.layers):
        assert len(la.blobs) == len(lb.blobs), la.name
        assert all(same_bits(x, y) for x, y in zip(la.blobs, lb.blobs)), la.name


def test_lenet_with_real_weights_round_trips(shared, tmp_path):
    graph = load_net(shared / "corpus/mnist_lenet/lenet.prototxt", shared / "corpus/mnist_lenet/lenet_iter_10000.caffemodel")
    again, caffemodel = round_trip(graph, tmp_path)
    assert_same_weights(graph, again)
    # protobuf reads the written caffemodel too, with the same numbers.
    net = caffe_pb2.NetParameter()
    net.ParseFromString(caffemodel.read_bytes())
    stored = {l.name: [list(b.shape.dim) for b in l.blobs] for l in net.layer}
    assert stored == {l.name: [list(s) for s in l.param_shapes] for l in graph.layers}


@pytest.mark.parametrize("name, fmt", [("layers/v1_format", "layer"),  # a V1 prototxt
                                       ("models/lightcnn_A", "v1")])     # a V1 binary caffemodel (27 MB)
def test_v1_fixture_round_trips_to_the_current_format(name, fmt, shared, tmp_path):
    fixture = shared / "reference" / name
    inputs = fixture_inputs(fixture)
    weights = make_weights(fixture, fmt, tmp_path)
    graph = load_net(fixture / "net.prototxt", weights, input_shapes=inputs)
    assert graph.upgrades or fmt == "v1"
    again, _ = round_trip(graph, tmp_path, inputs)
    assert_same_weights(graph, again)


FIXTURES = reference_fixtures()


@pytest.mark.parametrize("fixture", shared_params(FIXTURES, ids=[f"{p.parent.name}/{p.name}" for p in FIXTURES]))
def test_every_fixture_net_round_trips(fixture, tmp_path):
    inputs = fixture_inputs(fixture)
    round_trip(load_net(fixture / "net.prototxt", input_shapes=inputs), tmp_path, inputs, weights=False)
