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
from bisect import bisect_right
from typing import Iterator, Optional

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import Message

from . import caffe_pb2
from .errors import PrototxtSyntaxError


class ForkParamWarning(UserWarning):
    """A layer-level ``*_param`` block of an unknown Caffe fork was skipped."""


# Layer messages whose unknown ``*_param`` blocks belong to some fork and are skipped.
_LAYER_MESSAGES = {"caffe.LayerParameter", "caffe.V1LayerParameter"}

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?(?![\w.]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>:\[\],;])
""", re.VERBOSE)

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
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.tokens = list(self._tokenize())
        self.i = 0

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
        line = bisect_right(self.line_starts, pos)
        return line, pos - self.line_starts[line - 1] + 1

    def error(self, pos: int, message: str) -> None:
        line, col = self.where(pos)
        raise PrototxtSyntaxError(self.path, line, col, message)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> _Token:
        tok = self.next()
        if tok.text != text or tok.kind not in ("punct",):
            self.error(tok.pos, f"expected '{text}' but found {_show(tok)}")
        return tok

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok.kind == "punct" and tok.text == text:
            self.i += 1
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
                self.i += 1
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
                if tok.kind == "number" and _is_int(tok.text) and int(tok.text, 0) in enum.values_by_number:
                    return int(tok.text, 0)
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
                value = int(tok.text, 0)
                lo, hi = _INT_RANGES[t]
                if not lo <= value <= hi:
                    raise ValueError(f"{value} is out of range for '{field.name}' ({lo}..{hi})")
                return value
        except ValueError as exc:
            self.error(tok.pos, f"{exc}, found {_show(tok)}")
        self.error(tok.pos, f"unsupported field type for '{field.name}'")


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", text) is not None


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
    return float(int(text, 0)) if _is_int(text) else float(text)


def _unquote(token: str) -> str:
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if not m:
                raise ValueError("bad \\x escape")
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
        else:
            raise ValueError(f"unknown escape \\{nxt}")
    return "".join(out)


def _show(tok: _Token) -> str:
    return "end of file" if tok.kind == "eof" else repr(tok.text)


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


def read_text(path: os.PathLike | str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise PrototxtSyntaxError(str(path), 0, 0, f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


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
