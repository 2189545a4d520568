"""`zoo train` and `zoo finetune` on several processes, GPUs and machines, the way Caffe trains on several
GPUs (solver.cpp, parallel.cpp, util/nccl.cpp), on PyTorch's own engine: ``torch.distributed`` started by
``torchrun`` (or by ``--nproc N``, through torch's launcher API), gloo on CPUs, NCCL on GPUs.

- Every process runs its own ``batch_size`` and its own ``iter_size`` passes; then the diffs are summed
  across the processes and scaled by 1/N (Caffe's NCCL::on_gradients_ready: ncclAllReduce(sum), then
  caffe_gpu_scal(1/solver_count)); clipping, the 1/iter_size normalisation, regularisation and the update
  follow as in one process. Without clipping, N processes with iter_size k equal one process with iter_size
  N*k over the same sub-batches: pass p of process r is the sub-batch ``r * iter_size + p``.
- Data are split by position in the stream: item k of an epoch's (seeded) order goes to process k mod N,
  as Caffe's DataLayer::Skip keeps `offset % solver_count == solver_rank`. Together the processes see
  every item once per epoch.
- Only process 0 prints, tests, validates, snapshots and writes outputs; BatchNorm statistics stay per
  process and the saved ones are process 0's (as Caffe's root solver).
- Restarted by torchrun (``--max-restarts``), the processes resume from the newest snapshot/checkpoint.

Nothing here does its own sockets or reductions: process groups, collectives and the launcher are torch's.
"""
from __future__ import annotations

import atexit
import glob
import os
import re
import sys
import uuid
from typing import TYPE_CHECKING, Callable, Optional, Sequence

if TYPE_CHECKING:
    import argparse

    import numpy as np

from prototxt import CaffeError

Echo = Callable[[str], None]


class DistributedError(CaffeError):
    """A distributed setup that cannot work (one line, what to do next)."""


# -- where this process stands ----------------------------------------------------------------------

def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise DistributedError(f"the environment variable {name}={os.environ[name]!r} is not an integer; "
                               f"start the processes with torchrun") from None


def launched() -> bool:
    """Whether torchrun (or ``--nproc``) started this process as one of several."""
    return _env_int("WORLD_SIZE", 1) > 1


def _group_ready() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    if "torch" not in sys.modules or not _group_ready():
        return 1
    import torch.distributed as dist
    return dist.get_world_size()


def rank() -> int:
    if "torch" not in sys.modules or not _group_ready():
        return 0
    import torch.distributed as dist
    return dist.get_rank()


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    return rank() == 0


def restarted() -> bool:
    """Whether torchrun restarted this group after a failure (``--max-restarts``)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0) > 0


def setup(device):
    """Join the process group torchrun describes (gloo for CPU, NCCL for CUDA with one GPU per process, by
    LOCAL_RANK) and return this process's device; a single process is left as it is."""
    import torch
    import torch.distributed as dist
    if not launched():
        return device
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise DistributedError(f"process {local_rank()} of this machine has no GPU of its own "
                                   f"({torch.cuda.device_count()} visible); start at most that many processes "
                                   f"per machine (--nproc-per-node)")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not _group_ready():
        # torchrun's store outlives a restart (--max-restarts) and still holds the killed attempt's gloo
        # addresses under the default keys (torch 2.13): each attempt meets under keys of its own.
        store, rank_, world = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"zoo/attempt{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}", store)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank_,
                                world_size=world)
        atexit.register(_leave)
    return device


def _leave() -> None:
    import torch.distributed as dist
    if _group_ready():
        dist.destroy_process_group()


def describe() -> str:
    """`, process R of N (backend)` for log lines, or '' in a single process."""
    if world_size() == 1:
        return ""
    import torch.distributed as dist
    return f", process {rank()} of {world_size()} ({dist.get_backend()})"


# -- rank 0 alone speaks and writes -------------------------------------------------------------------

def main_only(echo: Optional[Echo]) -> Echo:
    """``echo`` on process 0; a sink on the others."""
    if echo is None or not is_main():
        return lambda line: None
    return echo


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist
        dist.barrier()


# -- gradients and sums -------------------------------------------------------------------------------

