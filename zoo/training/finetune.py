"""`zoo finetune`: a zoo model (or any deploy .prototxt + .caffemodel) retrained on a new set of classes,
the Caffe way (models/finetune_flickr_style), with the frozen part of the net run once, not trained.

The recipe: the head (the last InnerProduct, or ``head``) is renamed (``<head>_ft``) so that the old
weights never load into it, gets ``num_classes`` outputs and its fillers' values, and learns at
``head_lr_mult`` (weights) and twice that (bias); the other layers keep their own ``param`` specs (1/2
when they have none). ``freeze_until`` (a layer name or a group prefix such as ``inception_4e``) freezes
that layer and everything it depends on: lr_mult 0, BatchNorm on its stored statistics, weights
bit-identical in every output. Caffe's SGD (``zoo.training.solver.CaffeSolver``) with the step policy, or a
solver file, drives a SoftmaxWithLoss + Accuracy put on the logits.

The net is cut in two at the frozen part's boundary blobs. The frozen part runs without autograd, in
onnxruntime on a CPU (measured on googlenet to inception_4e, batch 8, 2 threads: 0.23-0.25 s per batch
against 0.50-0.53 s for torch under no_grad) and in torch on a GPU (not measured: torch avoids a host
round trip there); parameter-free layers right after it
(pooling, ReLU, concat) are computed with it. Its outputs are computed once per item and cached (in
OUT/cache) when training inputs do not vary between epochs, or with ``cache_features`` (the frozen part
then sees centre crops without mirroring during training), so later epochs cost only the trainable part.

Everything random derives from (seed, epoch, iteration): the epoch's order, each batch's crops and
flips, dropout. A run killed at any point resumes (``resume``) from its last checkpoint and ends with
the same weights as a run never interrupted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from prototxt import Graph, build_graph, load_solver, save_net, write_caffemodel
from prototxt.fileio import atomic_write
from zoo.hub.resolve import Model, resolve
from zoo.inference.transform import Transform
from zoo.training import distributed
from zoo.training.sources import Source, Subset, check_labels, open_source, split
from zoo.training.surgery import Cut, FinetuneError, FrozenPart, cut, operate, trainable_net

Echo = Callable[[str], None]
UINT32_MAX = (1 << 32) - 1
CHECKPOINT = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


@dataclass
class FinetuneResult:
    output: Path
    prototxt: Path              # the deploy net with the new head
    caffemodel: Path            # its weights after the last iteration
    best_caffemodel: Path       # the weights of the epoch with the best validation accuracy
    onnx: Path
    pytorch: Path               # a folder: model.py + weights.pt
    metrics_path: Path
    plot: Path
    metrics: list[dict]         # per epoch: train/val loss and accuracy, images/s, lr
    best: dict
    iterations: int
    frozen: list[str]           # frozen layers (lr_mult 0)
    trainable: list[str]        # the layers the solver trains
    boundary: list[str]         # the blobs the frozen part hands over
    frozen_runtime: Optional[str]
    cached: bool                # whether training reused cached frozen-part outputs


# -- data ----------------------------------------------------------------------------------------

class Loader:
    """Net inputs for items of a source: decoded and resized once (kept while they fit a budget), then
    cropped, mirrored and mean-subtracted for each use."""

    def __init__(self, source: Source, transform: Transform, budget: int = 1 << 30) -> None:
        self.source, self.transform, self.budget = source, transform, budget
        self.kept: dict[int, np.ndarray] = {}
        self.used = 0

    def prepared(self, i: int) -> np.ndarray:
        image = self.kept.get(i)
        if image is None:
            image = self.transform.prepare(self.source.image(i), self.source.where(i))
            if self.used + image.nbytes <= self.budget:
                self.kept[i] = image
                self.used += image.nbytes
        return image

    def batch(self, indices: Sequence[int], train: bool, rng: Optional[np.random.Generator]) -> np.ndarray:
        rng = rng if rng is not None else np.random.default_rng(0)
        return np.stack([self.transform(self.prepared(i), train, rng, self.source.where(i)) for i in indices])

    def labels(self, indices: Sequence[int]) -> np.ndarray:
        return self.source.labels[np.asarray(indices, dtype=np.int64)].astype(np.float32)


def _features(run: "_Run", loader: Loader, split: str, label: str) -> list[np.ndarray]:
    """The frozen part's outputs for every item (centre crops, no mirroring), in index order, batch by
    batch (the same batches every run: the numbers do not depend on where a run was resumed).
    Kept in OUT/cache/<split>-<key>-<k>.npy; a complete set found there is reused."""
    n = len(loader.source)
    path = run.out / "cache" / f"{split}-{_cache_key(run, loader)}"
    files = [path.with_name(f"{path.name}-{k}.npy") for k in range(len(run.frozen.passthrough))]
    if all(f.is_file() for f in files):
        return [np.load(f, mmap_mode="r") for f in files]
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = None
    partial = [f.with_name(f.name + ".partial") for f in files]
    bar = _bar(n, f"frozen part ({label})", "img", run.progress)
    try:
        for start in range(0, n, run.batch):
            idx = range(start, min(start + run.batch, n))
            outs = run.frozen(loader.batch(idx, False, None))
            if arrays is None:
                arrays = [np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, *o.shape[1:]))
                          for p, o in zip(partial, outs)]
            for a, o in zip(arrays, outs):
                a[start:start + len(idx)] = o
            bar.update(len(idx))
    finally:
        bar.close()
    for a, p, f in zip(arrays, partial, files):
        a.flush()
        del a
        os.replace(p, f)
    return [np.load(f, mmap_mode="r") for f in files]


def _prefetch(jobs: Iterator[Callable[[], object]]) -> Iterator[object]:
    """Run each job one step ahead in a thread (decoding and resizing release the GIL in part)."""
    with ThreadPoolExecutor(1) as pool:
        pending = None
        for job in jobs:
            submitted = pool.submit(job)
            if pending is not None:
                yield pending.result()
            pending = submitted
        if pending is not None:
            yield pending.result()


def _bar(total: int, desc: str, unit: str, progress: bool, initial: int = 0):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, file=sys.stderr, leave=True,
                dynamic_ncols=True, initial=initial)


# -- checkpoints and outputs ---------------------------------------------------------------------

def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    from prototxt.fileio import atomic_open
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())  # a checkpoint must survive a kill -9 right after it is written


def _write_json(path: Path, data) -> None:
    atomic_write(path, (json.dumps(data, indent=1) + "\n").encode())


def plot_curves(metrics: Sequence[dict], path: Path) -> None:
    """Loss and accuracy per epoch (training and validation), drawn with Pillow."""
    from PIL import Image, ImageDraw
    width, height, pad = 960, 400, 48
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    panels = [("loss", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc"))]
    colours = {"train": (31, 119, 180), "val": (214, 39, 40)}
    epochs = [m["epoch"] for m in metrics]
    for p, (title, keys) in enumerate(panels):
        x0, x1 = p * width // 2 + pad, (p + 1) * width // 2 - pad // 2
        y0, y1 = pad, height - pad
        values = [m[k] for m in metrics for k in keys if m.get(k) is not None]
        lo, hi = (0.0, 1.0) if title == "accuracy" else (0.0, max(values or [1.0]) * 1.05 or 1.0)
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, y0 - 18), title, fill="black")
        for frac in (0.0, 0.5, 1.0):
            y = y1 - frac * (y1 - y0)
            draw.text((x0 - 40, y - 6), f"{lo + frac * (hi - lo):.3g}", fill="black")
        last = max(epochs or [1])
        first = min(epochs or [1])
        span = max(last - first, 1)
        for e in sorted(set(epochs)):
            x = x0 + (e - first) / span * (x1 - x0)
            draw.text((x - 4, y1 + 6), str(e), fill="black")
        draw.text(((x0 + x1) // 2 - 16, y1 + 22), "epoch", fill="black")
        for k in keys:
            kind = k.split("_")[0]
            pts = [(x0 + (m["epoch"] - first) / span * (x1 - x0), y1 - (m[k] - lo) / ((hi - lo) or 1) * (y1 - y0))
                   for m in metrics if m.get(k) is not None]
            if len(pts) > 1:
                draw.line(pts, fill=colours[kind], width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colours[kind])
        for i, kind in enumerate(("train", "val")):
            draw.line([x1 - 90, y0 + 12 + 14 * i, x1 - 70, y0 + 12 + 14 * i], fill=colours[kind], width=2)
            draw.text((x1 - 64, y0 + 6 + 14 * i), kind, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    from prototxt.fileio import atomic_open
    with atomic_open(path) as f:
        img.save(f, format="PNG")


# -- the run -------------------------------------------------------------------------------------

@dataclass
class _Epoch:
    """Sums over the current epoch's iterations so far (kept in checkpoints)."""
    loss: float = 0.0
    hits: float = 0.0
    count: int = 0
    seconds: float = 0.0
    lr: float = 0.0


