"""`zoo download`: a model's weights into the cache (or a folder), checksum-verified."""
from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli.common import UsageError, note

HELP = "download a model's weights into the cache, checksum-verified"
EXAMPLES = """\
examples:
  zoo download bvlc_googlenet
  zoo download squeezenet_v1.1 --dir ./weights
  zoo download --card my_model.json
  ZOO_MIRROR=http://mirror.local/caffe zoo download vgg16

The file goes to the cache (ZOO_HOME, else the user cache folder) and the path is printed.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a model name from `zoo list`")
    p.add_argument("--card", metavar="FILE", help="use this model card file instead of a built-in name")
    p.add_argument("--dir", metavar="DIR", type=Path, help="download into DIR instead of the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from zoo.hub import registry
    from zoo.hub.fetch import fetch_weights

    if (args.name is None) == (args.card is None):
        raise UsageError("give a model NAME or --card FILE (one of them)")
    card = registry.get(args.name) if args.card is None else registry.load_user_card(args.card)
    path, status = fetch_weights(card, args.dir, quiet=args.quiet)
    note(f"{card.name}: {status}")
    print(path)
    return 0
