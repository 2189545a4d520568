"""Protobuf text format (.prototxt) for Caffe nets and solvers.

A small parser of our own instead of ``google.protobuf.text_format`` for two reasons: fork nets put
``*_param`` blocks for layers we have never heard of into LayerParameter, and those must be skipped
with a warning rather than refused; and every error must carry file:line:column and the token.
Values are checked against the message descriptors, so an unknown field in a known message (a typo
such as ``kernal_size``) is an error exactly where Caffe's own parser stops.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import warnings
from typing import Iterator, Optional

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import Message

from . import caffe_pb2
from .errors import PrototxtSyntaxError
from .fileio import open_regular
from .limits import PROTOTXT_ENV, format_bytes, max_prototxt_bytes


class ForkParamWarning(UserWarning):
    """A layer-level ``*_param`` block of an unknown Caffe fork was skipped."""


# Layer messages whose unknown ``*_param`` blocks belong to some fork and are skipped.
_LAYER_MESSAGES = {"caffe.LayerParameter", "caffe.V1LayerParameter"}

# Linear on any input: runs are possessive or atomic, so that a failing match (a 200 kB digit run
# ending in a letter) never backtracks through the run, and a string is matched as runs of plain
# characters between escapes, so that sre keeps no state per character (a 10 MB string would cost GBs).
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n\f\v]++|\#[^\n]*+)
  | (?P<string>"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"|'[^'\\\n]*+(?:\\.[^'\\\n]*+)*+')
  | (?P<number>(?>[-+]?(?:0[xX][0-9a-fA-F]++|(?:\d++\.?\d*+|\.\d++)(?:[eE][-+]?\d++)?)[fF]?)(?![\w.]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_.]*+)
  | (?P<punct>[{}<>:\[\],;])
""", re.VERBOSE)
_ESCAPE = re.compile(r"\\(?:[xX]([0-9a-fA-F]{1,2})|([0-7]{1,3})|(.))", re.DOTALL)
_SNIFF = 1 << 16  # bytes read first: a binary file is refused before the rest is read
_SHOWN = 40  # characters of a token quoted in an error message

_INT_RANGES = {
    FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_SINT32: (-2**31, 2**31 - 1), FD.TYPE_SFIXED32: (-2**31, 2**31 - 1),
    FD.TYPE_INT64: (-2**63, 2**63 - 1), FD.TYPE_SINT64: (-2**63, 2**63 - 1), FD.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = {FD.TYPE_FLOAT, FD.TYPE_DOUBLE}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}


class _Token:
    __slots__ = ("kind", "text", "pos")

    def __init__(self, kind: str, text: str, pos: int):
        self.kind, self.text, self.pos = kind, text, pos


