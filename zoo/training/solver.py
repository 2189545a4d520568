"""Caffe's SGD-family solvers as a torch optimizer, with Caffe's exact update semantics.

Mirrors src/caffe/solvers/sgd_solver.cpp and its subclasses (Nesterov, AdaGrad, RMSProp, AdaDelta,
Adam): the learning-rate policies, ApplyUpdate's order (lr, global clipping of the summed diffs,
1/iter_size, L1/L2 decay, the update rule, w -= update, ++iter), the history blobs in Caffe's layout
(so a `.solverstate` converts both ways), and Caffe's float32 rounding of every scalar it computes.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from prototxt import CaffeError, caffe_pb2, upgrade_solver

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
_SOLVER_MODES = {0: "CPU", 1: "GPU"}
_SNAPSHOT_FORMATS = {0: "HDF5", 1: "BINARYPROTO"}
# Caffe's history_ holds one blob per learnable param; AdaDelta and Adam append a second set after
# the first (AdaDelta: E[g^2] then E[dx^2]; Adam: m then v), and a .solverstate stores them so.
_HISTORY_KEYS = {"AdaDelta": ("history", "update_history"), "Adam": ("history", "update_history")}


class SolverConfigError(CaffeError, ValueError):
    """A SolverParameter that Caffe would refuse (a CHECK or LOG(FATAL) in the solver)."""


class SolverStateError(CaffeError, ValueError):
    """A solver state that does not fit this solver's params (Caffe: 'Incorrect length of history blobs')."""


def _f32(x: float) -> np.float32:
    return np.float32(x)


@dataclass
class SolverConfig:
    """caffe.proto's SolverParameter: Caffe's field names and defaults. Enums are held by name."""

    net: str | None = None
    net_param: Any = field(default=None, metadata={"message": True})
    train_net: str | None = None
    test_net: list[str] = field(default_factory=list)
    train_net_param: Any = field(default=None, metadata={"message": True})
    test_net_param: list[Any] = field(default_factory=list)
    train_state: Any = field(default=None, metadata={"message": True})
    test_state: list[Any] = field(default_factory=list)
    test_iter: list[int] = field(default_factory=list)
    test_interval: int = 0
    test_compute_loss: bool = False
    test_initialization: bool = True
    base_lr: float = 0.0
    display: int = 0
    average_loss: int = 1
    max_iter: int = 0
    iter_size: int = 1
    lr_policy: str = ""  # Caffe has no default: an unset policy is fatal at the first update
    gamma: float = 0.0
    power: float = 0.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    regularization_type: str = "L2"
    stepsize: int = 0
    stepvalue: list[int] = field(default_factory=list)
    clip_gradients: float = -1.0
    snapshot: int = 0
    snapshot_prefix: str | None = None
    snapshot_diff: bool = False
    snapshot_format: str = field(default="BINARYPROTO", metadata={"enum": _SNAPSHOT_FORMATS})
    solver_mode: str = field(default="GPU", metadata={"enum": _SOLVER_MODES})
    device_id: int = 0
    random_seed: int = -1
    type: str = "SGD"
    delta: float = 1e-8
    momentum2: float = 0.999
    rms_decay: float = 0.99
    debug_info: bool = False
    snapshot_after_train: bool = True
    layer_wise_reduce: bool = True
    weights: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_proto(cls, msg: Any) -> SolverConfig:
        """Build from any generated caffe_pb2.SolverParameter (read as ours, legacy fields upgraded by
        ``prototxt.upgrade_solver``: the ``solver_type`` enum becomes ``type``)."""
        if not isinstance(msg, caffe_pb2.SolverParameter):  # another build of caffe.proto: same field numbers
            msg = caffe_pb2.SolverParameter.FromString(msg.SerializeToString())
        try:
            msg = upgrade_solver(msg)
        except CaffeError as exc:
            raise SolverConfigError(str(exc)) from None
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if not hasattr(msg, f.name):  # an older caffe.proto without this field
                continue
            value = getattr(msg, f.name)
            if f.default_factory is list:
                value = list(value)
            elif f.metadata.get("message") or f.default is None:
                value = value if msg.HasField(f.name) else None
            elif "enum" in f.metadata:
                value = _enum_name(f.name, value, f.metadata["enum"])
            kwargs[f.name] = value
        return cls(**kwargs)


