"""Every net prototxt of the corpus loads, and nets with fork-only layer types say exactly which ones;
the real caffemodels of the corpus load against their prototxts."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from converters import registry
from prototxt import (InputShapeRequired, MissingBottomError, SizeLimitError, UnsupportedLayers, attach_weights,
                      caffe_pb2, load_net, read_caffemodel, read_net)
from prototxt.shapes import shape_rule
from tests.helpers import corpus_nets, parse_table, same_bits, shared_params, type_list
from zoo.cli import main

# Nets whose layers are chosen by stage rules; without the stages their solver uses, a bottom is missing.
STAGES = {"lrcn_coco_caption/lrcn.prototxt": ("freeze-convnet", "factored", "2-layer", "test-on-val")}
# BVLC Caffe knows the Python layer type but the layer is user code: no shape without running it.
USER_CODE_TYPES = {"Python"}
# Nets declaring a blob over the default size limit (prototxt.limits), and the layer named for it. The
# corpus vgg16 copy has its pooling strides set to 1 (corpus README): fc6 would be 4096x24556032 (374.7 GiB),
# which Caffe refuses as well (Blob::Reshape: "blob size exceeds INT_MAX").
TOO_LARGE = {"vgg16/VGG_ILSVRC_16_layers_deploy.prototxt": "fc6"}


def load_like_cli(path, stages=(), **options):
    """The TEST phase, or TRAIN when the TEST phase lacks a bottom (as `zoo info` does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fork *_param blocks and dropped metric layers
        try:
            return load_net(path, stages=stages, **options)
        except MissingBottomError:
            return load_net(path, phase="train", stages=stages, **options)


@pytest.mark.parametrize("net", shared_params(corpus_nets(), ids=corpus_nets()))
def test_corpus_net_loads_and_names_exactly_its_fork_layer_types(net, shared):
    path = shared / "corpus" / net
    row = parse_table()[net]
    forks = type_list(row["layer_types_unknown_to_bvlc"])
    options = {}
    if net in TOO_LARGE:
        with pytest.raises(SizeLimitError, match=f"layer '{TOO_LARGE[net]}'"):
            load_like_cli(path, STAGES.get(net, ()))
        options = {"max_bytes": 1 << 40}
    graph = load_like_cli(path, STAGES.get(net, ()), **options)

    # Parsing and upgrading keep every layer type Caffe's own tools saw (lenient parses skip Input).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw_types = {layer.type for layer in read_net(path)[0].layer}
    assert raw_types - {"Input"} == type_list(row["all_layer_types"]) - {"Input"}
    assert forks <= raw_types

    present = {layer.type for layer in graph.layers}
    unsupported = {t for t in (forks | USER_CODE_TYPES) & present if not served(graph, t)}
    if unsupported:
        with pytest.raises(UnsupportedLayers) as err:
            graph.require_shapes()
        assert set(err.value.types) == unsupported
    else:
        try:
            graph.require_shapes()
        except InputShapeRequired:  # a Data/ImageData layer: the shape lives in its database
            assert present & {"Data", "ImageData", "HDF5Data", "WindowData", "DenseImageData", "Input"}
        else:
            assert all(v.shape is not None for v in graph.values.values())


def served(graph, layer_type: str) -> bool:
    """Whether a built-in implementation serves every layer of this type (the 'Python' one serves only
    the well-known Python layers)."""
    if layer_type in registry.DATA_LAYERS:
        return shape_rule(layer_type) is not None
    if layer_type not in registry.registered_types():
        return False
    impl = registry.get(layer_type)
    return all(impl.serves(layer) for layer in graph.layers if layer.type == layer_type)


FORK_NETS = [net for net in corpus_nets() if type_list(parse_table()[net]["layer_types_unknown_to_bvlc"])
             and net not in STAGES]


@pytest.mark.parametrize("net", shared_params(FORK_NETS, ids=FORK_NETS))
def test_zoo_info_lists_every_fork_type_in_one_line(net, shared, capsys):
    path = shared / "corpus" / net
    expected = set(load_like_cli(path).unknown_types)
    code = main(["info", str(path)])
    err = capsys.readouterr().err
    if not expected:  # every fork type of the net is built in
        assert "unsupported layer type" not in err
        return
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("zoo: error: ")
    assert "unsupported layer type" in err
    for t in expected:
        assert f" {t} (" in err


# -- real trained weights ---------------------------------------------------------------------

REAL = [
    ("mnist_lenet/lenet.prototxt", "mnist_lenet/lenet_iter_10000.caffemodel"),
    ("cifar10_quick/cifar10_quick.prototxt", "cifar10_quick/cifar10_quick_iter_5000.caffemodel"),
    *[(f"mtcnn/det{i}.prototxt", f"mtcnn/det{i}.caffemodel") for i in range(1, 5)],
]
REAL_FORK = [
    ("ultraface_rfb320/RFB-320.prototxt", "ultraface_rfb320/RFB-320.caffemodel"),
    ("ultraface_slim320/slim-320.prototxt", "ultraface_slim320/slim-320.caffemodel"),
    ("yufacedetectnet_v1/yufacedetectnet-open-v1.prototxt", "yufacedetectnet_v1/yufacedetectnet-open-v1.caffemodel"),
    ("yufacedetectnet_v2/yufacedetectnet-open-v2.prototxt", "yufacedetectnet_v2/yufacedetectnet-open-v2.caffemodel"),
]


def protobuf_blobs(path) -> dict[str, list[np.ndarray]]:
    """An independent reading with protobuf itself: {layer name: [flat float32 arrays]} (last copy wins)."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    out = {}
    for layer in [*net.layers, *net.layer]:
        out[layer.name] = [np.asarray(b.double_data or b.data, dtype=np.float64 if b.double_data else np.float32)
                           for b in layer.blobs]
    return out


def check_against_protobuf(path):
    expected = protobuf_blobs(path)
    _, stored = read_caffemodel(path)
    assert {s.name for s in stored} == set(expected)
    for s in stored:
        if s.name in expected and [b.data.size for b in s.blobs] == [a.size for a in expected[s.name]]:
            for blob, ref in zip(s.blobs, expected[s.name]):
                assert same_bits(blob.data.reshape(-1), ref)
    return expected


@pytest.mark.parametrize("pair", shared_params(REAL, ids=[w for _, w in REAL]))
def test_real_caffemodel_attaches_to_its_net(pair, shared):
    prototxt, weights = (shared / "corpus" / p for p in pair)
    expected = check_against_protobuf(weights)
    graph = load_net(prototxt)
    report = attach_weights(graph, weights)
    assert report.missing == []
    assert report.matched == [l.name for l in graph.layers if l.param_shapes]
    names = {l.name for l in graph.layers}
    assert report.ignored == [n for n, blobs in expected.items() if blobs and n not in names]
    for layer in graph.layers:
        assert [b.shape for b in layer.blobs] == [tuple(s) for s in layer.param_shapes]
        for blob, ref in zip(layer.blobs, expected.get(layer.name, [])):
            assert same_bits(blob.reshape(-1), ref)


@pytest.mark.parametrize("pair", shared_params(REAL_FORK, ids=[w for _, w in REAL_FORK]))
def test_real_fork_caffemodel_fits_the_layers_we_know(pair, shared):
    prototxt, weights = (shared / "corpus" / p for p in pair)
    check_against_protobuf(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = load_net(prototxt)
    if graph.unknown_types:
        with pytest.raises(UnsupportedLayers):  # attach_weights needs every shape
            attach_weights(graph, weights)
    else:  # its fork types are registered (converters imported in this process): the weights fit
        attach_weights(graph, weights)
    by_name = {l.name: l for l in graph.layers}
    _, stored = read_caffemodel(weights)
    checked = 0
    for s in stored:
        if not s.blobs:
            continue  # split and data layers of the training net
        layer = by_name[s.name]  # every stored layer with weights is a layer of the deploy net
        if layer.type in graph.unknown_types or any(graph.values[b].shape is None for b in layer.bottoms):
            continue  # a fork layer, or one after it: its parameter shapes are unknown here
        assert [b.shape for b in s.blobs] == [tuple(p) for p in layer.param_shapes], s.name
        checked += 1
    assert checked >= 10