@dataclass
class _Run:
    graph: Graph                  # the deploy graph
    c: Cut
    module: object                # the trainable part (torch.fx.GraphModule)
    names: dict[str, str]         # boundary value -> trainable net input
    label: str
    loss: str
    accuracy: str
    frozen: Optional[FrozenPart]
    device: object
    seed: int
    batch: int
    iter_size: int
    per_epoch: int
    max_iter: int
    out: Path
    progress: bool
    say: Echo
    metrics: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    epoch: _Epoch = field(default_factory=_Epoch)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclass
class FinetuneOptions:
    """Everything `zoo finetune` takes besides the model, the data and the class count (its options)."""
    output: os.PathLike | str                      # the output folder
    weights: Optional[os.PathLike | str] = None    # default: the zoo cache for a model name
    val: Optional[os.PathLike | str] = None        # default: every 5th item of the data, seeded
    head: Optional[str] = None                     # the layer to replace (default: the last InnerProduct)
    head_name: Optional[str] = None                # default: <head>_ft
    freeze_until: Optional[str] = None             # this layer (or group) and everything before it
    head_lr_mult: float = 10.0                     # the bias gets twice that
    base_lr: Optional[float] = None                # default 0.001, or the solver's
    solver: Optional[os.PathLike | str] = None     # a Caffe solver file; its max_iter sets the length
    epochs: Optional[int] = None                   # default 10 (without a solver)
    batch_size: int = 32
    input_channels: Optional[int] = None           # with cross_modality
    cross_modality: bool = False
    cache_features: bool = False
    frozen_runtime: str = "auto"                   # auto, onnxruntime or torch
    device: str = "auto"                           # auto, cuda or cpu
    resume: bool = False
    seed: int = 0
    checkpoint_every: Optional[int] = None         # iterations; default half an epoch
    progress: bool = True                          # progress bars


