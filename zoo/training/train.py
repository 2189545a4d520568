"""`zoo train`: Caffe's `caffe train` on PyTorch, iteration for iteration.

The solver file and its nets are read as Caffe reads them (paths relative to the current
directory), weights are copied by layer name, and every iteration is Caffe's Solver::Step:
zero the diffs; `iter_size` forward/backward passes of the weighted loss sum; the reported loss is
their mean; ApplyUpdate (``zoo.training.solver.CaffeSolver``). Display lines, TEST phases, snapshots
(`<prefix>_iter_N.caffemodel` + `.solverstate` in Caffe's binary formats) and resuming (also from
a `.solverstate` that Caffe wrote) follow Caffe's Solver.

Batches come from an .npz (``feed``: ``<blob>_<i>`` for iteration i, ``<blob>_<i>_<k>`` for its
k-th iter_size pass; ``test_<blob>_<j>`` for the j-th TEST batch) or from the net's own Data (LMDB)
and ImageData layers (``zoo.training.data``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from converters import implementation, registered_types, to_pytorch
from prototxt import (DATA_TYPES, Graph, attach_weights, build_graph, caffe_pb2, fill_missing, load_solver, read_net,
                      upgrade_net, write_caffemodel)
from prototxt.fileio import atomic_write
from zoo.training import distributed
from zoo.training.data import TEST, TRAIN, LayerSource, open_layer_source
from zoo.training.net import (Net, TrainError, check_finite_loss, describe_device, exact_float32, forward, layer_blobs,
                              learnable_params, loss_weights, pick_device, share_trained_layers)
from zoo.training.solver import CaffeSolver, SolverConfig

Echo = Callable[[str], None]


@dataclass
class TrainResult:
    graph: Graph                     # the TRAIN net; its layers' blobs hold the final weights
    module: torch.fx.GraphModule     # the trained module (on `device`)
    solver: CaffeSolver
    trajectory: list[dict]           # per iteration: {iter, loss, lr}
    tests: list[dict] = field(default_factory=list)      # per TEST phase: {iter, net, loss, outputs}
    snapshots: list[str] = field(default_factory=list)   # the .solverstate files written
    device: str = "cpu"


# -- the solver file ---------------------------------------------------------------------------------

def read_solver(path: os.PathLike | str) -> tuple[caffe_pb2.SolverParameter, SolverConfig]:
    """The upgraded SolverParameter (snapshot_prefix defaulted as Caffe does) and its SolverConfig."""
    proto = load_solver(path)
    _default_snapshot_prefix(proto, str(path))
    return proto, SolverConfig.from_proto(proto)


def _default_snapshot_prefix(proto: caffe_pb2.SolverParameter, path: str) -> None:
    # upgrade_proto.cpp UpgradeSnapshotPrefixProperty: no prefix -> the solver file without its
    # extension; a directory -> that directory / the solver file's stem.
    if not proto.HasField("snapshot_prefix"):
        proto.snapshot_prefix = str(Path(path).with_suffix(""))
    elif os.path.isdir(proto.snapshot_prefix):
        proto.snapshot_prefix = os.path.join(proto.snapshot_prefix, Path(path).stem)


@dataclass
class NetSpec:
    net: caffe_pb2.NetParameter      # upgraded
    source: str                      # a file name, or where in the solver the net is written
    stages: list[str]
    level: Optional[int]


def _state(state: Optional[caffe_pb2.NetState]) -> tuple[list[str], Optional[int]]:
    if state is None:
        return [], None
    return list(state.stage), (state.level if state.HasField("level") else None)


def _from_file(path: str) -> tuple[caffe_pb2.NetParameter, str]:
    net, _ = read_net(path)
    return net, path


def _inline(net: caffe_pb2.NetParameter, where: str) -> tuple[caffe_pb2.NetParameter, str]:
    upgraded, _ = upgrade_net(net)
    return upgraded, where


def train_net_spec(proto: caffe_pb2.SolverParameter, solver_path: str) -> NetSpec:
    """Solver::InitTrainNet: exactly one of net_param, net, train_net_param, train_net."""
    if proto.HasField("train_net_param"):
        net, source = _inline(proto.train_net_param, f"{solver_path}: train_net_param")
    elif proto.HasField("train_net"):
        net, source = _from_file(proto.train_net)
    elif proto.HasField("net_param"):
        net, source = _inline(proto.net_param, f"{solver_path}: net_param")
    elif proto.HasField("net"):
        net, source = _from_file(proto.net)
    else:
        raise TrainError(f"{solver_path}: the solver names no train net; set net (a .prototxt path), "
                         f"net_param, train_net or train_net_param")
    stages, level = _state(proto.train_state if proto.HasField("train_state") else None)
    return NetSpec(net, source, stages, level)


def test_net_specs(proto: caffe_pb2.SolverParameter, solver_path: str) -> list[NetSpec]:
    """Solver::InitTestNets: test_net_param, then test_net files, then the generic net once per
    remaining test_iter entry."""
    nets = [_inline(n, f"{solver_path}: test_net_param #{i}") for i, n in enumerate(proto.test_net_param)]
    nets += [_from_file(p) for p in proto.test_net]
    generic = proto.HasField("net_param") or proto.HasField("net")
    if generic:
        extra = len(proto.test_iter) - len(nets)
        for _ in range(max(extra, 0)):
            nets.append(_inline(proto.net_param, f"{solver_path}: net_param") if proto.HasField("net_param")
                        else _from_file(proto.net))
    if len(proto.test_iter) != len(nets) and (nets or proto.test_iter):
        raise TrainError(f"{solver_path}: {len(proto.test_iter)} test_iter values for {len(nets)} test nets; "
                         f"give one test_iter per test net")
    if proto.test_state and len(proto.test_state) != len(nets):
        raise TrainError(f"{solver_path}: {len(proto.test_state)} test_state entries for {len(nets)} test nets")
    specs = []
    for i, (net, source) in enumerate(nets):
        stages, level = _state(proto.test_state[i] if proto.test_state else None)
        specs.append(NetSpec(net, source, stages, level))
    return specs


# -- batches -----------------------------------------------------------------------------------------

class FeedBatches:
    """Batches from an .npz: ``<prefix><blob>_<i>_<k>`` for pass k of iteration i, else ``<prefix><blob>_<i>``."""

    def __init__(self, path: os.PathLike | str, blobs: Sequence[str], prefix: str = "") -> None:
        self.path, self.blobs, self.prefix = str(path), list(blobs), prefix
        try:
            self.npz = np.load(self.path)
        except (OSError, ValueError) as exc:
            raise TrainError(f"{self.path}: cannot read the feed (an .npz of batches): {exc}") from None
        if not hasattr(self.npz, "files"):
            raise TrainError(f"{self.path}: the feed must be an .npz of named arrays, not a single array")
        self.keys = set(self.npz.files)

    def key(self, blob: str, it: int, k: int) -> Optional[str]:
        for key in (f"{self.prefix}{blob}_{it}_{k}", f"{self.prefix}{blob}_{it}"):
            if key in self.keys:
                return key
        return None

    def has(self, it: int, passes: int = 1) -> bool:
        return all(self.key(b, it, k) is not None for b in self.blobs for k in range(passes))

    def check(self, start: int, stop: int, passes: int) -> None:
        for it in range(start, stop):
            for blob in self.blobs:
                for k in range(passes):
                    if self.key(blob, it, k) is None:
                        held = sorted(self.keys)
                        shown = ", ".join(held[:6]) + (" ..." if len(held) > 6 else "")
                        raise TrainError(f"{self.path}: no batch for net input '{blob}' at iteration {it} (key "
                                         f"'{self.prefix}{blob}_{it}' or '{self.prefix}{blob}_{it}_{k}'); training "
                                         f"runs iterations {start}..{stop - 1}; the feed holds {shown or 'nothing'}")

    def shapes(self, it: int) -> dict[str, tuple[int, ...]]:
        missing = [b for b in self.blobs if self.key(b, it, 0) is None]
        if missing:
            self.check(it, it + 1, 1)
        return {b: tuple(self.npz[self.key(b, it, 0)].shape) for b in self.blobs}

    def batch(self, it: int, k: int) -> dict[str, np.ndarray]:
        out = {}
        for blob in self.blobs:
            key = self.key(blob, it, k)
            if key is None:
                self.check(it, it + 1, k + 1)
            out[blob] = np.ascontiguousarray(self.npz[key], dtype=np.float32)
        return out

    def close(self) -> None:
        self.npz.close()


class LayerBatches:
    """Batches from the net's own data layers: each forward pass takes the next batch, as in Caffe."""

    def __init__(self, sources: Sequence[LayerSource]) -> None:
        self.sources = list(sources)

    def shapes(self, it: int) -> dict[str, tuple[int, ...]]:
        return {t: s for src in self.sources for t, s in zip(src.tops, src.shapes)}

    def has(self, it: int, passes: int = 1) -> bool:
        return True

    def check(self, start: int, stop: int, passes: int) -> None:
        pass

    def batch(self, it: int, k: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for src in self.sources:
            out.update(src.next_batch())
        return out

    def close(self) -> None:
        for src in self.sources:
            src.close()


class _NoBatches(Exception):
    """A net whose inputs have no data source (Input layers without a feed)."""


def _batches(graph0: Graph, phase: str, feed: Optional[str], prefix: str,
             rng: np.random.Generator) -> FeedBatches | LayerBatches:
    inputs = [graph0.values[v].caffe_name for v in graph0.inputs]
    if feed is not None:
        batches = FeedBatches(feed, inputs, prefix)
        if not prefix or any(batches.key(b, 0, 0) for b in inputs):
            return batches
        batches.close()  # no TEST batches in the feed: the TEST net's own data layers, if it has them
    fed = [l for l in graph0.layers if l.type in DATA_TYPES and l.type != "Input"]
    plain = [t for l in graph0.layers if l.type == "Input" for t in l.caffe_tops]
    if plain:
        raise _NoBatches(f"net input{'s' if len(plain) > 1 else ''} {', '.join(plain)} "
                         f"come{'s' if len(plain) == 1 else ''} from Input layers: give the batches with --feed "
                         f"(an .npz with {prefix}{plain[0]}_<iter>, ...)")
    sources: list[LayerSource] = []
    try:
        for layer in fed:
            sources.append(open_layer_source(layer.proto, phase, rng, distributed.shard() if phase == TRAIN
                                             else (0, 1)))
    except BaseException:
        for src in sources:
            src.close()
        raise
    return LayerBatches(sources)


# -- the net ------------------------------------------------------------------------------------------

def build_net(spec: NetSpec, phase: str, *, feed: Optional[str], feed_prefix: str, rng: np.random.Generator,
              weights: Sequence[str], seed: int, device: torch.device, start_iter: int = 0) -> Net:
    """Phase-filtered graph shaped by its batches, weights copied by name (fillers for the rest), module."""
    common = dict(phase=phase, stages=spec.stages, level=spec.level, source=spec.source)
    graph0 = build_graph(spec.net, **common)
    batches = _batches(graph0, phase, feed, feed_prefix, rng)
    try:
        graph = build_graph(spec.net, input_shapes=batches.shapes(start_iter), **common)
        for path in weights:
            attach_weights(graph, path)
        fill_missing(graph, seed=max(seed, 0))
        untrainable = sorted({f"{l.type} ({l.name})" for l in graph.layers if l.tops and not _has_torch(l.type)})
        if untrainable:
            losses = sorted(t for t in registered_types() if implementation(t).training_only and _has_torch(t))
            raise TrainError(f"{spec.source}: no PyTorch form for the loss layer{'s' if len(untrainable) > 1 else ''} "
                             f"{', '.join(untrainable)} (zoo train has {', '.join(losses)})")
        module = to_pytorch(graph, training=True).to(device)
        if phase == TEST:
            module.eval()
        return Net(graph, module, batches, loss_weights(graph, module), spec.source)
    except BaseException:
        batches.close()
        raise


def _has_torch(layer_type: str) -> bool:
    impl = implementation(layer_type)
    return impl is None or impl.has_torch  # None: a data layer, or a type to_pytorch refuses by name


# -- snapshots ----------------------------------------------------------------------------------------

def write_weights(net: Net, path: str) -> None:
    write_caffemodel(path, net.graph.name, layer_blobs(net))


def snapshot(net: Net, solver: CaffeSolver, prefix: str) -> tuple[str, str]:
    """Solver::Snapshot in BINARYPROTO: `<prefix>_iter_N.caffemodel`, then the `.solverstate` naming it."""
    model = f"{prefix}_iter_{solver.iter}.caffemodel"
    state = f"{prefix}_iter_{solver.iter}.solverstate"
    write_weights(net, model)
    atomic_write(state, solver.to_solverstate(caffe_pb2.SolverState(), learned_net=model).SerializeToString())
    return model, state


def read_solverstate(path: str) -> caffe_pb2.SolverState:
    if path.endswith((".h5", ".hdf5")):
        raise TrainError(f"{path}: HDF5 solver states are not supported; snapshot with snapshot_format: BINARYPROTO")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TrainError(f"{path}: cannot read the solver state: {exc.strerror or exc}") from None
    try:
        return caffe_pb2.SolverState.FromString(data)
    except Exception:
        raise TrainError(f"{path}: not a Caffe .solverstate (a binary SolverState)") from None


def learned_net_path(state: caffe_pb2.SolverState, state_path: str) -> Optional[str]:
    """The weights a solver state names: relative to the current directory as in Caffe, else beside the state."""
    if not state.HasField("learned_net") or not state.learned_net:
        return None
    path = state.learned_net
    if os.path.isfile(path):
        return path
    beside = os.path.join(os.path.dirname(state_path), os.path.basename(path))
    if os.path.isfile(beside):
        return beside
    raise TrainError(f"{state_path}: its weights file '{path}' is missing (looked in the current directory and "
                     f"beside the solver state)")


# -- the loop -----------------------------------------------------------------------------------------

class SmoothedLoss:
    """Solver::UpdateSmoothedLoss: the mean of the last `average_loss` losses (float32)."""

    def __init__(self, window: int, start: int) -> None:
        self.window, self.start = window, start
        self.losses: list[np.float32] = []
        self.value = np.float32(0)

    def update(self, loss: np.float32, it: int) -> np.float32:
        if len(self.losses) < self.window:
            self.losses.append(loss)
            n = len(self.losses)
            self.value = np.float32((self.value * np.float32(n - 1) + loss) / np.float32(n))
        else:
            idx = (it - self.start) % self.window
            self.value = np.float32(self.value + (loss - self.losses[idx]) / np.float32(self.window))
            self.losses[idx] = loss
        return self.value


def _g(x: float) -> str:
    """A number as C++'s ostream prints it (6 significant digits)."""
    return f"{float(x):.6g}"


def _output_lines(kind: str, outputs: dict[str, np.ndarray], weights: dict[str, float]) -> list[str]:
    lines, k = [], 0
    for name, values in outputs.items():
        w = weights.get(name, 0.0)
        for v in np.asarray(values, dtype=np.float32).reshape(-1):
            extra = f" (* {_g(w)} = {_g(w * v)} loss)" if w else ""
            lines.append(f"    {kind} net output #{k}: {name} = {_g(v)}{extra}")
            k += 1
    return lines


def _parse_weights(weights: None | str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if weights is None:
        return []
    if isinstance(weights, (str, os.PathLike)):
        return [w for w in os.fspath(weights).split(",") if w]  # caffe train takes a comma-separated list
    return [os.fspath(w) for w in weights]


@dataclass
class _TestNet:
    net: Net
    iters: int
    index: int


def _run_test(test: _TestNet, cfg: SolverConfig, it: int, device: torch.device, say: Echo) -> dict:
    """Solver::Test: test_iter forward passes; each output blob averaged over them."""
    say(f"Iteration {it}, Testing net (#{test.index})")
    sums: dict[str, np.ndarray] = {}
    loss_sum = 0.0
    with torch.no_grad():
        for j in range(test.iters):
            loss, out = forward(test.net, test.net.batches.batch(j, 0), device)
            loss_sum += float(loss)
            for name, value in out.items():
                v = value.detach().to("cpu", torch.float64).numpy().reshape(-1)
                sums[name] = sums[name] + v if name in sums else v
    means = {name: (s / test.iters).astype(np.float32) for name, s in sums.items()}
    result = {"iter": it, "net": test.index, "outputs": {n: m.tolist() for n, m in means.items()}}
    if cfg.test_compute_loss:
        result["loss"] = loss_sum / test.iters
        say(f"Test loss: {_g(result['loss'])}")
    for line in _output_lines("Test", means, test.net.loss_weights):
        say(line)
    return result


def train(solver_path: os.PathLike | str, weights: None | str | os.PathLike | Sequence[str] = None,
          snapshot: Optional[os.PathLike | str] = None, feed: Optional[os.PathLike | str] = None,
          device: str = "auto", log: Optional[os.PathLike | str] = None,
          output: Optional[os.PathLike | str] = None, echo: Optional[Echo] = None) -> TrainResult:
    """Train as `caffe train --solver S [--weights W | --snapshot S]` does; see the module docstring.

    ``weights``: caffemodel(s) to start from (copied by layer name; the solver's own `weights` when
    None). ``snapshot``: a .solverstate to resume from. ``log``: a JSON file of {iter, loss, lr} per
    iteration. ``output``: the final weights as a .caffemodel. ``echo``: receives Caffe's log lines.
    """
    solver_path = os.fspath(solver_path)
    proto, cfg = read_solver(solver_path)
    dev = distributed.setup(pick_device(device))
    say = distributed.main_only(echo)
    restart = distributed.newest_snapshot(proto.snapshot_prefix)  # torchrun restarted the group after a fault
    if restart is not None:
        weights, snapshot = None, restart
    init, state = _starting_point(weights, snapshot, cfg)
    _check_snapshot_prefix(cfg, proto.snapshot_prefix, solver_path)
    say(f"Using device {describe_device(dev)}{distributed.describe()}")
    seed = distributed.common_seed(cfg.random_seed)
    rng = np.random.default_rng(seed if seed >= 0 else None)
    if seed >= 0:
        torch.manual_seed(seed + distributed.rank())  # dropout: each process its own stream, as Caffe's workers
    feed = os.fspath(feed) if feed is not None else None

    nets: list[Net] = []
    try:
        with exact_float32():
            try:
                net = build_net(train_net_spec(proto, solver_path), TRAIN, feed=feed, feed_prefix="", rng=rng,
                                weights=init, seed=seed, device=dev, start_iter=state.iter if state else 0)
            except _NoBatches as exc:
                raise TrainError(f"{solver_path}: TRAIN net: {exc}") from None
            nets.append(net)
            solver = CaffeSolver(learnable_params(net), cfg)
            if state is not None:
                solver.from_solverstate(state)
                say(f"Resuming from {os.fspath(snapshot)} at iteration {solver.iter}")
            tests = _test_nets(proto, cfg, solver_path, net, feed, rng, seed, dev, say)
            nets.extend(t.net for t in tests)
            net.batches.check(solver.iter, cfg.max_iter, cfg.iter_size * distributed.world_size())
            result = TrainResult(net.graph, net.module, solver, [], device=str(dev))
            try:
                _solve(net, solver, cfg, tests, proto.snapshot_prefix, dev, say, result)
            finally:
                if log is not None and result.trajectory and distributed.is_main():
                    atomic_write(os.fspath(log), _json(result.trajectory).encode())
            for layer, (_, blobs) in zip(net.graph.layers, layer_blobs(net)):
                if blobs:
                    layer.blobs = blobs
            if output is not None and distributed.is_main():
                write_weights(net, os.fspath(output))
            return result
    finally:
        for n in nets:
            n.batches.close()


def _starting_point(weights, snapshot, cfg: SolverConfig) -> tuple[list[str], Optional[caffe_pb2.SolverState]]:
    """The weights to copy in (--weights, a snapshot's learned_net, or the solver's `weights`) and the
    solver state to resume from."""
    init = _parse_weights(weights)
    if snapshot is None:
        return init or list(cfg.weights), None
    if init:
        raise TrainError("give weights to finetune or a snapshot to resume, not both (as caffe train)")
    state = read_solverstate(os.fspath(snapshot))
    learned = learned_net_path(state, os.fspath(snapshot))
    return ([learned] if learned else []), state


def _check_snapshot_prefix(cfg: SolverConfig, prefix: str, solver_path: str) -> None:
    """Fail before training, not at the first snapshot (Caffe's CheckSnapshotWritePermissions)."""
    if not (cfg.snapshot or cfg.snapshot_after_train):
        return
    if cfg.snapshot_format != "BINARYPROTO":
        raise TrainError(f"{solver_path}: snapshot_format {cfg.snapshot_format} is not supported; "
                         f"use BINARYPROTO (Caffe's default)")
    folder = os.path.dirname(prefix) or "."
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise TrainError(f"{solver_path}: cannot write snapshots to '{prefix}_iter_N': the folder '{folder}' "
                         f"does not exist or is not writable (set snapshot_prefix)")


def _test_nets(proto, cfg, solver_path, train_net, feed, rng, seed, dev, say) -> list[_TestNet]:
    if not cfg.test_iter or cfg.test_interval <= 0 or not distributed.is_main():
        return []  # as Caffe, the root solver alone tests
    tests = []
    for i, (spec, iters) in enumerate(zip(test_net_specs(proto, solver_path), cfg.test_iter)):
        try:
            net = build_net(spec, TEST, feed=feed, feed_prefix="test_", rng=rng, weights=[], seed=seed, device=dev)
        except _NoBatches as exc:
            say(f"Test net #{i} is not tested: {exc}")
            continue
        share_trained_layers(net, train_net)
        if feed is not None:
            net.batches.check(0, iters, 1)
        tests.append(_TestNet(net, iters, i))
    return tests


def _solve(net: Net, solver: CaffeSolver, cfg: SolverConfig, tests: list[_TestNet], prefix: str,
           device: torch.device, say: Echo, result: TrainResult) -> None:
    """Solver::Solve: Step(max_iter - iter), the final snapshot, the final display and test."""
    start = solver.iter
    smoothed = SmoothedLoss(cfg.average_loss, start)
    timer, last = time.perf_counter(), start
    say(f"Solving {net.graph.name or net.source}" + (f" from iteration {start}" if start else ""))

    def test_all(it: int) -> None:
        for test in tests:
            result.tests.append(_run_test(test, cfg, it, device, say))

    for it in range(start, cfg.max_iter):
        if cfg.test_interval and it % cfg.test_interval == 0 and (it > 0 or cfg.test_initialization):
            test_all(it)
        display = cfg.display and it % cfg.display == 0
        solver.zero_grad()
        total = np.float32(0)
        for k in range(cfg.iter_size):
            loss, out = forward(net, net.batches.batch(it, distributed.pass_index(k, cfg.iter_size)), device)
            if loss.requires_grad:
                loss.backward()
            total = np.float32(total + np.float32(loss.item()))
        distributed.average_gradients([g["params"][0] for g in solver.param_groups])
        loss32 = np.float32(total / np.float32(cfg.iter_size))
        check_finite_loss(loss32, it, net.source)
        smoothed.update(loss32, it)
        if display:
            lapse = time.perf_counter() - timer
            per_s = (it - last) / (lapse or 1)
            say(f"Iteration {it} ({_g(per_s)} iter/s, {_g(lapse)}s/{cfg.display} iters), loss = {_g(smoothed.value)}")
            outputs = {n: v.detach().to("cpu", torch.float32).numpy() for n, v in out.items()}
            for line in _output_lines("Train", outputs, net.loss_weights):
                say(line)
            timer, last = time.perf_counter(), it
        rate = solver.apply_update()
        if display:
            say(f"Iteration {it}, lr = {_g(rate)}")
        result.trajectory.append({"iter": it, "loss": float(loss32), "lr": rate})
        if cfg.snapshot and solver.iter % cfg.snapshot == 0:
            _snapshot(net, solver, prefix, say, result)
    if cfg.snapshot_after_train and (not cfg.snapshot or solver.iter % cfg.snapshot != 0):
        _snapshot(net, solver, prefix, say, result)
    if cfg.display and solver.iter % cfg.display == 0 and net.batches.has(solver.iter, 1):
        loss = _peek_loss(net, solver.iter, device)
        say(f"Iteration {solver.iter}, loss = {_g(smoothed.update(loss, solver.iter))}")
    if cfg.test_interval and solver.iter % cfg.test_interval == 0:
        test_all(solver.iter)
    say("Optimization Done.")


def _snapshot(net: Net, solver: CaffeSolver, prefix: str, say: Echo, result: TrainResult) -> None:
    if not distributed.is_main():
        return  # the root solver alone snapshots
    model, state = snapshot(net, solver, prefix)
    say(f"Snapshotting to binary proto file {model}")
    say(f"Snapshotting solver state to binary proto file {state}")
    result.snapshots.append(state)


def _peek_loss(net: Net, it: int, device: torch.device) -> np.float32:
    """Solve's closing forward pass for the last display line; BatchNorm statistics are put back after it
    (Caffe updates them after its final snapshot, where nobody sees them)."""
    saved = {name: b.clone() for name, b in net.module.named_buffers()}
    try:
        with torch.no_grad():
            loss, _ = forward(net, net.batches.batch(it, 0), device)
        return np.float32(loss.item())
    finally:
        with torch.no_grad():
            for name, b in net.module.named_buffers():
                b.copy_(saved[name])


def _json(trajectory: list[dict]) -> str:
    import json
    return json.dumps(trajectory, indent=1) + "\n"
