"""What every `zoo` command shares: its errors, remarks on stderr, JSON output, argument types.

Command modules import from here, never from the entry module (``zoo.cli``), which imports them.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from prototxt import CaffeError

PROG = "zoo"


class CommandError(CaffeError):
    """A problem a command reports to the user as one line (exit code 1)."""


class UsageError(CaffeError):
    """Arguments that parse but do not make sense together (exit code 2)."""


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """An argparse type: ``BLOB=N,C,H,W`` (or ``NxCxHxW``) -> (blob, shape)."""
    blob, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in re.split(r"[,x]", dims.strip()))
    except ValueError:
        shape = ()
    if not sep or not blob or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r} is not BLOB=N,C,H,W (positive integers, e.g. data=1,3,224,224)")
    return blob, shape


def dumps(data: Any) -> str:
    """Indented JSON with each list of numbers (a shape) on one line."""
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(n.strip() for n in m.group(1).split(",")) + "]",
                            json.dumps(data, indent=1))


_NUMBER_LIST = re.compile(r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]")


def note(message: str) -> None:
    """A remark for the user on stderr, so that stdout stays data (e.g. JSON)."""
    sys.stdout.flush()  # keep the order readable when both go to a terminal
    print(f"{PROG}: note: {one_line(message)}", file=sys.stderr)


def one_line(message: str) -> str:
    return " ".join(message.split())


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model options `zoo convert` and `zoo verify` share."""
    p.add_argument("model", nargs="?", help="a Caffe deploy .prototxt or a zoo model name (or give --card FILE)")
    p.add_argument("--weights", metavar="CAFFEMODEL", help="the .caffemodel (default: the zoo cache for a model name)")
    p.add_argument("--card", metavar="FILE", help="a user model card (JSON) instead of a built-in name")
    p.add_argument("--input-shape", metavar="BLOB=N,C,H,W", action="append", type=input_shape, default=[],
                   help="give or override the shape of a net input (repeatable)")


def resolve_model(args: argparse.Namespace):
    """The model the arguments name (zoo.hub.resolve), with trained weights when its net has parameters."""
    from zoo.hub.resolve import resolve
    if (args.model is None) == (args.card is None):
        raise UsageError("give a deploy .prototxt or a model NAME, or --card FILE (one of them)")
    model = resolve(args.model, card=args.card, weights=args.weights)
    if model.status and not model.status.startswith("verified"):
        note(f"{model.card.name}: {model.status}")
    model.require_weights("conversion", dict(args.input_shape) or None)
    return model
