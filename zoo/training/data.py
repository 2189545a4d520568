"""Caffe's data layers for `zoo train`: Data (an LMDB of Datum records), ImageData (a list file of
`path label` lines) and the DataTransformer that both apply (crop, mirror, mean, scale).

Images are BGR 0..255, as OpenCV reads them (decoded here with Pillow). Caffe's random numbers
(crop offsets, mirroring, shuffling) cannot be reproduced; ours come from a numpy Generator that
`zoo train` seeds with the solver's `random_seed`.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from prototxt import caffe_pb2

TRAIN, TEST = "train", "test"


class DataError(Exception):
    """A data source that cannot be read: a missing database, an unreadable image, a bad list line."""


# -- DataTransformer -------------------------------------------------------------------------------

@dataclass
class Transform:
    """TransformationParameter: `(x - mean) * scale` over a crop, then a horizontal flip."""

    scale: float = 1.0
    mirror: bool = False
    crop_size: int = 0
    mean: Optional[np.ndarray] = None  # the mean_file image (C, H, W)
    mean_values: tuple[float, ...] = ()
    phase: str = TRAIN

    @classmethod
    def from_proto(cls, param: caffe_pb2.TransformationParameter, phase: str, where: str) -> "Transform":
        mean = None
        if param.HasField("mean_file"):
            if param.mean_value:
                raise DataError(f"{where}: transform_param gives both mean_file and mean_value; keep one")
            from prototxt import CaffeError, load_blob
            try:
                blob = load_blob(param.mean_file)
            except CaffeError as exc:
                raise DataError(f"{where}: cannot read mean_file: {exc}") from None
            mean = np.asarray(blob, dtype=np.float32).reshape(blob.shape[-3:] if blob.ndim >= 3 else (1,) + blob.shape)
        return cls(float(np.float32(param.scale)), param.mirror, param.crop_size, mean,
                   tuple(float(np.float32(v)) for v in param.mean_value), phase)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        return (self.crop_size, self.crop_size) if self.crop_size else (height, width)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, where: str) -> np.ndarray:
        """A (C, H, W) uint8 or float image -> the float32 (C, h, w) Caffe feeds the net."""
        c, h, w = image.shape
        do_mirror = self.mirror and bool(rng.integers(2))
        crop = self.crop_size
        h_off = w_off = 0
        if crop:
            if crop > h or crop > w:
                raise DataError(f"{where}: crop_size {crop} is larger than the {h}x{w} image")
            if self.phase == TRAIN:
                h_off, w_off = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
            else:
                h_off, w_off = (h - crop) // 2, (w - crop) // 2
            ch, cw = crop, crop
        else:
            ch, cw = h, w
        x = image[:, h_off:h_off + ch, w_off:w_off + cw].astype(np.float32)
        if self.mean is not None:
            if self.mean.shape != (c, h, w):
                raise DataError(f"{where}: the mean_file image is {'x'.join(map(str, self.mean.shape))} but the data "
                                f"is {c}x{h}x{w}; they must match (Caffe reads the mean at the crop offset)")
            x -= self.mean[:, h_off:h_off + ch, w_off:w_off + cw]
        elif self.mean_values:
            values = self.mean_values
            if len(values) == 1:
                values = values * c
            elif len(values) != c:
                raise DataError(f"{where}: {len(values)} mean_value entries for {c} channels; give 1 or {c}")
            x -= np.asarray(values, dtype=np.float32).reshape(c, 1, 1)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        return np.ascontiguousarray(x[:, :, ::-1]) if do_mirror else x


# -- images ----------------------------------------------------------------------------------------

def decode_image(data: bytes | str, color: Optional[bool], where: str) -> np.ndarray:
    """An image file (path or bytes) as (C, H, W) uint8 in OpenCV's channel order.

    ``color``: True -> 3 channels BGR, False -> 1 channel gray, None -> as stored (gray stays gray,
    an alpha channel is kept as BGRA), like cv::imdecode with IMREAD_UNCHANGED.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            if color is False and im.format == "JPEG":
                im.draft("L", im.size)  # libjpeg's own grayscale output, as IMREAD_GRAYSCALE gets it
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit: OpenCV keeps the high byte
                im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
            if color is None and (im.mode in ("LA", "PA") or (im.mode == "P" and "transparency" in im.info)):
                im = im.convert("RGBA")  # IMREAD_UNCHANGED keeps an alpha channel: BGRA
            elif color is True or (color is None and im.mode not in ("L", "RGB", "RGBA")):
                im = im.convert("RGB")
            elif color is False and im.mode not in ("L", "1", "LA"):
                return _opencv_gray(np.asarray(im.convert("RGB"), dtype=np.uint8), im.format)[None]
            elif color is False:
                im = im.convert("L")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{where}: could not load the image: {exc}") from None
    if arr.ndim == 2:
        return arr[None]
    arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[[2, 1, 0, 3][:arr.shape[0]]])  # RGB(A) -> BGR(A)