def finetune(model: str, data: os.PathLike | str, num_classes: int, options: Optional[FinetuneOptions] = None, *,
             echo: Optional[Echo] = None, **fields) -> FinetuneResult:
    """Finetune ``model`` (a zoo name, a user card .json or a deploy .prototxt) on ``data`` (an image
    folder, a list file, an LMDB or an .npz) for ``num_classes`` classes; everything lands in ``output``.
    ``options`` (or its fields as keywords, which also override a given ``options``) are
    ``FinetuneOptions``; ``echo`` receives the progress lines. See the module docstring, and `zoo
    finetune --help` for each option."""
    o = dataclasses.replace(options, **fields) if options is not None else FinetuneOptions(**fields)
    import torch

    from zoo.training.net import exact_float32, pick_device
    dev = distributed.setup(pick_device(o.device))
    say, progress = distributed.main_only(echo), o.progress and distributed.is_main()
    if not isinstance(o.seed, int) or o.seed < 0:
        raise FinetuneError(f"--seed must be a non-negative integer (got {o.seed!r})")
    if o.input_channels is not None and o.input_channels < 1:
        raise FinetuneError(f"--input-channels must be positive (got {o.input_channels})")
    if not 2 <= num_classes <= UINT32_MAX:
        raise FinetuneError(f"--num-classes {num_classes}: must be at least 2 and at most {UINT32_MAX} (the head's "
                            f"num_output is a uint32)")
    if o.checkpoint_every is not None and o.checkpoint_every < 1:
        raise FinetuneError(f"--checkpoint-every must be positive (got {o.checkpoint_every})")
    if o.batch_size < 1:
        raise FinetuneError(f"--batch-size must be positive (got {o.batch_size})")
    if o.solver is not None and o.epochs is not None:
        raise FinetuneError("give --solver (its max_iter sets the length) or --epochs, not both")
    out = Path(o.output)
    resume = o.resume or (distributed.restarted() and (out / CHECKPOINT).is_file())  # torchrun restarted us
    if (out / CHECKPOINT).is_file() and not resume:
        raise FinetuneError(f"{out} already holds a finetuning run ({CHECKPOINT}); add --resume to continue it, "
                            f"or choose another output folder")
    if o.resume and not (out / CHECKPOINT).is_file():
        raise FinetuneError(f"--resume: {out} has no checkpoint ({CHECKPOINT}) to continue from; run without --resume")
    if o.frozen_runtime not in ("auto", "onnxruntime", "torch"):
        raise FinetuneError(f"frozen runtime must be auto, onnxruntime or torch, not {o.frozen_runtime!r}")

    m = resolve(os.fspath(model), weights=o.weights)
    surgery = operate(m, num_classes, head=o.head, head_name=o.head_name, head_lr_mult=o.head_lr_mult,
                      input_channels=o.input_channels, cross_modality=o.cross_modality, seed=o.seed, say=say)
    graph = surgery.graph
    c = cut(graph, surgery.logits, surgery.head, o.freeze_until, surgery.replaced)

    transform = input_transform(m, graph)
    train_src, val_src = _sources(data, o.val, transform.color, o.seed, num_classes)
    runtime = None
    if c.computed:
        runtime = o.frozen_runtime if o.frozen_runtime != "auto" else ("torch" if dev.type == "cuda" else "onnxruntime")
    cached = bool(c.computed) and (o.cache_features or not transform.random)
    train_transform = dataclasses.replace(transform, mirror=False) if cached else transform

    n_train = distributed.shard_size(len(train_src))  # each process's share of an epoch
    cfg = _solver_config(o.solver, o.base_lr, o.epochs, o.batch_size, n_train)
    per_epoch = math.ceil(n_train / (o.batch_size * cfg.iter_size))
    fingerprint = {
        "model": m.source, "weights": _file_id(m.weights), "data": train_src.identity(),
        "val": val_src.identity(), "num_classes": num_classes, "head": surgery.head, "freeze_until": o.freeze_until,
        "head_lr_mult": o.head_lr_mult, "solver": _solver_summary(cfg), "batch_size": o.batch_size,
        "input_channels": transform.channels, "cross_modality": o.cross_modality, "cache_features": cached,
        "transform": train_transform.describe(), "seed": o.seed,
        **({"processes": distributed.world_size()} if distributed.world_size() > 1 else {}),  # the epoch's split
    }
    n_epochs = math.ceil(cfg.max_iter / per_epoch)
    say(f"data: {len(train_src)} training and {len(val_src)} validation items, {num_classes} classes; "
        f"{transform.describe()}" + ("; cached: centre crops without mirroring in training too"
                                     if cached and transform.random else ""))
    say(f"head: '{surgery.head}' ({num_classes} outputs, lr_mult {o.head_lr_mult:g}/{2 * o.head_lr_mult:g}); "
        f"trainable: {len(c.trainable)} layers; frozen: {len(c.frozen)} layers"
        + (f" (+{len(c.computed) - len([n for n in c.computed if n in c.frozen])} parameter-free ones after them), "
           f"run by {runtime}, outputs {'cached' if cached else 'recomputed every batch (random crops/mirroring)'}"
           if c.computed else ""))
    say(f"{n_epochs} epochs x {per_epoch} iterations = {cfg.max_iter} iterations of batch {o.batch_size}"
        + (f" x iter_size {cfg.iter_size}" if cfg.iter_size > 1 else "") + f", {cfg.type} base_lr {cfg.base_lr:g} "
        f"{cfg.lr_policy}")

    out.mkdir(parents=True, exist_ok=True)
    saved_rng = torch.random.get_rng_state()
    try:
        with exact_float32():
            run, solver_ = _setup(graph, c, surgery, runtime, dev, o.seed, o.batch_size, cfg, per_epoch, out,
                                  progress, say)
            loaders = (_loader(distributed_share(train_src), train_transform),
                       _loader(val_src, dataclasses.replace(transform, mirror=False)))
            if resume:
                _restore(run, solver_, fingerprint)
            every = o.checkpoint_every or max(1, per_epoch // 2)
            _train(run, solver_, loaders, cached, every, fingerprint)
            result = _export(run, solver_, train_src, cached) if distributed.is_main() else None
            distributed.barrier()  # every process returns once process 0 has written the outputs
            return result
    finally:
        torch.random.set_rng_state(saved_rng)
        train_src.close()
        val_src.close()


def input_transform(model: Model, graph: Graph) -> Transform:
    """The card's transform for the (new) net's input, what training and validation apply (`zoo run`
    builds the same from the card); the zoo defaults for a bare prototxt or another channel count."""
    shape = graph.values[graph.inputs[0]].shape
    return Transform.from_card(model.card, tuple(shape[2:]), shape[1])


def _sources(data, val, color, seed: int, num_classes: int) -> tuple[Source, Source]:
    source = open_source(data, color)
    check_labels(source, num_classes)
    if val is None:
        return split(source, seed)
    val_src = open_source(val, color, "--val")
    check_labels(val_src, num_classes)
    return source, val_src


def distributed_share(source: Source) -> Source:
    """The items this process trains on: all of them, or on N processes those with index mod N == rank (the
    frozen part then runs, and caches, per process on its own items)."""
    if distributed.world_size() == 1:
        return source
    share = Subset(source, distributed.shard_items(len(source)), f"{source.name} (share {distributed.rank()})")
    share.total = len(source)  # an epoch's order is drawn over all the items, then shared out
    return share


def _loader(source: Source, transform: Transform) -> Loader:
    return Loader(source, transform)


def _file_id(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"


def _solver_config(path, base_lr: Optional[float], epochs: Optional[int], batch: int, n_train: int):
    from zoo.training.solver import SolverConfig
    if path is not None:
        proto = load_solver(path)
        for name in ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param", "test_iter",
                     "test_state", "train_state", "test_interval"):
            proto.ClearField(name)  # finetune builds the net; validation runs every epoch
        cfg = SolverConfig.from_proto(proto)
        if cfg.max_iter <= 0:
            raise FinetuneError(f"{path}: max_iter must be positive (it sets how long finetuning runs)")
        return dataclasses.replace(cfg, base_lr=base_lr) if base_lr is not None else cfg
    per_epoch = math.ceil(n_train / batch)
    max_iter = per_epoch * (epochs if epochs is not None else 10)
    if max_iter <= 0:
        raise FinetuneError(f"--epochs must be positive (got {epochs})")
    return SolverConfig(base_lr=0.001 if base_lr is None else base_lr, lr_policy="step", gamma=0.1,
                        stepsize=max(1, math.ceil(max_iter / 3)), momentum=0.9, weight_decay=5e-4, max_iter=max_iter)


def _solver_summary(cfg) -> dict:
    keys = ("type", "base_lr", "lr_policy", "gamma", "power", "stepsize", "stepvalue", "momentum", "momentum2",
            "weight_decay", "regularization_type", "max_iter", "iter_size", "clip_gradients", "delta", "rms_decay")
    return {k: getattr(cfg, k) for k in keys}


def _setup(graph, c, surgery, runtime, dev, seed, batch, cfg, per_epoch, out, progress, say):
    from converters import to_pytorch
    from zoo.training.solver import CaffeSolver
    from zoo.training.net import Net, learnable_params
    tnet, names, label = trainable_net(graph, c, surgery.logits)
    shapes = {names[v]: (batch, *graph.values[v].shape[1:]) for v in c.boundary}
    tgraph = build_graph(tnet, phase="train", input_shapes={**shapes, label: (batch,)},
                         source=f"{graph.source} (trainable part)")
    by_name = {l.name: l for l in graph.layers}
    for layer in tgraph.layers:
        if layer.name in by_name and by_name[layer.name].blobs:
            layer.blobs = [np.array(b, dtype=np.float32, copy=True) for b in by_name[layer.name].blobs]
    module = to_pytorch(tgraph, training=True).to(dev)
    loss, acc = tnet.layer[-2].top[0], tnet.layer[-1].top[0]
    params = learnable_params(Net(tgraph, module, None, {loss: 1.0}, tgraph.source))
    solver = CaffeSolver(params, cfg)
    frozen = (FrozenPart(graph, c, surgery.input_blob, runtime, dev, distributed.per_rank(out / "cache"))
              if c.computed else None)
    return _Run(graph, c, module, names, label, loss, acc, frozen, dev, seed, batch, cfg.iter_size, per_epoch,
                cfg.max_iter, out, progress, say), solver


_CHECKPOINT_KEYS = ("config", "module", "solver", "metrics", "best", "epoch")


def _read_checkpoint(path: Path, device) -> dict:
    """The checkpoint at ``path``, or one line saying what to do when it is not one this tool wrote."""
    import torch
    advice = "start without --resume in another output folder, or delete it to start over"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types (UnpicklingError, RuntimeError, EOFError...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FinetuneError(f"--resume: {path} is not a finetuning checkpoint that can be loaded safely "
                            f"({reason[:200]}); {advice}") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise FinetuneError(f"--resume: {path} lacks {', '.join(missing)} (not a checkpoint of zoo finetune, or "
                            f"a damaged one); {advice}")
    return state


def _restore(run: _Run, solver, fingerprint: dict) -> None:
    state = _read_checkpoint(run.out / CHECKPOINT, run.device)
    changed = [k for k in fingerprint if state["config"].get(k) != fingerprint[k]]
    if changed:
        what = ", ".join(f"{k} ({state['config'].get(k)!r} -> {fingerprint[k]!r})" for k in changed[:3])
        raise FinetuneError(f"--resume: {run.out} was trained with other settings: {what}; run with the same ones "
                            f"or choose another output folder")
    run.module.load_state_dict(state["module"])
    solver.load_state_dict(state["solver"])
    run.metrics, run.best, run.epoch = state["metrics"], state["best"], _Epoch(**state["epoch"])
    run.say(f"resuming at iteration {solver.iter} of {run.max_iter} (epoch {solver.iter // run.per_epoch + 1})")


def _checkpoint(run: _Run, solver, fingerprint: dict) -> None:
    if not distributed.is_main():
        return
    _atomic_torch_save({"format": 1, "config": fingerprint, "iter": solver.iter, "module": run.module.state_dict(),
                        "solver": solver.state_dict(), "metrics": run.metrics, "best": run.best,
                        "epoch": dataclasses.asdict(run.epoch)}, run.out / CHECKPOINT)


def _batches(run: _Run, loaders, features, start: int) -> Iterator[Callable[[], tuple]]:
    """One job per iteration from ``start``: its iter_size passes of (inputs, labels, count)."""
    train = loaders[0]
    n = getattr(train.source, "total", len(train.source))  # all the items, of every process
    order, order_epoch = None, -1
    for it in range(start, run.max_iter):
        epoch, pos = divmod(it, run.per_epoch)
        if epoch != order_epoch:
            order = distributed.shard_order(np.random.default_rng([run.seed, 1, epoch]).permutation(n), n)
            order_epoch = epoch

        def job(it=it, pos=pos, order=order):
            passes = []
            for k in range(run.iter_size):
                first = (pos * run.iter_size + k) * run.batch
                idx = order[first:first + run.batch]
                if not len(idx):
                    break
                labels = train.labels(idx)
                if features is not None:
                    passes.append(([np.asarray(f[idx]) for f in features], labels))
                else:
                    j = distributed.pass_index(k, run.iter_size)
                    passes.append((train.batch(idx, True, np.random.default_rng([run.seed, 2, it, j])), labels))
            return it, passes
        yield job


def _inputs(run: _Run, x, labels):
    import torch
    if run.frozen is not None and not isinstance(x, list):
        x = run.frozen(x)
    elif not isinstance(x, list):
        x = [x]
    tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(run.device) for a in x]
    return tensors + [torch.from_numpy(labels).to(run.device)]


def _train(run: _Run, solver, loaders, cached: bool, every: int, fingerprint: dict) -> None:
    if solver.iter >= run.max_iter:
        return
    features = val_features = None
    if run.frozen is not None and distributed.is_main():  # process 0 alone validates
        val_features = _features(run, loaders[1], "val", "validation set")
    started = time.perf_counter()
    if cached:
        features = _features(run, loaders[0], "train", "training set")
        run.epoch.seconds += time.perf_counter() - started  # epoch 1 pays for the frozen part
    try:
        _iterate(run, solver, loaders, features, val_features, every, fingerprint)
    except KeyboardInterrupt:
        run.say(f"interrupted at iteration {solver.iter}; add --resume to continue from the last checkpoint")
        raise


def _iterate(run: _Run, solver, loaders, features, val_features, every: int, fingerprint: dict) -> None:
    import torch

    from zoo.training.net import check_finite_loss
    n_epochs = math.ceil(run.max_iter / run.per_epoch)
    bar = None
    run.module.train()
    clock = time.perf_counter()
    for it, passes in _prefetch(_batches(run, loaders, features, solver.iter)):
        epoch, pos = divmod(it, run.per_epoch)
        last_in_epoch = min((epoch + 1) * run.per_epoch, run.max_iter)
        if bar is None:
            bar = _bar(last_in_epoch - epoch * run.per_epoch, f"epoch {epoch + 1}/{n_epochs}", "it", run.progress, pos)
        solver.zero_grad()
        sums = [0.0, 0.0, 0]
        for k, (x, labels) in enumerate(passes):
            inputs = _inputs(run, x, labels)
            torch.manual_seed(_seed(run.seed, 3, it, distributed.pass_index(k, run.iter_size)))  # dropout
            out = run.module(*inputs)
            loss = out[run.loss]
            check_finite_loss(loss.item(), it, "zoo finetune")
            loss.backward()
            n = len(labels)
            sums = [sums[0] + float(loss.item()) * n, sums[1] + float(out[run.accuracy].item()) * n, sums[2] + n]
        distributed.average_gradients([g["params"][0] for g in solver.param_groups])
        loss_sum, hits, count = distributed.all_sum(sums)  # the epoch's numbers count every process's images
        run.epoch.loss, run.epoch.hits, run.epoch.count = run.epoch.loss + loss_sum, run.epoch.hits + hits, \
            run.epoch.count + int(count)
        run.epoch.lr = solver.apply_update()
        run.epoch.seconds += time.perf_counter() - clock  # data waits included; validation and checkpoints not
        e = run.epoch
        bar.set_postfix_str(f"iter {solver.iter}/{run.max_iter} loss {e.loss / e.count:.4f} acc {e.hits / e.count:.3f} "
                            f"{e.count / max(e.seconds, 1e-9):.1f} img/s lr {e.lr:.3g}", refresh=False)
        bar.update(1)
        if solver.iter == last_in_epoch:
            bar.close()
            bar = None
            _end_epoch(run, solver, loaders[1], val_features, epoch, fingerprint)
        elif solver.iter % every == 0:
            _checkpoint(run, solver, fingerprint)
        clock = time.perf_counter()
    if bar is not None:
        bar.close()


def _cache_key(run: _Run, loader: Loader) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([loader.source.identity(), loader.transform.describe(), run.c.computed, run.c.boundary,
                         run.batch]).encode())
    for name in run.c.computed:
        for b in run.graph.layer(name).blobs:
            h.update(np.ascontiguousarray(b, dtype=np.float32).tobytes())
    return h.hexdigest()[:12]


