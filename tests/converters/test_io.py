"""What a converted net takes and gives, as the README's "Inputs and outputs" says.

A train/test net converted for inference: its losses and Accuracy are left out, and the blobs they
were fed become the outputs (a train_val net's fc8), never a label; the label is no input either.
Every corpus train/test net the converters support (given its data shape) gives a runnable model.
A net computing in place on its input names its ONNX output after the last layer that wrote it."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from converters import registry
from converters.onnx import ConversionNote, build
from converters.plan import plan
from prototxt import load_net
from prototxt.graph import fill_missing
from tests.converters.common import ort_session
from tests.helpers import SHARED, shared_params

# Corpus train/test nets and their data shapes (stored in LMDBs not at hand; their deploy nets'
# shapes), with the outputs a user converting them expects.
NETS = {
    "bvlc_alexnet/train_val.prototxt": ({"data": (1, 3, 227, 227)}, ["fc8"]),
    "bvlc_reference_caffenet/train_val.prototxt": ({"data": (1, 3, 227, 227)}, ["fc8"]),
    "bvlc_googlenet/train_val.prototxt": ({"data": (1, 3, 224, 224)},
                                          ["loss1/classifier", "loss2/classifier", "loss3/classifier"]),
    "cifar10_full/cifar10_full_train_test.prototxt": ({"data": (1, 3, 32, 32)}, ["ip1"]),
    "cifar10_full/cifar10_full_sigmoid_train_test_bn.prototxt": ({"data": (1, 3, 32, 32)}, ["ip1"]),
    "cifar10_quick/cifar10_quick_train_test.prototxt": ({"data": (1, 3, 32, 32)}, ["ip2"]),
    "mnist_lenet/lenet_train_test.prototxt": ({"data": (1, 1, 28, 28)}, ["ip2"]),
    "mnist_siamese/mnist_siamese_train_test.prototxt": ({"pair_data": (1, 2, 28, 28), "sim": (1,)},
                                                        ["feat", "feat_p"]),
    "squeezenet_v1.1/train_val.prototxt": ({"data": (1, 3, 227, 227)}, ["pool10"]),
    "finetune_flickr_style/train_val.prototxt": ({}, ["fc8_flickr"]),
    "pascal_finetune_detection/pascal_finetune_trainval_test.prototxt": ({}, ["fc8_pascal"]),
    "dcgan_intel/discriminator.prototxt": ({}, ["Dfc7"]),
}


def _cases():
    present = [n for n in NETS if (SHARED / "corpus" / n).is_file()]
    return shared_params(present, present)


@pytest.mark.parametrize("net", _cases())
def test_train_test_net_outputs_the_blobs_its_losses_were_fed(net):
    data, expected = NETS[net]
    path = SHARED / "corpus" / net
    graph = load_net(path, input_shapes={"label": (1,), **data} if data and "sim" not in data else data or None)
    fill_missing(graph)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, arrays = build(graph)
        p = plan(graph)
    notes = [str(w.message) for w in caught if isinstance(w.message, ConversionNote)]
    assert len(notes) == 1 and all(name in notes[0] for name in expected), notes
    outputs = [o.name for o in model.graph.output]
    assert outputs == expected and p.output_names == expected
    io = registry.inference_io(graph)
    labels = {graph.values[v].caffe_name for v in io.labels}
    assert labels and not labels & {i.name for i in model.graph.input}, labels
    assert [graph.values[v].caffe_name for v in p.inputs] == [i.name for i in model.graph.input]
    for t in model.graph.initializer:
        t.raw_data = arrays[t.name].tobytes()
    sess = ort_session(model)
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
    got = sess.run(None, feeds)
    assert all(np.isfinite(g).all() for g in got)


def test_an_output_that_rewrites_an_input_is_named_after_its_last_writer(shared, tmp_path):
    """batchnorm_scale computes in place on its input 'data': ONNX cannot give the input and the
    output one name, so the output is 'data@sc' (the blob, then the last layer that wrote it, whatever
    the layers before it are called); the PyTorch module names its output 'data', as Caffe's
    net.blobs does."""
    from converters import to_onnx, to_pytorch
    path = shared / "reference" / "layers" / "batchnorm_scale" / "net.prototxt"
    renamed = tmp_path / "net.prototxt"
    renamed.write_text(path.read_text().replace('name: "bn"', 'name: "norm"'))
    for net in (path, renamed):
        graph = load_net(net)
        fill_missing(graph)
        model = to_onnx(graph)
        assert [i.name for i in model.graph.input] == ["data"]
        assert [o.name for o in model.graph.output] == ["data@sc"]
        assert to_pytorch(graph).output_names == ["data"]


def test_a_net_with_nothing_to_output_is_one_clear_error(tmp_path):
    from prototxt.errors import GraphError
    net = tmp_path / "net.prototxt"
    net.write_text('name: "t"\nlayer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
                   'layer { name: "s" type: "Scale" bottom: "data" top: "y" }\n'
                   'layer { name: "mute" type: "Silence" bottom: "y" }\n')
    graph = load_net(net)
    fill_missing(graph)
    for convert in (build, plan):
        with pytest.raises(GraphError) as info:
            convert(graph)
        assert str(net) in str(info.value) and "\n" not in str(info.value)
