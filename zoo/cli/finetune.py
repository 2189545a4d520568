"""`zoo finetune`: arguments and run (imports torch only when it runs)."""
from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a zoo model name, a user card (.json) or a deploy .prototxt")
    p.add_argument("--weights", metavar="CAFFEMODEL", help="the weights to start from (default: the zoo cache)")
    p.add_argument("--data", required=True, metavar="SRC", help="training data: image folder, list file, LMDB or .npz")
    p.add_argument("--val", metavar="SRC", help="validation data (default: every 5th item of --data, seeded)")
    p.add_argument("--num-classes", type=int, required=True, metavar="K", help="the number of classes")
    p.add_argument("--head", metavar="LAYER", help="the layer to replace (default: the last InnerProduct)")
    p.add_argument("--head-name", metavar="NAME", help="the new head's name (default: <head>_ft)")
    p.add_argument("--freeze-until", metavar="LAYER",
                   help="freeze this layer (or every LAYER/... layer) and everything before it")
    p.add_argument("--head-lr-mult", type=float, default=10.0, metavar="M",
                   help="the head's lr_mult (its bias gets 2x; default 10)")
    p.add_argument("--base-lr", type=float, metavar="LR", help="base learning rate (default 0.001, or the solver's)")
    p.add_argument("--solver", metavar="PROTOTXT", help="a Caffe solver file (its net is ignored; max_iter sets the length)")
    p.add_argument("--epochs", type=int, metavar="N", help="passes over the training data (default 10)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="images per batch (default 32)")
    p.add_argument("--input-channels", type=int, metavar="C", help="input channels of the new net (with --cross-modality)")
    p.add_argument("--cross-modality", action="store_true",
                   help="adapt the first convolution to --input-channels by averaging its RGB weights")
    p.add_argument("--cache-features", action="store_true",
                   help="compute the frozen part once per image (centre crops, no mirroring in training)")
    p.add_argument("--frozen-runtime", choices=("auto", "onnxruntime", "torch"), default="auto",
                   help="what runs the frozen part (auto: onnxruntime on CPU, torch on CUDA)")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="iterations between checkpoints (default: half an epoch)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (default): CUDA when available, else CPU")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT from its last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the order, the augmentation and the head (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output folder")


def run(args: argparse.Namespace) -> int:
    if args.cross_modality and not args.input_channels:
        raise UsageError("--cross-modality needs --input-channels C (e.g. 20 for 10 stacked flow fields)")
    if args.solver and args.epochs is not None:
        raise UsageError("give --solver (its max_iter sets the length) or --epochs, not both")
    from zoo.training.finetune import finetune

    finetune(args.model, args.data, args.num_classes, output=args.output, weights=args.weights, val=args.val,
             head=args.head, head_name=args.head_name, freeze_until=args.freeze_until,
             head_lr_mult=args.head_lr_mult, base_lr=args.base_lr, solver=args.solver, epochs=args.epochs,
             batch_size=args.batch_size, input_channels=args.input_channels, cross_modality=args.cross_modality,
             cache_features=args.cache_features, frozen_runtime=args.frozen_runtime, device=args.device,
             resume=args.resume, seed=args.seed, checkpoint_every=args.checkpoint_every, progress=not args.quiet,
             echo=_echo)
    return 0


def _echo(line: str) -> None:
    from tqdm import tqdm
    tqdm.write(line)