def _enum_name(name: str, value: int, names: dict[int, str]) -> str:
    if value not in names:
        raise SolverConfigError(f"{name} {value} is not a known enum value; Caffe knows {names}")
    return names[value]


def _validate(cfg: SolverConfig) -> None:
    """Caffe's own CHECKs on a SolverParameter, as one-line SolverConfigErrors."""
    def fail(msg: str) -> None:
        raise SolverConfigError(msg)

    if cfg.type not in SOLVER_TYPES:
        close = [t for t in SOLVER_TYPES if t.lower() == str(cfg.type).lower()]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        fail(f"unknown solver type {cfg.type!r} (known types: {', '.join(SOLVER_TYPES)}){hint}")
    policy = cfg.lr_policy
    if policy not in LR_POLICIES:
        close = difflib.get_close_matches(policy, LR_POLICIES, n=1)
        what = "lr_policy is not set" if not policy else f"unknown lr_policy {policy!r}"
        hint = f"; did you mean {close[0]!r}?" if close else ""
        fail(f"{what} (Caffe knows: {', '.join(LR_POLICIES)}){hint}")
    if policy in ("step", "sigmoid") and cfg.stepsize <= 0:
        fail(f"lr_policy {policy!r} needs stepsize > 0 (got {cfg.stepsize})")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and cfg.gamma < 0:
        fail(f"lr_policy {policy!r} needs gamma >= 0 (got {cfg.gamma})")
    if policy == "poly" and cfg.max_iter <= 0:
        fail(f"lr_policy 'poly' needs max_iter > 0 (got {cfg.max_iter})")
    if cfg.type in ("AdaGrad", "RMSProp") and cfg.momentum != 0:
        fail(f"momentum cannot be used with {cfg.type} (got momentum {cfg.momentum}); remove it")
    if cfg.type == "RMSProp" and not 0 <= cfg.rms_decay < 1:
        fail(f"rms_decay should lie in [0, 1) (got {cfg.rms_decay})")
    if cfg.weight_decay != 0 and cfg.regularization_type not in ("L1", "L2"):
        fail(f"unknown regularization_type {cfg.regularization_type!r} (Caffe knows 'L1' and 'L2')")
    if cfg.iter_size < 1:
        fail(f"iter_size must be at least 1 (got {cfg.iter_size})")
    if cfg.average_loss < 1:
        fail(f"average_loss must be at least 1 (got {cfg.average_loss})")
    if cfg.test_iter and cfg.test_interval <= 0:
        fail(f"test_iter is set, so test_interval must be > 0 (got {cfg.test_interval})")
    sources = [n for n in ("net", "net_param", "train_net", "train_net_param") if getattr(cfg, n) is not None]
    if len(sources) > 1:
        fail(f"a solver takes one train net, but {', '.join(sources)} are all set")
    if cfg.snapshot > 0 and cfg.snapshot_prefix is None:
        fail("snapshot is specified but snapshot_prefix is not")
    if cfg.solver_mode not in _SOLVER_MODES.values():
        fail(f"solver_mode must be CPU or GPU (got {cfg.solver_mode!r})")
    if cfg.snapshot_format not in _SNAPSHOT_FORMATS.values():
        fail(f"snapshot_format must be BINARYPROTO or HDF5 (got {cfg.snapshot_format!r})")


class LearningRate(NamedTuple):
    rate: float  # a float32 value: the rate Caffe's GetLearningRate returns
    current_step: int  # the solver's current_step_ after the call


