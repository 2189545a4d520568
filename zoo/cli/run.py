"""`zoo run`: classify images, or find the objects or classes of their pixels, with a zoo model or a
converted .onnx file, through onnxruntime."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from zoo.cli.common import CommandError, note

if TYPE_CHECKING:
    from zoo.inference.sampling import Sampler

HELP = ("classify images, or detect objects / segment them, with a zoo model or a converted .onnx through "
        "onnxruntime (CUDA or CPU)")
EXAMPLES = """\
examples:
  zoo run bvlc_googlenet cat.jpg dog.jpg
  zoo run bvlc_googlenet --weights bvlc_googlenet.caffemodel photos/ --batch 16 --top 3
  zoo run out/GoogleNet.onnx cat.jpg --card my_card.json
  zoo run bvlc_alexnet cat.jpg --device cuda --json
  zoo run yufacedetectnet_v1 people.jpg --threshold 0.6 --draw faces.png
  zoo run faster_rcnn_vgg16 street.jpg --weights VGG16_faster_rcnn_final.caffemodel --draw boxes.png
  zoo run segnet.onnx street.png --card segnet.json --draw street_classes.png
  zoo run bayesian_segnet_camvid street.png --samples 8 --json
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
    p.add_argument("--threshold", type=float, default=None,
                   help="detection nets: the lowest confidence of a box shown (default 0.5; Faster R-CNN 0.8, "
                        "as its publisher's demo)")
    p.add_argument("--draw", metavar="OUT", type=Path,
                   help="detection and segmentation nets: write the image with the boxes drawn, or the class "
                        "mask blended over it, to OUT (.png/.jpg; a folder of OUT/NAME.png for several images)")
    p.add_argument("--samples", metavar="N", type=int, default=None,
                   help="nets that sample at test (Monte Carlo dropout, e.g. bayesian_segnet_camvid): average the "
                        "class probabilities of N stochastic passes per image (batches of copies, 16 at most a run) "
                        "and give their variance as the uncertainty in --json (default: the batch of the net's "
                        "prototxt, the number of samples its publisher's script takes, 4 for Bayesian SegNet; an "
                        ".onnx file's fixed batch, else 1); ignored with a note on other nets")


def _resolve(args: argparse.Namespace):
    """The zoo model, user card or prototxt named, with its weights."""
    from zoo.hub.resolve import resolve
    model = resolve(None if args.card else args.model, card=args.card, weights=args.weights)
    model.require_weights("running it")
    return model


def run(args: argparse.Namespace) -> int:
    from zoo.hub import registry
    from zoo.inference.classify import cached_onnx, classify
    from zoo.inference.image import find_images
    from zoo.inference.runtime import session
    from zoo.inference.transform import Transform
    if args.samples is not None and args.samples < 1:
        raise CommandError(f"--samples must be 1 or more (the stochastic passes averaged per image), "
                           f"not {args.samples}")
    images = find_images(args.images)
    if args.model.endswith(".onnx"):
        if not os.path.exists(args.model):
            raise CommandError(f"{args.model}: no such file")
        path, card = args.model, registry.load_user_card(args.card) if args.card else None
    else:
        from zoo.inference.rcnn import region_feed
        model = _resolve(args)
        feed = region_feed(model)
        if feed is not None:  # Faster R-CNN: its own input (im_info) and decoding
            return _regions(args, model, feed, images)
        samples, scores = _monte_carlo(args, model)
        path, card = cached_onnx(model, outputs=[scores] if scores else ()), model.card
    sess = session(path, device=args.device, quiet=False)
    if args.model.endswith(".onnx"):
        samples, scores = _onnx_monte_carlo(args, path, sess), None
    if len(sess.get_inputs()) > 1:
        names = ", ".join(i.name for i in sess.get_inputs())
        raise CommandError(f"{path}: this net has {len(sess.get_inputs())} inputs ({names}) and zoo run feeds one "
                           f"image; feed them yourself (zoo.load gives the net), as its publisher's script does")
    if card is not None:
        transform, labels = Transform.from_card(card), card.label_names()
    else:
        c, h, w = (int(d) for d in sess.get_inputs()[0].shape[1:4])
        transform, labels = Transform.plain((h, w), c), []
        note(f"no card: resizing to {h}x{w}, BGR, mean {'/'.join(f'{m:g}' for m in transform.mean)} (pass --card "
             f"for the model's own preprocessing)")
    from zoo.inference.scene import output_kind
    task = card.task if card is not None else None  # a card says; else the output's shape
    kind = output_kind(task, sess.get_outputs()[0].shape if task is None else ())
    if kind == "detection" and sess.get_outputs()[0].shape[-1] != 7:
        raise CommandError(f"{path}: this detector's outputs are raw per-prior scores and boxes, with no "
                           f"DetectionOutput layer to decode them; decode them as its publisher's script does")
    sampler = _sampler(args, sess, samples, scores, kind)
    if kind != "classification":
        return _scene(args, sess, transform, images, labels, kind, sampler)
    if args.draw is not None:
        raise CommandError(f"{path}: --draw shows boxes or class masks, and this net's output is class scores")
    with _progress(args, images) as bar:
        results, softmaxed = classify(sess, transform, images, labels, args.top, args.batch, bar.update, sampler)
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


