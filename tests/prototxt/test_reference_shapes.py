"""Shape inference gives exactly the shapes real Caffe computed for every reference fixture."""
from __future__ import annotations

import json
import re

import pytest

from prototxt import load_net
from tests.helpers import fixture_inputs, reference_fixtures, shared_params

FIXTURES = reference_fixtures()
# What Caffe's insert_splits.cpp names its copies: <blob>_<layer>_<i>_split_<j> and the layer <blob>_<layer>_<i>_split.
CAFFE_SPLIT_BLOB = re.compile(r"_\d+_split_\d+$")
CAFFE_SPLIT_LAYER = re.compile(r"_\d+_split$")


@pytest.mark.parametrize("fixture", shared_params(FIXTURES, ids=[f"{p.parent.name}/{p.name}" for p in FIXTURES]))
def test_shapes_match_caffe(fixture):
    caffe = json.loads((fixture / "shapes.json").read_text())
    graph = load_net(fixture / "net.prototxt", input_shapes=fixture_inputs(fixture))
    graph.require_shapes()

    blobs = graph.caffe_blobs()
    expected = {name: tuple(shape) for name, shape in caffe["blobs"].items() if not CAFFE_SPLIT_BLOB.search(name)}
    assert {name: blobs.get(name) for name in expected} == expected
    assert list(blobs) == list(expected)  # no extra blob, and Caffe's order (creation order)

    params = {name: [tuple(p) for p in graph.layer(name).param_shapes] for name in caffe["params"]}
    assert params == {name: [tuple(p) for p in ps] for name, ps in caffe["params"].items()}

    assert [graph.values[v].caffe_name for v in graph.outputs] == caffe["outputs"]
    assert list(graph.input_shapes) == caffe["inputs"]
    assert {l.name: l.type for l in graph.layers} == \
        {name: t for name, t in caffe["layer_types"].items() if not (t == "Split" and CAFFE_SPLIT_LAYER.search(name))}
