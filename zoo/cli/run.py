"""`zoo run`: classify images with a zoo model or a converted .onnx file, through onnxruntime."""
from __future__ import annotations

import argparse
import json
import os

from zoo.cli.common import CommandError, note

HELP = "classify images with a zoo model or a converted .onnx through onnxruntime (CUDA or CPU)"
EXAMPLES = """\
examples:
  zoo run bvlc_googlenet cat.jpg dog.jpg
  zoo run bvlc_googlenet --weights bvlc_googlenet.caffemodel photos/ --batch 16 --top 3
  zoo run out/GoogleNet.onnx cat.jpg --card my_card.json
  zoo run bvlc_alexnet cat.jpg --device cuda --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a zoo model name, a converted MODEL.onnx, or `card` with --card FILE")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--weights", metavar="CAFFEMODEL", help="the model's .caffemodel (default: the zoo cache)")
    p.add_argument("--card", metavar="FILE", help="a model card (JSON) giving preprocessing and labels")
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--batch", type=int, default=1, help="images per batch (default 1)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="onnxruntime device (default auto: CUDA when it really works)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _onnx_file(args: argparse.Namespace) -> tuple[str, object]:
    """(the .onnx file to run, the card or None): given, or converted once from the model's net and weights."""
    from zoo.hub import registry
    if args.model.endswith(".onnx"):
        if not os.path.exists(args.model):
            raise CommandError(f"{args.model}: no such file")
        return args.model, registry.load_user_card(args.card) if args.card else None
    from zoo.hub.resolve import resolve
    from zoo.inference.classify import cached_onnx
    model = resolve(None if args.card else args.model, card=args.card, weights=args.weights)
    model.require_weights("running it")
    return cached_onnx(model), model.card


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from zoo.inference.classify import classify
    from zoo.inference.image import find_images
    from zoo.inference.runtime import session
    from zoo.inference.transform import Transform
    images = find_images(args.images)
    path, card = _onnx_file(args)
    sess = session(path, device=args.device, quiet=False)
    if card is not None:
        transform, labels = Transform.from_card(card), card.label_names()
    else:
        c, h, w = (int(d) for d in sess.get_inputs()[0].shape[1:4])
        transform, labels = Transform.plain((h, w), c), []
        note(f"no card: resizing to {h}x{w}, BGR, mean {'/'.join(f'{m:g}' for m in transform.mean)} (pass --card "
             f"for the model's own preprocessing)")
    bar = tqdm(total=len(images), unit="img", disable=len(images) < 2 * max(1, args.batch) or args.json)
    try:
        results, softmaxed = classify(sess, transform, images, labels, args.top, args.batch, bar.update)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['probability']:.4f}  {t['label']}")
    if softmaxed:
        note("the model's output is not a probability: softmax applied")
    return 0