def _monte_carlo(args: argparse.Namespace, model) -> tuple[Optional[int], Optional[str]]:
    """(the passes to average, or None for a net that does not sample at test; the value holding the class
    scores when the net's output is an ArgMax's class indices, else None)."""
    from converters import random_layers
    from zoo.inference.sampling import net_batch, scores_output
    graph = model.graph(weights=False)
    if not random_layers(graph):
        return _deterministic(args), None
    outputs = model.card.outputs if model.card is not None and model.card.outputs else ()
    try:
        output = graph.final_value(outputs[0]) if outputs else graph.outputs[0]
    except KeyError:  # a card naming a blob the net lacks: the session's first output is read
        output = graph.outputs[0]
    return args.samples or net_batch(graph), scores_output(graph, output)


def _onnx_monte_carlo(args: argparse.Namespace, path: str, sess) -> Optional[int]:
    """The passes to average for a converted .onnx file (None when it has no random operator)."""
    from zoo.inference.sampling import onnx_samples_at_test
    if not onnx_samples_at_test(path):
        return _deterministic(args)
    batch = sess.get_inputs()[0].shape[0]
    return args.samples or (batch if isinstance(batch, int) and batch > 0 else 1)


def _deterministic(args: argparse.Namespace) -> None:
    """None (no sampling), with a note when --samples asked for several passes."""
    if args.samples is not None and args.samples > 1:
        note(f"--samples applies only to nets that sample at test (Monte Carlo dropout); this net gives the same "
             f"output every pass: --samples {args.samples} ignored")
    return None


def _sampler(args: argparse.Namespace, sess, samples: Optional[int], scores: Optional[str],
             kind: str) -> Optional[Sampler]:
    """The Monte Carlo sampler of a net that samples at test (None otherwise), said on every run."""
    from zoo.inference.sampling import Sampler
    if samples is None:
        return None
    if kind == "detection":
        note("this net samples at test (Monte Carlo dropout): the boxes are one random pass (zoo run averages "
             "class probabilities, not boxes; zoo.load gives the net to do so)")
        return None
    if args.batch != 1:
        note(f"--batch ignored: each image runs as its {samples} Monte Carlo samples")
    if samples == 1:
        note("this net samples at test (Monte Carlo dropout): the results are one random pass; pass --samples N "
             "to average N, as its publisher's script does")
    else:
        note(f"this net samples at test (Monte Carlo dropout): each image's class probabilities are the mean of "
             f"{samples} stochastic passes, as its publisher's script does; --json gives their variance as the "
             f"uncertainty")
    return Sampler(sess, samples, scores or sess.get_outputs()[0].name)


def _progress(args: argparse.Namespace, images: list):
    from tqdm import tqdm
    return tqdm(total=len(images), unit="img", disable=len(images) < 2 * max(1, args.batch) or args.json)


def _scene(args: argparse.Namespace, sess, transform, images: list, labels: list, kind: str,
           sampler: Optional[Sampler] = None) -> int:
    """A detection or segmentation net: boxes above the threshold, or each class's share of the pixels."""
    from zoo.inference.scene import analyse
    threshold = 0.5 if args.threshold is None else args.threshold
    with _progress(args, images) as bar:
        results, maps = analyse(sess, transform, images, labels, kind, threshold, args.batch, bar.update, sampler)
    return _show(args, results, maps, labels, kind, threshold)


def _regions(args: argparse.Namespace, model, feed, images: list) -> int:
    """A Faster R-CNN net: each image at its own size, its proposals decoded as the publisher's demo does."""
    from zoo.inference.rcnn import CONF_THRESH, detect
    if args.batch != 1:
        note("Faster R-CNN runs one image at a time (its proposal layer takes a batch of one): --batch ignored")
    _deterministic(args)  # py-faster-rcnn's nets do not sample at test
    threshold = CONF_THRESH if args.threshold is None else args.threshold
    labels = model.card.label_names() if model.card is not None else []
    with _progress(args, images) as bar:
        results = detect(model, feed, images, labels, threshold, args.device, bar.update)
    return _show(args, results, [None] * len(results), labels, "detection", threshold)


def _show(args: argparse.Namespace, results: list, maps: list, labels: list, kind: str, threshold: float) -> int:
    """Draw (--draw), then print the results: JSON, or a line per box or class."""
    from zoo.inference import overlay
    if args.draw is not None:
        num_classes = max(len(labels), 1 + max((int(m.max()) for m in maps if m is not None), default=0))
        images = [Path(r["image"]) for r in results]
        for result, classes, out in zip(results, maps, overlay.drawing_paths(args.draw, images)):
            if classes is None:
                overlay.draw_boxes(Path(result["image"]), result["detections"], out)
            else:
                overlay.blend_mask(Path(result["image"]), classes, num_classes, out)
            if not args.json:
                note(f"wrote {out}")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['image']} ({r['size'][0]}x{r['size'][1]})")
        if kind == "detection":
            for d in r["detections"]:
                x0, y0, x1, y1 = d["box"]
                print(f"  {d['confidence']:.4f}  {d['label']}  [{x0:g}, {y0:g}, {x1:g}, {y1:g}]")
            if not r["detections"]:
                print(f"  nothing at or above {threshold:g}")
        else:
            for c in r["classes"]:
                print(f"  {100 * c['share']:6.2f}%  {c['label']}")
    return 0
