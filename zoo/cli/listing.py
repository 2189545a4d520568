"""`zoo list`: the zoo's models (task, input, weights size, license, cached or not)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from zoo.cli.common import dumps, note

HELP = "list the zoo's models (task, input, weights size, license, cached or not)"
EXAMPLES = """\
examples:
  zoo list
  zoo list 'resnet*'
  zoo list --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", help="only models whose name matches this shell pattern")
    p.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args: argparse.Namespace) -> int:
    from zoo.hub.catalog import rows as model_rows
    from zoo.hub.download import cache_dir

    rows = model_rows(args.pattern)
    if args.json:
        print(dumps(rows))
        return 0
    if not rows:
        note(f"no model matches {args.pattern!r}; `zoo list` shows them all")
        return 0
    header = ("name", "task", "input", "params", "weights", "license", "cached")
    table = [(r["name"], r["task"], r["input"], _maybe(r["params"], lambda n: f"{n / 1e6:.1f} M"),
              _maybe(r["weights_size"], _bytes), _clip(r["license"], 40), "yes" if r["cached"] else "no")
             for r in rows]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"\n{len(rows)} models; weights cache: {cache_dir()}")
    return 0


def _maybe(value: Any, fmt: Callable[[Any], str]) -> str:
    return "" if value is None else fmt(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
