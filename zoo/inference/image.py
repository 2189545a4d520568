"""Images as Caffe reads them: decoded as OpenCV decodes (cv::imread / cv::imdecode, BGR order) and
resized as cv::resize INTER_LINEAR does, byte for byte; finding the images in folders."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from prototxt import CaffeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# A small file can declare a huge image (a decompression bomb): the size in its header is checked
# before anything is decoded. 2^28 pixels (16384 x 16384) is 768 MiB as BGR bytes; OpenCV's own
# limit (CV_IO_MAX_IMAGE_PIXELS) is 2^30. Pillow's own check is replaced by this one.
MAX_PIXELS_ENV = "ZOO_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 1 << 28


class ImageError(CaffeError):
    """An image that cannot be read (one line naming the file)."""


def decode_image(data: "bytes | str | os.PathLike | PIL.Image.Image", color: Optional[bool], where: str) -> np.ndarray:
    """An image (a file's path or bytes, or a Pillow image) as (C, H, W) uint8 in OpenCV's channel order.

    ``color``: True -> 3 channels BGR, False -> 1 channel gray, None -> as stored (gray stays gray,
    an alpha channel is kept as BGRA), like cv::imdecode with IMREAD_UNCHANGED.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        if isinstance(data, Image.Image):
            arr = _opencv_array(data, color, owned=False)
        else:
            with open_image(data, where) as im:
                arr = _opencv_array(im, color, owned=True)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageError(f"{where}: could not load the image: {exc}") from None
    if arr.ndim == 2:
        return arr[None]
    arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[[2, 1, 0, 3][:arr.shape[0]]])  # RGB(A) -> BGR(A)


def max_image_pixels() -> int:
    """The largest image (width x height) decoded: ``$ZOO_MAX_IMAGE_PIXELS``, else the default."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw[:40]!r} is not a positive whole number of pixels; unset it or fix it")
    return int(raw)


def open_image(data: "bytes | str | os.PathLike", where: str) -> "PIL.Image.Image":
    """The image opened lazily (its header parsed, nothing decoded), refused when it declares more
    pixels than ``max_image_pixels()``. Raises what Image.open raises for a file it cannot read."""
    from PIL import Image
    limit = max_image_pixels()
    Image.MAX_IMAGE_PIXELS = None  # this module's limit, checked below, replaces Pillow's (a warning, then 2x an error)
    im = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    width, height = im.size
    if width * height > limit:
        im.close()
        raise ImageError(f"{where}: the image declares {width}x{height} = {width * height} pixels, more than the "
                         f"limit of {limit} (a decompression bomb?); if it is real, raise {MAX_PIXELS_ENV}")
    return im


def _opencv_array(im, color: Optional[bool], owned: bool) -> np.ndarray:
    """A Pillow image as the (H, W[, C]) RGB(A) or gray array OpenCV's decoder gives (before BGR order).
    ``owned``: the image was opened here and not yet loaded (libjpeg may then decode straight to gray)."""
    from PIL import Image
    if color is False and owned and im.format == "JPEG":
        im.draft("L", im.size)  # libjpeg's own grayscale output, as IMREAD_GRAYSCALE gets it
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit: OpenCV keeps the high byte
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    if color is None and (im.mode in ("LA", "PA") or (im.mode == "P" and "transparency" in im.info)):
        im = im.convert("RGBA")  # IMREAD_UNCHANGED keeps an alpha channel: BGRA
    elif color is True or (color is None and im.mode not in ("L", "RGB", "RGBA")):
        im = im.convert("RGB")
    elif color is False and im.mode not in ("L", "1", "LA"):
        return _opencv_gray(np.asarray(im.convert("RGB"), dtype=np.uint8), im.format)
    elif color is False:
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8)


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


def _linear_taps(out: int, size: int, clamp_weights: bool, factor: Optional[float] = None):
    """cv::resize INTER_LINEAR source taps and weights along one axis: half-pixel centres computed in
    float, weights as 11-bit fixed point (INTER_RESIZE_COEF_BITS). Columns past the border take the edge
    pixel with weight 0 (``clamp_weights``); rows keep their weight and clamp the row index. The source
    step is the sizes' ratio, or 1/``factor`` when the caller gave cv::resize a factor (fx, fy) instead."""
    f = ((np.arange(out) + 0.5) * (1.0 / (factor or out / size)) - 0.5).astype(np.float32)
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


def resize_bilinear(image: np.ndarray, height: int, width: int, factor: Optional[float] = None) -> np.ndarray:
    """cv::resize INTER_LINEAR on a (C, H, W) image, as Caffe's ReadImageToCVMat resizes: uint8 with
    OpenCV's fixed-point arithmetic (bit-exact with OpenCV 4's), float data in float. ``factor``: resize
    as cv2.resize(image, None, fx=factor, fy=factor) does (``height``, ``width`` then its rounded sizes)."""
    c, h, w = image.shape
    if (h, w) == (height, width) and factor in (None, 1.0):
        return image
    y0, y1, b0, b1, fy = _linear_taps(height, h, clamp_weights=False, factor=factor)
    x0, x1, a0, a1, fx = _linear_taps(width, w, clamp_weights=True, factor=factor)
    if image.dtype != np.uint8:  # float data (a Datum's float_data, an .npz): no rounding to 8 bits
        img = image.astype(np.float32)
        rows = img[:, :, x0] * (1 - fx) + img[:, :, x1] * fx
        return (rows[:, y0] * (1 - fy)[:, None] + rows[:, y1] * fy[:, None]).astype(np.float32)
    src = image.astype(np.int64)
    rows = src[:, :, x0] * a0 + src[:, :, x1] * a1  # horizontal pass, scaled by 2048
    top, bottom = rows[:, y0] >> 4, rows[:, y1] >> 4
    out = ((top * b0[:, None]) >> 16) + ((bottom * b1[:, None]) >> 16) + 2 >> 2  # OpenCV's vertical pass
    return np.clip(out, 0, 255).astype(np.uint8)


def find_images(paths: Sequence[str]) -> list[Path]:
    """Files as given, and the images inside folders (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise ImageError(f"{p}: no such file or folder")
    if not out:
        raise ImageError(f"no images found in {', '.join(paths)}")
    return out


def batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
