"""Schema tests over every built-in model card, and validation of user cards."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from zoo.hub import registry
from zoo.hub.cards import HEX_LENGTHS, LABELS_DIR, CardError, ModelCard, file_digest, load_card

CARD_FILES = sorted(registry.BUILTIN_DIR.glob("*.json"))
ISSUE_MODELS = {
    "bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet", "bvlc_reference_rcnn_ilsvrc13",
    "finetune_flickr_style", "vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "squeezenet_v1.0",
    "squeezenet_v1.1", "nin_imagenet", "mobilenet_v1", "mobilenet_v2", "densenet121", "inception_v3",
    "places365_alexnet", "places365_googlenet", "places365_vgg16", "places365_resnet152", "age_net",
    "gender_net", "open_nsfw", "mtcnn_det1", "mtcnn_det2", "mtcnn_det3", "mtcnn_det4",
}


@pytest.fixture(params=CARD_FILES, ids=[p.stem for p in CARD_FILES])
def card(request: pytest.FixtureRequest) -> ModelCard:
    return load_card(request.param)


def all_urls(card: ModelCard) -> list[str]:
    urls = [*card.weights.urls, *card.sources.values()]
    urls += [u for u in (card.license.url, card.paper and card.paper.url) if u]
    if card.input.mean and card.input.mean.file_url:
        urls.append(card.input.mean.file_url)
    return urls


# --- every built-in card -------------------------------------------------------------------

def test_card_is_named_after_its_file(card: ModelCard) -> None:
    assert card.path is not None and card.name == card.path.stem


def test_label_count_matches_declared_outputs(card: ModelCard) -> None:
    if card.labels is not None:
        names = card.label_names()
        assert len(names) == card.num_classes
        assert all(n.strip() == n and n for n in names), "blank or padded label line"


def test_classifiers_declare_their_number_of_classes(card: ModelCard) -> None:
    if card.task == "classification":
        assert card.num_classes is not None


def test_every_url_is_http(card: ModelCard) -> None:
    for url in all_urls(card):
        assert re.match(r"https?://[^\s/]+/", url), url


def test_checksums_are_lowercase_hex_of_the_right_length(card: ModelCard) -> None:
    mean = card.input.mean
    for checksum in (card.weights.checksum, mean and mean.checksum):
        for algo, digest in (checksum or {}).items():
            assert re.fullmatch(f"[0-9a-f]{{{HEX_LENGTHS[algo]}}}", digest), (algo, digest)


def test_unverified_or_hand_fetched_weights_say_so(card: ModelCard) -> None:
    w = card.weights
    assert w.checksum_note, "every checksum (or its absence) has its provenance"
    if not w.urls:
        assert w.how_to_get and "--weights" in w.how_to_get
    if w.size is not None:
        assert "size" in card.sources or w.checksum_note and "size" in w.checksum_note


def test_every_fact_group_has_a_source(card: ModelCard) -> None:
    assert {"weights", "license", "architecture"} <= set(card.sources)
    if card.labels is not None:
        assert "labels" in card.sources


def test_input_mean_matches_channels(card: ModelCard) -> None:
    mean = card.input.mean
    if mean is not None and mean.values is not None:
        assert len(mean.values) == card.input.shape[0]


# --- the set of built-ins ------------------------------------------------------------------

def test_the_issue_models_all_have_cards() -> None:
    assert ISSUE_MODELS <= set(registry.builtin_cards())


def test_non_commercial_licenses_are_shown() -> None:
    assert registry.get("finetune_flickr_style").license.commercial_use is False
    assert registry.get("bvlc_alexnet").license.commercial_use is True


def test_every_shipped_label_list_is_used_by_a_card() -> None:
    used = {c.labels_path.name for c in registry.builtin_cards().values() if c.labels_path}
    assert used == {p.name for p in LABELS_DIR.glob("*.txt")}


def test_imagenet_labels_are_caffe_synset_words_order() -> None:
    lines = (LABELS_DIR / "imagenet1k.txt").read_text().splitlines()
    ids = [line.split(" ", 1)[0] for line in lines]
    assert len(set(ids)) == 1000 and ids == sorted(ids)
    assert lines[0] == "n01440764 tench, Tinca tinca"
    assert lines[-1] == "n15075141 toilet tissue, toilet paper, bathroom tissue"


def test_open_nsfw_second_output_is_nsfw() -> None:
    assert registry.get("open_nsfw").label_names() == ["SFW", "NSFW"]


# --- validation of bad cards ---------------------------------------------------------------

def good_card() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((registry.BUILTIN_DIR / "bvlc_alexnet.json").read_text())
    return data


def write_card(folder: Path, data: dict[str, Any], name: str = "card.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def set_in(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            d = d[key]
        d[last] = value
    return edit


def delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


BAD_CARDS = {
    "unknown key": (set_in("colour", "red"), "colour"),
    "unknown nested key": (set_in("weights.mirror", "x"), "weights.mirror"),
    "wrong type": (set_in("input.crop", "227"), "input.crop"),
    "bool as number": (set_in("input.scale", True), "input.scale"),
    "short sha1": (set_in("weights.checksum", {"sha1": "9116a64c"}), "weights.checksum.sha1"),
    "uppercase sha256": (set_in("weights.checksum", {"sha256": "A" * 64}), "weights.checksum.sha256"),
    "unknown hash": (set_in("weights.checksum", {"crc32": "deadbeef"}), "weights.checksum.crc32"),
    "missing field": (delete("license"), "license"),
    "missing label file": (set_in("labels", "missing_labels.txt"), "labels"),
    "unknown label list": (set_in("labels", "imagenet22k"), "labels"),
    "labels without num_classes": (set_in("num_classes", None), "num_classes"),
    "ftp url": (set_in("weights.urls", ["ftp://example.org/a.caffemodel"]), "weights.urls[0]"),
    "null checksum without note": (lambda d: d["weights"].update(checksum=None, checksum_note=None),
                                   "weights.checksum_note"),
    "no url and no how_to_get": (set_in("weights.urls", []), "weights.how_to_get"),
    "mean of wrong length": (set_in("input.mean", {"values": [104, 117]}), "input.mean.values"),
    "crop not the input size": (set_in("input.crop", 224), "input.crop"),
    "unknown task": (set_in("task", "dreaming"), "task"),
    "missing prototxt": (set_in("architecture", "deploy.prototxt"), "architecture"),
    "source without license": (lambda d: d["sources"].pop("license"), "sources.license"),
    "bad name": (set_in("name", "My Net"), "name"),
    "NUL in a path": (set_in("architecture", "deploy\0.prototxt"), "architecture"),
    "NaN scale": (set_in("input.scale", float("nan")), "input.scale"),
    "infinite scale": (set_in("input.scale", float("inf")), "input.scale"),
}

# Each would place the weights outside the cache folder, or somewhere Windows reads as a device.
UNSAFE_FILENAMES = [
    "", ".", "..", "a/b", "..\\x", "\\", "/etc/passwd", "C:\\w", "c:w", "w\0.caffemodel", "line\nbreak",
    "CON", "nul", "Com1", "LPT9.caffemodel", "aux.txt", "weights.", "weights ", " ", "x" * 256,
]


@pytest.mark.parametrize("filename", UNSAFE_FILENAMES)
def test_weights_filename_must_be_one_plain_path_component(tmp_path: Path, filename: str) -> None:
    data = good_card()
    data["weights"]["filename"] = filename
    path = write_card(tmp_path, data)
    with pytest.raises(CardError) as info:
        load_card(path)
    assert str(info.value).startswith(f"{path}: weights.filename: "), str(info.value)
    assert "\n" not in str(info.value)


HOSTILE_CARD_FILES: dict[str, bytes] = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "not UTF-8": b'{"name": "caf\xe9"}',
    "raw NUL": b'{"name": "a\0b"}',
    "top level list": b"[1, 2]",
    "top level string": b'"card"',
    "NaN literal": b'{"name": NaN}',
    "Infinity literal": b'{"name": -Infinity}',
    "huge integer": b'{"num_classes": ' + b"9" * 10_000 + b"}",
    "huge float": b'{"num_classes": 1e999}',
    "too big": b'{"description": "' + b"x" * (2 << 20) + b'"}',
    "empty": b"",
    "UTF-8 BOM": b'\xef\xbb\xbf{"name": "a"}',
}


@pytest.mark.parametrize("content", HOSTILE_CARD_FILES.values(), ids=HOSTILE_CARD_FILES.keys())
def test_hostile_card_file_is_one_clear_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "hostile.json"
    path.write_bytes(content)
    with pytest.raises(CardError) as info:
        load_card(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and ";" in message, message
    assert len(message) < 500, "the message quotes no huge value"


def test_a_folder_named_like_a_card_is_refused(tmp_path: Path) -> None:
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(CardError, match="folder.json: "):
        load_card(tmp_path / "folder.json")


@pytest.mark.parametrize("edit, field", BAD_CARDS.values(), ids=BAD_CARDS.keys())
def test_bad_card_error_is_one_line_naming_file_and_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], field: str
) -> None:
    data = good_card()
    edit(data)
    path = write_card(tmp_path, data)
    with pytest.raises(CardError) as info:
        load_card(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: "), message
    assert ";" in message, "the message says what to do"


def test_label_count_mismatch_is_refused(tmp_path: Path) -> None:
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    data = good_card() | {"labels": "three.txt"}
    with pytest.raises(CardError, match=r"labels: three.txt has 3 labels but num_classes is 1000"):
        load_card(write_card(tmp_path, data))


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",\n  oops}')
    with pytest.raises(CardError, match=rf"^{re.escape(str(path))}: line 2 column 3: invalid JSON"):
        load_card(path)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"name": "a", "name": "b"}')
    with pytest.raises(CardError, match="name: the key appears twice"):
        load_card(path)


def test_user_card_resolves_labels_and_prototxt_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "deploy.prototxt").write_text('name: "tiny"\n')
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    data = good_card() | {"name": "tiny", "architecture": "deploy.prototxt", "labels": "classes.txt",
                          "num_classes": 2}
    card = load_card(write_card(tmp_path, data))
    assert card.architecture_path == tmp_path / "deploy.prototxt"
    assert card.label_names() == ["cat", "dog"]


def test_file_digest_handles_git_blob_ids(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"")
    assert file_digest(path, "git_blob_sha1") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert file_digest(path, "sha1") == "da39a3ee5e6b4b0d3255bfef95601890afd80709"


# --- registry: ZOO_PATH and patterns -------------------------------------------------------

def test_zoo_path_adds_user_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_card(tmp_path, good_card() | {"name": "my_alexnet"}, "mine.json")
    monkeypatch.setenv(registry.ZOO_PATH, str(tmp_path))
    assert "my_alexnet" in registry.list_models()
    assert registry.get("my_alexnet").path == path


def test_user_card_overrides_builtin_with_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_card(tmp_path, good_card() | {"description": "my own copy"})
    monkeypatch.setenv(registry.ZOO_PATH, str(tmp_path))
    with pytest.warns(UserWarning, match="overrides the built-in card"):
        assert registry.get("bvlc_alexnet").description == "my own copy"


def test_bad_user_card_on_zoo_path_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_card(tmp_path, good_card() | {"task": 3})
    monkeypatch.setenv(registry.ZOO_PATH, str(tmp_path))
    with pytest.raises(CardError, match=rf"^{re.escape(str(path))}: task: "):
        registry.list_models()


def test_duplicate_builtin_names_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_card(tmp_path, good_card(), "a.json")
    write_card(tmp_path, good_card(), "b.json")
    monkeypatch.setattr(registry, "BUILTIN_DIR", tmp_path)
    registry.builtin_cards.cache_clear()
    try:
        with pytest.raises(CardError, match="b.json: name: 'bvlc_alexnet' is already the name of"):
            registry.builtin_cards()
    finally:
        registry.builtin_cards.cache_clear()


def test_list_models_filters_by_shell_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(registry.ZOO_PATH, raising=False)
    assert registry.list_models("resnet*") == ["resnet101", "resnet152", "resnet50"]
    assert registry.list_models("mtcnn_det?") == [f"mtcnn_det{i}" for i in range(1, 5)]
    assert registry.list_models("PLACES365_*") == [
        "places365_alexnet", "places365_googlenet", "places365_resnet152", "places365_vgg16"]
    assert registry.list_models("nothing*") == []
    assert registry.list_models() == sorted(registry.builtin_cards())


def test_unknown_model_suggests_close_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(registry.ZOO_PATH, raising=False)
    with pytest.raises(registry.UnknownModelError, match="did you mean resnet50"):
        registry.get("resnet5")


def test_cards_survive_a_copy_round_trip() -> None:
    # validate() must not mutate its input: the same dict validates twice
    from zoo.hub.cards import validate
    data = good_card()
    before = copy.deepcopy(data)
    validate(data, "inline", registry.BUILTIN_DIR / "bvlc_alexnet.json")
    assert data == before


def test_huge_or_binary_label_file_is_one_line(tmp_path: Path) -> None:
    data = good_card() | {"labels": "labels.txt"}
    with open(tmp_path / "labels.txt", "wb") as f:
        f.truncate(64 << 20)  # sparse: costs no disk
    with pytest.raises(CardError, match=r"labels.txt: larger than"):
        load_card(write_card(tmp_path, data))
    (tmp_path / "labels.txt").write_bytes(b"\xff\xfe" * 1000)
    with pytest.raises(CardError, match=r"labels.txt: byte 0 is not UTF-8"):
        load_card(write_card(tmp_path, data))
