"""Which models the zoo knows: built-in cards plus user cards from ZOO_PATH.

Built-in cards live in zoo/models/cards/*.json. ZOO_PATH holds folders (os.pathsep-separated)
of user *.json cards, validated exactly like built-ins; a user card named like a built-in
replaces it, with a warning. `--card FILE` goes through `load_user_card`.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
import warnings
from pathlib import Path

from prototxt import CaffeError
from zoo.hub.cards import CardError, ModelCard, load_card

BUILTIN_DIR = Path(__file__).parent.parent / "models" / "cards"
ZOO_PATH = "ZOO_PATH"


class UnknownModelError(CaffeError, LookupError):
    """No card has that name; the message suggests close names."""


def list_models(pattern: str | None = None) -> list[str]:
    """Names of all models, sorted, optionally filtered by a shell pattern ('resnet*')."""
    names = sorted(_all_cards())
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower())]


def list_cards(pattern: str | None = None) -> list[ModelCard]:
    cards = _all_cards()
    return [cards[n] for n in list_models(pattern)]


def get(name: str) -> ModelCard:
    cards = _all_cards()
    if name in cards:
        return cards[name]
    close = difflib.get_close_matches(name, list(cards), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownModelError(f"unknown model {name!r}; {hint}run `zoo list` to see all, or give a user card (.json)")


def load_user_card(path: str | Path) -> ModelCard:
    """A card from a user's file: the same schema and checks as the built-ins."""
    return load_card(path)


@functools.cache
def builtin_cards() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for path in sorted(BUILTIN_DIR.glob("*.json")):
        card = load_card(path)
        if card.name in cards:
            raise CardError(f"{path}: name: {card.name!r} is already the name of {cards[card.name].path}; "
                            "rename one of them")
        cards[card.name] = card
    return cards


def user_card_files() -> list[Path]:
    """*.json files of the ZOO_PATH folders, in ZOO_PATH order (earlier folders win)."""
    files: list[Path] = []
    for folder in filter(None, os.environ.get(ZOO_PATH, "").split(os.pathsep)):
        if not Path(folder).is_dir():
            warnings.warn(f"{ZOO_PATH} entry {folder!r} is not a folder; ignored", stacklevel=3)
            continue
        files.extend(sorted(Path(folder).glob("*.json")))
    return files


def _all_cards() -> dict[str, ModelCard]:
    builtins = builtin_cards()
    cards = dict(builtins)
    user: dict[str, Path] = {}
    for path in user_card_files():
        card = load_user_card(path)
        if card.name in user:
            warnings.warn(f"{path}: model {card.name!r} is also defined by {user[card.name]}, earlier on "
                          f"{ZOO_PATH}; that one is used", stacklevel=3)
            continue
        if card.name in builtins:
            warnings.warn(f"{path}: user card {card.name!r} overrides the built-in card", stacklevel=3)
        user[card.name] = path
        cards[card.name] = card
    return cards
