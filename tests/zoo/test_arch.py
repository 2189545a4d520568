"""The built-in deploy nets (zoo.models.arch), tested over every built-in card so a new card is covered
with no edit here: its architecture builds, infers every shape, has the card's input, outputs and class
count, and equals the publisher's deploy prototxt in ../shared/corpus where the corpus has it.

The corpus comparison ignores, on both sides (a deploy net never trains):
* `param` specs (lr_mult, decay_mult) and `propagate_down`: they only steer a solver's updates;
* fillers (weight_filler, bias_filler, PReLU's filler): initialisation the trained weights replace;
* phase rules (`include`/`exclude`): the reference is first reduced to its TEST net, as a deploy run is.
Everything else must be equal, presence included: the net's name and, layer by layer in order, name,
type, bottoms, tops and every parameter message (the Input layer's shape with its batch size too).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import pytest

from prototxt import attach_weights, build_graph, caffe_pb2, read_net
from prototxt.text import to_text
from tests.helpers import SHARED, shared_dir, shared_params
from zoo.hub import registry
from zoo.models import arch

CARDS = registry.builtin_cards()
IGNORED_LAYER_FIELDS = ("param", "propagate_down", "include", "exclude")
TRAINING_ONLY_TYPES = ("Data", "Accuracy", "SoftmaxWithLoss")


def _rename_fc8a(net: caffe_pb2.NetParameter) -> None:
    """places365_vgg16 is VGG 16 with a 365-way classifier named fc8a: give back fc8, 1000 classes and the
    original net name (the corpus README: its vgg16 copy is modified, places365_vgg16 holds the layout)."""
    net.name = "VGG_ILSVRC_16_layers"
    for layer in net.layer:
        for blobs in (layer.bottom, layer.top):
            blobs[:] = ["fc8" if b == "fc8a" else b for b in blobs]
        if layer.name == "fc8a":
            layer.name = "fc8"
            layer.inner_product_param.num_output = 1000


def _pool_stride_2(net: caffe_pb2.NetParameter) -> None:
    """The corpus vgg16 copy is the original with its pooling strides set to 1 (corpus README): undo that."""
    for layer in net.layer:
        if layer.type == "Pooling":
            layer.pooling_param.stride = 2


@dataclass(frozen=True)
class Reference:
    path: str  # under ../shared/corpus
    patch: Callable[[caffe_pb2.NetParameter], None] | None = None  # a documented edit back to the published net
    training_net: bool = False  # a train_val: its TEST net without data, accuracy and loss layers


def _same(folder: str, file: str = "deploy.prototxt") -> tuple[Reference, ...]:
    return (Reference(f"{folder}/{file}"),)


REFERENCES: dict[str, tuple[Reference, ...]] = {
    **{name: _same(name) for name in ("bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet",
                                      "bvlc_reference_rcnn_ilsvrc13", "finetune_flickr_style", "age_net",
                                      "gender_net", "squeezenet_v1.0", "squeezenet_v1.1")},
    **{f"mtcnn_det{i}": _same("mtcnn", f"det{i}.prototxt") for i in range(1, 5)},
    "vgg16": (Reference("places365_vgg16/deploy_vgg16_places365.prototxt", _rename_fc8a),
              Reference("vgg16/VGG_ILSVRC_16_layers_deploy.prototxt", _pool_stride_2)),
    "vgg19": _same("vgg19", "VGG_ILSVRC_19_layers_deploy.prototxt"),
    "resnet50": _same("resnet50", "ResNet-50-deploy.prototxt"),
    "resnet101": _same("resnet101", "ResNet-101-deploy.prototxt"),
    "resnet152": _same("resnet152", "ResNet-152-deploy.prototxt"),
    "nin_imagenet": (Reference("nin_imagenet/train_val.prototxt", training_net=True),),
    "mobilenet_v1": _same("mobilenet_v1", "mobilenet_deploy.prototxt"),
    **{f"yufacedetectnet_v{v}": _same(f"yufacedetectnet_v{v}", f"yufacedetectnet-open-v{v}.prototxt") for v in (1, 2)},
    "ultraface_rfb320": _same("ultraface_rfb320", "RFB-320.prototxt"),
    "ultraface_slim320": _same("ultraface_slim320", "slim-320.prototxt"),
    "mobilenet_ssd": _same("mobilenet_ssd", "MobileNetSSD_deploy.prototxt"),
    "mobilenet_ssd_iter73000": _same("mobilenet_ssd"),
    "se_resnet50": _same("se_resnet50", "SE-ResNet-50.prototxt"),
    "segnet_driving_webdemo": _same("segnet", "segnet_model_driving_webdemo.prototxt"),
    "enet_cityscapes": _same("enet", "enet_deploy_final.prototxt"),
    "pspnet50_ade20k": _same("pspnet50_ade20k", "pspnet50_ADE20K_473.prototxt"),
    "pspnet101_voc2012": _same("pspnet101_voc2012", "pspnet101_VOC2012_473.prototxt"),
    "mobilenet_v2": _same("mobilenet_v2", "mobilenet_v2_deploy.prototxt"),
    "densenet121": _same("densenet121", "DenseNet_121.prototxt"),
    "inception_v3": _same("inception_v3", "deploy_inception-v3.prototxt"),
    **{f"places365_{n}": _same(f"places365_{n}", f"deploy_{n}_places365.prototxt")
       for n in ("alexnet", "googlenet", "vgg16", "resnet152")},
}

# open_nsfw is not in the corpus. Fingerprint (see _fingerprint) of the published deploy net,
# https://github.com/yahoo/open_nsfw/blob/a4e13931465f4380742545932657eeea0a10aa48/nsfw_model/deploy.prototxt
# (229 layers, ResNet_50_1by2_nsfw), computed with the same canonical form as the corpus comparison.
OPEN_NSFW_FINGERPRINT = "2f44f4aa0cd3a1e4092056f3f1a77550101c5fbcc8cd30b00fcd3d76cab01a25"


def deploy_layers(layers) -> list[caffe_pb2.LayerParameter]:
    """Copies without what a deploy net does not use (see the module docstring)."""
    out = []
    for source in layers:
        layer = caffe_pb2.LayerParameter()
        layer.CopyFrom(source)
        for name in IGNORED_LAYER_FIELDS:
            layer.ClearField(name)
        for field, value in layer.ListFields():
            if not field.name.endswith("_param"):
                continue
            for sub, _ in value.ListFields():
                if sub.message_type is caffe_pb2.FillerParameter.DESCRIPTOR:
                    value.ClearField(sub.name)
            if not value.ListFields():  # it held only fillers
                layer.ClearField(field.name)
        out.append(layer)
    return out


def _fingerprint(net: caffe_pb2.NetParameter) -> str:
    text = net.name + "\n" + "".join(f"layer {{\n{to_text(l)}}}\n" for l in deploy_layers(net.layer))
    return hashlib.sha256(text.encode()).hexdigest()


def _first_difference(built: list[caffe_pb2.LayerParameter], published: list[caffe_pb2.LayerParameter]) -> str | None:
    for i, (a, b) in enumerate(zip(built, published)):
        if a != b:
            return f"layer {i} differs:\n--- built\n{to_text(a)}--- published\n{to_text(b)}"
    if len(built) != len(published):
        extra = built[len(published):] or published[len(built):]
        who = "built" if len(built) > len(published) else "published"
        return f"{len(built)} layers built, {len(published)} published; {who} goes on with {extra[0].name!r}"
    return None


def _published(ref: Reference) -> tuple[str, list[caffe_pb2.LayerParameter]]:
    net, _ = read_net(shared_dir() / "corpus" / ref.path)  # upgraded to the current format, as Caffe does
    if ref.patch:
        ref.patch(net)
    layers = build_graph(net, phase="test").proto.layer  # TEST phase only
    if ref.training_net:
        layers = [l for l in layers if l.type not in TRAINING_ONLY_TYPES]
    return net.name, deploy_layers(layers)


card_params = pytest.mark.parametrize("card", list(CARDS.values()), ids=list(CARDS))


@card_params
def test_card_architecture_builds_with_every_shape_known(card):
    graph = build_graph(arch.build(card.architecture), source=card.architecture)
    graph.require_shapes()
    assert list(graph.input_shapes) == [card.input.blob]
    assert graph.input_shapes[card.input.blob][1:] == card.input.shape  # any batch size
    assert sorted(graph.values[v].caffe_name for v in graph.outputs) == sorted(card.outputs)
    first = graph.final_value(card.outputs[0])
    producer = next((l for l in graph.layers if l.name == graph.values[first].producer), None)
    if card.num_classes is not None and producer is not None and producer.type == "DetectionOutput":
        # rows of boxes [1, 1, N, 7]: the classes are the layer's parameter
        assert producer.proto.detection_output_param.num_classes == card.num_classes
    elif card.num_classes is not None and producer is not None and producer.type == "ArgMax":  # a class map
        assert graph.values[producer.bottoms[0]].shape[1] == card.num_classes
    elif card.num_classes is not None and len(graph.values[first].shape) == 3:  # a score row per prior (UltraFace)
        assert graph.values[first].shape[-1] == card.num_classes
    elif card.num_classes is not None:  # the first output's channels are the classes (prob, fc-rcnn, pool4...)
        assert graph.values[first].shape[1] == card.num_classes


@card_params
def test_card_architecture_equals_published_deploy(card):
    refs = REFERENCES.get(card.architecture)
    if refs is None:
        pytest.skip(f"{card.architecture}: no deploy net in the corpus (open_nsfw: see its fingerprint test)")
    built = arch.build(card.architecture)
    for ref in refs:
        name, published = _published(ref)
        mine = deploy_layers(built.layer)
        if ref.training_net:  # its data layer is a Data layer: check the Input's top, compare the rest
            assert mine[0].type == "Input" and list(mine[0].top) == [card.input.blob]
            mine = mine[1:]
        assert built.name == name, ref.path
        difference = _first_difference(mine, published)
        if difference:
            pytest.fail(f"{ref.path}: {difference}", pytrace=False)


def test_open_nsfw_equals_published_deploy():
    """Compared through a fingerprint: the published prototxt is not in the corpus and is not copied here."""
    assert _fingerprint(arch.build("open_nsfw")) == OPEN_NSFW_FINGERPRINT, (
        "open_nsfw differs from yahoo/open_nsfw's deploy.prototxt; recompute with "
        "_fingerprint(read_net(that file)[0]) to see whether the published net changed")


def _corpus_weights() -> list[tuple[str, str]]:
    found = []
    for card in CARDS.values():
        hits = sorted(SHARED.glob(f"corpus/*/{card.weights.filename}")) if SHARED.is_dir() else []
        found += [(card.name, str(hits[0]))] if hits else []
    return found


CORPUS_WEIGHTS = _corpus_weights()


@pytest.mark.parametrize("name_and_path", shared_params(CORPUS_WEIGHTS, ids=[n for n, _ in CORPUS_WEIGHTS]))
def test_published_weights_fill_every_layer_by_name(name_and_path):
    """Where the corpus holds a card's real caffemodel, every layer with parameters finds its blobs."""
    name, path = name_and_path
    graph = build_graph(arch.build(CARDS[name].architecture))
    report = attach_weights(graph, path)
    assert report.missing == [] and report.matched


