"""`zoo info`: a net's inputs, layers, shapes, parameters and MACs (never imports torch or onnx)."""
from __future__ import annotations

import argparse
import sys

from zoo.cli.common import dumps, input_shape, note

HELP = "show a net's inputs, layers, shapes, parameters and MACs"
EXAMPLES = """\
examples:
  zoo info models/bvlc_googlenet/deploy.prototxt
  zoo info faster_rcnn_vgg16
  zoo info deploy.prototxt --weights bvlc_googlenet.caffemodel
  zoo info deploy.prototxt --input-shape data=1,3,224,224 --group
  zoo info train_val.prototxt --phase train --input-shape data=32,3,227,227
  zoo info deploy.prototxt --json > net.json
  zoo info deploy.prototxt --graph net.svg
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prototxt", help="a Caffe net .prototxt (any format version; a solver with an inline net works "
                                    "too), or a zoo model name or user card (.json): its deploy net")
    p.add_argument("--weights", metavar="CAFFEMODEL", help="also check this .caffemodel against the net")
    p.add_argument("--input-shape", metavar="BLOB=N,C,H,W", action="append", type=input_shape, default=[],
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


def run(args: argparse.Namespace) -> int:
    from prototxt import CaffeError, MissingBottomError, attach_weights, build_graph
    from zoo import netinfo

    model = _deploy_net(args.prototxt)
    options = dict(stages=args.stage, level=args.level, input_shapes=dict(args.input_shape) or None,
                   source=model.source, upgrades=model.upgrades)
    fallback = None
    try:
        graph = build_graph(model.net, phase=args.phase or "test", **options)
    except MissingBottomError as missing:
        if args.phase is not None:
            raise
        try:
            graph = build_graph(model.net, phase="train", **options)
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


def _deploy_net(model: str):
    """The net `model` names: a .prototxt read as it is, or a zoo card's deploy net (weights not fetched)."""
    from zoo.hub.resolve import resolve
    return resolve(model, fetch=False)
