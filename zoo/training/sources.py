"""Labelled images for `zoo finetune`: an image folder, a Caffe ImageData list, an LMDB of Datums or an
.npz, read the way Caffe's data layers read them, and the DataTransformer's steps around them.

Every source answers ``len``, ``labels`` (int64), ``image(i)`` (C, H, W: uint8 BGR for image files,
as OpenCV decodes them; LMDB and .npz data as stored) and ``where(i)`` (a place for messages). Sources
are checked when opened (missing files, empty or unreadable images, labels without a number), so a
bad item is one error line before training starts, not an exception an hour into it.

- image folder: one subfolder per class; class ids are the sorted subfolder names' positions.
- list file: Caffe's ImageData `path label` lines; relative paths are read from the list's folder
  (Caffe reads them from the current directory: both are tried, the list's folder first).
- LMDB: Caffe's Data layer records (`Datum`: channels, height, width, bytes or float_data, label,
  or an encoded image), in key order.
- .npz: ``data`` (N, C, H, W; uint8 0..255 or float) and ``labels`` (N,), e.g. stacked optical-flow
  fields for a temporal net (C = 2 x frames, each field scaled to 0..255 like an image).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from zoo.inference.image import IMAGE_SUFFIXES, decode_image, open_image
from zoo.training.data import DataError, LmdbDatums, check_datum, datum_image, read_image_list


class Source:
    """A labelled set of images; see the module docstring."""

    name: str
    labels: np.ndarray
    classes: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def where(self, i: int) -> str:
        raise NotImplementedError

    def identity(self) -> str:
        """A digest of what the source holds (items and labels), for checkpoints and feature caches."""
        h = hashlib.sha1()
        for i in range(len(self)):
            h.update(f"{self.where(i)}\t{self.labels[i]}\n".encode())
        return h.hexdigest()

    def close(self) -> None:
        pass


def _check_image_file(path: str) -> None:
    """Fail now on a missing, empty, unreadable or too large image (reads the header only)."""
    from PIL import UnidentifiedImageError
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image: {exc.strerror or exc}") from None
    if size == 0:
        raise DataError(f"{path}: the image file is empty")
    try:
        with open_image(path, path):
            pass  # the header is parsed (and the declared size checked) on open
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({str(exc).splitlines()[0] if str(exc) else 'unknown format'})") \
            from None


class FileSource(Source):
    """Image files with labels (a folder of class folders, or a list file)."""

    def __init__(self, name: str, paths: Sequence[str], labels: Sequence[int], color: Optional[bool],
                 classes: Optional[list[str]] = None) -> None:
        self.name, self.paths, self.color, self.classes = name, list(paths), color, classes
        self.labels = np.asarray(labels, dtype=np.int64)
        for path in self.paths:
            _check_image_file(path)

    def image(self, i: int) -> np.ndarray:
        return decode_image(self.paths[i], self.color, self.paths[i])

    def where(self, i: int) -> str:
        return self.paths[i]


def folder_source(root: str, color: Optional[bool]) -> FileSource:
    classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders (an image folder has one subfolder of images per class)")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(str(p) for p in (Path(root) / cls).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise DataError(f"{root}/{cls}: no images in this class folder (looked for "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += images
        labels += [label] * len(images)
    return FileSource(root, paths, labels, color, classes)


def list_source(path: str, color: Optional[bool]) -> FileSource:
    base = os.path.dirname(os.path.abspath(path))
    paths, labels = [], []
    for item, label, line in read_image_list(path, f"list file '{path}'"):
        beside = os.path.join(base, item)
        chosen = beside if os.path.exists(beside) or not os.path.exists(item) else item
        if not os.path.exists(chosen):
            raise DataError(f"{path}:{line}: image '{item}' not found (looked in {base} and the current directory)")
        paths.append(chosen)
        labels.append(label)
    return FileSource(path, paths, labels, color)


class LmdbSource(Source):
    """Caffe's Data layer records, in key order."""

    def __init__(self, path: str, color: Optional[bool]) -> None:
        self.name, self.color = path, color
        self.db = LmdbDatums(path, path)
        self.keys = self.db.keys()
        self.labels = np.asarray([self._label(i) for i in range(len(self.keys))], dtype=np.int64)

    def _label(self, i: int) -> int:
        datum = self.db.get(self.keys[i])
        if not datum.encoded:
            check_datum(datum, self.where(i))  # a broken record: one line now, not an hour into training
        return datum.label

    def image(self, i: int) -> np.ndarray:
        return datum_image(self.db.get(self.keys[i]), self.color, self.where(i))

    def where(self, i: int) -> str:
        return f"{self.name}: record {self.keys[i].decode(errors='replace')!r}"

    def close(self) -> None:
        self.db.close()


