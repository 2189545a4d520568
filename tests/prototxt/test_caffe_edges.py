"""Corners of Caffe's loading rules that real nets rarely hit, each as Caffe's C++ decides it:
Im2col needs no num_output; Net::CopyTrainedLayersFrom's blob-count check (0 stored blobs included);
Blob::FromProto's legacy dims winning over a shape; shared blobs taking the copy LAST in the file;
UpgradeNetInput ignoring surplus input_dim/input_shape entries; Pooling's kernel_size XOR
(kernel_h AND kernel_w) check."""
from __future__ import annotations

import numpy as np
import pytest

from prototxt import WeightsError, caffe_pb2, load_net

INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'


def _net(tmp_path, body: str, head: str = INPUT) -> str:
    path = tmp_path / "net.prototxt"
    path.write_text('name: "t"\n' + head + body)
    return str(path)


def _caffemodel(tmp_path, layers) -> str:
    """layers: [(name, type, [(array, how)])], how: "shape", "legacy", "both" or "none"."""
    net = caffe_pb2.NetParameter()
    for name, type_, blobs in layers:
        layer = net.layer.add(name=name, type=type_)
        for array, how in blobs:
            blob = layer.blobs.add()
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
            if how in ("shape", "both"):
                blob.shape.dim.extend([int(np.asarray(array).size)] if how == "both" else np.shape(array))
            if how in ("legacy", "both"):
                legacy = (1,) * (4 - np.ndim(array)) + np.shape(array)
                blob.num, blob.channels, blob.height, blob.width = legacy
    path = tmp_path / "w.caffemodel"
    path.write_bytes(net.SerializeToString())
    return str(path)


def test_im2col_reads_no_num_output(tmp_path):
    head = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
    graph = load_net(_net(tmp_path, 'layer { name: "i" type: "Im2col" bottom: "x" top: "y" '
                                    'convolution_param { kernel_size: 3 } }\n', head))
    assert graph.values["y"].shape == (1, 27, 6, 6)


FC = 'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 } }\n'


def test_a_stored_layer_with_no_blobs_is_refused_as_caffe_does(tmp_path):
    """CHECK_EQ(target_blobs.size(), source_layer.blobs_size()): 'Incompatible number of blobs'."""
    with pytest.raises(WeightsError) as info:
        load_net(_net(tmp_path, FC), _caffemodel(tmp_path, [("fc", "InnerProduct", [])]))
    assert "'fc' stores 0 blobs" in str(info.value) and "\n" not in str(info.value)


def test_legacy_dims_win_over_a_shape(tmp_path):
    """Blob::FromProto uses num/channels/height/width whenever one is set: (1,1,3,2) fits a 3x2 weight
    even beside a flat shape {6}."""
    w, b = np.arange(6).reshape(3, 2), np.arange(3)
    graph = load_net(_net(tmp_path, FC), _caffemodel(tmp_path, [("fc", "InnerProduct", [(w, "both"), (b, "both")])]))
    np.testing.assert_array_equal(graph.layer("fc").blobs[0], w)
    np.testing.assert_array_equal(graph.layer("fc").blobs[1], b)


def test_a_scalar_stored_without_any_shape(tmp_path):
    """A channel-shared PReLU slope written with no shape: Caffe reads a 0-axis blob, which fits."""
    body = 'layer { name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true } }\n'
    graph = load_net(_net(tmp_path, body), _caffemodel(tmp_path, [("p", "PReLU", [(np.float32(0.25), "none")])]))
    assert graph.layer("p").blobs[0].shape == () and float(graph.layer("p").blobs[0]) == 0.25


SHARED = ('layer { name: "a" type: "InnerProduct" bottom: "x" top: "ya" param { name: "w" } '
          'inner_product_param { num_output: 1 bias_term: false } }\n'
          'layer { name: "b" type: "InnerProduct" bottom: "x" top: "yb" param { name: "w" } '
          'inner_product_param { num_output: 1 bias_term: false } }\n')


@pytest.mark.parametrize("file_order, value", [(("a", "b"), 2.0), (("b", "a"), 1.0)])
def test_shared_blobs_take_the_copy_last_in_the_file(tmp_path, file_order, value):
    """Caffe shares the storage in Net::Init, then copies the caffemodel in file order: the last wins."""
    values = {"a": 1.0, "b": 2.0}
    stored = [(n, "InnerProduct", [(np.full((1, 2), values[n]), "shape")]) for n in file_order]
    graph = load_net(_net(tmp_path, SHARED), _caffemodel(tmp_path, stored))
    assert graph.layer("a").blobs[0].tolist() == [[value, value]]
    assert graph.layer("b").blobs[0].tolist() == [[value, value]]