def _opencv_gray(rgb: np.ndarray, fmt: Optional[str]) -> np.ndarray:
    """A colour image's IMREAD_GRAYSCALE value: libpng's rgb_to_gray (coefficients 0.299/0.587 in
    15-bit fixed point, truncated; grey pixels unchanged) for PNG, OpenCV's BGR2GRAY (14-bit, rounded)
    for the other formats it decodes to colour first."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    if fmt == "PNG":
        gray = (9797 * r + 19234 * g + 3737 * b) >> 15
        gray = np.where((r == g) & (g == b), r, gray)
    else:
        gray = (4899 * r + 9617 * g + 1868 * b + 8192) >> 14
    return gray.astype(np.uint8)


def _linear_taps(out: int, size: int, clamp_weights: bool):
    """cv::resize INTER_LINEAR source taps and weights along one axis: half-pixel centres computed in
    float, weights as 11-bit fixed point (INTER_RESIZE_COEF_BITS). Columns past the border take the edge
    pixel with weight 0 (``clamp_weights``); rows keep their weight and clamp the row index."""
    f = ((np.arange(out) + 0.5) * (1.0 / (out / size)) - 0.5).astype(np.float32)
    lo = np.floor(f).astype(np.int64)
    f = (f - lo).astype(np.float32)
    if clamp_weights:
        f[lo < 0] = 0
        lo[lo < 0] = 0
        edge = lo >= size - 1
        f[edge] = 0
        lo[edge] = size - 1
        hi = np.minimum(lo + 1, size - 1)
    else:
        hi = np.clip(lo + 1, 0, size - 1)
        lo = np.clip(lo, 0, size - 1)
    w0 = np.rint(((1 - f) * 2048).astype(np.float32)).astype(np.int64)
    w1 = np.rint((f * 2048).astype(np.float32)).astype(np.int64)
    return lo, hi, w0, w1, f


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv::resize INTER_LINEAR on a (C, H, W) image, as Caffe's ReadImageToCVMat resizes: uint8 with
    OpenCV's fixed-point arithmetic (bit-exact with OpenCV 4's), float data in float."""
    c, h, w = image.shape
    if (h, w) == (height, width):
        return image
    y0, y1, b0, b1, fy = _linear_taps(height, h, clamp_weights=False)
    x0, x1, a0, a1, fx = _linear_taps(width, w, clamp_weights=True)
    if image.dtype != np.uint8:  # float data (a Datum's float_data, an .npz): no rounding to 8 bits
        img = image.astype(np.float32)
        rows = img[:, :, x0] * (1 - fx) + img[:, :, x1] * fx
        return (rows[:, y0] * (1 - fy)[:, None] + rows[:, y1] * fy[:, None]).astype(np.float32)
    src = image.astype(np.int64)
    rows = src[:, :, x0] * a0 + src[:, :, x1] * a1  # horizontal pass, scaled by 2048
    top, bottom = rows[:, y0] >> 4, rows[:, y1] >> 4
    out = ((top * b0[:, None]) >> 16) + ((bottom * b1[:, None]) >> 16) + 2 >> 2  # OpenCV's vertical pass
    return np.clip(out, 0, 255).astype(np.uint8)


def parse_datum(value: bytes, where: str) -> caffe_pb2.Datum:
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception:
        raise DataError(f"{where} is not a caffe Datum") from None
    return datum