def average_gradients(params: Sequence) -> None:
    """Caffe's on_gradients_ready: the accumulated diffs of ``params`` summed over the processes (one flat
    all-reduce), then scaled by 1/N in float32. A param without a grad here counts as zeros (another
    process may have one: a process whose share of the epoch ran out)."""
    import numpy as np
    n = world_size()
    if n == 1:
        return
    import torch
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
    live = [p for p in params if p.requires_grad]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in live]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.mul_(float(np.float32(1) / np.float32(n)))  # caffe_gpu_scal(size, 1. / Caffe::solver_count())
    for g, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(summed)


def all_sum(values: Sequence[float]) -> list[float]:
    """``values`` summed over the processes (float64)."""
    if world_size() == 1:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def common_seed(seed: int) -> int:
    """The seed every process uses: ``seed``, or process 0's random draw when it is negative (Caffe's
    'random_seed: -1'), so that the processes agree on the order of the data."""
    import numpy as np
    if seed >= 0 or world_size() == 1:
        return seed
    import torch.distributed as dist
    box = [int(np.random.SeedSequence().generate_state(1)[0]) if is_main() else 0]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- data -------------------------------------------------------------------------------------------------

def pass_index(k: int, iter_size: int) -> int:
    """The sub-batch that pass k of this process takes in an iteration: ``rank * iter_size + k``."""
    return rank() * iter_size + k


def shard() -> tuple[int, int]:
    """(rank, world size): a stream item at position k belongs to process k mod N."""
    return rank(), world_size()


def shard_size(n: int) -> int:
    """The largest share of n items any process gets."""
    return -(-n // world_size())


def shard_items(n: int) -> np.ndarray:
    """The items (of 0..n-1) this process owns: those with ``i mod N == rank``."""
    import numpy as np
    return np.arange(rank(), n, world_size())


def shard_order(order: np.ndarray, n: int) -> np.ndarray:
    """This process's part of an epoch's order of all n items, as positions in ``shard_items(n)``: the
    epoch's order keeps its sequence, each process walks the items it owns."""
    import numpy as np
    if world_size() == 1:
        return order
    order = np.asarray(order)
    return order[order % world_size() == rank()] // world_size()


def threads_per_process() -> Optional[int]:
    """CPU threads for a runtime of one's own (onnxruntime) when several processes share this machine: its
    cores divided among torchrun's LOCAL_WORLD_SIZE processes; None (the runtime's default) in one."""
    local = _env_int("LOCAL_WORLD_SIZE", 1)
    return max(1, (os.cpu_count() or 1) // local) if local > 1 else None


def per_rank(folder):
    """A folder of its own for each process (per-process caches); the folder itself in one process."""
    return folder if world_size() == 1 else folder / f"rank{rank()}of{world_size()}"


# -- faults -----------------------------------------------------------------------------------------------

def newest_snapshot(prefix: str) -> Optional[str]:
    """After a torchrun restart, the newest `<prefix>_iter_N.solverstate` to resume from (its .caffemodel
    is written first, both atomically); None on a first start or when there is none."""
    if not restarted():
        return None
    found = []
    for path in glob.glob(glob.escape(prefix) + "_iter_*.solverstate"):
        m = re.fullmatch(r"_iter_(\d+)\.solverstate", path[len(prefix):])
        if m:
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


# -- the launcher -----------------------------------------------------------------------------------------

def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the processes it starts must not start more)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """`torchrun --standalone --nproc-per-node nproc -m zoo ARGV` through torch's launcher API
    (torch.distributed.launcher.api.elastic_launch); the exit status of the group."""
    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1 (got {nproc})")
    if launched():
        raise DistributedError("--nproc inside a torchrun group: give the number of processes to torchrun "
                               "(--nproc-per-node) or to --nproc, not both")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "zoo", *strip_nproc(argv))
    except ChildFailedError as exc:
        codes = sorted({f.exitcode for f in exc.failures.values()})
        raise DistributedError(f"{len(exc.failures)} of {nproc} processes failed (exit code "
                               f"{', '.join(map(str, codes))}); their messages are above") from None
    return 0


# -- the command line ---------------------------------------------------------------------------------

def add_nproc(p: "argparse.ArgumentParser") -> None:
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train on N processes of this machine (torch.distributed: gloo on CPU, NCCL with one GPU "
                        "each on CUDA); for several machines use torchrun (see the README)")


def launched_elsewhere(args: "argparse.Namespace") -> bool:
    """With ``--nproc N`` (N > 1), run the command on N processes and return True; else False."""
    if args.nproc is None or (args.nproc == 1 and not launched()):
        return False
    launch(args.nproc, getattr(args, "argv", sys.argv[1:]))
    return True
