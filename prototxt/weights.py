"""Binary Caffe files: .caffemodel (a NetParameter) and .binaryproto (a BlobProto).

Read with a wire-format walker of our own instead of protobuf: protobuf refuses messages over 2 GB
and would copy every float through Python objects. The walker maps the file, reads only tags and
lengths, and pulls each blob's packed payload straight into an aligned numpy array with one
``readinto`` (no per-element Python work, one copy of the data in memory).
"""
from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, Optional, Sequence

import numpy as np

from .errors import WeightsError
from .fileio import atomic_open, open_regular
from .upgrade import v1_type_name

# Field numbers (caffe.proto).
_NET_NAME, _NET_LAYERS_V1, _NET_LAYER = 1, 2, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_NAME, _V1_TYPE, _V1_BLOBS, _V1_V0LAYER = 4, 5, 6, 1
_V0_NAME, _V0_TYPE, _V0_BLOBS = 1, 2, 50
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE = 5, 7, 8
_BLOB_RAW_TYPE, _BLOB_RAW_DATA = 10, 12  # NVIDIA Caffe's, kept by OpenCV (opencv-caffe.proto)
_SHAPE_DIM = 1

# NVIDIA Caffe's storage Type enum (opencv-caffe.proto): the ones a raw_data payload may hold, as
# little-endian numpy dtypes. OpenCV's shrinkCaffeModel writes FLOAT16; INT/UINT are never weights.
_RAW_TYPE_NAMES = {0: "DOUBLE", 1: "FLOAT", 2: "FLOAT16", 3: "INT", 4: "UINT"}
_RAW_DTYPES = {0: "<f8", 1: "<f4", 2: "<f2"}
_HALF_CHUNK = 1 << 20  # float16 values widened to float32 at a time

_MAX_DIM = 1 << 40  # no real blob axis comes near this; larger means a corrupt file


@dataclass
class StoredBlob:
    data: np.ndarray            # already shaped
    legacy: bool = False        # shape came from num/channels/height/width
    shapeless: bool = False     # neither shape nor legacy dims were stored (the data read as a vector)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass
class StoredLayer:
    name: str
    type: str
    blobs: list[StoredBlob] = field(default_factory=list)


