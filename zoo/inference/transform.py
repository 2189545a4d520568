"""The one image transform: Caffe's, as its data layers apply it (OpenCV-exact decoding and resizing,
then the DataTransformer), built from a model card or from a TransformationParameter.

- ``DataTransformer``: Caffe's DataTransformer (TransformationParameter): crop (random in TRAIN,
  centre in TEST), mirror (TRAIN), ``(x - mean) * scale``; what `zoo train`'s data layers apply.
- ``Transform``: a card's preprocessing: channel order, resize (cv::resize INTER_LINEAR, as
  ImageData's new_height/new_width), then the DataTransformer. `zoo run`, finetuning (training and
  validation) and ``zoo.transform(name)`` all use it, so a finetuned net sees in `zoo run` exactly
  the arrays its validation saw.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from zoo.inference.image import ImageError, decode_image, resize_bilinear

TRAIN, TEST = "train", "test"
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)
FLOW_MEAN = 128.0  # two-stream temporal nets: flow fields scaled to 0..255, mean 128


@dataclass
class DataTransformer:
    """TransformationParameter: `(x - mean) * scale` over a crop, then a horizontal flip."""

    scale: float = 1.0
    mirror: bool = False
    crop_size: int = 0
    mean: Optional[np.ndarray] = None  # the mean_file image (C, H, W)
    mean_values: tuple[float, ...] = ()
    phase: str = TRAIN

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
                raise ImageError(f"{where}: crop_size {crop} is larger than the {h}x{w} image")
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
                raise ImageError(f"{where}: the mean_file image is {'x'.join(map(str, self.mean.shape))} but the "
                                 f"data is {c}x{h}x{w}; they must match (Caffe reads the mean at the crop offset)")
            x -= self.mean[:, h_off:h_off + ch, w_off:w_off + cw]
        elif self.mean_values:
            values = self.mean_values
            if len(values) == 1:
                values = values * c
            elif len(values) != c:
                raise ImageError(f"{where}: {len(values)} mean_value entries for {c} channels; give 1 or {c}")
            x -= np.asarray(values, dtype=np.float32).reshape(c, 1, 1)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        return np.ascontiguousarray(x[:, :, ::-1]) if do_mirror else x


@dataclass(frozen=True)
class Transform:
    """Resize (bilinear, as ImageData's new_height/new_width), then Caffe's DataTransformer: crop
    (random in training, centre otherwise), mirror (training only), `(x - mean) * scale`."""

    channels: int
    size: tuple[int, int]                      # the net input's H, W
    resize: Optional[int | tuple[int, int]]    # int: shorter side; (H, W): both; None: as stored
    crop: int                                  # 0: no crop (the resized image is the input)
    mean: tuple[float, ...]
    scale: float = 1.0
    mirror: bool = True
    channel_order: str = "BGR"                 # of the net; decoded images are BGR

    @classmethod
    def from_card(cls, card: Any = None, size: Optional[tuple[int, int]] = None, channels: Optional[int] = None,
                  mirror: bool = True) -> "Transform":
        """A model card's preprocessing for a net input of ``size`` (H, W) and ``channels`` (default: the
        card's). Without a card (a bare prototxt), or for another channel count, the zoo defaults: resize
        8/7 of the input and crop, mean 104/117/123 BGR for 3 channels, 128 for any other count."""
        spec = card.input if card is not None else None
        if spec is not None:
            channels = channels or spec.shape[0]
            size = size or (spec.shape[1], spec.shape[2])
        if size is None or channels is None:
            raise ValueError("a transform without a card needs the input size and channel count")
        if spec is not None and spec.shape[0] == channels:
            resize = tuple(spec.resize) if isinstance(spec.resize, (list, tuple)) else spec.resize
            crop = spec.crop or 0
            if spec.mean is not None and spec.mean.values:
                mean = tuple(float(v) for v in spec.mean.values)
            else:  # a mean image: its per-channel average is what a crop of another size can use
                mean = _default_mean(channels)
            # raw_scale r: x*r/255 - mean, times scale  ==  (x - mean*255/r) * (scale*r/255)
            r = float(spec.raw_scale)
            mean = tuple(m * 255.0 / r for m in mean) if r != 255 else mean
            scale = float(spec.scale) * (r / 255.0)
            order = spec.channel_order
            if crop and crop != size[0]:
                crop = size[0]
        else:
            resize, crop = default_resize(size), size[0]
            mean, scale, order = _default_mean(channels), 1.0, "BGR"
        if crop and size[0] != size[1]:
            crop = 0  # Caffe crops squares only: resize straight to a non-square input
        if not crop:
            resize = size
        return cls(channels, tuple(size), resize, crop, mean, scale, mirror, order if channels == 3 else "BGR")

    @classmethod
    def plain(cls, size: tuple[int, int], channels: int) -> "Transform":
        """No card at all (`zoo run` on a bare .onnx): resize straight to the input, the default mean."""
        return cls(channels, tuple(size), tuple(size), 0, _default_mean(channels), 1.0, False, "BGR")

    @property
    def random(self) -> bool:
        """Whether training inputs vary from epoch to epoch (a random crop offset or mirroring)."""
        if self.mirror:
            return True
        if not self.crop:
            return False
        return not isinstance(self.resize, tuple) or self.resize != (self.crop, self.crop)

    @property
    def color(self) -> Optional[bool]:
        """How images are decoded for this net: colour (3 channels), gray (1) or as stored."""
        return {3: True, 1: False}.get(self.channels)

    def describe(self) -> str:
        resize = ("as stored" if self.resize is None else f"shorter side {self.resize}" if isinstance(self.resize, int)
                  else f"{self.resize[0]}x{self.resize[1]}")
        crop = f", crop {self.crop} (random in training, centre in validation)" if self.crop else ""
        mirror = ", mirror in training" if self.mirror else ""
        mean = "/".join(f"{m:g}" for m in self.mean)
        return (f"resize {resize}{crop}{mirror}, mean {mean}" + (f", scale {self.scale:g}" if self.scale != 1 else "")
                + f", {self.channel_order}")

    def prepare(self, image: np.ndarray, where: str) -> np.ndarray:
        """The deterministic part: channel order and resizing (cacheable)."""
        if image.shape[0] != self.channels:
            raise ImageError(f"{where}: {image.shape[0]} channels, but the net takes {self.channels}")
        if self.channel_order == "RGB" and self.channels == 3:
            image = image[::-1]
        if self.resize is None:
            return np.ascontiguousarray(image)
        h, w = image.shape[1:]
        if isinstance(self.resize, int):
            ratio = self.resize / min(h, w)
            target = (max(1, round(h * ratio)), max(1, round(w * ratio)))
        else:
            target = self.resize
        return resize_bilinear(np.ascontiguousarray(image), *target)

    def __call__(self, prepared: np.ndarray, train: bool = False, rng: Optional[np.random.Generator] = None,
                 where: str = "image") -> np.ndarray:
        """A prepared image -> the float32 (C, H, W) net input (random crop and mirror when ``train``)."""
        caffe = DataTransformer(scale=self.scale, mirror=self.mirror and train, crop_size=self.crop, mean=None,
                                mean_values=self.mean, phase=TRAIN if train else TEST)
        out = caffe(prepared, rng if rng is not None else np.random.default_rng(0), where)
        if out.shape[1:] != self.size:
            raise ImageError(f"{where}: the transformed image is {out.shape[2]}x{out.shape[1]}, the net takes "
                             f"{self.size[1]}x{self.size[0]}")
        return out

    def image(self, image: Any, where: Optional[str] = None) -> np.ndarray:
        """An image file (path or bytes) or a Pillow image -> the net input, as validation computes it."""
        where = where or (os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image")
        return self(self.prepare(decode_image(image, self.color, where), where), False, None, where)


def _default_mean(channels: int) -> tuple[float, ...]:
    return IMAGENET_MEAN_BGR if channels == 3 else (FLOW_MEAN,)


def default_resize(size: tuple[int, int]) -> int | tuple[int, int]:
    """The zoo's ImageNet habit (resize 256, crop 224/227) carried to other input sizes (x 8/7)."""
    h, w = size
    if h == w and 224 <= h <= 256:
        return (256, 256)
    return (round(h * 8 / 7), round(w * 8 / 7))
