"""Model cards: what a zoo model is, where its weights come from and how to feed it.

A card is a flat JSON file (zoo/models/cards/<name>.json for built-ins, any *.json for user
cards). `load_card` reads and validates one strictly: an unknown key, a wrong type, a bad
checksum or a missing label file is a `CardError` whose message is one line naming the file,
the field and what to do. Card files come from strangers: a file that is too big, not UTF-8,
nested too deep, or holds NaN, duplicate keys or NUL characters is refused the same way.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, cast

from prototxt import CaffeError
# One list of checksum algorithms and one hasher, shared with the downloader that verifies them.
from zoo.hub.download import HEX_LENGTHS, file_digest, filename_problem  # noqa: F401 (file_digest: public here too)

LABELS_DIR = Path(__file__).parent.parent / "models" / "labels"

TASKS = ("classification", "detection", "face_detection", "face_landmarks", "segmentation")
CHANNEL_ORDERS = ("BGR", "RGB", "GRAY")
MEAN_FORMATS = ("binaryproto", "npy")
# Cards are a few KB; a bigger file is not a card, and is refused before it is read.
MAX_CARD_BYTES = 1 << 20
MAX_LABELS_BYTES = 16 << 20  # ImageNet-21k's names are 0.3 MB
REQUIRED_SOURCES = ("weights", "license")
REQUIRED_TOP = (
    "name", "description", "task", "paper", "license", "architecture", "outputs",
    "num_classes", "labels", "weights", "input", "sources",
)
OPTIONAL_TOP = ("notes",)
WEIGHTS_KEYS = ("filename", "urls", "checksum", "checksum_note", "size", "how_to_get")
INPUT_KEYS = ("blob", "shape", "channel_order", "resize", "crop", "mean", "scale", "raw_scale")

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_EXAMPLE = "see zoo/models/cards/bvlc_alexnet.json for a complete card"


class CardError(CaffeError, ValueError):
    """A card that cannot be used; the message is one line: file, field, problem, fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


Checksum = Mapping[str, str]


@dataclass(frozen=True)
class Paper:
    title: str
    url: str


@dataclass(frozen=True)
class License:
    name: str
    url: str | None
    commercial_use: bool | None  # None: the publisher does not say
    note: str | None = None


@dataclass(frozen=True)
class WeightsInfo:
    filename: str
    urls: tuple[str, ...]
    checksum: Checksum | None  # None: nothing published, a download is unverified
    checksum_note: str | None
    size: int | None
    how_to_get: str | None  # for weights behind sharing sites: get them by hand, pass --weights FILE

    @property
    def verified(self) -> bool:
        return self.checksum is not None


@dataclass(frozen=True)
class MeanSpec:
    values: tuple[float, ...] | None  # per channel, in the card's channel order
    file_url: str | None
    format: str | None
    checksum: Checksum | None
    checksum_note: str | None = None


@dataclass(frozen=True)
class InputSpec:
    blob: str
    shape: tuple[int, int, int]  # C, H, W of the deploy net
    channel_order: str
    resize: int | tuple[int, int] | None  # int: shorter side; [H, W]: both sides
    crop: int | None  # centre crop after resizing
    mean: MeanSpec | None
    scale: float  # Caffe's transform_param scale, applied after the mean is subtracted
    raw_scale: float  # pixel range the net expects, 255 for 0..255
    note: str | None = None


@dataclass(frozen=True)
class ModelCard:
    name: str
    description: str
    task: str
    paper: Paper | None
    license: License
    architecture: str  # an arch name, or a .prototxt path relative to the card (user cards)
    outputs: tuple[str, ...]
    num_classes: int | None
    labels: str | None  # a built-in label list name, or a .txt path relative to the card
    weights: WeightsInfo
    input: InputSpec
    sources: Mapping[str, str]  # fact -> URL where it is published
    notes: tuple[str, ...] = ()
    path: Path | None = None  # the card file

    @property
    def labels_path(self) -> Path | None:
        return None if self.labels is None else _labels_path(self.labels, _base_dir(self.path))

    @property
    def architecture_path(self) -> Path | None:
        """The deploy prototxt of a user card, None for a built-in architecture name."""
        if not self.architecture.endswith(".prototxt"):
            return None
        return _base_dir(self.path) / self.architecture

    def label_names(self) -> list[str]:
        path = self.labels_path
        return [] if path is None else _read_labels(path)


def load_card(path: str | Path) -> ModelCard:
    """Read and validate one card file."""
    path = Path(path)
    data = _parse(path, _read_utf8(path, MAX_CARD_BYTES, "card"))
    return validate(data, str(path), path)