def _evaluate(run: _Run, loader: Loader, features) -> tuple[float, float]:
    import torch
    n = len(loader.source)
    loss = hits = 0.0
    run.module.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, run.batch):
                idx = np.arange(start, min(start + run.batch, n))
                x = ([np.array(f[start:start + len(idx)]) for f in features] if features is not None
                     else loader.batch(idx, False, None))
                out = run.module(*_inputs(run, x, loader.labels(idx)))
                loss += float(out[run.loss].item()) * len(idx)
                hits += float(out[run.accuracy].item()) * len(idx)
    finally:
        run.module.train()
    return loss / n, hits / n


def _check_finite_validation(val_loss: float, val_acc: float, epoch: int, it: int) -> None:
    """Stop on a NaN or infinite validation loss (or accuracy), as training stops on its loss: the epoch
    would otherwise be recorded, and a NaN compares false, so the best-epoch choice would go wrong."""
    if not (np.isfinite(val_loss) and np.isfinite(val_acc)):
        raise FinetuneError(f"zoo finetune: the validation loss is {val_loss} (accuracy {val_acc}) after epoch "
                            f"{epoch + 1} (iteration {it}); stopped without recording that epoch or saving it as "
                            f"the best. Look for NaN or inf in the validation data, or lower base_lr")