class _Parser:
    def __init__(self, text: str, path: str):
        self.text, self.path = text, path
        self.tokens = self._tokenize()  # lazily: memory is the message being built, not a token list
        self.ahead = next(self.tokens)

    # -- tokens -----------------------------------------------------------------------------
    def _tokenize(self) -> Iterator[_Token]:
        pos, n = 0, len(self.text)
        while pos < n:
            m = _TOKEN.match(self.text, pos)
            if m is None:
                bad = self.text[pos:pos + 20].split()[0] if self.text[pos:pos + 20].split() else self.text[pos]
                self.error(pos, f"unexpected character(s) {bad!r}")
            kind = m.lastgroup
            if kind != "ws":
                yield _Token(kind, m.group(), pos)
            pos = m.end()
        yield _Token("eof", "", n)

    def where(self, pos: int) -> tuple[int, int]:
        return self.text.count("\n", 0, pos) + 1, pos - self.text.rfind("\n", 0, pos)

    def error(self, pos: int, message: str) -> None:
        line, col = self.where(pos)
        raise PrototxtSyntaxError(self.path, line, col, message)

    def peek(self) -> _Token:
        return self.ahead

    def next(self) -> _Token:
        tok = self.ahead
        if tok.kind != "eof":
            self.ahead = next(self.tokens)
        return tok

    def expect(self, text: str) -> _Token:
        tok = self.next()
        if tok.text != text or tok.kind not in ("punct",):
            self.error(tok.pos, f"expected '{text}' but found {_show(tok)}")
        return tok

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok.kind == "punct" and tok.text == text:
            self.next()
            return True
        return False

    # -- messages ---------------------------------------------------------------------------
    def parse_message(self, msg: Message, end: Optional[str]) -> None:
        seen: set[str] = set()
        while True:
            tok = self.peek()
            if end is None and tok.kind == "eof":
                return
            if end is not None and tok.kind == "punct" and tok.text == end:
                self.next()
                return
            if tok.kind == "eof":
                self.error(tok.pos, f"unexpected end of file: missing '{end}'")
            self.parse_field(msg, seen)
            if not self.accept(","):
                self.accept(";")

    def parse_field(self, msg: Message, seen: set[str]) -> None:
        tok = self.next()
        if tok.kind == "punct" and tok.text == "[":
            self.error(tok.pos, "extensions are not used by Caffe files")
        if tok.kind != "ident" or tok.text.startswith("-"):
            self.error(tok.pos, f"expected a field name but found {_show(tok)}")
        desc = msg.DESCRIPTOR
        field = desc.fields_by_name.get(tok.text)
        if field is None:
            if desc.full_name in _LAYER_MESSAGES and tok.text.endswith("_param"):
                line, col = self.where(tok.pos)
                warnings.warn(ForkParamWarning(
                    f"{self.path}:{line}:{col}: skipped '{tok.text}', a layer parameter block of a Caffe fork "
                    f"this toolkit does not know"), stacklevel=4)
                self.skip_value()
                return
            self.error(tok.pos, _unknown_field(desc, tok.text))
        if not field.is_repeated:
            if field.name in seen:
                self.error(tok.pos, f"non-repeated field '{field.name}' of {desc.name} is given more than once")
            seen.add(field.name)
        if field.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            self.accept(":")
            if field.is_repeated and self.accept("["):
                while True:
                    self.parse_block(getattr(msg, field.name).add())
                    if self.accept("]"):
                        return
                    self.expect(",")
            target = getattr(msg, field.name).add() if field.is_repeated else getattr(msg, field.name)
            if not field.is_repeated:
                target.SetInParent()
            self.parse_block(target)
            return
        colon = self.next()
        if colon.text != ":" or colon.kind != "punct":
            self.error(colon.pos, f"expected ':' after '{field.name}' but found {_show(colon)}")
        if field.is_repeated and self.accept("["):
            if self.accept("]"):
                return
            while True:
                getattr(msg, field.name).append(self.parse_scalar(field))
                if self.accept("]"):
                    return
                self.expect(",")
        value = self.parse_scalar(field)
        if field.is_repeated:
            getattr(msg, field.name).append(value)
        else:
            setattr(msg, field.name, value)

    def parse_block(self, msg: Message) -> None:
        tok = self.next()
        if tok.kind == "punct" and tok.text in "{<":
            self.parse_message(msg, "}" if tok.text == "{" else ">")
        else:
            self.error(tok.pos, f"expected '{{' to open a {msg.DESCRIPTOR.name} but found {_show(tok)}")

    def skip_value(self) -> None:
        self.accept(":")
        tok = self.next()
        if tok.kind == "punct" and tok.text in "{<[":
            depth = 1
            while depth:
                t = self.next()
                if t.kind == "eof":
                    self.error(tok.pos, "unclosed block")
                if t.kind == "punct" and t.text in "{<[":
                    depth += 1
                elif t.kind == "punct" and t.text in "}>]":
                    depth -= 1
        elif tok.kind == "string":
            while self.peek().kind == "string":
                self.next()
        elif tok.kind not in ("number", "ident"):
            self.error(tok.pos, f"expected a value but found {_show(tok)}")

    # -- scalars ----------------------------------------------------------------------------
    def parse_scalar(self, field: FD):
        tok = self.next()
        t = field.type
        try:
            if t in (FD.TYPE_STRING, FD.TYPE_BYTES):
                if tok.kind != "string":
                    raise ValueError(f"expected a quoted string for '{field.name}'")
                parts = [_unquote(tok.text)]
                while self.peek().kind == "string":
                    parts.append(_unquote(self.next().text))
                value = "".join(parts)
                return value.encode("latin-1") if t == FD.TYPE_BYTES else value
            if t == FD.TYPE_ENUM:
                enum = field.enum_type
                if tok.kind == "ident" and tok.text in enum.values_by_name:
                    return enum.values_by_name[tok.text].number
                if tok.kind == "number" and _is_int(tok.text) and _int(tok.text) in enum.values_by_number:
                    return _int(tok.text)
                raise ValueError(f"'{tok.text}' is not a value of {enum.name} "
                                 f"(one of {', '.join(enum.values_by_name)})")
            if t == FD.TYPE_BOOL:
                if tok.text in ("true", "True", "t", "1"):
                    return True
                if tok.text in ("false", "False", "f", "0"):
                    return False
                raise ValueError(f"expected true or false for '{field.name}'")
            if t in _FLOATS:
                return _float(tok)
            if t in _INT_RANGES:
                if tok.kind != "number" or not _is_int(tok.text):
                    raise ValueError(f"expected an integer for '{field.name}'")
                value = _int(tok.text)
                lo, hi = _INT_RANGES[t]
                if not lo <= value <= hi:
                    raise ValueError(f"the value is out of range for '{field.name}' ({lo}..{hi})")
                return value
        except ValueError as exc:
            self.error(tok.pos, f"{exc}, found {_show(tok)}")
        self.error(tok.pos, f"unsupported field type for '{field.name}'")


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", text) is not None


