"""The sizes a reader accepts from a file before it refuses it: files come from strangers.

Two limits, each raised by an environment variable or a keyword of ``load_net``:

- ``ZOO_MAX_PROTOTXT_BYTES`` (default 64 MiB): the largest .prototxt read; real nets are under 1 MiB.
- ``ZOO_MAX_BYTES`` (default 4 GiB): the largest single blob (a layer's parameter or top, float32)
  a net may declare; checked when shapes are inferred, before anything is allocated.

Values are bytes, with an optional K, M, G or T suffix (powers of 1024): ``ZOO_MAX_BYTES=64G``.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from .errors import CaffeError

PROTOTXT_ENV, BLOB_ENV = "ZOO_MAX_PROTOTXT_BYTES", "ZOO_MAX_BYTES"
DEFAULT_PROTOTXT_BYTES = 64 << 20
DEFAULT_BLOB_BYTES = 4 << 30

_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
_SUFFIX = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def max_prototxt_bytes(override: Optional[int] = None) -> int:
    return _limit(override, PROTOTXT_ENV, DEFAULT_PROTOTXT_BYTES)


def max_blob_bytes(override: Optional[int] = None) -> int:
    return _limit(override, BLOB_ENV, DEFAULT_BLOB_BYTES)


def _limit(override: Optional[int], env: str, default: int) -> int:
    if override is not None:
        return int(override)
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text, re.IGNORECASE)
    if not m:
        raise CaffeError(f"{env}={text!r} is not a size in bytes; write a number with an optional K, M, G or T "
                         f"suffix, e.g. {env}={(default * 4) >> 20}M")
    return int(m.group(1)) << _SUFFIX[m.group(2).upper()]


def format_bytes(n: int) -> str:
    """``n`` bytes for people: '715.3 GiB', '4 GiB', '12 B'."""
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    text = f"{value:.1f}".removesuffix(".0")
    return f"{text} {_UNITS[unit]}"
