"""`zoo run`: classify images with a zoo model or a converted .onnx file, through onnxruntime."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

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


def _onnx_for(args, card) -> str:
    """The .onnx file to run: given, or converted once from the card's net and weights into the cache."""
    if args.model.endswith(".onnx"):
        if not os.path.exists(args.model):
            from zoo.cli import CommandError
            raise CommandError(f"{args.model}: no such file")
        return args.model
    from converters.onnx import build, write_model
    from zoo.cli.convert import load_card_graph
    from zoo.hub.download import cache_dir
    graph, weights = load_card_graph(card, args.weights, batch=1)
    target = cache_dir() / "onnx" / f"{card.name}.onnx"
    if not target.exists() or target.stat().st_mtime < os.path.getmtime(weights):
        target.parent.mkdir(parents=True, exist_ok=True)
        model, arrays = build(graph)
        write_model(model, arrays, target)
    return str(target)


def _card(args):
    from zoo.hub import registry
    if args.card:
        return registry.load_user_card(args.card)
    if args.model.endswith(".onnx"):
        return None
    return registry.get(args.model)


def _probabilities(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    scores = scores.reshape(scores.shape[0], -1).astype(np.float64)
    sums = scores.sum(axis=1)
    if np.all(scores >= 0) and np.allclose(sums, 1.0, atol=1e-3):
        return scores, False
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), True


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from zoo.inference.transform import Transform, batches, find_images
    from zoo.inference.runtime import session
    card = _card(args)
    images = find_images(args.images)
    sess = session(_onnx_for(args, card), device=args.device, quiet=False)
    inp = sess.get_inputs()[0]
    if card is not None:
        transform = Transform.from_card(card)
        labels = card.label_names()
    else:
        from zoo.cli import note
        c, h, w = (int(d) for d in inp.shape[1:4])
        transform = Transform(size=(h, w), channels=c, mean=np.array([104.0, 117.0, 123.0], np.float32))
        labels = []
        note(f"no card: resizing to {h}x{w}, BGR, mean 104/117/123 (pass --card for the model's own preprocessing)")
    results = []
    softmaxed = False
    bar = tqdm(total=len(images), unit="img", disable=len(images) < 2 * max(1, args.batch) or args.json)
    for group in batches(images, max(1, args.batch)):
        x = np.stack([transform(p) for p in group])
        out = sess.run(None, {inp.name: x})[0]
        probs, applied = _probabilities(out)
        softmaxed |= applied
        for path, p in zip(group, probs):
            top = np.argsort(-p)[:args.top]
            results.append({"image": str(path), "top": [
                {"class": int(k), "label": labels[k] if k < len(labels) else str(k), "probability": float(p[k])}
                for k in top]})
        bar.update(len(group))
    bar.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['probability']:.4f}  {t['label']}")
    if softmaxed:
        from zoo.cli import note
        note("the model's output is not a probability: softmax applied")
    return 0