def _int(text: str) -> int:
    """An integer token's value; one longer than any protobuf integer (2^64, 20 digits) is out of range
    without converting it (Python refuses to convert over 4300 digits, and it costs quadratic time)."""
    digits = text.lstrip("+-")
    if len(digits.lstrip("0xX").lstrip("0")) > 20:
        return 1 << 64 if not text.startswith("-") else -(1 << 64)
    return int(text, 0)


def _float(tok: _Token) -> float:
    text = tok.text
    if tok.kind == "ident":
        low = text.lower()
        sign = -1.0 if low.startswith("-") else 1.0
        low = low.lstrip("-")
        if low in ("inf", "infinity"):
            return sign * math.inf
        if low == "nan":
            return math.nan
        raise ValueError("expected a number")
    if tok.kind != "number":
        raise ValueError("expected a number")
    text = text.rstrip("fF") if not text.lower().startswith(("0x", "-0x", "+0x")) else text
    if not _is_int(text):
        return float(text)
    # protobuf's ConsumeDouble reads an integer token as a uint64 (a larger one is out of range)
    value = _int(text)
    if abs(value) >= 1 << 64:
        raise ValueError("the integer is out of range for a float (at most 2^64 - 1; use an exponent, e.g. 1e30)")
    return float(value)


def _unquote(token: str) -> str:
    body = token[1:-1]
    return _ESCAPE.sub(_unescape, body) if "\\" in body else body


def _unescape(m: re.Match) -> str:
    hex_, octal, other = m.groups()
    if hex_ is not None:
        return chr(int(hex_, 16))
    if octal is not None:
        return chr(int(octal, 8))
    if other in _ESCAPES:
        return _ESCAPES[other]
    raise ValueError("bad \\x escape" if other in "xX" else f"unknown escape \\{other}")


def _show(tok: _Token) -> str:
    if tok.kind == "eof":
        return "end of file"
    text = tok.text if len(tok.text) <= _SHOWN else f"{tok.text[:_SHOWN // 2]}...{tok.text[-8:]}"
    return f"{text!r}" + (f" ({len(tok.text)} characters)" if len(tok.text) > _SHOWN else "")


def _unknown_field(desc, name: str) -> str:
    close = difflib.get_close_matches(name, desc.fields_by_name.keys(), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{desc.name} has no field named '{name}'{hint}"


# -- public API -------------------------------------------------------------------------------

def parse(text: str, message: Message, path: str = "<string>") -> Message:
    """Parse protobuf text into ``message`` (merging) and return it."""
    parser = _Parser(text, path)
    parser.parse_message(message, None)
    return message


def read_text(path: os.PathLike | str, max_bytes: Optional[int] = None) -> str:
    """The text of a prototxt, refused in one line when it is binary or larger than the limit
    (``max_bytes``, else ``$ZOO_MAX_PROTOTXT_BYTES``, else 64 MiB): never more than that is read."""
    limit = max_prototxt_bytes(max_bytes)
    try:
        with open_regular(path) as f:
            data = f.read(_SNIFF)
            _refuse_binary(path, data)
            data += f.read(limit + 1 - len(data)) if len(data) <= limit else b""
    except OSError as exc:
        raise PrototxtSyntaxError(str(path), 0, 0, f"cannot read: {exc.strerror or exc}") from None
    _refuse_binary(path, data)
    if len(data) > limit:
        raise PrototxtSyntaxError(str(path), 0, 0, (
            f"the file is larger than {format_bytes(limit)}, the limit for a prototxt (real nets are far smaller); "
            f"if it is a net, raise the limit with {PROTOTXT_ENV} (e.g. {PROTOTXT_ENV}={(limit >> 20) * 4 or 1}M) "
            f"or load_net(..., max_prototxt_bytes=...)"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _refuse_binary(path: os.PathLike | str, data: bytes) -> None:
    """Text never holds a NUL byte; a caffemodel (float data, short varints) almost always does."""
    if b"\0" in data:
        raise PrototxtSyntaxError(str(path), 0, 0, "this is a binary file (a .caffemodel or .binaryproto?), not a "
                                                   "prototxt; give the net's text .prototxt here, and the weights "
                                                   "separately")


def parse_net_text(text: str, path: str = "<string>") -> caffe_pb2.NetParameter:
    return parse(text, caffe_pb2.NetParameter(), path)


def parse_net_file(path: os.PathLike | str) -> caffe_pb2.NetParameter:
    return parse_net_text(read_text(path), str(path))


def parse_solver_file(path: os.PathLike | str) -> caffe_pb2.SolverParameter:
    return parse(read_text(path), caffe_pb2.SolverParameter(), str(path))


def to_text(message: Message) -> str:
    """Protobuf text of ``message``, readable by Caffe's own parser.

    Floats are printed as the shortest text that reads back to the same float32 (protobuf's default;
    the ``float_format`` argument older protobufs took is gone in the version pinned here).
    """
    return text_format.MessageToString(message)
