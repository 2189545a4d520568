"""Caffemodels whose blobs hold their values in NVIDIA Caffe's ``raw_data``/``raw_data_type`` fields, as
OpenCV's shrinkCaffeModel writes them (float16; e.g. res10_300x300_ssd_iter_140000_fp16.caffemodel): read as
float32 exactly, and a bad raw payload is one line naming the layer and the blob."""
from __future__ import annotations

import tracemalloc
from typing import Iterable, Sequence

import numpy as np
import pytest

from prototxt import WeightsError, load_net, load_weights, read_caffemodel
from prototxt import weights
from prototxt.weights import _varint_bytes
from tests.helpers import SHARED, shared_dir
from tests.prototxt.test_errors import CONV, INPUT, cli_error, write
from tests.prototxt.test_fuzz import bounded, mutants, mutate_binary
from tests.prototxt.test_hostile import caffemodel, field

FLOAT16, FLOAT, DOUBLE, INT = 2, 1, 0, 3  # opencv-caffe.proto's Type enum
RAW_TYPE, RAW_DATA = 10, 12               # its BlobProto field numbers
DTYPES = {FLOAT16: "<f2", FLOAT: "<f4", DOUBLE: "<f8"}


def raw_blob(arr: np.ndarray, raw_type: int | None = FLOAT16, payload: bytes | None = None) -> bytes:
    """A BlobProto as shrinkCaffeModel writes it: the shape, then the values as raw bytes of one type."""
    dims = b"".join(_varint_bytes(d) for d in arr.shape)
    if payload is None:
        payload = np.ascontiguousarray(arr, dtype=DTYPES[raw_type]).tobytes()
    type_field = _varint_bytes(RAW_TYPE << 3) + _varint_bytes(raw_type) if raw_type is not None else b""
    return field(7, field(1, dims)) + type_field + field(RAW_DATA, payload)


HALF_TYPES = ("Convolution", "InnerProduct")  # what shrinkCaffeModel converts unless told other types


def shrunk(path, layers: Iterable[tuple[str, str, Sequence[np.ndarray]]]) -> str:
    """A caffemodel of (name, type, blobs) as shrinkCaffeModel leaves it: the blobs of HALF_TYPES layers in
    float16 raw_data, the others as float data; each layer only its name, type and blobs."""
    def blob(arr: np.ndarray, half: bool) -> bytes:
        if half:
            return raw_blob(arr)
        dims = b"".join(_varint_bytes(d) for d in arr.shape)
        return field(7, field(1, dims)) + field(5, np.ascontiguousarray(arr, "<f4").tobytes())

    path.write_bytes(b"".join(field(100, field(1, name.encode()) + field(2, kind.encode())
                                   + b"".join(field(7, blob(a, kind in HALF_TYPES)) for a in arrays))
                              for name, kind, arrays in layers))
    return str(path)


def as_half(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float16).astype(np.float32)


