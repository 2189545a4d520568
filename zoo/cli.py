"""The `zoo` command line: a thin front over the library.

Each subcommand is one ``Command`` in ``COMMANDS``: its name, a one-line help, usage examples, a
function adding its arguments and a function running it. Adding a command is one line in that
table; its ``run`` function imports what it needs when it runs, so that ``zoo info`` never pays for
(or needs) torch or onnx.

Errors are mapped in one place (``main``): a domain error (``ERRORS``) becomes one line
``zoo: error: <message>`` on stderr and exit code 1, with the traceback only when ``ZOO_DEBUG=1``;
bad usage exits 2; Ctrl-C exits 130. Warnings raised while a command runs are printed once each,
as ``zoo: warning: ...`` lines, when it succeeds; a failed command prints only its error line.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

PROG = "zoo"
DEBUG_ENV = "ZOO_DEBUG"

# Domain errors as (module, class name): resolved only when the module is already imported, since an
# error cannot come from a module nobody loaded, and the error map must not import torch or onnx.
ERRORS: list[tuple[str, str]] = [
    ("prototxt.errors", "CaffeError"),
    ("zoo.cards", "CardError"),
    ("zoo.registry", "UnknownModelError"),
    ("zoo.download", "DownloadError"),
    ("zoo.fetch", "WeightsUnavailable"),
    ("zoo.cli", "CommandError"),
    ("zoo.runtime", "RuntimeUnavailable"),
    ("zoo.preprocess", "ImageError"),
    ("zoo.drawing", "DrawingUnavailable"),
    ("zoo.solver", "SolverConfigError"),
    ("zoo.solver", "SolverStateError"),
    ("zoo.data", "DataError"),
    ("zoo.train", "TrainError"),
    ("zoo.finetune", "FinetuneError"),
    ("builtins", "OSError"),  # a folder that cannot be written, a disk that is full
]


class CommandError(Exception):
    """A problem a command reports to the user as one line (exit code 1)."""


class UsageError(Exception):
    """Arguments that parse but do not make sense together (exit code 2)."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: str = ""


# -- zoo info ----------------------------------------------------------------------------------

INFO_EXAMPLES = """\
examples:
  zoo info models/bvlc_googlenet/deploy.prototxt
  zoo info deploy.prototxt --weights bvlc_googlenet.caffemodel
  zoo info deploy.prototxt --input-shape data=1,3,224,224 --group
  zoo info train_val.prototxt --phase train --input-shape data=32,3,227,227
  zoo info deploy.prototxt --json > net.json
  zoo info deploy.prototxt --graph net.svg
"""


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prototxt", help="a Caffe net .prototxt (any format version; a solver with an inline net works too)")
    p.add_argument("--weights", metavar="CAFFEMODEL", help="also check this .caffemodel against the net")
    p.add_argument("--input-shape", metavar="BLOB=N,C,H,W", action="append", type=_input_shape, default=[],
                   help="give or override the shape of a net input (repeatable)")
    p.add_argument("--phase", choices=("train", "test"),
                   help="which phase's layers to keep (default: test; train when the test phase lacks a bottom)")
    p.add_argument("--stage", action="append", default=[], metavar="STAGE",
                   help="a net state stage, for nets with include/exclude stage rules (repeatable)")
    p.add_argument("--level", type=int, help="the net state level (for min_level/max_level rules)")
    p.add_argument("--group", action="store_true",
                   help="print per-group totals (layer-name prefix before '/', e.g. inception_3a) instead of every layer")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--graph", metavar="OUT.svg", help="also draw the net (svg/png/pdf with Graphviz's dot; .dot: "
                                                     "the DOT text)")


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    blob, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in re.split(r"[,x]", dims.strip()))
    except ValueError:
        shape = ()
    if not sep or not blob or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r} is not BLOB=N,C,H,W (positive integers, e.g. data=1,3,224,224)")
    return blob, shape


def _run_info(args: argparse.Namespace) -> int:
    from prototxt import CaffeError, MissingBottomError, attach_weights, load_net
    import converters  # noqa: F401  (the fork layer types' shape rules)
    from zoo import netinfo

    options = dict(stages=args.stage, level=args.level, input_shapes=dict(args.input_shape) or None)
    fallback = None
    try:
        graph = load_net(args.prototxt, phase=args.phase or "test", **options)
    except MissingBottomError as missing:
        if args.phase is not None:
            raise
        try:
            graph = load_net(args.prototxt, phase="train", **options)
        except CaffeError:
            raise missing from None
        fallback = (f"the TEST phase lacks blob '{missing.bottom}' (needed by layer '{missing.layer}'); showing the "
                    f"TRAIN phase instead (choose with --phase)")
    graph.require_shapes()
    if args.weights:
        attach_weights(graph, args.weights)
    if args.graph:
        from zoo.drawing import draw
        note(f"drew {draw(graph, args.graph)}")
    if fallback:
        note(fallback)  # only once there is output to explain: a failure prints its one error line alone
    info = netinfo.summary(graph)
    if args.json:
        print(dumps(info))
    else:
        sys.stdout.write(netinfo.format_text(info, layers=not args.group, group_table=True if args.group else None))
    return 0