class _Reader:
    """Walks protobuf wire format over a mapped file; payloads are read with readinto."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.file: BinaryIO = open_regular(path, buffering=0)
        except OSError as exc:
            raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
        self.size = os.fstat(self.file.fileno()).st_size
        self.buf = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        self.file.close()

    def fail(self, pos: int, what: str, context: str = "") -> None:
        where = f" in layer '{context}'" if context else ""
        raise WeightsError(f"{self.path}: {what} at byte {pos}{where}; the file is truncated or not a "
                           f"Caffe binary protobuf (re-download or re-export it)")

    def varint(self, pos: int, end: int, context: str = "") -> tuple[int, int]:
        buf, result, shift = self.buf, 0, 0
        while True:
            if pos >= end:
                self.fail(pos, "unexpected end of data", context)
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                self.fail(pos, "malformed varint", context)

    def fields(self, start: int, end: int, context: str = "") -> Iterator[tuple[int, int, int, int]]:
        """Yield (field number, wire type, value-or-start, end) for each field in [start, end)."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end, context)
            number, wire = key >> 3, key & 7
            if number == 0:
                self.fail(pos, "invalid field number 0", context)
            if wire == 0:
                value, pos = self.varint(pos, end, context)
                yield number, wire, value, pos
            elif wire == 2:
                length, pos = self.varint(pos, end, context)
                if pos + length > end:
                    self.fail(pos, f"a field of {length} bytes runs past the end", context)
                yield number, wire, pos, pos + length
                pos += length
            elif wire == 5:
                if pos + 4 > end:
                    self.fail(pos, "unexpected end of data", context)
                yield number, wire, pos, pos + 4
                pos += 4
            elif wire == 1:
                if pos + 8 > end:
                    self.fail(pos, "unexpected end of data", context)
                yield number, wire, pos, pos + 8
                pos += 8
            else:
                self.fail(pos, f"unsupported wire type {wire}", context)

    def string(self, start: int, end: int) -> str:
        return bytes(self.buf[start:end]).decode("utf-8", errors="replace")

    def read_array(self, start: int, end: int, dtype: str) -> np.ndarray:
        arr = np.empty((end - start) // np.dtype(dtype).itemsize, dtype=dtype)
        self.read_into(start, memoryview(arr).cast("B"))
        return arr

    def read_into(self, start: int, view: memoryview) -> None:
        self.file.seek(start)
        got = 0
        while got < len(view):
            n = self.file.readinto(view[got:])
            if not n:
                self.fail(start + got, "unexpected end of file")
            got += n

    def read_halves(self, start: int, end: int) -> np.ndarray:
        """float16 values as float32 in one float32 array: the halves are read into its upper half and
        widened front to back a chunk at a time (a chunk's writes end before the next chunk's halves), so
        the data is held once, as for float data."""
        n = (end - start) // 2
        out = np.empty(n, dtype="<f4")
        stored = out.view(np.uint8)[2 * n:]
        self.read_into(start, memoryview(stored))
        halves = stored.view("<f2")
        for i in range(0, n, _HALF_CHUNK):
            out[i:i + _HALF_CHUNK] = halves[i:i + _HALF_CHUNK]  # numpy buffers the chunk's own overlap
        return out

    def unpacked_run(self, pos: int, end: int, tag: int, width: int, dtype: str,
                     context: str) -> tuple[np.ndarray, int]:
        """A run of non-packed fixed-width values (tag, value, tag, value...) starting at a one-byte tag:
        at least one whole value, or the data is cut short (else the caller would never move on)."""
        stride = 1 + width
        n = (end - pos) // stride
        if n == 0:
            self.fail(end, "unexpected end of data", context)
        raw = np.frombuffer(self.buf, dtype=np.uint8, count=n * stride, offset=pos).reshape(n, stride)
        bad = np.flatnonzero(raw[:, 0] != tag)
        n = int(bad[0]) if bad.size else n
        values = raw[:n, 1:].copy().view(dtype).reshape(-1)
        return values, pos + n * stride

    # -- messages ----------------------------------------------------------------------------
    def blob(self, start: int, end: int, context: str, index: int = 0) -> StoredBlob:
        dims: Optional[list[int]] = None
        legacy: dict[int, int] = {}
        floats: list[np.ndarray] = []
        doubles: list[np.ndarray] = []
        raw: Optional[tuple[int, int]] = None
        raw_type: Optional[int] = None
        pos = start
        while pos < end:
            key, body = self.varint(pos, end, context)
            number, wire = key >> 3, key & 7
            one_byte_key = body == pos + 1  # the run reader matches tags byte by byte
            if number == _BLOB_DATA and wire == 5 and one_byte_key:
                values, pos = self.unpacked_run(pos, end, self.buf[pos], 4, "<f4", context)
                floats.append(values)
                continue
            if number == _BLOB_DOUBLE and wire == 1 and one_byte_key:
                values, pos = self.unpacked_run(pos, end, self.buf[pos], 8, "<f8", context)
                doubles.append(values)
                continue
            number, wire, a, b = next(self.fields(pos, end, context))
            pos = b
            if number == _BLOB_DATA and wire == 5:  # a value whose key was written in more bytes than needed
                floats.append(np.frombuffer(self.buf, "<f4", 1, a).copy())
            elif number == _BLOB_DOUBLE and wire == 1:
                doubles.append(np.frombuffer(self.buf, "<f8", 1, a).copy())
            elif number == _BLOB_DATA and wire == 2:
                if (b - a) % 4:
                    self.fail(a, "float data whose length is not a multiple of 4", context)
                floats.append(self.read_array(a, b, "<f4"))
            elif number == _BLOB_DOUBLE and wire == 2:
                if (b - a) % 8:
                    self.fail(a, "double data whose length is not a multiple of 8", context)
                doubles.append(self.read_array(a, b, "<f8"))
            elif number == _BLOB_SHAPE and wire == 2:
                dims = self.shape(a, b, context)
            elif number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) and wire == 0:
                legacy[number] = _int32(a)
            elif number == _BLOB_RAW_DATA and wire == 2:
                raw = (a, b)  # an optional bytes field: the last one counts, and it is read only if used
            elif number == _BLOB_RAW_TYPE and wire == 0:
                raw_type = _int32(a)
        # Blob::FromProto: any of num/channels/height/width set -> those 4 dims (unset ones 0), even
        # beside a shape; else the shape, which may have no axes (a scalar: PReLU's shared slope)
        is_legacy = bool(legacy)
        if legacy:
            dims = [legacy.get(k, 0) for k in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH)]
        shapeless = not legacy and dims is None
        if dims is not None and any(d < 0 or d > _MAX_DIM for d in dims):
            raise WeightsError(f"{self.path}: layer '{context}': blob dimension {dims} is negative or absurd; "
                               f"the file is corrupt")
        # NVIDIA Caffe reads double_data, else data, else raw_data; OpenCV reads data before raw_data too
        if doubles or floats:
            arrays = doubles or floats
            data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        elif raw is not None:
            data = self.raw_array(raw, raw_type, dims, f"layer '{context}' blob {index}")
        else:
            data = np.empty(0, dtype="<f4")
        if shapeless:  # Caffe would read a scalar; a vector that fits the layer is read leniently
            dims = [data.size] if data.size else []  # nothing at all: a scalar, missing its one value
        count = math.prod(dims)
        if count != data.size:
            raise WeightsError(f"{self.path}: layer '{context}': blob shape {tuple(dims)} needs {count} values "
                               f"but {data.size} are stored; the file is truncated or corrupt")
        return StoredBlob(data.reshape(dims), legacy=is_legacy, shapeless=shapeless)

    def raw_array(self, span: tuple[int, int], raw_type: Optional[int], dims: Optional[list[int]],
                  where: str) -> np.ndarray:
        """A raw_data payload (NVIDIA Caffe / OpenCV shrinkCaffeModel) as float32 (float64 if stored so; every
        float16 is exactly a float32), its length checked against the shape before anything is allocated."""
        a, b = span
        if raw_type is None:  # NVIDIA Caffe CHECKs for it; proto2's default (DOUBLE) would be a guess
            raise WeightsError(f"{self.path}: {where}: raw_data without raw_data_type; the file is corrupt")
        dtype = _RAW_DTYPES.get(raw_type)
        if dtype is None:
            kind = _RAW_TYPE_NAMES.get(raw_type, f"unknown type {raw_type}")
            raise WeightsError(f"{self.path}: {where}: raw_data of type {kind}, but weights can only be stored "
                               f"as FLOAT16, FLOAT or DOUBLE; the file is corrupt or from an unsupported tool")
        width = np.dtype(dtype).itemsize
        expected = math.prod(dims) * width if dims is not None else b - a
        if b - a != expected or (b - a) % width:
            need = f"shape {tuple(dims)} needs {expected}" if dims is not None else f"needs a multiple of {width}"
            raise WeightsError(f"{self.path}: {where}: raw_data holds {b - a} bytes of {_RAW_TYPE_NAMES[raw_type]} "
                               f"but the blob {need} bytes; the file is truncated or corrupt")
        return self.read_halves(a, b) if dtype == "<f2" else self.read_array(a, b, dtype)

    def shape(self, start: int, end: int, context: str) -> list[int]:
        dims: list[int] = []
        for number, wire, a, b in self.fields(start, end, context):
            if number != _SHAPE_DIM:
                continue
            if wire == 0:
                dims.append(_int64(a))
            elif wire == 2:
                pos = a
                while pos < b:
                    value, pos = self.varint(pos, b, context)
                    dims.append(_int64(value))
        return dims

    def layer(self, start: int, end: int, v1: bool) -> StoredLayer:
        name, type_, blobs, pending = "", "", [], []
        name_f, type_f, blobs_f = (_V1_NAME, _V1_TYPE, _V1_BLOBS) if v1 else (_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS)
        v0: Optional[StoredLayer] = None
        for number, wire, a, b in self.fields(start, end):
            if number == name_f and wire == 2:
                name = self.string(a, b)
            elif number == type_f:
                type_ = v1_type_name(a) if v1 and wire == 0 else (self.string(a, b) if wire == 2 else type_)
            elif number == blobs_f and wire == 2:
                pending.append((a, b))
            elif v1 and number == _V1_V0LAYER and wire == 2:
                v0 = self.v0_layer(a, b)
        blobs = [self.blob(a, b, name, i) for i, (a, b) in enumerate(pending)]
        if v0 is not None:  # a V0 layer wrapped in V1: its own name, type and blobs count when V1's are empty
            name = name or v0.name
            type_ = type_ or v0.type
            blobs = blobs or v0.blobs
        return StoredLayer(name, type_, blobs)

    def v0_layer(self, start: int, end: int) -> StoredLayer:
        from .upgrade import v0_type_name
        name, type_, pending = "", "", []
        for number, wire, a, b in self.fields(start, end):
            if number == _V0_NAME and wire == 2:
                name = self.string(a, b)
            elif number == _V0_TYPE and wire == 2:
                type_ = v0_type_name(self.string(a, b))
            elif number == _V0_BLOBS and wire == 2:
                pending.append((a, b))
        return StoredLayer(name, type_, [self.blob(a, b, name, i) for i, (a, b) in enumerate(pending)])