def datum_image(datum: caffe_pb2.Datum, color: Optional[bool], where: str) -> np.ndarray:
    """A Datum's (C, H, W) image: uint8 bytes, float_data, or an encoded image (decoded as OpenCV would)."""
    if datum.encoded:
        return decode_image(datum.data, color, where)
    shape = (datum.channels, datum.height, datum.width)
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
    """One data layer: ``shapes`` (its tops' shapes) and ``next_batch()`` ({top name: array})."""

    tops: list[str]
    shapes: list[tuple[int, ...]]

    def next_batch(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LmdbSource(LayerSource):
    """Caffe's Data layer over an LMDB: records in key order, wrapping around at the end."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: str, rng: np.random.Generator) -> None:
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
        import lmdb
        try:
            self.env = lmdb.open(p.source, readonly=True, lock=False, readahead=False, max_readers=126)
            self.txn = self.env.begin(buffers=False)
            self.cursor = self.txn.cursor()
        except lmdb.Error as exc:
            raise DataError(f"{self.where}: cannot open the LMDB '{p.source}': {exc}") from None
        if not self.cursor.first():
            raise DataError(f"{self.where}: the LMDB '{p.source}' is empty")
        self.source, self.batch_size, self.rng = p.source, p.batch_size, rng
        self.transform = Transform.from_proto(layer.transform_param, phase, self.where)
        self.force = True if layer.transform_param.force_color else False if layer.transform_param.force_gray else None
        self.tops = list(layer.top)
        # data_param.rand_skip is ignored, as by Caffe since its DataReader (the ImageData layer's is used)
        c, h, w = self._image(self._datum()).shape
        self.shapes = [(self.batch_size, c, *self.transform.output_hw(h, w)), (self.batch_size,)][:len(self.tops)]

    def _datum(self) -> caffe_pb2.Datum:
        key, value = self.cursor.item()
        return parse_datum(value, f"{self.where}: record {key!r} of '{self.source}'")

    def _image(self, datum: caffe_pb2.Datum) -> np.ndarray:
        return datum_image(datum, self.force, f"{self.where}: record {self.cursor.key()!r} of '{self.source}'")

    def _advance(self) -> None:
        if not self.cursor.next():
            self.cursor.first()

    def next_batch(self) -> dict[str, np.ndarray]:
        data = np.empty(self.shapes[0], dtype=np.float32)
        labels = np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            datum = self._datum()
            where = f"{self.where}: record {self.cursor.key()!r}"
            image = self._image(datum)
            out = self.transform(image, self.rng, where)
            if out.shape != data.shape[1:]:
                raise DataError(f"{where} gives {'x'.join(map(str, out.shape))}, the batch is "
                                f"{'x'.join(map(str, data.shape[1:]))}; every record must have the same size "
                                f"(or set crop_size)")
            data[i], labels[i] = out, datum.label
            self._advance()
        return dict(zip(self.tops, (data, labels)))

    def close(self) -> None:
        self.env.close()


class ImageListSource(LayerSource):
    """Caffe's ImageData layer: `path label` lines, root_folder + path, optional resize and shuffle."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: str, rng: np.random.Generator) -> None:
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
        self.transform = Transform.from_proto(layer.transform_param, phase, self.where)
        self.tops = list(layer.top)
        self.order = np.arange(len(self.lines))
        if self.shuffle:
            rng.shuffle(self.order)
        self.pos = int(rng.integers(p.rand_skip)) % len(self.lines) if p.rand_skip else 0
        c, h, w = self._image(self.order[self.pos]).shape
        self.shapes = [(self.batch_size, c, *self.transform.output_hw(h, w)), (self.batch_size,)][:len(self.tops)]

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
            self.pos += 1
            if self.pos == len(self.lines):  # an epoch ends: Caffe reshuffles
                self.pos = 0
                if self.shuffle:
                    self.rng.shuffle(self.order)
        return dict(zip(self.tops, (data, labels)))


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
        lines.append((path, value, n))
    if not lines:
        raise DataError(f"{where}: the image list '{source}' has no lines")
    return lines


SOURCES = {"Data": LmdbSource, "ImageData": ImageListSource}


def open_layer_source(layer: caffe_pb2.LayerParameter, phase: str, rng: np.random.Generator) -> LayerSource:
    """The reader for a data layer, or a DataError saying how to feed that layer instead."""
    cls = SOURCES.get(layer.type)
    if cls is None:
        raise DataError(f"layer '{layer.name}' ({layer.type}): zoo train reads Data (LMDB) and ImageData layers; "
                        f"give this one's batches with --feed (an .npz with {', '.join(f'{t}_<iter>' for t in layer.top)})")
    return cls(layer, phase, rng)