def _end_epoch(run: _Run, solver, val_loader: Loader, val_features, epoch: int, fingerprint: dict) -> None:
    if not distributed.is_main():
        run.epoch = _Epoch()
        return  # process 0 alone validates and writes
    val_loss, val_acc = _evaluate(run, val_loader, val_features)
    _check_finite_validation(val_loss, val_acc, epoch, solver.iter)
    e = run.epoch
    row = {"epoch": epoch + 1, "iter": solver.iter, "train_loss": e.loss / e.count, "train_acc": e.hits / e.count,
           "val_loss": val_loss, "val_acc": val_acc, "images_per_s": e.count / max(e.seconds, 1e-9), "lr": e.lr}
    run.metrics.append(row)
    run.epoch = _Epoch()
    run.say(f"epoch {row['epoch']} (iter {row['iter']}/{run.max_iter}): train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.3f}, val loss {val_loss:.4f} acc {val_acc:.3f}, "
            f"{row['images_per_s']:.1f} img/s, lr {row['lr']:.3g}")
    best = run.best
    if not best or (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"]):
        run.best = {k: row[k] for k in ("epoch", "iter", "val_acc", "val_loss")}
        _atomic_torch_save({"module": run.module.state_dict(), "best": run.best}, run.out / BEST)
    _checkpoint(run, solver, fingerprint)
    _write_json(run.out / "metrics.json", {"epochs": run.metrics, "best": run.best})
    plot_curves(run.metrics, run.out / "curves.png")


def _trained_blobs(run: _Run, state: dict) -> list[list[np.ndarray]]:
    """Each deploy layer's blobs: the trainable layers' from ``state`` (a state dict of the trainable part),
    the others' as loaded (frozen ones bit for bit)."""
    out = []
    for layer in run.graph.layers:
        keys = run.module.blob_keys.get(layer.name) if layer.name in run.c.trainable else None
        out.append([state[k].detach().to("cpu").float().numpy().copy() for k in keys] if keys else layer.blobs)
    return out


def _export(run: _Run, solver, train_src: Source, cached: bool) -> FinetuneResult:
    import torch

    from converters import export_folder, save_onnx
    out = run.out
    paths = {"prototxt": out / "deploy.prototxt", "caffemodel": out / "finetuned.caffemodel",
             "best_caffemodel": out / "finetuned_best.caffemodel", "onnx": out / "finetuned.onnx",
             "pytorch": out / "finetuned_pytorch", "metrics_path": out / "metrics.json", "plot": out / "curves.png"}
    if (out / BEST).is_file():
        best = torch.load(out / BEST, map_location="cpu", weights_only=True)["module"]
        write_caffemodel(paths["best_caffemodel"], run.graph.name,
                         [(l.proto.SerializeToString(), b) for l, b in zip(run.graph.layers, _trained_blobs(run, best))])
    for layer, blobs in zip(run.graph.layers, _trained_blobs(run, run.module.state_dict())):
        layer.blobs = blobs
    save_net(run.graph, paths["prototxt"], paths["caffemodel"])
    save_onnx(run.graph, paths["onnx"])
    export_folder(run.graph, paths["pytorch"])
    if train_src.classes:
        (out / "labels.txt").write_text("\n".join(train_src.classes) + "\n", encoding="utf-8")
    _write_json(paths["metrics_path"], {"epochs": run.metrics, "best": run.best})
    plot_curves(run.metrics, paths["plot"])
    for key in ("prototxt", "caffemodel", "onnx", "pytorch", "metrics_path", "plot"):
        run.say(f"wrote {paths[key]}")
    return FinetuneResult(out, **paths, metrics=run.metrics, best=run.best, iterations=solver.iter,
                          frozen=run.c.frozen, trainable=run.c.trainable,
                          boundary=[run.graph.values[v].caffe_name for v in run.c.boundary],
                          frozen_runtime=run.frozen.runtime if run.frozen else None, cached=cached)