def _int32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


_int64 = _int32


def read_caffemodel(path: os.PathLike | str) -> tuple[str, list[StoredLayer]]:
    """The net name and every stored layer, in file order (V1 ``layers`` and V2 ``layer`` alike)."""
    reader = _Reader(str(path))
    try:
        name, layers = "", []  # an empty file is a valid, empty NetParameter (a net without weights)
        for number, wire, a, b in reader.fields(0, reader.size):
            if number == _NET_NAME and wire == 2:
                name = reader.string(a, b)
            elif number in (_NET_LAYER, _NET_LAYERS_V1) and wire == 2:
                layers.append(reader.layer(a, b, v1=number == _NET_LAYERS_V1))
        return name, layers
    finally:
        reader.close()


def load_weights(path: os.PathLike | str) -> dict[str, list[np.ndarray]]:
    """``{layer name: [arrays]}`` straight from a caffemodel.

    Caffe copies source layers in file order into the net layer of the same name, so when a
    name is stored twice the later copy is the one that counts; so it is here.
    """
    _, layers = read_caffemodel(path)
    out: dict[str, list[np.ndarray]] = {}
    for layer in layers:
        out[layer.name] = [b.data for b in layer.blobs]
    return out


def load_blob(path: os.PathLike | str) -> np.ndarray:
    """The array of a .binaryproto (one BlobProto, e.g. a mean image 1x3x256x256)."""
    reader = _Reader(str(path))
    try:
        if reader.size == 0:
            raise WeightsError(f"{path}: the file is empty")
        return reader.blob(0, reader.size, os.path.basename(str(path))).data
    finally:
        reader.close()


