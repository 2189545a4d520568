"""Images into a Caffe net's input, the way the model's card says (Caffe's classify.py conventions):
resize (bilinear), centre crop, channel order, mean subtraction, scale."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageError(Exception):
    """An image that cannot be read (one line naming the file)."""


@dataclass(frozen=True)
class Transform:
    size: tuple[int, int]                        # the net's input H, W
    channels: int = 3
    channel_order: str = "BGR"
    resize: Optional[int | tuple[int, int]] = None  # int: shorter side; (H, W): both
    crop: Optional[int] = None
    mean: Optional[np.ndarray] = None            # per channel (C,) or an image (C, H, W), in channel_order
    scale: float = 1.0
    raw_scale: float = 255.0

    @classmethod
    def from_card(cls, card, mean_image: Optional[np.ndarray] = None) -> "Transform":
        spec = card.input
        mean = None
        if spec.mean is not None and spec.mean.values:
            mean = np.asarray(spec.mean.values, dtype=np.float32)
        elif mean_image is not None:
            mean = np.asarray(mean_image, dtype=np.float32).reshape(-1, *np.asarray(mean_image).shape[-2:])
        resize = tuple(spec.resize) if isinstance(spec.resize, (list, tuple)) else spec.resize
        return cls(size=(spec.shape[1], spec.shape[2]), channels=spec.shape[0], channel_order=spec.channel_order,
                   resize=resize, crop=spec.crop, mean=mean, scale=spec.scale, raw_scale=spec.raw_scale)

    def __call__(self, path: os.PathLike | str) -> np.ndarray:
        """One image as a float32 (C, H, W) array ready for the net."""
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as im:
                im = im.convert("RGB" if self.channels == 3 else "L")
                im = self._resize(im)
                arr = np.asarray(im, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ImageError(f"{path}: cannot read the image ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'empty or corrupt file'})") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = self._crop(arr) * (self.raw_scale / 255.0)
        if self.channels == 3 and self.channel_order.upper() == "BGR":
            arr = arr[:, :, ::-1]
        chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
        if self.mean is not None:
            chw = chw - self._mean_for(chw.shape)
        return (chw * self.scale).astype(np.float32)

    def _resize(self, im):
        from PIL import Image
        target = self.resize
        if target is None:
            target = self.size if self.crop is None else None
        if target is None:
            return im
        if isinstance(target, int):
            w, h = im.size
            ratio = target / min(w, h)
            size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        else:
            size = (int(target[1]), int(target[0]))
        return im.resize(size, Image.BILINEAR) if size != im.size else im

    def _crop(self, arr: np.ndarray) -> np.ndarray:
        h, w = self.size
        if arr.shape[0] < h or arr.shape[1] < w:
            raise ImageError(f"image of {arr.shape[1]}x{arr.shape[0]} is smaller than the crop {w}x{h}")
        top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2  # Caffe's TEST-phase centre crop
        return arr[top:top + h, left:left + w]

    def _mean_for(self, shape) -> np.ndarray:
        mean = self.mean
        if mean.ndim == 1:
            return mean.reshape(-1, 1, 1)
        _, h, w = shape
        top, left = (mean.shape[1] - h) // 2, (mean.shape[2] - w) // 2
        if top < 0 or left < 0:
            return mean.mean(axis=(1, 2)).reshape(-1, 1, 1)
        return mean[:, top:top + h, left:left + w]


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
