"""onnxruntime sessions: the CUDA provider when it really works, else the CPU, said once, clearly.

onnxruntime-gpu lists CUDAExecutionProvider even on machines without a GPU or without the CUDA
libraries; asking for it there logs pages of errors and silently falls back to the CPU. We ask
quietly, look at which provider the session really got, and report that one line once.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Union

from prototxt import CaffeError

_reported: set[str] = set()


class RuntimeUnavailable(CaffeError):
    """The requested device cannot run onnxruntime here (one line, for the CLI)."""


def _options(threads: Optional[int], light: bool = False):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    # `light`: a one-off run (verification) where optimising and pre-packing the weights costs more than it saves
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if light
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if light:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 4  # fatal only: provider probing is not the user's business
    return opts


def _say(message: str, quiet: bool) -> None:
    if not quiet and message not in _reported:
        _reported.add(message)
        sys.stdout.flush()
        print(f"zoo: {message}", file=sys.stderr)


def session(model: Union[str, bytes], device: str = "auto", threads: Optional[int] = None, quiet: bool = True,
            light: bool = False):
    """An InferenceSession on ``device`` ("auto", "cuda" or "cpu"); ``quiet=False`` says which once."""
    import onnxruntime as ort
    if device not in ("auto", "cuda", "cpu"):
        raise RuntimeUnavailable(f"device must be auto, cuda or cpu, not '{device}'")
    ort.set_default_logger_severity(4)  # a missing CUDA library is an answer here, not an error to print
    opts = _options(threads, light)
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            sess = ort.InferenceSession(model, opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if sess.get_providers()[0] == "CUDAExecutionProvider":
                _say("onnxruntime on CUDA (CUDAExecutionProvider)", quiet)
                return sess
            reason = "the CUDA provider did not load (no GPU or CUDA libraries)"
        except Exception as exc:  # noqa: BLE001 - any failure here means: no usable CUDA
            reason = f"the CUDA provider failed: {str(exc).splitlines()[0][:120]}"
    elif device != "cpu":
        reason = f"this onnxruntime build has no CUDA provider ({ort.__version__})"
    else:
        reason = ""
    if device == "cuda":
        raise RuntimeUnavailable(f"--device cuda: {reason}; use --device cpu or auto")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    _say("onnxruntime on CPU" + (f" ({reason})" if reason else ""), quiet)
    return sess


def device_of(sess) -> str:
    return "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