class NpzSource(Source):
    def __init__(self, path: str) -> None:
        self.name = path
        try:
            with np.load(path) as npz:
                files = set(npz.files)
                if not {"data", "labels"} <= files:
                    raise DataError(f"{path}: an .npz of training data needs arrays 'data' (N, C, H, W) and 'labels' "
                                    f"(N,); it has {', '.join(sorted(files)) or 'none'}")
                self.data, labels = npz["data"], npz["labels"]
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the .npz: {exc}") from None
        if self.data.ndim != 4 or labels.shape != (len(self.data),):
            raise DataError(f"{path}: 'data' must be (N, C, H, W) and 'labels' (N,); got {self.data.shape} and "
                            f"{labels.shape}")
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            bad = int(np.flatnonzero(labels != np.round(labels))[0])
            raise DataError(f"{path}: labels[{bad}] is {labels[bad]}, not an integer class id")
        if not len(labels):
            raise DataError(f"{path}: the .npz holds no items")
        self.labels = labels.astype(np.int64)

    def image(self, i: int) -> np.ndarray:
        x = self.data[i]
        return x if x.dtype == np.uint8 else x.astype(np.float32)

    def where(self, i: int) -> str:
        return f"{self.name}: item {i}"


class Subset(Source):
    def __init__(self, source: Source, indices: np.ndarray, name: str) -> None:
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.name, self.classes = name, source.classes
        self.labels = source.labels[self.indices]

    def image(self, i: int) -> np.ndarray:
        return self.source.image(int(self.indices[i]))

    def where(self, i: int) -> str:
        return self.source.where(int(self.indices[i]))


def open_source(path: os.PathLike | str, color: Optional[bool], what: str = "--data") -> Source:
    """The source at ``path``, by what it is: an LMDB folder, an image folder, an .npz or a list file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        kind = "LMDB" if "lmdb" in os.path.basename(path.rstrip("/")).lower() else "data source"
        raise DataError(f"{what} {path}: the {kind} does not exist (give an image folder with one subfolder per "
                        f"class, a list file of 'path label' lines, an LMDB folder or an .npz)")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "data.mdb")):
            return LmdbSource(path, color)
        return folder_source(path, color)
    if path.endswith(".npz"):
        return NpzSource(path)
    if path.endswith(".mdb"):
        return LmdbSource(path, color)
    return list_source(path, color)


def check_labels(source: Source, num_classes: int) -> None:
    bad = np.flatnonzero((source.labels < 0) | (source.labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{source.where(i)}: label {source.labels[i]} is outside 0..{num_classes - 1} "
                        f"(--num-classes {num_classes}){more}")


def split(source: Source, seed: int, every: int = 5) -> tuple[Source, Source]:
    """(train, val): every ``every``-th item of a seeded permutation goes to validation."""
    if len(source) < every:
        raise DataError(f"{source.name}: {len(source)} items are too few to split off a validation set; "
                        f"give one with --val")
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(source))
    val = np.sort(order[::every])
    train = np.setdiff1d(np.arange(len(source)), val)
    return Subset(source, train, f"{source.name} (training part)"), Subset(source, val, f"{source.name} (validation part)")
