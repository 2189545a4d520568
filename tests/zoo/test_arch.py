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

import numpy as np
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


def _rpn_conv1(net: caffe_pb2.NetParameter) -> None:
    """The corpus faster_rcnn_zf copy is the end2end test net; the demo weights come from the alternating
    optimisation, whose test net (faster_rcnn_alt_opt/faster_rcnn_test.pt) names the RPN convolution, its
    top and its ReLU rpn_conv1 and rpn_relu1 and is otherwise the same net: rename them."""
    renames = {"rpn_conv/3x3": "rpn_conv1", "rpn/output": "rpn_conv1", "rpn_relu/3x3": "rpn_relu1"}
    for layer in net.layer:
        layer.name = renames.get(layer.name, layer.name)
        for blobs in (layer.bottom, layer.top):
            blobs[:] = [renames.get(b, b) for b in blobs]


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
    "faster_rcnn_vgg16": _same("faster_rcnn_vgg16", "test.prototxt"),
    "faster_rcnn_zf": (Reference("faster_rcnn_zf/test.prototxt", _rpn_conv1),),
    "densenet121": _same("densenet121", "DenseNet_121.prototxt"),
    "inception_v3": _same("inception_v3", "deploy_inception-v3.prototxt"),
    **{f"places365_{n}": _same(f"places365_{n}", f"deploy_{n}_places365.prototxt")
       for n in ("alexnet", "googlenet", "vgg16", "resnet152")},
}

