"""One exception family for everything that can be wrong with Caffe files.

Every message is a single line that names the file and the place (line:column or layer name),
says what is wrong and, where there is one, what to do about it.
"""
from __future__ import annotations

from typing import Iterable


class CaffeError(Exception):
    """Base class: a problem with a Caffe file or net the user can fix."""


class PrototxtSyntaxError(CaffeError):
    """A .prototxt that is not valid protobuf text for the message it should hold."""

    def __init__(self, path: str, line: int, column: int, message: str):
        self.path, self.line, self.column = path, line, column
        where = f"{path}:{line}:{column}" if line > 0 else path  # line 0: the file itself (e.g. unreadable)
        super().__init__(f"{where}: {message}")


class WeightsError(CaffeError):
    """A .caffemodel / .binaryproto that cannot be read or does not fit its net."""


class GraphError(CaffeError):
    """A net whose structure is broken (missing bottom, cycle, duplicate top...)."""


class MissingBottomError(GraphError):
    """A layer uses a blob that no earlier layer of the chosen phase produces."""

    def __init__(self, message: str, layer: str = "", bottom: str = ""):
        self.layer, self.bottom = layer, bottom
        super().__init__(message)


class ShapeError(GraphError):
    """A layer whose input shapes or parameters give no valid output shape."""


class InputShapeRequired(GraphError):
    """The net's input shape lives in a data source that is not at hand."""


class UnsupportedLayers(CaffeError):
    """Layer types with no implementation: all of them, listed at once."""

    def __init__(self, types: dict[str, list[str]], hint: str = "", source: str = ""):
        self.types = dict(types)  # type -> names of the layers of that type
        listed = ", ".join(f"{t} ({_names(n)})" for t, n in sorted(self.types.items()))
        where = f"{source}: " if source else ""
        super().__init__(f"{where}unsupported layer type{'s' if len(self.types) > 1 else ''}: {listed}"
                         + (f"; {hint}" if hint else ""))


def _names(names: Iterable[str], limit: int = 3) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class SizeLimitError(GraphError):
    """A net declares a blob larger than the limit (prototxt.limits); refused before allocating it."""