def _read_utf8(path: Path, limit: int, what: str) -> str:
    """A small UTF-8 text file from a stranger, read no further than ``limit`` bytes."""
    try:
        if not path.is_file():  # a folder, or a FIFO that would block the read forever
            raise CardError(f"{path}: not a regular file; give the path of a {what} file")
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise CardError(f"{path}: cannot read the {what} ({e.strerror}); check the path") from None
    if len(raw) > limit:
        raise CardError(f"{path}: larger than {limit} bytes, too big for a {what}; check the file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CardError(f"{path}: byte {e.start} is not UTF-8; save the {what} as UTF-8") from None


def _parse(path: Path, text: str) -> Any:
    if text.startswith("\ufeff"):
        raise CardError(f"{path}: starts with a byte order mark; save the card as UTF-8 without BOM")
    try:
        # NaN and 1e999 decode to floats that no field accepts (numbers must be finite).
        return json.loads(text, object_pairs_hook=_refuse_duplicates(path))
    except json.JSONDecodeError as e:
        raise CardError(
            f"{path}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the syntax"
        ) from None
    except RecursionError:
        raise CardError(f"{path}: nested too deeply to be a card; check the file") from None
    except ValueError as e:  # an integer of thousands of digits
        raise CardError(f"{path}: {str(e)[:100]}; fix the number") from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate(data: Any, source: str, path: Path | None = None) -> ModelCard:
    """Check a decoded card; `source` names it in errors, `path` anchors its relative files."""
    top = _Obj(data, source, "", REQUIRED_TOP, OPTIONAL_TOP)
    name = top.text("name")
    if not _NAME.fullmatch(name):
        top.fail("name", f"{name!r} is not a model name", "use lowercase letters, digits, '_', '.', '-'")
    task = top.choice("task", TASKS)
    num_classes = top.maybe_count("num_classes")
    return ModelCard(
        name=name,
        description=top.text("description"),
        task=task,
        paper=top.nullable_obj("paper", _paper),
        license=_license(top.obj("license", ("name", "url", "commercial_use"), ("note",))),
        architecture=_architecture(top, path),
        outputs=tuple(top.items("outputs", _Obj.str_item, min_len=1)),
        num_classes=num_classes,
        labels=_labels(top, num_classes, path),
        weights=_weights(top.obj("weights", WEIGHTS_KEYS)),
        input=_input(top.obj("input", INPUT_KEYS, ("note",))),
        sources=_sources(top),
        notes=tuple(top.items("notes", _Obj.str_item)) if "notes" in top.data else (),
        path=path,
    )


class _Obj:
    """One JSON object of a card: unknown and missing keys are refused on construction."""

    def __init__(
        self, data: Any, source: str, where: str,
        required: tuple[str, ...], optional: tuple[str, ...] = (),
    ) -> None:
        self.source, self.where = source, where
        if not isinstance(data, dict):
            self.fail("", f"expected an object, got {_kind(data)}", "write a JSON object {...}")
        allowed = sorted({*required, *optional})
        for key in data:
            if _CONTROL.search(key):
                self.fail("", f"the key {key[:40]!r} holds a control character", "remove it")
            if key not in allowed:
                self.fail(key, "unknown field", f"remove it or use one of: {', '.join(allowed)}")
        for key in required:
            if key not in data:
                self.fail(key, "missing required field", f"add it ({_EXAMPLE})")
        self.data: dict[str, Any] = data

    def field(self, key: str) -> str:
        return ".".join(p for p in (self.where, key) if p) or "card"

    def fail(self, key: str, problem: str, fix: str) -> NoReturn:
        raise CardError(f"{self.source}: {self.field(key)}: {problem}; {fix}")

    def _get(self, key: str, ok: Callable[[Any], bool], what: str, nullable: bool) -> Any:
        value = self.data.get(key)
        if value is None and nullable:
            return None
        if not ok(value):
            null = " or null" if nullable else ""
            self.fail(key, f"expected {what}{null}, got {_kind(value)}", f"write {what}{null}")
        return value

    def text(self, key: str) -> str:
        return cast(str, self._get(key, _is_text, "a non-empty string", False))

    def maybe_text(self, key: str) -> str | None:
        return cast("str | None", self._get(key, _is_text, "a non-empty string", True))

    def maybe_count(self, key: str) -> int | None:
        return cast("int | None", self._get(key, _is_count, "a positive integer", True))

    def number(self, key: str) -> float:
        return float(self._get(key, _is_positive, "a positive number", False))

    def flag(self, key: str) -> Any:
        return self._get(key, lambda v: isinstance(v, bool), "true or false", True)

    def url(self, key: str, nullable: bool = False) -> Any:
        value = self.maybe_text(key) if nullable else self.text(key)
        if value is not None and not _is_url(value):
            self.fail(key, f"{value!r} is not an http(s) URL", "give the http:// or https:// address")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in choices:
            self.fail(key, f"{value!r} is not allowed", f"use one of: {', '.join(choices)}")
        return value

    def obj(self, key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> _Obj:
        return _Obj(self.data[key], self.source, self.field(key), required, optional)

    def nullable_obj(self, key: str, build: Callable[[_Obj], Any]) -> Any:
        return None if self.data.get(key) is None else build(self)

    def items(self, key: str, item: Callable[[_Obj, str, Any], Any], min_len: int = 0) -> list[Any]:
        value = self.data.get(key)
        if not isinstance(value, list):
            self.fail(key, f"expected a list, got {_kind(value)}", "write a JSON list [...]")
        if len(value) < min_len:
            self.fail(key, f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}", "add them")
        return [item(self, f"{key}[{i}]", v) for i, v in enumerate(value)]

    def str_item(self, key: str, value: Any) -> str:
        if not _is_text(value):
            self.fail(key, f"expected a non-empty string, got {_kind(value)}", "write a string")
        return cast(str, value)

    def url_item(self, key: str, value: Any) -> str:
        if not (_is_text(value) and _is_url(value)):
            self.fail(key, f"{value!r} is not an http(s) URL", "give the http:// or https:// address")
        return cast(str, value)

    def checksum(self, key: str) -> Checksum | None:
        value = self.data.get(key)
        if value is None:
            return None
        digests = _Obj(value, self.source, self.field(key), (), tuple(HEX_LENGTHS))
        if not value:
            self.fail(key, "empty checksum", "give at least one digest, or null with a checksum_note")
        for algo, digest in value.items():
            n = HEX_LENGTHS[algo]
            if not (isinstance(digest, str) and re.fullmatch(f"[0-9a-f]{{{n}}}", digest)):
                got = (_kind(digest) if not isinstance(digest, str) else f"{len(digest)} characters"
                       if len(digest) != n else "characters that are not lowercase hex")
                digests.fail(
                    algo, f"must be {n} lowercase hex digits, got {got}",
                    "copy the digest the publisher gives, or set the checksum to null with a checksum_note",
                )
        return dict(value)


def _refuse_duplicates(path: Path) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        for key in keys:
            if keys.count(key) > 1:
                raise CardError(f"{path}: {key}: the key appears twice in one object; keep one")
        return dict(pairs)
    return hook


def _paper(top: _Obj) -> Paper:
    paper = top.obj("paper", ("title", "url"))
    return Paper(paper.text("title"), paper.url("url"))


def _license(lic: _Obj) -> License:
    return License(lic.text("name"), lic.url("url", nullable=True), lic.flag("commercial_use"),
                   lic.maybe_text("note"))


def _architecture(top: _Obj, path: Path | None) -> str:
    arch = top.text("architecture")
    if arch.endswith(".prototxt"):
        if not (_base_dir(path) / arch).is_file():
            top.fail("architecture", f"{arch!r} not found next to the card",
                     "give a .prototxt path relative to the card file, or a built-in architecture name")
    elif not re.fullmatch(r"[A-Za-z0-9_.-]+", arch):
        top.fail("architecture", f"{arch!r} is neither an architecture name nor a .prototxt path",
                 "use a name like 'bvlc_alexnet' or a path ending in .prototxt")
    return arch


def _labels(top: _Obj, num_classes: int | None, path: Path | None) -> str | None:
    labels = top.maybe_text("labels")
    if labels is None:
        return None
    if num_classes is None:
        top.fail("num_classes", "is null but labels are given", "set num_classes to the number of outputs")
    file = _labels_path(labels, _base_dir(path))
    if not file.is_file():
        top.fail("labels", f"label file {str(file)!r} does not exist",
                 "give a built-in list name (e.g. 'imagenet1k') or a .txt path relative to the card")
    count = len(_read_labels(file))
    if count != num_classes:
        top.fail("labels", f"{file.name} has {count} labels but num_classes is {num_classes}",
                 "make them agree: one label per line, one line per output")
    return labels


def _weights(w: _Obj) -> WeightsInfo:
    urls = tuple(w.items("urls", _Obj.url_item))
    checksum = w.checksum("checksum")
    note = w.maybe_text("checksum_note")
    how_to_get = w.maybe_text("how_to_get")
    filename = w.data.get("filename")
    problem = filename_problem(filename) if isinstance(filename, str) else "is not a string"
    if problem is not None:
        w.fail("filename", f"{_kind(filename)} {problem}", "give a bare file name like 'model.caffemodel'")
    if checksum is None and note is None:
        w.fail("checksum_note", "is required when checksum is null",
               "say why there is no checksum (e.g. 'the publisher gives none')")
    if not urls and how_to_get is None:
        w.fail("how_to_get", "is required when urls is empty",
               "say how to obtain the file by hand; it is then passed with --weights FILE")
    return WeightsInfo(filename, urls, checksum, note, w.maybe_count("size"), how_to_get)


def _input(i: _Obj) -> InputSpec:
    shape = i.items("shape", _positive_item)
    if len(shape) != 3:
        i.fail("shape", f"has {len(shape)} entries", "give [C, H, W]")
    crop = i.maybe_count("crop")
    if crop is not None and (shape[1], shape[2]) != (crop, crop):
        i.fail("crop", f"{crop} does not match the input shape {shape}", "crop to the net's H and W")
    return InputSpec(
        blob=i.text("blob"),
        shape=(shape[0], shape[1], shape[2]),
        channel_order=i.choice("channel_order", CHANNEL_ORDERS),
        resize=_resize(i),
        crop=crop,
        mean=_mean(i, shape[0]),
        scale=i.number("scale"),
        raw_scale=i.number("raw_scale"),
        note=i.maybe_text("note"),
    )


def _resize(i: _Obj) -> int | tuple[int, int] | None:
    value = i.data.get("resize")
    if value is None or _is_count(value):
        return value
    if isinstance(value, list) and len(value) == 2 and all(_is_count(v) for v in value):
        return (value[0], value[1])
    i.fail("resize", f"expected a shorter-side length, [H, W] or null, got {_kind(value)}",
           "write e.g. 256 or [256, 256]")


def _mean(i: _Obj, channels: int) -> MeanSpec | None:
    if i.data.get("mean") is None:
        return None
    raw = i.data["mean"]
    keys = ("values",) if isinstance(raw, dict) and "values" in raw else ("file_url", "format", "checksum")
    m = i.obj("mean", keys, ("checksum_note",))
    if "values" in keys:
        values = m.items("values", _number_item)
        if len(values) != channels:
            m.fail("values", f"has {len(values)} entries for {channels} input channels", "give one per channel")
        return MeanSpec(tuple(values), None, None, None, m.maybe_text("checksum_note"))
    return MeanSpec(None, m.url("file_url"), m.choice("format", MEAN_FORMATS), m.checksum("checksum"),
                    m.maybe_text("checksum_note"))


def _sources(top: _Obj) -> dict[str, str]:
    src = top.data.get("sources")
    if not isinstance(src, dict) or not src:
        top.fail("sources", f"expected a non-empty object, got {_kind(src)}",
                 "map each fact to the URL where it is published")
    facts = _Obj(src, top.source, "sources", REQUIRED_SOURCES, tuple(src))
    for fact in src:
        facts.url(fact)
    return dict(src)


def _positive_item(obj: _Obj, key: str, value: Any) -> int:
    if not _is_count(value):
        obj.fail(key, f"expected a positive integer, got {_kind(value)}", "write a whole number > 0")
    return cast(int, value)


def _number_item(obj: _Obj, key: str, value: Any) -> float:
    if not _is_number(value):
        obj.fail(key, f"expected a finite number, got {_kind(value)}", "write a number")
    return float(value)


def _labels_path(labels: str, base: Path) -> Path:
    if labels.endswith(".txt") or "/" in labels:
        return base / labels
    return LABELS_DIR / f"{labels}.txt"


def _read_labels(path: Path) -> list[str]:
    return _read_utf8(path, MAX_LABELS_BYTES, "label list").splitlines()


def _base_dir(path: Path | None) -> Path:
    return Path.cwd() if path is None else path.parent


def _is_text(v: Any) -> bool:
    # No NUL (it breaks paths) nor other control characters (they rewrite the terminal) in any string.
    return isinstance(v, str) and bool(v.strip()) and not _CONTROL.search(v)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_positive(v: Any) -> bool:
    return _is_number(v) and v > 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_url(v: str) -> bool:
    return re.match(r"https?://[^\s/]+", v) is not None


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, str):
        control = " with a control character" if _CONTROL.search(v) else ""
        return f"the string {v[:40]!r}{control}"
    if isinstance(v, dict):
        return "an object"
    return "a list" if isinstance(v, list) else type(v).__name__