# Nets not in the corpus: the fingerprint (see _fingerprint) of the publisher's deploy net, computed with the
# same canonical form as the corpus comparison, from the file at its pinned commit (git blob id given):
FINGERPRINTS = {
    # https://github.com/yahoo/open_nsfw/blob/a4e13931465f4380742545932657eeea0a10aa48/nsfw_model/deploy.prototxt
    # (229 layers, ResNet_50_1by2_nsfw)
    "open_nsfw": "2f44f4aa0cd3a1e4092056f3f1a77550101c5fbcc8cd30b00fcd3d76cab01a25",
    # https://github.com/alexgkendall/SegNet-Tutorial/blob/bb68b64e72cb004b3ed927fee0f5624dd8097498/Example_Models/
    # segnet_sun.prototxt (blob cb8ceb56e0c6373d8fddde71e4e6b02dd98fb300, 94 layers) and segnet_basic_camvid.prototxt
    # (blob b3c692fa1e7c4cea5f3fddc77c25fdfbd7bd1291, 32 layers); the corpus's segnet/segnet_basic are other nets
    "segnet_sun": "799df254fc4e706dc071db6d0e2ba63d6b7af14184202e441507bbd0b3447578",
    "segnet_basic_camvid": "924200219d6c5c53657dba77356acc11502eaa5eea4ed0deb55c522d300555a8",
    # ... and bayesian_segnet_camvid.prototxt (blob 1c15a2dd288c043b99f4dce293f6b34d2b49b186, 97 layers); the corpus's
    # bayesian_segnet is Models/bayesian_segnet_inference.prototxt, another net (DenseImageData, an 11-way conv1_1_D)
    "bayesian_segnet_camvid": "f0364fe02f0919d03ea4b3b69986a219033ff91ecc08df7630f2156f6cdfec24",
    # https://github.com/rbgirshick/py-faster-rcnn/blob/781a917b378dbfdedb45b6a56189a31982da1b43/models/pascal_voc/ZF/
    # faster_rcnn_alt_opt/faster_rcnn_test.pt (blob b24aae4e84e04e7e48333fecb5c71aac07d06cf9, 33 layers): the net the
    # demo pairs with ZF_faster_rcnn_final.caffemodel; REFERENCES also compares it with the corpus end2end net
    "faster_rcnn_zf": "4a04c691c7c1a56e3e07611380e70ebe4349e32a817ac1b4f941a40e5595a0f5",
    # https://github.com/opencv/opencv/blob/ef2e07a46f9c0387dd7ff4493c0291298ef520e2/samples/dnn/face_detector/
    # deploy.prototxt (28092 bytes, blob 905580ee46dcb9f0b8ac3703987e561eb4245a42 by our hash of the file read there, 113
    # layers, unnamed): OpenCV's ResNet-10 SSD face detector
    "opencv_face_detector_res10": "a67f052a002f5828ea91e2d719366dcef73257b849cbd214ddee6f9e2ea34d73",
    # https://github.com/miaow1988/ShuffleNet_V2_pytorch_caffe/blob/426e18747d2209202175707f6adf759796cbbd2a/
    # shufflenet_v2_x0.5.prototxt (blob 4171c4dbb7d017be9fd3f2e0d3685601a1e80158, 256 layers; its sha384 is the one
    # OpenVINO's model.yml gives for the v0.1.1 release prototxt)
    "shufflenet_v2_x0.5": "440d4e41f6362eefbd6f81573ebead83300e6d62988b311352ca0bbe140cdcb6",
}
# Inputs beyond the card's image blob, which the card describes in input.note only: name -> shape.
EXTRA_INPUTS = {name: {"im_info": (1, 3)} for name in ("faster_rcnn_vgg16", "faster_rcnn_zf")}  # [[h, w, scale]]


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
    assert list(graph.input_shapes) == [card.input.blob, *EXTRA_INPUTS.get(card.architecture, {})]
    for blob, shape in EXTRA_INPUTS.get(card.architecture, {}).items():
        assert graph.input_shapes[blob] == shape
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
        assert card.architecture in FINGERPRINTS, f"{card.architecture}: neither in the corpus nor fingerprinted"
        pytest.skip(f"{card.architecture}: no deploy net in the corpus (see the fingerprint test)")
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


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_fingerprinted_net_equals_published_deploy(name):
    """Compared through a fingerprint: the published prototxt is not in the corpus and is not copied here."""
    assert _fingerprint(arch.build(name)) == FINGERPRINTS[name], (
        f"{name} differs from its publisher's deploy prototxt (FINGERPRINTS names it); recompute with "
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


def test_info_by_model_name_shows_the_built_in_net(capsys):
    """`zoo info NAME` needs no prototxt either (and no weights): the card's deploy net, both inputs."""
    import json
    from zoo.cli import main
    assert main(["info", "faster_rcnn_vgg16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] == {"data": [1, 3, 224, 224], "im_info": [1, 3]}
    assert sorted(info["outputs"]) == ["bbox_pred", "cls_prob"] and info["blobs"]["rois"] == [300, 5]
    from zoo.hub.resolve import resolve
    assert resolve("faster_rcnn_vgg16", fetch=False).card_input_shapes() == {"data": (1, 3, 224, 224),
                                                                             "im_info": (1, 3)}
    assert main(["info", "faster_rcnn_vgg1"]) == 1
    assert capsys.readouterr().err == ("zoo: error: unknown model 'faster_rcnn_vgg1'; did you mean faster_rcnn_vgg16, "
                                       "faster_rcnn_zf? run `zoo list` to see all, or give a user card (.json)\n")


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


# Faster R-CNN on both backends: the card's net with seeded weights on a small image (3x192x256: a 12x16
# conv5_3 map, 1728 anchors, the smallest 128 pixels wide), im_info telling its true size, so that the
# proposals are real boxes (as `zoo convert`'s seeded check now feeds it; a random im_info describes an
# image under a pixel, which leaves at most one proposal).
FRCNN_IMAGE = (1, 3, 192, 256)
FRCNN_HEADS = ("rpn_cls_score", "rpn_bbox_pred", "cls_score", "bbox_pred")  # their widths are the anchors, classes


def _seeded_faster_rcnn(narrow: int, net=None, info: str = "im_info"):
    """The faster_rcnn_vgg16 graph (or ``net``) with every other layer's width divided by ``narrow`` and
    He-scaled random weights (so the activations neither vanish nor blow up through 13 convolutions); the
    RPN's box deltas scaled to a trained one's size (about 1, not the image's 100, whose exp() fills the image)."""
    net = net if net is not None else arch.build("faster_rcnn_vgg16")
    for layer in net.layer:
        for param in (layer.convolution_param, layer.inner_product_param):
            if param.num_output and layer.name not in FRCNN_HEADS:
                param.num_output //= narrow
    graph = build_graph(net, input_shapes={"data": FRCNN_IMAGE, info: (1, 3)})
    _seed(graph, np.random.default_rng(11), damped=("rpn_bbox_pred",))
    return graph


def _seed(graph, rng: np.random.Generator, damped: tuple[str, ...]) -> None:
    """He-scaled random weights, small random biases; BatchNorm's statistics mean 0 and variance 1 and Scale's
    factors about 1, so the activations keep their size; the layers named in ``damped`` (box deltas) scaled
    by 0.01, to a trained one's size."""
    for layer in graph.layers:
        shapes = layer.param_shapes
        if layer.type == "BatchNorm":  # stored [mean * s, variance * s, s]
            layer.blobs = [np.full(s, float(i > 0), np.float32) for i, s in enumerate(shapes)]
            continue
        layer.blobs = [(rng.standard_normal(s) * (2 / np.prod(s[1:])) ** 0.5 if len(s) > 1 else
                        0.1 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
        if layer.type == "Scale":
            layer.blobs[0] += np.float32(1)
        if layer.name in damped:
            layer.blobs = [b * np.float32(0.01) for b in layer.blobs]


def _both_backends_agree(graph) -> None:
    from converters import to_onnx, to_pytorch
    from converters.torch import run
    from tests.converters.common import close, describe, ort_run, torch_cpu
    rng = np.random.default_rng(12)
    inputs = {"data": (rng.uniform(0, 255, FRCNN_IMAGE) - 128).astype(np.float32),
              "im_info": np.array([[FRCNN_IMAGE[2], FRCNN_IMAGE[3], 1.0]], np.float32)}
    module = to_pytorch(graph)
    with torch_cpu():
        got_torch = run(module, [inputs[n] for n in module.input_names])
    got_onnx = ort_run(to_onnx(graph), inputs)
    rois = len(got_onnx["cls_prob"])
    assert 50 < rois <= 300, f"{rois} proposals"  # NMS kept some boxes, not one
    assert got_onnx["bbox_pred"].shape == (rois, 84) and np.allclose(got_onnx["cls_prob"].sum(1), 1, atol=1e-5)
    for name in ("cls_prob", "bbox_pred"):
        assert close(got_torch[name], got_onnx[name]), f"{name}: {describe(got_torch[name], got_onnx[name])}"


@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
@pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
def test_faster_rcnn_narrowed_converts_and_both_backends_agree():
    """Every layer of the card's net (the proposal layer and ROI pooling on real boxes) at 1/8 width."""
    _both_backends_agree(_seeded_faster_rcnn(narrow=8))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
@pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
def test_faster_rcnn_full_width_converts_and_both_backends_agree():
    """The card's net as published (137 M parameters, fc6 alone 103 M) on the same small image."""
    _both_backends_agree(_seeded_faster_rcnn(narrow=1))


@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
@pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
def test_verify_feeds_the_proposal_layer_the_true_image_size():
    """`zoo convert`/`zoo verify`'s seeded check on the publisher's prototxt: the proposal layer's im_info
    input (found through the layer, whatever its blob is called) says the data's height and width at scale
    1, so both backends compare over a hundred real proposals, not the one box a random im_info leaves."""
    from converters.verify import proposal_feeds, random_inputs, verify
    corpus = shared_dir() / "corpus" / "faster_rcnn_vgg16" / "test.prototxt"
    if not corpus.is_file():
        pytest.skip(f"{corpus} is missing")
    net = read_net(corpus)[0]
    for names in [net.input] + [field for l in net.layer for field in (l.top, l.bottom)]:
        names[:] = ["image_size" if n == "im_info" else n for n in names]  # the layer counts, not the name
    graph = _seeded_faster_rcnn(narrow=8, net=net, info="image_size")
    assert [(f.image, f.im_info, f.rois) for f in proposal_feeds(graph)] == [("data", "image_size", "rois")]
    data, info = random_inputs(graph)
    assert data.shape == FRCNN_IMAGE and info.tolist() == [[192, 256, 1]]
    report = verify(graph)
    assert report.ok, report.lines()
    rois = next(c for c in report.checks if c.blob == "rois")
    assert rois.ok and rois.shape[0] >= 20, rois  # 129 here


@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
@pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
def test_faster_rcnn_zf_converts_and_both_backends_agree():
    """The ZF card's net as published (LRN, padded pooling, 6x6 ROI pooling, fc6 37 M parameters) on the same
    small image: its conv5 has the same stride, so the same 1728 anchors."""
    _both_backends_agree(_seeded_faster_rcnn(narrow=1, net=arch.build("faster_rcnn_zf")))


@pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
def test_dropout_without_train_scaling_scales_at_test_as_caffe_fast_rcnn():
    """caffe-fast-rcnn's DropoutLayer with scale_train false keeps the kept units unscaled in TRAIN, so in TEST
    it multiplies by 1 - dropout_ratio (dropout_layer.cpp, cited on the faster_rcnn_zf card)."""
    from converters import to_onnx, to_pytorch
    from converters.torch import run
    from tests.converters.common import ort_run, torch_cpu
    from zoo.models.arch._net import Net
    n = Net("drop", (1, 6))
    n.dropout("drop", "data", 0.5, top="out", scale_train=False)
    graph = build_graph(n.proto)
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    module = to_pytorch(graph)
    with torch_cpu():
        got_torch = run(module, [x])["out"]
    got_onnx = ort_run(to_onnx(graph), {"data": x})["out"]
    assert np.allclose(got_torch, 0.5 * x) and np.allclose(got_onnx, 0.5 * x)


def _seeded_res10():
    """The res10 SSD with seeded weights and a random image; the class heads scaled down (by 1e-3) so the
    softmax does not saturate: distinct confidences, so the detections' order and cut are defined."""
    graph = build_graph(arch.build("opencv_face_detector_res10"))
    heads = tuple(f"{source[1]}_mbox_loc" for source in arch.ssd.RES10_SOURCES)
    _seed(graph, np.random.default_rng(13), damped=heads)
    for layer in graph.layers:
        if layer.name.endswith("_mbox_conf"):
            layer.blobs = [b * np.float32(1e-3) for b in layer.blobs]
    data = (np.random.default_rng(14).uniform(0, 255, (1, 3, 300, 300)) - 128).astype(np.float32)
    return graph, data


@pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
def test_opencv_face_detector_converts_and_both_backends_agree():
    """The res10 SSD: the same boxes from PyTorch and onnxruntime."""
    from converters import to_onnx, to_pytorch
    from converters.torch import run
    from tests.converters.common import close, describe, ort_run, torch_cpu
    graph, data = _seeded_res10()
    with torch_cpu():
        got_torch = run(to_pytorch(graph), [data])["detection_out"]
    got_onnx = ort_run(to_onnx(graph), {"data": data})["detection_out"]
    assert got_onnx.shape[2] > 10 and got_onnx.shape == got_torch.shape, (got_torch.shape, got_onnx.shape)
    assert len(np.unique(got_onnx[..., 2])) > 0.9 * got_onnx.shape[2]  # distinct confidences
    assert close(got_torch, got_onnx), describe(got_torch, got_onnx)


@pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
def test_opencv_face_detector_gives_opencv_dnns_detections(tmp_path):
    """OpenCV dnn, whose sample this detector is, reads the card's net (written by save_net) with the same
    seeded weights and finds the same boxes, matched as a set as the OpenCV fixtures are (OpenCV orders
    rows by confidence only, Caffe by label then confidence)."""
    cv2 = pytest.importorskip("cv2")
    from converters import to_onnx
    from prototxt import save_net
    from tests.converters.common import ort_run
    from tests.converters.test_fork_ssd import _match_rows
    graph, data = _seeded_res10()
    save_net(graph, tmp_path / "res10.prototxt", tmp_path / "res10.caffemodel")
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "res10.prototxt"), str(tmp_path / "res10.caffemodel"))
    net.setInput(data)
    theirs = net.forward()
    ours = ort_run(to_onnx(graph), {"data": data})["detection_out"]
    assert ours.shape == theirs.shape and ours.shape[2] == 200  # keep_top_k
    assert not _match_rows(ours, theirs), _match_rows(ours, theirs)[:3]


@pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")
def test_opencv_face_detector_fp16_weights_give_opencv_dnns_detections(tmp_path):
    """The fp16 card's file format: the seeded weights shrunk as OpenCV's shrinkCaffeModel does (Convolution
    blobs in float16 raw_data, BatchNorm/Scale/Normalize left float32) read by us as exactly the halves, and
    OpenCV dnn reading the same file finds the same boxes."""
    cv2 = pytest.importorskip("cv2")
    from converters import to_onnx
    from prototxt import load_net, save_net
    from tests.converters.common import ort_run
    from tests.converters.test_fork_ssd import _match_rows
    from tests.prototxt.test_fp16_weights import HALF_TYPES, as_half, shrunk
    graph, data = _seeded_res10()
    save_net(graph, tmp_path / "res10.prototxt")
    weights = shrunk(tmp_path / "res10_fp16.caffemodel", [(l.name, l.type, l.blobs) for l in graph.layers if l.blobs])
    half = load_net(tmp_path / "res10.prototxt", weights)
    assert half.weights_report.missing == []
    for layer, original in zip(half.layers, graph.layers):
        expected = [as_half(b) if layer.type in HALF_TYPES else b for b in original.blobs]
        assert [b.tobytes() for b in layer.blobs] == [b.tobytes() for b in expected], layer.name
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "res10.prototxt"), weights)
    net.setInput(data)
    theirs = net.forward()
    ours = ort_run(to_onnx(half), {"data": data})["detection_out"]
    assert ours.shape == theirs.shape and ours.shape[2] == 200  # keep_top_k
    assert not _match_rows(ours, theirs), _match_rows(ours, theirs)[:3]
