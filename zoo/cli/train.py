"""`zoo train`: arguments and run (imports torch only when it runs)."""
from __future__ import annotations

import argparse

from zoo.cli.common import UsageError
from zoo.training.distributed import add_nproc, launched_elsewhere

HELP = "train a net with its Caffe solver, iteration for iteration as caffe train does"
EXAMPLES = """\
examples:
  zoo train --solver solver.prototxt --weights bvlc_reference_caffenet.caffemodel
  zoo train --solver solver.prototxt --snapshot snapshots/net_iter_5000.solverstate
  zoo train --solver solver.prototxt --weights init.caffemodel --feed batches.npz \\
            --log-json log.json --output final.caffemodel --device cpu
  zoo train --solver solver.prototxt --nproc 2                  # 2 processes on this machine
  torchrun --nproc-per-node 4 -m zoo train --solver solver.prototxt --device cuda

Paths in the solver (net, snapshot_prefix, data sources) are relative to the current directory, as
in Caffe. --feed is an .npz with <blob>_<i> for every net input and iteration i (<blob>_<i>_<k> for
the k-th of iter_size passes; test_<blob>_<j> for TEST batches); without it, the net's Data (LMDB)
and ImageData layers are read.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", required=True, metavar="PROTOTXT", help="the solver .prototxt")
    p.add_argument("--weights", metavar="CAFFEMODEL",
                   help="start from these weights (copied by layer name; comma-separated for several)")
    p.add_argument("--snapshot", metavar="SOLVERSTATE", help="resume from a .solverstate (ours or Caffe's)")
    p.add_argument("--feed", metavar="NPZ", help="the batches (an .npz), instead of the net's data layers")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (default): CUDA when available, else CPU")
    p.add_argument("--log-json", "--log", dest="log", metavar="JSON",
                   help="write [{iter, loss, lr}, ...] for every iteration to this file")
    p.add_argument("--output", metavar="CAFFEMODEL", help="write the final weights to this .caffemodel")
    add_nproc(p)


def run(args: argparse.Namespace) -> int:
    if args.weights and args.snapshot:
        raise UsageError("give --weights to finetune or --snapshot to resume, not both (as caffe train)")
    if launched_elsewhere(args):
        return 0
    from zoo.training.train import train

    train(args.solver, weights=args.weights, snapshot=args.snapshot, feed=args.feed, device=args.device,
          log=args.log, output=args.output, echo=lambda line: print(line, flush=True))
    return 0