def _pow(x: float, y: float) -> float:
    """C's pow in double: nan or inf where Python's math.pow raises."""
    try:
        return math.pow(x, y)
    except (ValueError, OverflowError):
        with np.errstate(all="ignore"):
            return float(np.power(np.float64(x), np.float64(y)))


def _powf(x: np.float32, y: np.float32) -> np.float32:
    # std::pow(float, float) is powf (glibc's is within 1 ulp, in practice correctly rounded):
    # the double result rounded once to float. This matches Caffe's inv rates bitwise; double does not.
    return _f32(_pow(float(x), float(y)))


def _expf(x: np.float32) -> np.float32:
    try:
        return _f32(math.exp(float(x)))
    except OverflowError:
        return _f32(np.inf)


def learning_rate(cfg: SolverConfig, it: int, current_step: int = 0) -> LearningRate:
    """SGDSolver::GetLearningRate at iteration `it` (the number of updates already applied).

    Rounds like Caffe (Dtype = float): pow(float, int) of step/exp/multistep is evaluated in double
    (C++11 promotes it), inv/poly use powf, sigmoid uses expf and float arithmetic.
    `current_step` is solver state: step sets it to it // stepsize, multistep advances it at most once
    per call; pass back the returned one.
    """
    base, gamma, power = _f32(cfg.base_lr), _f32(cfg.gamma), _f32(cfg.power)
    policy = cfg.lr_policy
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = it // cfg.stepsize
        rate = _f32(float(base) * _pow(float(gamma), current_step))
    elif policy == "exp":
        rate = _f32(float(base) * _pow(float(gamma), it))
    elif policy == "inv":
        rate = base * _powf(_f32(1) + gamma * _f32(it), -power)
    elif policy == "multistep":
        if current_step < len(cfg.stepvalue) and it >= cfg.stepvalue[current_step]:
            current_step += 1
        rate = _f32(float(base) * _pow(float(gamma), current_step))
    elif policy == "poly":
        rate = base * _powf(_f32(1) - _f32(it) / _f32(cfg.max_iter), power)
    elif policy == "sigmoid":
        rate = base * (_f32(1) / (_f32(1) + _expf(-gamma * (_f32(it) - _f32(cfg.stepsize)))))
    else:
        raise SolverConfigError(f"unknown lr_policy {policy!r}")
    return LearningRate(float(_f32(rate)), current_step)


@dataclass(eq=False)
class LearnableParam:
    """One learnable blob of the net (a shared blob appears once), with its Caffe multipliers."""

    tensor: torch.Tensor
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    name: str = ""


class _Scalars(NamedTuple):
    """The float32 scalars one param's update uses, rounded as Caffe rounds them."""

    local_rate: float
    momentum: float
    cfg: SolverConfig
    t: int  # Adam's t = iter + 1


def _sgd(state: dict, g: torch.Tensor, s: _Scalars) -> torch.Tensor:
    # history = momentum*history + local_rate*g (sscal then saxpy); lr lives inside the history.
    return state["history"].mul_(s.momentum).add_(g, alpha=s.local_rate)


def _nesterov(state: dict, g: torch.Tensor, s: _Scalars) -> torch.Tensor:
    previous = state["history"].clone()
    h = state["history"].mul_(s.momentum).add_(g, alpha=s.local_rate)
    return previous.mul_(-s.momentum).add_(h, alpha=float(_f32(1) + _f32(s.momentum)))


def _adagrad(state: dict, g: torch.Tensor, s: _Scalars) -> torch.Tensor:
    h = state["history"].add_(g * g)
    return (g / h.sqrt().add_(float(_f32(s.cfg.delta)))).mul_(s.local_rate)


def _rmsprop(state: dict, g: torch.Tensor, s: _Scalars) -> torch.Tensor:
    decay = _f32(s.cfg.rms_decay)
    h = state["history"].mul_(float(decay)).add_(g * g, alpha=float(_f32(1) - decay))
    return (g / h.sqrt().add_(float(_f32(s.cfg.delta)))).mul_(s.local_rate)


