"""What a detection or a segmentation net says about an image, for `zoo run`: SSD's DetectionOutput rows
``[image, label, confidence, xmin, ymin, xmax, ymax]`` (coordinates normalised to the net input) as boxes
in pixels of the original image, or the class scores ``[N, K, H, W]`` of a segmentation net as each
class's share of the pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from zoo.inference.image import batches
from zoo.inference.sampling import Sampler
from zoo.inference.transform import Transform

DETECTION_TASKS = ("detection", "face_detection")
KINDS = ("classification", "detection", "segmentation")


def output_kind(task: Optional[str], shape: Sequence[Any]) -> str:
    """The kind of a net's first output: from its card's task, else from its shape (dimensions may be
    symbolic names): ``[1, 1, N, 7]`` rows are detections, ``[N, K, H, W]`` with a plane of more than one
    pixel are per-pixel class scores, anything else class scores."""
    if task in DETECTION_TASKS:
        return "detection"
    if task == "segmentation":
        return "segmentation"
    if task is not None:  # a card says what its net does (face landmarks are numbers, like class scores)
        return "classification"
    dims = list(shape)
    if len(dims) == 4 and dims[0] == 1 and dims[1] == 1 and dims[3] == 7:
        return "detection"
    if len(dims) == 4 and not (dims[2] == 1 and dims[3] == 1):
        return "segmentation"
    return "classification"


def _label(labels: Sequence[str], k: int) -> str:
    return labels[k] if 0 <= k < len(labels) else str(k)


def detections(rows: np.ndarray, image: int, size: tuple[int, int], labels: Sequence[str],
               threshold: float) -> list[dict]:
    """The boxes of image ``image`` of a batch at or above ``threshold``, most confident first, each box
    ``[xmin, ymin, xmax, ymax]`` in pixels of the original image of ``size`` (W, H), clipped to it
    (the input is the whole image resized, so a normalised coordinate times the side is a pixel)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    keep = rows[(rows[:, 0] == image) & (rows[:, 1] >= 0) & (rows[:, 2] >= threshold)]
    w, h = size
    found = []
    for r in keep[np.argsort(-keep[:, 2], kind="stable")]:
        found.append(detection(int(r[1]), float(r[2]), np.clip(r[3:7], 0.0, 1.0) * (w, h, w, h), labels))
    return found


def detection(k: int, confidence: float, box: Sequence[float], labels: Sequence[str]) -> dict:
    """One found object as `zoo run` shows it: class, label, confidence, box [xmin, ymin, xmax, ymax] in pixels."""
    return {"class": k, "label": _label(labels, k), "confidence": confidence,
            "box": [round(float(v), 1) for v in box]}


def class_map(scores: np.ndarray) -> np.ndarray:
    """The (H, W) class of each pixel: the best of K scores (K, H, W), or the indices of a net that ends
    in ArgMax (1, H, W), as SegNet's web demo does."""
    if scores.shape[0] == 1:
        return np.rint(scores[0]).astype(np.int64)
    return np.argmax(scores, axis=0).astype(np.int64)


def class_shares(classes: np.ndarray, labels: Sequence[str], num_classes: int) -> list[dict]:
    """Each class present in a class map with its share of the pixels, largest first."""
    counts = np.bincount(classes.ravel(), minlength=num_classes)
    order = np.argsort(-counts, kind="stable")
    return [{"class": int(k), "label": _label(labels, int(k)), "share": float(counts[k]) / classes.size}
            for k in order if counts[k]]


def analyse(sess: Any, transform: Transform, images: Sequence[Path], labels: Sequence[str], kind: str,
            threshold: float, batch: int = 1, progress: Optional[Callable[[int], None]] = None,
            sampler: Optional[Sampler] = None) -> tuple[list[dict], list[Optional[np.ndarray]]]:
    """({image, size, detections | classes} per image, the class map of each image (segmentation) or
    None): the net's first output read as ``kind`` (detection or segmentation). With a ``sampler``
    (a segmentation net that samples at test), each image is the mean of its samples' class
    probabilities, with their uncertainty (``Sampler.mean``), one image at a time."""
    from PIL import Image
    inp = sess.get_inputs()[0]
    results, maps = [], []
    for group in batches(images, max(1, batch) if sampler is None else 1):
        spread: dict = {}
        if sampler is None:
            out = sess.run(None, {inp.name: np.stack([transform.image(p) for p in group])})[0]
        else:
            mean, spread, _ = sampler.mean(transform.image(group[0]))
            out = mean[None]
        for i, path in enumerate(group):
            with Image.open(path) as im:  # the header only: the size of the original image
                size = im.size
            result = {"image": str(path), "size": list(size)}
            if kind == "detection":
                result["detections"] = detections(out, i, size, labels, threshold)
                maps.append(None)
            else:
                classes = class_map(out[i])
                result["classes"] = class_shares(classes, labels, max(out.shape[1], int(classes.max()) + 1))
                result.update(spread)
                maps.append(classes)
            results.append(result)
        if progress is not None:
            progress(len(group))
    return results, maps
