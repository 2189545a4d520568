"""Caffe's data layers for `zoo train`: Data (an LMDB of Datum records), ImageData (a list file of
`path label` lines), each with the DataTransformer of its transform_param (crop, mirror, mean, scale;
``zoo.inference.transform``).

Images are BGR 0..255, as OpenCV reads them (``zoo.inference.image``). Caffe's random numbers
(crop offsets, mirroring, shuffling) cannot be reproduced; ours come from a numpy Generator that
`zoo train` seeds with the solver's `random_seed`.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from prototxt import CaffeError, caffe_pb2
from zoo.inference.image import decode_image, resize_bilinear
from zoo.inference.transform import TEST, TRAIN, DataTransformer  # noqa: F401 - TEST, TRAIN: the phases, for callers


class DataError(CaffeError):
    """A data source that cannot be read: a missing database, an unreadable image, a bad list line."""


def transformer(param: caffe_pb2.TransformationParameter, phase: str, where: str) -> DataTransformer:
    """A data layer's DataTransformer from its transform_param (the mean_file read here)."""
    mean = None
    if param.HasField("mean_file"):
        if param.mean_value:
            raise DataError(f"{where}: transform_param gives both mean_file and mean_value; keep one")
        from prototxt import load_blob
        try:
            blob = load_blob(param.mean_file)
        except CaffeError as exc:
            raise DataError(f"{where}: cannot read mean_file: {exc}") from None
        mean = np.asarray(blob, dtype=np.float32).reshape(blob.shape[-3:] if blob.ndim >= 3 else (1,) + blob.shape)
    return DataTransformer(float(np.float32(param.scale)), param.mirror, param.crop_size, mean,
                           tuple(float(np.float32(v)) for v in param.mean_value), phase)


def parse_datum(value: bytes, where: str) -> caffe_pb2.Datum:
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception:
        raise DataError(f"{where} is not a caffe Datum") from None
    return datum


def check_datum(datum: caffe_pb2.Datum, where: str) -> tuple[int, int, int]:
    """A raw (not encoded) Datum's (C, H, W), refused unless each is positive."""
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) < 1:
        raise DataError(f"{where}: a Datum of channels {shape[0]}, height {shape[1]}, width {shape[2]}; each must be "
                        f"positive (a broken or foreign record)")
    return shape


def datum_image(datum: caffe_pb2.Datum, color: Optional[bool], where: str) -> np.ndarray:
    """A Datum's (C, H, W) image: uint8 bytes, float_data, or an encoded image (decoded as OpenCV would)."""
    if datum.encoded:
        return decode_image(datum.data, color, where)
    shape = check_datum(datum, where)
    n = int(np.prod(shape))
    if datum.data:
        if len(datum.data) != n:
            raise DataError(f"{where}: {len(datum.data)} data bytes for a {'x'.join(map(str, shape))} Datum")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != n:
        raise DataError(f"{where}: {len(datum.float_data)} float_data values for a {'x'.join(map(str, shape))} Datum")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


# -- sources ---------------------------------------------------------------------------------------

