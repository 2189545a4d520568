"""Images as Caffe's data layers read them: OpenCV decodes (cv::imread / cv::imdecode) and resizes
(cv::resize INTER_LINEAR in ReadImageToCVMat). OpenCV is the oracle here: our reader must give its
bytes exactly, in 8-bit fixed point, for colour and grayscale JPEGs, 16-bit PNGs and any resize."""
from __future__ import annotations

import numpy as np
import pytest

from zoo.training.data import decode_image, resize_bilinear

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the test extra) is the oracle for Caffe's image I/O")


def _chw(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def test_resize_is_opencvs_fixed_point_bilinear():
    rng = np.random.default_rng(7)
    sizes = [((256, 256), (227, 227)), ((100, 80), (256, 256)), ((10, 10), (5, 5)), ((480, 640), (240, 320)),
             ((1, 1), (5, 7)), ((375, 500), (256, 256))]
    sizes += [(tuple(rng.integers(1, 200, 2)), tuple(rng.integers(1, 200, 2))) for _ in range(60)]
    for (h, w), (oh, ow) in sizes:
        c = int(rng.choice([1, 3, 4]))
        img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        want = cv2.resize(img, (int(ow), int(oh)), interpolation=cv2.INTER_LINEAR).reshape(oh, ow, c)
        got = resize_bilinear(np.ascontiguousarray(img.transpose(2, 0, 1)), int(oh), int(ow))
        np.testing.assert_array_equal(got, want.transpose(2, 0, 1), err_msg=f"{h}x{w} -> {oh}x{ow} x{c}")


def test_float_images_resize_in_float():
    rng = np.random.default_rng(8)
    img = rng.standard_normal((37, 53, 3)).astype(np.float32)
    want = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR)
    got = resize_bilinear(np.ascontiguousarray(img.transpose(2, 0, 1)), 224, 224)
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["jpeg", "png16", "png", "png_gray", "bmp", "tif", "ppm"])
@pytest.mark.parametrize("color", [True, False])
def test_decoding_is_opencvs(kind, color):
    """Grayscale JPEGs are libjpeg's own luma, colour PNGs go grey by libpng's fixed point and other
    formats by OpenCV's BGR2GRAY (not Pillow's RGB -> L); 16-bit PNGs keep their high byte."""
    rng = np.random.default_rng(3)
    if kind == "png16":
        image = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    elif kind == "png_gray":
        image = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    else:
        image = cv2.GaussianBlur(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8), (5, 5), 2)
        image[:4, :4] = 77  # grey pixels: libpng leaves them as they are
    ext = {"jpeg": ".jpg", "bmp": ".bmp", "tif": ".tif", "ppm": ".ppm"}.get(kind, ".png")
    data = cv2.imencode(ext, image)[1].tobytes()
    want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(decode_image(data, color, "test"), _chw(want))


@pytest.mark.parametrize("kind", ["LA", "P+transparency", "P", "RGBA", "L"])
def test_as_stored_decoding_keeps_alpha_as_opencv_does(kind):
    """An encoded Datum without force_color/force_gray decodes like IMREAD_UNCHANGED: grey+alpha and a
    palette with transparency come out BGRA."""
    import io

    from PIL import Image
    rng = np.random.default_rng(0)
    if kind == "LA":
        im = Image.fromarray(rng.integers(0, 256, (9, 11, 2), dtype=np.uint8), "LA")
    elif kind == "RGBA":
        im = Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), "RGBA")
    elif kind == "L":
        im = Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8), "L")
    else:
        im = Image.fromarray(rng.integers(0, 4, (9, 11), dtype=np.uint8), "P")
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    buf = io.BytesIO()
    im.save(buf, "PNG", **({"transparency": 2} if kind == "P+transparency" else {}))
    want = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decode_image(buf.getvalue(), None, "test"), _chw(want))
