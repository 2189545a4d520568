"""The `zoo` command line: the entry point only wires the commands together.

Each subcommand is a module of this package (``zoo.cli.<module>``) holding its ``HELP`` line, its
``EXAMPLES``, ``add_arguments(parser)`` and ``run(args)``; ``COMMANDS`` lists them in help order.
A command's ``run`` imports what it needs when it runs, so that ``zoo info`` never pays for (or
needs) torch or onnx. What commands share lives in ``zoo.cli.common``.

Errors are mapped in one place (``main``): every toolkit error derives from ``prototxt.CaffeError``
and becomes one line ``zoo: error: <message>`` on stderr and exit code 1, as does an ``OSError``
(a folder that cannot be written, a disk that is full); bad usage exits 2; Ctrl-C exits 130.
Anything else is a bug: one line asking for a report, exit code 1. ``ZOO_DEBUG=1`` adds the
traceback. Warnings raised while a command runs are printed once each, as ``zoo: warning: ...``
lines, when it succeeds; a failed command prints only its error line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

from prototxt import CaffeError
from zoo.cli.common import PROG, UsageError, one_line

DEBUG_ENV = "ZOO_DEBUG"


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # under zoo.cli: HELP, EXAMPLES, add_arguments(parser), run(args)

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")


COMMANDS: list[Command] = [
    Command("info", "info"),
    Command("list", "listing"),
    Command("download", "download"),
    Command("convert", "convert"),
    Command("run", "run"),
    Command("verify", "verify"),
    Command("train", "train"),
    Command("finetune", "finetune"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Caffe models (the Model Zoo and any .prototxt/.caffemodel): inspect, download, convert to "
                    "PyTorch and ONNX, run, train and finetune the Caffe way.",
        epilog=f"Run `{PROG} COMMAND --help` for a command's options and examples. "
               f"Set {DEBUG_ENV}=1 to see tracebacks.")
    parser.add_argument("--version", action="version", version=f"{PROG} (caffezoo) {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        module = command.load()
        p = sub.add_parser(command.name, help=module.HELP, description=module.HELP, epilog=module.EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `--nproc N` starts N times
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = args.run(args)
        _print_warnings(caught)
        return code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `zoo info ... | head`: the reader left; not an error
        _silence_stdout()
        return 0
    except UsageError as exc:
        return _fail(exc, debug, 2)
    except (CaffeError, OSError) as exc:
        return _fail(exc, debug, 1)
    except Exception as exc:  # a bug: one line asking for a report (the traceback with ZOO_DEBUG=1)
        if debug:
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {one_line(str(exc))}; please report it; "
              f"set {DEBUG_ENV}=1 for the traceback", file=sys.stderr)
        return 1


def _fail(exc: BaseException, debug: bool, code: int) -> int:
    if debug:
        traceback.print_exc()
    print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
    return code


_LOCATION = re.compile(r"^(?P<path>[^\s:]+):\d+:\d+: ")


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning once; the same warning at many places of one file once, with a count."""
    groups: dict[str, list[str]] = {}
    for w in caught:
        text = one_line(str(w.message))
        key = _LOCATION.sub(lambda m: m.group("path") + ": ", text)
        groups.setdefault(key, [])
        if text not in groups[key]:
            groups[key].append(text)
    for texts in groups.values():
        more = f" (and {len(texts) - 1} more like it)" if len(texts) > 1 else ""
        print(f"{PROG}: warning: {texts[0]}{more}", file=sys.stderr)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("caffezoo")
    except PackageNotFoundError:  # running from a source tree
        import configparser
        cfg = configparser.ConfigParser()
        cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
        return cfg.get("metadata", "version", fallback="unknown")


if __name__ == "__main__":
    sys.exit(main())