@pytest.mark.parametrize("name", arch.names())
def test_written_prototxt_reads_back_as_built(tmp_path, name):
    path = tmp_path / f"{name}.prototxt"
    arch.write_prototxt(name, path)
    net, upgrades = read_net(path)
    assert upgrades == [] and net == arch.build(name)


def test_every_architecture_belongs_to_a_card():
    """So the card-parametrised tests above cover every built-in net."""
    assert set(arch.names()) == {card.architecture for card in CARDS.values()}


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(arch.UnknownArchitecture, match="did you mean resnet50"):
        arch.build("resnet5")


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="registered twice"):
        arch.register("resnet50")(lambda: caffe_pb2.NetParameter())
    assert arch.build("resnet50").name == "ResNet-50"


def test_convert_by_model_name_uses_the_built_in_architecture(tmp_path, capsys):
    """`zoo convert NAME` needs no prototxt: the card's architecture is built, its outputs named after the card."""
    from zoo.cli import main
    weights = shared_dir() / "corpus" / "mtcnn" / "det1.caffemodel"
    assert main(["convert", "mtcnn_det1", "--weights", str(weights), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "mtcnn_det1.onnx").is_file() and (tmp_path / "mtcnn_det1_pytorch" / "model.py").is_file()
    assert "prob1: max |pytorch - onnxruntime|" in capsys.readouterr().out


@pytest.mark.parametrize("name_and_path", shared_params(CORPUS_WEIGHTS, ids=[n for n, _ in CORPUS_WEIGHTS]))
def test_card_checksums_match_the_corpus_copy(name_and_path):
    """Where the corpus holds a card's caffemodel, every digest and the size on the card are its own
    (for the fork face detectors the corpus file is the publisher's, by git blob id)."""
    from zoo.hub.download import file_digest
    name, path = name_and_path
    weights = CARDS[name].weights
    if weights.size is not None:
        assert Path(path).stat().st_size == weights.size
    for algorithm, digest in (weights.checksum or {}).items():
        assert file_digest(path, algorithm) == digest, f"{name}: {algorithm} of {path}"
