"""`zoo finetune`: arguments and run (imports torch only when it runs)."""
from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli.common import UsageError
from zoo.training.distributed import add_nproc, launched_elsewhere

HELP = "retrain a model's head (and what is not frozen) on new classes, the Caffe way"
EXAMPLES = """\
examples:
  zoo finetune bvlc_googlenet --data photos/ --num-classes 5 --freeze-until inception_4e -o flowers/
  zoo finetune deploy.prototxt --weights model.caffemodel --data train.txt --val val.txt \\
            --num-classes 20 --epochs 5 --batch-size 32 -o out/
  zoo finetune bvlc_reference_caffenet --data train_lmdb --num-classes 20 --solver solver.prototxt -o out/
  zoo finetune bvlc_googlenet --data flow.npz --num-classes 101 --input-channels 20 --cross-modality -o temporal/
  zoo finetune bvlc_googlenet --data photos/ --num-classes 5 -o flowers/ --resume    # after an interruption
  torchrun --nproc-per-node 2 -m zoo finetune bvlc_googlenet --data photos/ --num-classes 5 -o flowers/

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
    add_nproc(p)


def run(args: argparse.Namespace) -> int:
    if args.cross_modality and not args.input_channels:
        raise UsageError("--cross-modality needs --input-channels C (e.g. 20 for 10 stacked flow fields)")
    if args.solver and args.epochs is not None:
        raise UsageError("give --solver (its max_iter sets the length) or --epochs, not both")
    if launched_elsewhere(args):
        return 0
    import dataclasses

    from zoo.training.finetune import FinetuneOptions, finetune

    names = {f.name for f in dataclasses.fields(FinetuneOptions)} - {"progress"}
    options = FinetuneOptions(progress=not args.quiet, **{k: v for k, v in vars(args).items() if k in names})
    finetune(args.model, args.data, args.num_classes, options, echo=_echo)
    return 0


def _echo(line: str) -> None:
    from tqdm import tqdm
    tqdm.write(line)