# -- zoo list ----------------------------------------------------------------------------------

LIST_EXAMPLES = """\
examples:
  zoo list
  zoo list 'resnet*'
  zoo list --json
"""


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", help="only models whose name matches this shell pattern")
    p.add_argument("--json", action="store_true", help="print the list as JSON")


def _run_list(args: argparse.Namespace) -> int:
    from zoo import registry
    from zoo.download import cache_dir

    cache = cache_dir()
    rows = []
    for card in registry.list_cards(args.pattern):
        c, h, w = card.input.shape
        rows.append({
            "name": card.name,
            "task": card.task,
            "input": f"{c}x{h}x{w} {card.input.channel_order}",
            "params": _card_params(card),
            "weights_size": card.weights.size,
            "license": card.license.name,
            "cached": (cache / card.weights.filename).is_file(),
        })
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
    print(f"\n{len(rows)} models; weights cache: {cache}")
    return 0


def _card_params(card: Any) -> Optional[int]:
    """The parameter count of a card's deploy net, from its architecture's shapes (no weights needed)."""
    from prototxt import CaffeError, build_graph, load_net
    from zoo.models import arch
    try:
        if card.architecture_path is not None:
            graph = load_net(card.architecture_path)
        else:
            graph = build_graph(arch.build(card.architecture))
        return graph.params_total if not graph.unknown_types and not graph.shape_problem else None
    except (CaffeError, OSError, arch.UnknownArchitecture):
        return None  # a card whose net cannot be read here shows no count rather than failing the list


