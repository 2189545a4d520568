"""Architecture name -> the function (with its options) that builds that deploy net."""
from __future__ import annotations

import difflib
import functools
import os
from typing import Any, Callable, TypeVar

from prototxt import CaffeError, caffe_pb2, to_text

F = TypeVar("F", bound=Callable[..., caffe_pb2.NetParameter])
_BUILDERS: dict[str, Callable[[], caffe_pb2.NetParameter]] = {}


class UnknownArchitecture(CaffeError, LookupError):
    """No built-in deploy net has that name; the message suggests close names."""


def register(arch: str, **options: Any) -> Callable[[F], F]:
    """Make `arch` the net `fn(**options)` builds; stack one decorator per published net."""
    def decorate(fn: F) -> F:
        if arch in _BUILDERS:
            raise ValueError(f"architecture {arch!r} is registered twice; rename one of them")
        _BUILDERS[arch] = functools.partial(fn, **options)
        return fn
    return decorate


def names() -> list[str]:
    """Every built-in architecture name, sorted."""
    return sorted(_BUILDERS)


def build(arch: str) -> caffe_pb2.NetParameter:
    """A fresh deploy NetParameter (current format, an Input layer first) of a built-in architecture."""
    if arch not in _BUILDERS:
        close = difflib.get_close_matches(arch, list(_BUILDERS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownArchitecture(f"no built-in architecture {arch!r}; {hint}zoo.models.arch.names() lists all "
                                  f"{len(_BUILDERS)}; a user card can name its own deploy .prototxt instead")
    return _BUILDERS[arch]()


def write_prototxt(arch: str, path: str | os.PathLike) -> None:
    """Write the deploy net of `arch` as a .prototxt Caffe itself reads."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# {arch}: deploy net written by caffezoo (zoo.models.arch)\n")
        f.write(to_text(build(arch)))
