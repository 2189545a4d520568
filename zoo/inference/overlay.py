"""Pictures of what a net found, for a person to look at (`zoo run --draw`): the boxes and their labels
drawn on the image, or its class map blended over it; written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from prototxt import CaffeError
from prototxt.fileio import atomic_path


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours, the PASCAL VOC colour map (class k's bits spread over R, G, B)."""
    k = np.arange(n)
    colours = np.zeros((n, 3), dtype=np.uint8)
    for shift in range(8):
        for channel in range(3):
            colours[:, channel] |= (((k >> (3 * shift + channel)) & 1) << (7 - shift)).astype(np.uint8)
    return colours


def draw_boxes(image: Path, detections: Sequence[dict], out: Path) -> None:
    """The image with each detection's box and ``label confidence`` drawn in its class colour."""
    from PIL import Image, ImageDraw
    with Image.open(image) as im:
        picture = im.convert("RGB")
    pen = ImageDraw.Draw(picture)
    colours = palette(1 + max([d["class"] for d in detections], default=0))
    width = max(2, round(min(picture.size) / 200))
    for d in detections:
        colour = tuple(int(c) for c in colours[d["class"]]) if d["class"] else (255, 0, 0)
        x0, y0, x1, y1 = d["box"]
        pen.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        text = f"{d['label']} {d['confidence']:.2f}"
        left, top, right, bottom = pen.textbbox((x0, y0), text)
        lift = bottom - top + 2
        pen.rectangle((x0, y0 - lift, x0 + right - left + 4, y0), fill=colour)
        pen.text((x0 + 2, y0 - lift), text, fill=(255, 255, 255))
    save(picture, out)


def blend_mask(image: Path, classes: np.ndarray, num_classes: int, out: Path, alpha: float = 0.5) -> None:
    """The image with its class map (resized to it, nearest neighbour) blended over it in the palette's colours."""
    from PIL import Image
    with Image.open(image) as im:
        picture = im.convert("RGB")
    mask = Image.fromarray(palette(max(num_classes, 1))[classes]).resize(picture.size, Image.NEAREST)
    save(Image.blend(picture, mask, alpha), out)


def save(picture, out: Path) -> None:
    """A Pillow image to ``out`` in the format its extension names, atomically."""
    from PIL import Image
    fmt = Image.registered_extensions().get(Path(out).suffix.lower())
    if fmt is None:
        raise CaffeError(f"{out}: unknown image extension; name the drawing .png or .jpg")
    with atomic_path(out) as tmp:
        picture.save(tmp, format=fmt)


def drawing_paths(out: Path, images: Sequence[Path]) -> list[Path]:
    """Where each image's drawing goes: ``out`` itself for one image, else ``out/<name>.png`` (a folder)."""
    if len(images) == 1 and not out.is_dir():
        return [out]
    os.makedirs(out, exist_ok=True)
    names = [Path(p).stem for p in images]
    return [out / (f"{n}.png" if names.count(n) == 1 else f"{n}_{i}.png") for i, n in enumerate(names)]
