"""Files from strangers: every reader stops in bounded time and memory, refuses sizes it cannot afford
before allocating them, and says what is wrong in one line (a CaffeError), never a traceback.

The timing bounds are loose on purpose (a loaded 2-core CI machine): the fixed code takes milliseconds
where the quadratic code it replaced took minutes, so a bound of seconds still tells them apart.
"""
from __future__ import annotations

import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest

from prototxt import (CaffeError, GraphError, PrototxtSyntaxError, SizeLimitError, WeightsError, caffe_pb2,
                      build_graph, load_blob, load_net, read_caffemodel)
from prototxt.fillers import fill
from prototxt.graph import NameSet, fill_missing, unique_name
from prototxt.text import parse_net_text
from prototxt.weights import _varint_bytes
from zoo.cli import main
from tests.prototxt.test_errors import CONV, INPUT, cli_error, write


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint_bytes((number << 3) | 2) + _varint_bytes(len(payload)) + payload


def caffemodel(tmp_path, *blobs: bytes, name="ip") -> str:
    layer = field(1, name.encode()) + field(2, b"InnerProduct") + b"".join(field(7, b) for b in blobs)
    path = tmp_path / "w.caffemodel"
    path.write_bytes(field(100, layer))
    return str(path)


def within(seconds: float, fn, *args):
    """``fn(*args)``, failing (instead of hanging the suite) when it takes longer than ``seconds``."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_outcome(fn, *args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn.__name__} ran longer than {seconds} s"
    kind, value = result[0]
    if kind == "raise":
        raise value
    return value


def _outcome(fn, *args):
    try:
        return "return", fn(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
        return "raise", exc


# -- item 5: the weights reader ------------------------------------------------------------------

@pytest.mark.parametrize("tag, width", [(0x2D, 4), (0x41, 8)], ids=["float", "double"])
def test_truncated_unpacked_value_is_refused_not_looped_on(tmp_path, tag, width):
    """A non-packed data field (tag, 4 or 8 bytes) cut short inside the blob used to loop forever."""
    shape = field(7, field(1, b"") + b"\x08\x02")  # BlobShape { dim: 2 }
    whole = bytes([tag]) + b"\0" * width
    path = caffemodel(tmp_path, shape + whole + bytes([tag]) + b"\0" * (width - 1))
    with pytest.raises(WeightsError, match=r"unexpected end of data at byte \d+ in layer 'ip'"):
        within(10, read_caffemodel, path)


def test_non_canonical_key_of_an_unpacked_value_reads_the_value(tmp_path):
    """A key written in two bytes (0xAD 0x00 = field 5, wire 5) is valid protobuf: the value follows it."""
    blob = field(7, b"\x08\x01") + b"\xad\x00" + struct.pack("<f", 1.5)
    _, layers = read_caffemodel(caffemodel(tmp_path, blob))
    assert layers[0].blobs[0].data.tolist() == [1.5]


def test_unpacked_values_read_as_caffe_does(tmp_path):
    values = [1.0, -2.5, 3.25]
    blob = field(7, b"\x08\x03") + b"".join(b"\x2d" + struct.pack("<f", v) for v in values)
    _, layers = read_caffemodel(caffemodel(tmp_path, blob))
    assert layers[0].blobs[0].data.tolist() == values


def test_empty_blob_is_refused_in_one_line_as_caffe_does(tmp_path):
    """Blob::FromProto reads a BlobProto with no shape as a scalar (count 1), then CHECKs count against
    the stored values: an empty BlobProto fails there."""
    with pytest.raises(WeightsError, match=r"layer 'ip': blob shape \(\) needs 1 values but 0 are stored"):
        read_caffemodel(caffemodel(tmp_path, b""))
    mean = tmp_path / "mean.binaryproto"
    mean.write_bytes(field(7, b""))  # a shape with no dims, no data
    with pytest.raises(WeightsError, match="needs 1 values but 0 are stored"):
        load_blob(mean)


def test_blob_with_zero_sized_shape_and_no_data_is_empty(tmp_path):
    _, layers = read_caffemodel(caffemodel(tmp_path, field(7, b"\x08\x00")))
    assert layers[0].blobs[0].data.shape == (0,)


# -- item 7: the prototxt tokenizer and reader ---------------------------------------------------

def test_long_digit_run_before_a_letter_is_refused_in_linear_time():
    text = "name: " + "1" * 200_000 + "a"
    start = time.perf_counter()
    with pytest.raises(PrototxtSyntaxError) as err:
        within(20, parse_net_text, text)
    assert time.perf_counter() - start < 3
    assert len(str(err.value)) < 200  # the token is shown shortened


def test_long_integer_is_out_of_range_in_one_short_line():
    for field_ in ("num_output: ", "weight_filler { std: "):  # an integer field, a float one
        text = ('layer { name: "a" type: "InnerProduct" inner_product_param { ' + field_ + "9" * 100_000
                + " } } }"[field_.count("{"):])
        with pytest.raises(PrototxtSyntaxError, match="out of range") as err:
            within(20, parse_net_text, text)
        assert len(str(err.value)) < 300


def test_long_quoted_string_parses_in_bounded_memory():
    size = 4_000_000
    text = 'name: "' + "a" * size + '"'
    tracemalloc.start()
    try:
        net = within(30, parse_net_text, text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert net.name == "a" * size
    assert peak < 12 * size, f"parsing a {size}-byte string peaked at {peak} bytes"


def test_escapes_in_a_long_string_decode_in_linear_time():
    text = 'name: "' + "\\x41\\101\\n" * 100_000 + '"'
    net = within(20, parse_net_text, text)
    assert net.name == "AA\n" * 100_000


def test_many_same_named_in_place_layers_build_in_linear_time():
    net = caffe_pb2.NetParameter()
    net.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(dim=[1, 2])
    for _ in range(20_000):
        net.layer.add(name="relu", type="ReLU", bottom=["data"], top=["data"])
    start = time.perf_counter()
    graph = within(60, build_graph, net)
    assert time.perf_counter() - start < 10  # about 1 s; the quadratic naming took 61 s
    names = [t for layer in graph.layers for t in layer.tops]
    assert len(set(names)) == len(names) == 20_001
    assert names[:3] == ["data", "data@relu", "data@relu#2"] and names[-1] == "data@relu#20000"


def test_name_set_takes_the_lowest_free_suffix_in_linear_time():
    taken = {"a", "a_3"}
    assert [unique_name("a", taken) for _ in range(3)] == ["a_2", "a_4", "a_5"]
    names = NameSet()
    start = time.perf_counter()
    made = [names.unique("x") for _ in range(50_000)]
    assert time.perf_counter() - start < 5
    assert made[:3] == ["x", "x_2", "x_3"] and len(set(made)) == 50_000
    names.add("y_2")
    assert [names.unique("y") for _ in range(3)] == ["y", "y_3", "y_4"]


def test_prototxt_over_the_size_limit_is_refused_before_reading_it_all(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_MAX_PROTOTXT_BYTES", "1M")
    path = write(tmp_path, "# " + "x" * 2_000_000 + "\n" + INPUT)
    message = cli_error(capsys, "info", path)
    assert message.startswith(f"{path}: the file is larger than 1 MiB, the limit for a prototxt")
    assert "ZOO_MAX_PROTOTXT_BYTES" in message
    monkeypatch.setenv("ZOO_MAX_PROTOTXT_BYTES", "4M")
    assert [l.name for l in load_net(path).layers] == ["data"]
    assert [l.name for l in load_net(path, max_prototxt_bytes=3 << 20).layers] == ["data"]


def test_dev_zero_as_a_prototxt_is_refused_before_reading(capsys):
    start = time.perf_counter()
    message = within(30, cli_error, capsys, "info", "/dev/zero")
    assert time.perf_counter() - start < 10
    assert message == ("/dev/zero: cannot read: it is a character device, not a regular file; give the path of "
                       "the file itself")


def test_caffemodel_or_binary_junk_as_a_prototxt_is_one_line(tmp_path, capsys):
    weights = caffemodel(tmp_path, field(7, b"\x08\x01") + b"\x2d" + struct.pack("<f", 1.0))
    message = cli_error(capsys, "info", weights)
    assert message == (f"{weights}: this is a binary file (a .caffemodel or .binaryproto?), not a prototxt; "
                       f"give the net's text .prototxt here, and the weights separately")
    junk = tmp_path / "junk.prototxt"
    junk.write_bytes(bytes(range(1, 256)) * 10)  # no NUL byte: still not text
    assert cli_error(capsys, "info", junk).startswith(f"{junk}:1:")


@pytest.mark.parametrize("text", ["", "# nothing here\n", 'name: "empty"\n'], ids=["empty", "comment", "name"])
def test_net_without_layers_is_one_line(tmp_path, capsys, text):
    path = write(tmp_path, text)
    message = cli_error(capsys, "info", path)
    assert message == f"{path}: the file defines no layers; is it a Caffe net prototxt?"


# -- item 8: sizes refused before allocating -----------------------------------------------------

HUGE = [
    ("ip", 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
           'inner_product_param { num_output: 1000000000 } }', "layer 'fc' (InnerProduct): its weight blob "
                                                               "1000000000x192 would need 715.3 GiB"),
    ("conv", 'layer { name: "wide" type: "Convolution" bottom: "data" top: "wide" '
             'convolution_param { num_output: 2000000000 kernel_size: 1 } }', "layer 'wide' (Convolution): its "),
    ("dummy", 'layer { name: "d" type: "DummyData" top: "d" dummy_data_param { num: 100000 channels: 100000 '
              'height: 100 width: 100 } }', "layer 'd' (DummyData): its top 'd' 100000x100000x100x100 would need "
                                            "363.8 TiB"),
    ("parameter", 'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 100000 '
                  'dim: 100000 } } }', "layer 'p' (Parameter): its "),
    ("tile", 'layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { axis: 1 tiles: 2000000000 } }',
     "layer 't' (Tile): its top 't' 2x6000000000x8x8 would need"),
]


@pytest.mark.parametrize("layer, expected", [h[1:] for h in HUGE], ids=[h[0] for h in HUGE])
def test_huge_blob_is_refused_naming_the_layer_and_the_bytes(tmp_path, capsys, layer, expected):
    path = write(tmp_path, INPUT + layer + "\n")
    message = cli_error(capsys, "info", path)
    assert message.startswith(f"{path}: {expected}"), message
    assert "above the limit of 4 GiB per blob" in message and "ZOO_MAX_BYTES" in message


def test_blob_limit_can_be_raised(tmp_path, monkeypatch):
    path = write(tmp_path, INPUT + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                                   'inner_product_param { num_output: 2000 } }\n')
    with pytest.raises(SizeLimitError, match=r"its weight blob 2000x192 would need 1.5 MiB.* limit of 1 MiB"):
        load_net(path, max_bytes=1 << 20)
    monkeypatch.setenv("ZOO_MAX_BYTES", "1M")
    with pytest.raises(SizeLimitError):
        load_net(path)
    assert load_net(path, max_bytes=2 << 20).layer("fc").param_shapes[0] == (2000, 192)
    monkeypatch.setenv("ZOO_MAX_BYTES", "lots")
    with pytest.raises(CaffeError, match="ZOO_MAX_BYTES='lots' is not a size"):
        load_net(path)


def test_negative_parameter_shape_is_refused(tmp_path, capsys):
    path = write(tmp_path, 'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: -3 } } }\n')
    assert "negative" in cli_error(capsys, "info", path)


# -- item 9: one line instead of a traceback -----------------------------------------------------

def test_hex_float_too_large_for_a_double_is_one_line(tmp_path, capsys):
    path = write(tmp_path, INPUT + 'layer { name: "p" type: "PReLU" bottom: "data" top: "p" '
                                   'prelu_param { filler { value: 0x' + "f" * 300 + ' } } }\n')
    assert cli_error(capsys, "info", path).startswith(f"{path}:2:")
    path = write(tmp_path, 'name: "n"\n' + INPUT.replace("dim: 2", "dim: 0x10000000000000000"))
    assert "out of range" in cli_error(capsys, "info", path)


def test_unknown_filler_type_is_one_line_naming_the_layer(tmp_path):
    path = write(tmp_path, INPUT + CONV.replace("kernel_size: 3", 'kernel_size: 3 weight_filler { type: "foo" }'))
    graph = load_net(path)
    with pytest.raises(GraphError, match=r"layer 'conv1' \(Convolution\): unknown filler type 'foo'; Caffe's "
                                         r"fillers are constant, "):
        fill_missing(graph)


def test_non_square_bilinear_filler_is_one_line(tmp_path):
    path = write(tmp_path, INPUT + CONV.replace("kernel_size: 3", 'kernel_h: 3 kernel_w: 2 '
                                                                  'weight_filler { type: "bilinear" }'))
    with pytest.raises(GraphError, match=r"layer 'conv1' \(Convolution\): the bilinear filler needs a square "
                                         r"kernel \(Caffe: 'Filter must be square'\), not 4x3x3x2"):
        fill_missing(load_net(path))
    with pytest.raises(CaffeError, match="bilinear filler needs"):
        fill(caffe_pb2.FillerParameter(type="bilinear"), (2, 3), np.random.default_rng(0))


@pytest.mark.parametrize("filler, shape, message", [
    ('type: "uniform" min: 3 max: 1', (2, 3), r"uniform filler needs finite min <= max .*not min 3.0 max 1.0"),
    ('type: "uniform" min: nan', (2, 3), "uniform filler needs finite min <= max"),
    ('type: "gaussian" std: -1', (2, 3), r"gaussian filler needs a finite mean and a positive std"),
    ('type: "msra"', (0, 3), "msra filler needs a blob whose fan-in and fan-out are not 0, not 0x3"),
    ('type: "xavier"', (3, 0), "xavier filler needs"),
    ('type: "positive_unitball"', (), "positive_unitball filler needs a blob with a first axis"),
], ids=["uniform-reversed", "uniform-nan", "gaussian-negative", "msra-empty", "xavier-empty", "unitball-scalar"])
def test_filler_parameters_caffe_checks_are_one_line(filler, shape, message):
    from google.protobuf import text_format
    param = text_format.Parse(filler, caffe_pb2.FillerParameter())
    with pytest.raises(GraphError, match=message):
        fill(param, shape, np.random.default_rng(0))