@pytest.mark.parametrize("head, shape", [
    ('input: "x"\ninput_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8 input_dim: 9\n', (1, 3, 8, 8)),
    ('input: "x"\ninput_shape { dim: 1 dim: 3 }\ninput_shape { dim: 5 }\n', (1, 3)),
])
def test_surplus_input_dims_are_ignored(tmp_path, head, shape):
    graph = load_net(_net(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n', head))
    assert graph.values["y"].shape == shape


def test_too_few_input_dims_are_refused(tmp_path):
    with pytest.raises(Exception) as info:
        load_net(_net(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n',
                      'input: "x"\ninput_dim: 1 input_dim: 3\n'))
    assert "input_dim" in str(info.value)


def test_pooling_kernel_size_beside_kernel_h_alone(tmp_path):
    """Caffe checks kernel_size XOR (kernel_h AND kernel_w): kernel_size with kernel_h alone passes and
    kernel_size is used; with both kernel_h and kernel_w it is refused."""
    head = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 7 dim: 7 } } }\n'
    graph = load_net(_net(tmp_path, 'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
                                    'pooling_param { pool: MAX kernel_size: 3 kernel_h: 2 } }\n', head))
    assert graph.values["y"].shape == (1, 3, 5, 5)
    with pytest.raises(Exception) as info:
        load_net(_net(tmp_path, 'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
                                'pooling_param { pool: MAX kernel_size: 3 kernel_h: 2 kernel_w: 2 } }\n', head)
                 ).require_shapes()
    assert "not both" in str(info.value)


IMAGE = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 13 dim: 13 } } }\n'


@pytest.mark.parametrize("body, says", [
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { global_pooling: true kernel_size: 3 } }',
     "give no kernel size"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { global_pooling: true stride: 2 } }',
     "only pad 0 and stride 1"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 pad_h: 1 } }',
     "both pad_h and pad_w"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 stride: 2 stride_h: 1 '
     'stride_w: 1 } }', "both stride_h and stride_w"),
    ('layer { name: "r" type: "Reshape" bottom: "x" top: "x" reshape_param { shape { dim: 0 dim: -1 } } }',
     "cannot work in place"),
    ('layer { name: "f" type: "Flatten" bottom: "x" top: "x" }', "cannot work in place"),
    ('layer { name: "e" type: "Embed" bottom: "x" top: "y" embed_param { num_output: 4 } }',
     "input_dim and num_output must be positive"),
    ('layer { name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 4 } }',
     "too small for 8x8 bins"),
])
def test_nets_caffe_refuses_are_refused_in_one_line(tmp_path, body, says):
    """PoolingLayer::LayerSetUp's field checks, Reshape/Flatten's CHECK_NE(top, bottom), Embed's
    CHECK_GT(K_, 0), and SPP levels whose pooling would need pad >= kernel (13x13 at 8x8 bins)."""
    with pytest.raises(Exception) as info:
        load_net(_net(tmp_path, body + "\n", IMAGE)).require_shapes()
    text = str(info.value)
    assert says in text and "\n" not in text, text


def test_crop_reference_with_more_axes(tmp_path):
    """CropLayer::Reshape reads the reference's shape only on the input's axes."""
    head = ('layer { name: "in" type: "Input" top: "x" top: "r" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } '
            'shape { dim: 1 dim: 2 dim: 5 dim: 6 dim: 7 } } }\n')
    graph = load_net(_net(tmp_path, 'layer { name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" '
                                    'crop_param { axis: 2 offset: 1 } }\n', head))
    assert graph.values["y"].shape == (1, 2, 5, 6)


def test_unknown_v0_layer_type(tmp_path):
    path = tmp_path / "v0.prototxt"
    path.write_text('name: "v0"\ninput: "x"\ninput_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
                    'layers { layer { name: "c" type: "convolutoin" num_output: 2 kernelsize: 3 } '
                    'bottom: "x" top: "y" }\n')
    with pytest.raises(Exception) as info:
        load_net(path)
    assert "unknown V0 layer type 'convolutoin'" in str(info.value) and "conv" in str(info.value)