class LayerSource:
    """One data layer: ``shapes`` (its tops' shapes) and ``next_batch()`` ({top name: array}).

    ``shard`` (rank, N): on N processes, the record at position k of the layer's stream goes to process
    k mod N (Caffe's DataLayer::Skip), so that together they read each record once per pass."""

    tops: list[str]
    shapes: list[tuple[int, ...]]
    shard: tuple[int, int] = (0, 1)

    def next_batch(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LmdbDatums:
    """An LMDB of Caffe Datum records (what Caffe's Data layer and convert_imageset use), in key order:
    a cursor that wraps around at the end (the Data layer), or records by key (finetuning)."""

    def __init__(self, path: str, where: str) -> None:
        import lmdb
        self.path, self.where = path, where
        try:
            self.env = lmdb.open(path, readonly=True, lock=False, readahead=False, max_readers=126,
                                 subdir=os.path.isdir(path))
            self.txn = self.env.begin(buffers=False)
            self.cursor = self.txn.cursor()
        except lmdb.Error as exc:
            raise DataError(f"{where}: cannot open the LMDB '{path}': {exc}") from None
        if not self.cursor.first():
            self.close()
            raise DataError(f"{where}: the LMDB '{path}' is empty")

    def place(self, key: bytes) -> str:
        return f"{self.where}: record {bytes(key)!r} of '{self.path}'"

    def current(self) -> tuple[bytes, caffe_pb2.Datum]:
        key, value = self.cursor.item()
        return key, parse_datum(value, self.place(key))

    def advance(self) -> None:
        if not self.cursor.next():
            self.cursor.first()

    def keys(self) -> list[bytes]:
        return [bytes(key) for key in self.txn.cursor().iternext(keys=True, values=False)]

    def get(self, key: bytes) -> caffe_pb2.Datum:
        return parse_datum(self.txn.get(key), self.place(key))

    def close(self) -> None:
        self.env.close()


class LmdbSource(LayerSource):
    """Caffe's Data layer over an LMDB: records in key order, wrapping around at the end."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: str, rng: np.random.Generator,
                 shard: tuple[int, int] = (0, 1)) -> None:
        p = layer.data_param
        self.where = f"data layer '{layer.name}'"
        if p.backend != caffe_pb2.DataParameter.LMDB:
            raise DataError(f"{self.where}: backend {caffe_pb2.DataParameter.DB.Name(p.backend)} is not supported "
                            f"(LevelDB is Caffe's default); convert '{p.source}' to LMDB and set backend: LMDB, "
                            f"or give the batches with --feed")
        if p.batch_size <= 0:
            raise DataError(f"{self.where}: batch_size must be positive (got {p.batch_size})")
        if not p.source:
            raise DataError(f"{self.where}: data_param.source is not set")
        if not os.path.isdir(p.source):
            raise DataError(f"{self.where}: the LMDB '{p.source}' does not exist (paths are relative to the "
                            f"directory you run from, as in Caffe)")
        self.db = LmdbDatums(p.source, self.where)
        self.batch_size, self.rng = p.batch_size, rng
        self.transform = transformer(layer.transform_param, phase, self.where)
        self.force = True if layer.transform_param.force_color else False if layer.transform_param.force_gray else None
        self.tops = list(layer.top)
        # data_param.rand_skip is ignored, as by Caffe since its DataReader (the ImageData layer's is used)
        key, datum = self.db.current()
        c, h, w = datum_image(datum, self.force, self.db.place(key)).shape
        self.shapes = [(self.batch_size, c, *self.transform.output_hw(h, w)), (self.batch_size,)][:len(self.tops)]
        self.shard = shard
        for _ in range(shard[0]):
            self.db.advance()

    def next_batch(self) -> dict[str, np.ndarray]:
        data = np.empty(self.shapes[0], dtype=np.float32)
        labels = np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            key, datum = self.db.current()
            where = f"{self.where}: record {key!r}"
            image = datum_image(datum, self.force, self.db.place(key))
            out = self.transform(image, self.rng, where)
            if out.shape != data.shape[1:]:
                raise DataError(f"{where} gives {'x'.join(map(str, out.shape))}, the batch is "
                                f"{'x'.join(map(str, data.shape[1:]))}; every record must have the same size "
                                f"(or set crop_size)")
            data[i], labels[i] = out, datum.label
            for _ in range(self.shard[1]):
                self.db.advance()
        return dict(zip(self.tops, (data, labels)))

    def close(self) -> None:
        self.db.close()


class ImageListSource(LayerSource):
    """Caffe's ImageData layer: `path label` lines, root_folder + path, optional resize and shuffle."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: str, rng: np.random.Generator,
                 shard: tuple[int, int] = (0, 1)) -> None:
        p = layer.image_data_param
        self.where = f"ImageData layer '{layer.name}'"
        if p.batch_size <= 0:
            raise DataError(f"{self.where}: batch_size must be positive (got {p.batch_size})")
        if bool(p.new_height) != bool(p.new_width):
            raise DataError(f"{self.where}: set both new_height and new_width, or neither")
        self.lines = read_image_list(p.source, self.where)
        self.root, self.batch_size, self.rng = p.root_folder, p.batch_size, rng
        self.size = (p.new_height, p.new_width) if p.new_height else None
        self.color, self.shuffle = p.is_color, p.shuffle
        self.transform = transformer(layer.transform_param, phase, self.where)
        self.tops = list(layer.top)
        self.order = np.arange(len(self.lines))
        self.shard, self.order_rng = shard, rng
        if shard[1] > 1:
            # The processes shuffle alike (a generator of their own drawn from the common seed) and each
            # keeps its crops and flips apart.
            base = int(rng.integers(2 ** 63))
            self.order_rng, self.rng = np.random.default_rng([base, 0]), np.random.default_rng([base, 1 + shard[0]])
        if self.shuffle:
            self.order_rng.shuffle(self.order)
        self.pos = int(self.order_rng.integers(p.rand_skip)) % len(self.lines) if p.rand_skip else 0
        c, h, w = self._image(self.order[self.pos]).shape
        self.shapes = [(self.batch_size, c, *self.transform.output_hw(h, w)), (self.batch_size,)][:len(self.tops)]
        for _ in range(shard[0]):
            self._step()

    def _image(self, index: int) -> np.ndarray:
        path, _, line_no = self.lines[index]
        image = decode_image(self.root + path, self.color, f"{self.where}: line {line_no}: '{self.root + path}'")
        return resize_bilinear(image, *self.size) if self.size else image

    def next_batch(self) -> dict[str, np.ndarray]:
        data = np.empty(self.shapes[0], dtype=np.float32)
        labels = np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            index = self.order[self.pos]
            path, label, line_no = self.lines[index]
            where = f"{self.where}: line {line_no}: '{self.root + path}'"
            out = self.transform(self._image(index), self.rng, where)
            if out.shape != data.shape[1:]:
                raise DataError(f"{where} gives {'x'.join(map(str, out.shape))}, the batch is "
                                f"{'x'.join(map(str, data.shape[1:]))}; set new_height/new_width or crop_size")
            data[i], labels[i] = out, label
            for _ in range(self.shard[1]):
                self._step()
        return dict(zip(self.tops, (data, labels)))

    def _step(self) -> None:
        self.pos += 1
        if self.pos == len(self.lines):  # an epoch ends: Caffe reshuffles
            self.pos = 0
            if self.shuffle:
                self.order_rng.shuffle(self.order)