# -- writing -----------------------------------------------------------------------------------

def _varint_bytes(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint_bytes((number << 3) | wire)


def _length_delimited(number: int, payload_len: int) -> bytes:
    return _key(number, 2) + _varint_bytes(payload_len)


def _blob_header(arr: np.ndarray) -> tuple[bytes, bytes, np.ndarray]:
    """(shape field, data field header, little-endian payload array) of one BlobProto."""
    dims = b"".join(_varint_bytes(int(d)) for d in arr.shape)
    shape_msg = _length_delimited(_SHAPE_DIM, len(dims)) + dims if dims else b""
    shape = _length_delimited(_BLOB_SHAPE, len(shape_msg)) + shape_msg
    if arr.dtype == np.float64:
        payload = np.ascontiguousarray(arr, dtype="<f8").reshape(-1)
        number = _BLOB_DOUBLE
    else:
        payload = np.ascontiguousarray(arr, dtype="<f4").reshape(-1)
        number = _BLOB_DATA
    return shape, _length_delimited(number, payload.nbytes), payload


def write_caffemodel(path: os.PathLike | str, name: str,
                     layers: Sequence[tuple[bytes, Sequence[np.ndarray]]]) -> None:
    """Write a caffemodel atomically (temp file, then rename).

    ``layers``: (serialized LayerParameter without blobs, blob arrays) in net order. Caffe reads
    the concatenation of a message's fields as one message, so the blobs are appended as field 7
    after the layer's own fields; payloads are streamed, never joined in memory.
    """
    with atomic_open(path) as f:
        if name:
            raw = name.encode()
            f.write(_length_delimited(_NET_NAME, len(raw)) + raw)
        for layer_bytes, arrays in layers:
            blobs = [_blob_header(np.asarray(a)) for a in arrays]
            blob_lens = [len(s) + len(h) + p.nbytes for s, h, p in blobs]
            body = len(layer_bytes) + sum(len(_length_delimited(_LAYER_BLOBS, n)) + n for n in blob_lens)
            f.write(_length_delimited(_NET_LAYER, body))
            f.write(layer_bytes)
            for (shape, header, payload), n in zip(blobs, blob_lens):
                f.write(_length_delimited(_LAYER_BLOBS, n))
                f.write(shape)
                f.write(header)
                f.write(memoryview(payload).cast("B"))


def write_blob(path: os.PathLike | str, arr: np.ndarray) -> None:
    """Write one BlobProto (.binaryproto) atomically."""
    shape, header, payload = _blob_header(np.asarray(arr))
    with atomic_open(path) as f:
        f.write(shape + header)
        f.write(memoryview(payload).cast("B"))
