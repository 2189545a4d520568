"""Caffe's blobs into a torch module's tensors (shared by ``to_pytorch`` and the folder export of a user's
module, so that neither imports the other)."""
from __future__ import annotations

import numpy as np
import torch


def load_blobs(module: torch.nn.Module, layer, blob_names: list[str]) -> None:
    """Point the module's tensors at the graph's arrays (no copy when they are float32 already)."""
    state = module.state_dict(keep_vars=True)
    for i, key in enumerate(blob_names):
        if i >= len(layer.blobs) or layer.blobs[i] is None:
            continue
        target = state[key]
        array = np.asarray(layer.blobs[i])
        if array.dtype != np.float32 or not array.flags.c_contiguous or not array.flags.writeable:
            array = np.ascontiguousarray(array, dtype=np.float32)
        value = torch.from_numpy(array).reshape(target.shape)
        owner, _, attr = key.rpartition(".")
        holder = module.get_submodule(owner) if owner else module
        if isinstance(target, torch.nn.Parameter):
            setattr(holder, attr, torch.nn.Parameter(value, requires_grad=target.requires_grad))
        else:
            holder.register_buffer(attr, value, persistent=attr not in getattr(holder, "_non_persistent_buffers_set", ()))