def test_float16_blobs_load_as_float32_exactly(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    weight.flat[:4] = [65504.0, 6e-8, -0.0, 1e-5]  # the largest half, a subnormal, a signed zero, a rounded one
    bias = rng.normal(0, 1, 4).astype(np.float32)
    path = shrunk(tmp_path / "w.caffemodel", [("conv1", "Convolution", [weight, bias])])
    loaded = load_weights(path)["conv1"]
    assert [a.dtype for a in loaded] == [np.float32, np.float32]
    assert loaded[0].tobytes() == as_half(weight).tobytes() and loaded[1].tobytes() == as_half(bias).tobytes()
    graph = load_net(write(tmp_path, INPUT + CONV), path)
    assert graph.weights_report.missing == []
    assert graph.layer("conv1").blobs[0].tobytes() == as_half(weight).tobytes()


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_float16_widened_in_place_chunk_by_chunk(tmp_path, monkeypatch, chunk):
    """The halves are read into the float32 array's upper half and widened front to back: every chunk size,
    lengths around it, reads the same values."""
    monkeypatch.setattr(weights, "_HALF_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    for n in (0, 1, 2, chunk - 1, chunk, chunk + 1, 2 * chunk + 1, 1000):
        values = rng.normal(0, 100, max(n, 0)).astype(np.float32)
        loaded = read_caffemodel(caffemodel(tmp_path, raw_blob(values)))[1][0].blobs[0].data
        assert loaded.tobytes() == as_half(values).tobytes(), n


def test_float16_blob_is_held_once_as_float32(tmp_path):
    values = np.ones(1 << 22, dtype=np.float32)  # 8 MB of halves, 16 MB as float32
    path = caffemodel(tmp_path, raw_blob(values))
    tracemalloc.start()
    try:
        read_caffemodel(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < values.nbytes * 1.2, peak


@pytest.mark.parametrize("raw_type", [FLOAT, DOUBLE], ids=["float", "double"])
def test_raw_float_and_double_read_as_nvidia_caffe_does(tmp_path, raw_type):
    values = np.array([[1.5, -2.25, 3.0e-3]])
    blob = read_caffemodel(caffemodel(tmp_path, raw_blob(values, raw_type)))[1][0].blobs[0]
    assert blob.data.dtype == np.dtype(DTYPES[raw_type]) and blob.data.tolist() == values.astype(DTYPES[raw_type]).tolist()


def test_float_data_wins_over_raw_data_as_in_opencv_and_nvidia_caffe(tmp_path):
    """OpenCV's blobFromProto (and NVIDIA Caffe's Blob::FromProto) read raw_data only when data is empty."""
    data = field(5, np.array([1.0, 2.0], "<f4").tobytes())
    blob = raw_blob(np.array([5.0, 6.0]), payload=b"\0")  # a raw payload that would not even fit
    assert read_caffemodel(caffemodel(tmp_path, blob + data))[1][0].blobs[0].data.tolist() == [1.0, 2.0]


def test_shapeless_raw_data_reads_as_a_vector(tmp_path):
    blob = _varint_bytes(RAW_TYPE << 3) + b"\x02" + field(RAW_DATA, np.array([1, 2, 3], "<f2").tobytes())
    stored = read_caffemodel(caffemodel(tmp_path, blob))[1][0].blobs[0]
    assert stored.shapeless and stored.data.tolist() == [1.0, 2.0, 3.0]


def test_truncated_raw_data_is_one_line(tmp_path):
    path = tmp_path / "w.caffemodel"
    whole = field(100, field(1, b"ip") + field(7, raw_blob(np.ones((2, 3)))))
    path.write_bytes(whole[:-5])  # the file cut short inside raw_data
    with pytest.raises(WeightsError, match=r"a field of \d+ bytes runs past the end at byte \d+; the file is truncated"):
        read_caffemodel(path)
    blob = raw_blob(np.ones((2, 3)))[:-5]  # a whole layer whose blob ends inside its raw_data
    with pytest.raises(WeightsError, match=r"a field of 12 bytes runs past the end at byte \d+ in layer 'ip'; the "
                                           r"file is truncated"):
        read_caffemodel(caffemodel(tmp_path, blob))


@pytest.mark.parametrize("size", [10, 14, 13], ids=["short", "long", "odd"])
def test_raw_data_length_mismatch_is_one_line_naming_layer_and_blob(tmp_path, size):
    bias = raw_blob(np.ones(3))
    blob = raw_blob(np.ones((2, 3)), payload=b"\0" * size)
    with pytest.raises(WeightsError) as err:
        read_caffemodel(caffemodel(tmp_path, bias, blob))
    assert f"layer 'ip' blob 1: raw_data holds {size} bytes of FLOAT16 but the blob shape (2, 3) needs 12 bytes" \
           in str(err.value) and "\n" not in str(err.value)


def test_raw_data_size_is_checked_before_allocating(tmp_path):
    """A shape of 2^80 values over a 12-byte payload is refused from the numbers alone."""
    huge = field(7, field(1, _varint_bytes(1 << 40) * 2)) + _varint_bytes(RAW_TYPE << 3) + b"\x02" \
        + field(RAW_DATA, b"\0" * 12)
    with pytest.raises(WeightsError, match=r"raw_data holds 12 bytes of FLOAT16 but the blob shape \(1099511627776, "
                                           r"1099511627776\) needs 2417851639229258349412352 bytes"):
        read_caffemodel(caffemodel(tmp_path, huge))


@pytest.mark.parametrize("raw_type, kind", [(INT, "INT"), (7, "unknown type 7"), (-1, "unknown type -1")])
def test_unsupported_raw_type_is_one_line(tmp_path, raw_type, kind):
    blob = field(7, field(1, b"\x02")) + _varint_bytes(RAW_TYPE << 3) + _varint_bytes(raw_type) \
        + field(RAW_DATA, b"\0" * 8)
    with pytest.raises(WeightsError) as err:
        read_caffemodel(caffemodel(tmp_path, blob))
    assert f"layer 'ip' blob 0: raw_data of type {kind}, but weights can only be stored as FLOAT16, FLOAT or " \
           f"DOUBLE" in str(err.value) and "\n" not in str(err.value)


def test_raw_data_without_its_type_is_one_line(tmp_path):
    with pytest.raises(WeightsError, match=r"layer 'ip' blob 0: raw_data without raw_data_type; the file is corrupt"):
        read_caffemodel(caffemodel(tmp_path, raw_blob(np.ones(2), raw_type=None, payload=b"\0" * 4)))


def test_zoo_info_reports_a_bad_raw_type_in_one_line(tmp_path, capsys):
    net = write(tmp_path, INPUT + CONV)
    blob = field(7, field(1, b"\x04\x03\x03\x03")) + _varint_bytes(RAW_TYPE << 3) + b"\x04" + field(RAW_DATA, b"")
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(field(100, field(1, b"conv1") + field(7, blob)))
    assert "layer 'conv1' blob 0: raw_data of type UINT" in cli_error(capsys, "info", net, "--weights", weights)


CORPUS_NET = "opencv_dnn_layer_tests/caffe_2015/layer_convolution/layer_convolution"


@pytest.fixture
def corpus_shrunk(tmp_path):
    """A corpus caffemodel (real Caffe wrote it) shrunk to float16 as shrinkCaffeModel would: its path and the
    original layers."""
    if not SHARED.is_dir():
        pytest.skip("no shared corpus")
    original = load_weights(shared_dir() / "corpus" / f"{CORPUS_NET}.caffemodel")
    return shrunk(tmp_path / "fp16.caffemodel", [(k, "Convolution", v) for k, v in original.items() if v]), original


def test_corpus_caffemodel_shrunk_to_float16_loads_its_half_values(corpus_shrunk):
    path, original = corpus_shrunk
    graph = load_net(shared_dir() / "corpus" / f"{CORPUS_NET}.prototxt", path)
    assert graph.weights_report.missing == []
    for name, arrays in original.items():
        got = graph.layer(name).blobs if arrays else []
        assert [g.tobytes() for g in got] == [as_half(a).tobytes() for a in arrays], name


def test_mutated_float16_caffemodels_load_or_fail_in_one_line(corpus_shrunk, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_MAX_BYTES", "16M")
    source, _ = corpus_shrunk
    net = shared_dir() / "corpus" / f"{CORPUS_NET}.prototxt"
    path = tmp_path / "mutant.caffemodel"
    for _, label in mutants(source, mutate_binary, path, 100):
        bounded(label, lambda: load_weights(path))
        bounded(label + " against its net", lambda: load_net(net, path))