def _adadelta(state: dict, g: torch.Tensor, s: _Scalars) -> torch.Tensor:
    rho, delta = _f32(s.momentum), float(_f32(s.cfg.delta))
    eg2 = state["history"].mul_(float(rho)).add_(g * g, alpha=float(_f32(1) - rho))
    dx = g * ((state["update_history"] + delta) / (eg2 + delta)).sqrt_()
    state["update_history"].mul_(float(rho)).add_(dx * dx, alpha=float(_f32(1) - rho))
    return dx.mul_(s.local_rate)


def _adam(state: dict, g: torch.Tensor, s: _Scalars) -> torch.Tensor:
    beta1, beta2 = _f32(s.momentum), _f32(s.cfg.momentum2)
    # Bias correction in double (pow(float, int) promotes), rounded to float, folded into the rate.
    correction = _f32(math.sqrt(1.0 - float(beta2) ** s.t) / (1.0 - float(beta1) ** s.t))
    m = state["history"].mul_(float(beta1)).add_(g, alpha=float(_f32(1) - beta1))
    v = state["update_history"].mul_(float(beta2)).add_(g * g, alpha=float(_f32(1) - beta2))
    return (m / v.sqrt().add_(float(_f32(s.cfg.delta)))).mul_(float(_f32(s.local_rate) * correction))


_UPDATE_RULES: dict[str, Callable[[dict, torch.Tensor, _Scalars], torch.Tensor]] = {
    "SGD": _sgd, "Nesterov": _nesterov, "AdaGrad": _adagrad,
    "RMSProp": _rmsprop, "AdaDelta": _adadelta, "Adam": _adam,
}