def read_image_list(source: str, where: str) -> list[tuple[str, int, int]]:
    """(path, label, line number) of each non-empty line; the label follows the last space."""
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise DataError(f"{where}: cannot read the image list '{source}': {exc.strerror or exc}") from None
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        path, sep, label = line.rpartition(" ")
        try:
            value = int(label)
        except ValueError:
            value = None
        if not sep or not path or value is None:
            raise DataError(f"{source}:{n}: expected 'path label' (an integer label after the last space), "
                            f"got {line!r}")
        if not INT32_MIN <= value <= INT32_MAX:
            raise DataError(f"{source}:{n}: label {value} does not fit Caffe's labels (32-bit integers, "
                            f"{INT32_MIN}..{INT32_MAX})")
        lines.append((path, value, n))
    if not lines:
        raise DataError(f"{where}: the image list '{source}' has no lines")
    return lines


INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

SOURCES = {"Data": LmdbSource, "ImageData": ImageListSource}


def open_layer_source(layer: caffe_pb2.LayerParameter, phase: str, rng: np.random.Generator,
                      shard: tuple[int, int] = (0, 1)) -> LayerSource:
    """The reader for a data layer (its share ``shard`` = (rank, N) of the stream), or a DataError saying how
    to feed that layer instead."""
    cls = SOURCES.get(layer.type)
    if cls is None:
        raise DataError(f"layer '{layer.name}' ({layer.type}): zoo train reads Data (LMDB) and ImageData layers; "
                        f"give this one's batches with --feed (an .npz with {', '.join(f'{t}_<iter>' for t in layer.top)})")
    return cls(layer, phase, rng, shard)