def _maybe(value: Any, fmt: Callable[[Any], str]) -> str:
    return "" if value is None else fmt(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


# -- zoo download ------------------------------------------------------------------------------

DOWNLOAD_EXAMPLES = """\
examples:
  zoo download bvlc_googlenet
  zoo download squeezenet_v1.1 --dir ./weights
  zoo download --card my_model.json
  ZOO_MIRROR=http://mirror.local/caffe zoo download vgg16

The file goes to the cache (ZOO_HOME, else the user cache folder) and the path is printed.
"""


def _download_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a model name from `zoo list`")
    p.add_argument("--card", metavar="FILE", help="use this model card file instead of a built-in name")
    p.add_argument("--dir", metavar="DIR", type=Path, help="download into DIR instead of the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_download(args: argparse.Namespace) -> int:
    from zoo import registry
    from zoo.fetch import fetch_weights

    if (args.name is None) == (args.card is None):
        raise UsageError("give a model NAME or --card FILE (one of them)")
    card = registry.get(args.name) if args.card is None else registry.load_user_card(args.card)
    path, status = fetch_weights(card, args.dir, quiet=args.quiet)
    note(f"{card.name}: {status}")
    print(path)
    return 0


# -- zoo convert / zoo verify (zoo/convert_cmd.py) ---------------------------------------------

def _lazy(name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module("zoo.convert_cmd"), name)


_CONVERT_EXAMPLES = """\
examples:
  zoo convert deploy.prototxt --weights model.caffemodel -o out/
  zoo convert deploy.prototxt --weights model.caffemodel --input-shape data=1,3,224,224 --no-verify
"""
_RUN_EXAMPLES = """\
examples:
  zoo run bvlc_googlenet cat.jpg dog.jpg
  zoo run bvlc_googlenet --weights bvlc_googlenet.caffemodel photos/ --batch 16 --top 3
  zoo run out/GoogleNet.onnx cat.jpg --card my_card.json
  zoo run bvlc_alexnet cat.jpg --device cuda --json
"""
_VERIFY_EXAMPLES = """\
examples:
  zoo verify deploy.prototxt --weights model.caffemodel
  zoo verify deploy.prototxt --weights model.caffemodel --reference io.npz
"""

_TRAIN_EXAMPLES = """\
examples:
  zoo train --solver solver.prototxt --weights bvlc_reference_caffenet.caffemodel
  zoo train --solver solver.prototxt --snapshot snapshots/net_iter_5000.solverstate
  zoo train --solver solver.prototxt --weights init.caffemodel --feed batches.npz \\
            --log log.json --output final.caffemodel --device cpu

Paths in the solver (net, snapshot_prefix, data sources) are relative to the current directory, as
in Caffe. --feed is an .npz with <blob>_<i> for every net input and iteration i (<blob>_<i>_<k> for
the k-th of iter_size passes; test_<blob>_<j> for TEST batches); without it, the net's Data (LMDB)
and ImageData layers are read.
"""

_FINETUNE_EXAMPLES = """\
examples:
  zoo finetune bvlc_googlenet --data photos/ --num-classes 5 --freeze-until inception_4e -o flowers/
  zoo finetune deploy.prototxt --weights model.caffemodel --data train.txt --val val.txt \\
            --num-classes 20 --epochs 5 --batch-size 32 -o out/
  zoo finetune bvlc_reference_caffenet --data train_lmdb --num-classes 20 --solver solver.prototxt -o out/
  zoo finetune bvlc_googlenet --data flow.npz --num-classes 101 --input-channels 20 --cross-modality -o temporal/
  zoo finetune bvlc_googlenet --data photos/ --num-classes 5 -o flowers/ --resume    # after an interruption

--data (and --val) is an image folder (one subfolder per class; class ids follow the sorted folder
names), a Caffe ImageData list file ('path label' lines; paths relative to the list's folder), an LMDB
of Caffe Datum records, or an .npz with 'data' (N, C, H, W) and 'labels' (N,). Without --val, every
5th item of a seeded permutation is held out for validation.
Images are transformed as the model card says (a bare prototxt: resize to 8/7 of the input, crop,
BGR, mean 104/117/123): random crops and mirroring in training, centre crops in validation.
--cross-modality (two-stream temporal nets): the first convolution's weights are averaged over its
3 input channels and replicated over --input-channels C; the data then has C channels (e.g. 20 = 10
stacked optical-flow fields (dx, dy), each scaled to 0..255; mean 128).
OUT receives deploy.prototxt + finetuned.caffemodel (the renamed head; Caffe reads them),
finetuned.onnx, finetuned_pytorch/, finetuned_best.caffemodel (best validation accuracy),
metrics.json, curves.png, labels.txt (image folders), checkpoints/ and cache/ (removable).
"""


# -- the table ---------------------------------------------------------------------------------

COMMANDS: list[Command] = [
    Command("info", "show a net's inputs, layers, shapes, parameters and MACs", _info_arguments, _run_info,
            INFO_EXAMPLES),
    Command("list", "list the zoo's models (task, input, weights size, license, cached or not)", _list_arguments,
            _run_list, LIST_EXAMPLES),
    Command("download", "download a model's weights into the cache, checksum-verified", _download_arguments,
            _run_download, DOWNLOAD_EXAMPLES),
    Command("convert", "convert a Caffe net + weights to ONNX and a standalone PyTorch folder, then check both",
            lambda p: _lazy("add_convert_arguments")(p), lambda a: _lazy("run_convert")(a), _CONVERT_EXAMPLES),
    Command("run", "classify images with a zoo model or a converted .onnx through onnxruntime (CUDA or CPU)",
            lambda p: importlib.import_module("zoo.run_cmd").add_arguments(p),
            lambda a: importlib.import_module("zoo.run_cmd").run(a), _RUN_EXAMPLES),
    Command("verify", "run PyTorch and onnxruntime (and reference arrays) blob by blob; name the first divergence",
            lambda p: _lazy("add_verify_arguments")(p), lambda a: _lazy("run_verify")(a), _VERIFY_EXAMPLES),
    Command("train", "train a net with its Caffe solver, iteration for iteration as caffe train does",
            lambda p: importlib.import_module("zoo.train_cmd").add_arguments(p),
            lambda a: importlib.import_module("zoo.train_cmd").run(a), _TRAIN_EXAMPLES),
    Command("finetune", "retrain a model's head (and what is not frozen) on new classes, the Caffe way",
            lambda p: importlib.import_module("zoo.finetune_cmd").add_arguments(p),
            lambda a: importlib.import_module("zoo.finetune_cmd").run(a),
            _FINETUNE_EXAMPLES),
]


# -- the front ---------------------------------------------------------------------------------

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
        p = sub.add_parser(command.name, help=command.help, description=command.help, epilog=command.examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
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
    except Exception as exc:
        if not isinstance(exc, domain_errors()):
            raise  # a bug: the traceback is the report
        return _fail(exc, debug, 1)


def domain_errors() -> tuple[type[BaseException], ...]:
    found = []
    for module, name in ERRORS:
        if module in sys.modules:
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def _fail(exc: BaseException, debug: bool, code: int) -> int:
    if debug:
        traceback.print_exc()
    print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
    return code


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
        cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
        return cfg.get("metadata", "version", fallback="unknown")


if __name__ == "__main__":
    sys.exit(main())