class CaffeSolver(torch.optim.Optimizer):
    """Caffe's solver `cfg.type` over `params` (one LearnableParam per learnable blob, in net order).

    Drive it like Caffe's Step: zero_grad(); iter_size forward/backward passes (torch sums the grads
    as Caffe sums diffs); apply_update(). A missing grad counts as zeros (Caffe still decays it and
    moves its momentum). As in Caffe, every param goes through the update, lr_mult 0 ones included:
    a grad they have counts in the clipping norm (Caffe computes the diff of a frozen blob that a
    training layer shares), and the adaptive solvers' histories move with the weight decay while the
    step (local rate 0) leaves the weights as they are. SGD and Nesterov skip a frozen param whose
    history is zero, which changes nothing.
    """

    def __init__(self, params: Sequence[LearnableParam], cfg: SolverConfig) -> None:
        params = list(params)
        if not params:
            raise ValueError("CaffeSolver needs at least one LearnableParam")
        for p in params:
            if not isinstance(p, LearnableParam):
                raise TypeError(f"expected LearnableParam entries, got {type(p).__name__}")
            if not p.tensor.is_floating_point():
                raise TypeError(f"param {p.name!r} is {p.tensor.dtype}, not floating point")
        groups = [{"params": [p.tensor], "lr_mult": float(p.lr_mult), "decay_mult": float(p.decay_mult),
                   "name": p.name} for p in params]
        super().__init__(groups, defaults={})
        self.cfg = cfg
        self._iter = 0
        self._current_step = 0
        self.last_grad_norm: torch.Tensor | None = None  # what ClipGradients saw (float32, no host sync)
        for group in self._live_groups():
            self._init_state(group["params"][0])

    # -- state -----------------------------------------------------------------------------------
    @property
    def iter(self) -> int:
        """The number of updates applied (Caffe's iter_)."""
        return self._iter

    @property
    def current_step(self) -> int:
        return self._current_step

    @property
    def history_keys(self) -> tuple[str, ...]:
        return _HISTORY_KEYS.get(self.cfg.type, ("history",))

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        for key in self.history_keys:
            if key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return state

    def _live_groups(self) -> list[dict]:
        return [g for g in self.param_groups if g["lr_mult"] != 0]

    def _updated_groups(self) -> list[dict]:
        """The params ApplyUpdate changes anything of: all but frozen SGD/Nesterov params whose history
        is zero (local rate 0: momentum * 0 + 0 * diff stays 0, and so does the step)."""
        if self.cfg.type not in ("SGD", "Nesterov"):
            return list(self.param_groups)
        return [g for g in self.param_groups if g["lr_mult"] != 0 or self.state.get(g["params"][0])]

    def lr(self) -> float:
        """The rate the next apply_update will use (GetLearningRate, without advancing current_step)."""
        return learning_rate(self.cfg, self._iter, self._current_step).rate

    # -- ApplyUpdate -----------------------------------------------------------------------------
    @torch.no_grad()
    def apply_update(self) -> float:
        """Caffe's ApplyUpdate on the accumulated .grad; returns the rate it used. .grad is left as is."""
        rate, self._current_step = learning_rate(self.cfg, self._iter, self._current_step)
        # ClipGradients sums every learnable blob's diff; one nobody computed is zero and adds nothing
        with_grad = [g["params"][0] for g in self.param_groups if g["params"][0].grad is not None]
        clipped = dict(zip(map(id, with_grad), self._clip([self._grad(p) for p in with_grad])))
        rule = _UPDATE_RULES[self.cfg.type]
        for group in self._updated_groups():
            p = group["params"][0]
            g = clipped[id(p)] if id(p) in clipped else torch.zeros_like(p)
            g = self._normalize(g)
            g = self._regularize(g, p, group["decay_mult"])
            scalars = _Scalars(float(_f32(rate) * _f32(group["lr_mult"])), float(_f32(self.cfg.momentum)),
                               self.cfg, self._iter + 1)
            p.sub_(rule(self._init_state(p), g, scalars))
        self._iter += 1
        return rate

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """torch.optim interface: optional closure, then apply_update()."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.apply_update()
        return loss

    @staticmethod
    def _grad(p: torch.Tensor) -> torch.Tensor:
        if p.grad is None:
            return torch.zeros_like(p)
        if p.grad.is_sparse:
            raise TypeError("CaffeSolver does not take sparse gradients")
        return p.grad

    def _clip(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """ClipGradients: one L2 norm over all summed diffs (float32, summed blob by blob); strict >."""
        clip = _f32(self.cfg.clip_gradients)
        if clip < 0 or not grads:
            return grads
        device = grads[0].device
        sumsq = torch.zeros((), dtype=torch.float32, device=device)
        for g in grads:
            flat = g.reshape(-1).float()
            sumsq = sumsq + torch.dot(flat, flat).to(device)
        norm = sumsq.sqrt()
        self.last_grad_norm = norm
        # torch.where keeps the decision on the device; x * 1 is exact, so unclipped grads are unchanged.
        scale = torch.where(norm > float(clip), float(clip) / norm, torch.ones_like(norm))
        return [g * scale.to(g.device, g.dtype) for g in grads]

    def _normalize(self, g: torch.Tensor) -> torch.Tensor:
        if self.cfg.iter_size == 1:
            return g
        return g * float(_f32(1) / _f32(self.cfg.iter_size))  # Caffe multiplies by float(1/iter_size)

    def _regularize(self, g: torch.Tensor, p: torch.Tensor, decay_mult: float) -> torch.Tensor:
        local_decay = float(_f32(self.cfg.weight_decay) * _f32(decay_mult))
        if local_decay == 0:
            return g
        if self.cfg.regularization_type == "L2":
            return g.add(p, alpha=local_decay)
        if self.cfg.regularization_type == "L1":
            return g.add(torch.sign(p), alpha=local_decay)
        raise SolverConfigError(f"unknown regularization_type {self.cfg.regularization_type!r}")

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["caffe"] = {"iter": self._iter, "current_step": self._current_step, "type": self.cfg.type}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of a CaffeSolver of the same type over the same params.

        The multipliers stay those of this solver (they belong to the net, as in Caffe's solverstate).
        """
        state_dict = dict(state_dict)
        meta = state_dict.pop("caffe", None)
        if meta is None:
            raise SolverStateError("not a CaffeSolver state_dict (no 'caffe' entry)")
        if meta["type"] != self.cfg.type:
            raise SolverStateError(f"state_dict is from a {meta['type']} solver, this one is {self.cfg.type}")
        kept = [{k: g[k] for k in ("lr_mult", "decay_mult", "name")} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, k in zip(self.param_groups, kept):
            group.update(k)
        self._iter, self._current_step = int(meta["iter"]), int(meta["current_step"])

    def solverstate_arrays(self) -> dict[str, Any]:
        """Caffe's SolverState content: iter, current_step, and history as float32 arrays in Caffe's order
        (every param in net order, frozen ones included; AdaDelta/Adam: the second set after the first)."""
        history = []
        for key in self.history_keys:
            for group in self.param_groups:
                p = group["params"][0]
                h = self.state[p].get(key) if p in self.state else None
                history.append(np.zeros(tuple(p.shape), np.float32) if h is None
                               else h.detach().to("cpu", torch.float32).numpy().copy())
        return {"iter": self._iter, "current_step": self._current_step, "history": history}

    def load_solverstate_arrays(self, iter: int, current_step: int, history: Sequence[np.ndarray]) -> None:
        """Restore from Caffe's SolverState content (RestoreSolverStateFromBinaryProto without learned_net)."""
        keys = self.history_keys
        n = len(self.param_groups)
        if len(history) != n * len(keys):
            raise SolverStateError(f"incorrect length of history blobs: got {len(history)}, a {self.cfg.type} "
                                   f"solver over {n} params keeps {n * len(keys)}")
        loaded: list[tuple[dict, str, torch.Tensor]] = []
        for i, arr in enumerate(history):
            group = self.param_groups[i % n]
            p = group["params"][0]
            arr = np.asarray(arr)
            if arr.size != p.numel():  # Caffe reshapes to the stored shape; only the count must agree
                raise SolverStateError(f"history blob {i} has {arr.size} values, but param "
                                       f"{group['name'] or i % n!r} has {p.numel()} (shape {tuple(p.shape)})")
            value = torch.from_numpy(arr.astype(np.float32).reshape(p.shape))
            loaded.append((group, keys[i // n], value.to(device=p.device, dtype=p.dtype).contiguous()))
        for group, key, value in loaded:
            state = self.state[group["params"][0]]
            if group["lr_mult"] == 0 and not value.any():
                state.pop(key, None)  # frozen params' zero histories stay implicit (no memory)
            else:
                state[key] = value
        self._iter, self._current_step = int(iter), int(current_step)

    def to_solverstate(self, msg: Any, learned_net: str | None = None) -> Any:
        """Fill a caffe_pb2.SolverState message (any generated module) and return it."""
        content = self.solverstate_arrays()
        msg.iter = content["iter"]
        msg.current_step = content["current_step"]
        if learned_net is not None:
            msg.learned_net = learned_net
        del msg.history[:]
        for arr in content["history"]:
            blob = msg.history.add()
            blob.shape.dim.extend(int(d) for d in arr.shape)
            blob.data.extend(arr.ravel().tolist())
        return msg

    def from_solverstate(self, msg: Any) -> str | None:
        """Restore from a caffe_pb2.SolverState; returns its learned_net (the weights file), or None."""
        history = [_blob_values(blob) for blob in msg.history]
        self.load_solverstate_arrays(msg.iter, msg.current_step, history)
        return msg.learned_net if msg.HasField("learned_net") else None


def _blob_values(blob: Any) -> np.ndarray:
    """A BlobProto's values (float or double), flat; the solver reshapes them to the param's shape."""
    if len(blob.double_data):
        return np.asarray(blob.double_data, dtype=np.float64)
    return np.asarray(blob.data, dtype=np.float32)
