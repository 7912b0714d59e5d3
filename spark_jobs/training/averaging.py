"""Parameter averaging, the arithmetic: average workers' parameters and optimizer states.

The parameter-averaging strategy ships a model's trainable parameters (and, optionally, its
optimizer state) from the driver to every worker and back once per round. Everything here
is a pure function over numpy arrays, so it is tested without Spark or a model:

    model, optimizer ──model_arrays / optimizer_arrays──▶ {name: ndarray}
        ──pack──▶ bytes (safetensors) ── broadcast / task result ──▶ unpack ──▶ {name: ndarray}
    [{name: ndarray} per worker] ──average_arrays──▶ {name: ndarray} ──load_*──▶ model, optimizer

Optimizer state is flattened to `<param index>/<field>` (e.g. `3/exp_avg`): the moments are
averaged like parameters; the step counters (`*/step`) are not averaged but take the largest
value (every worker ran the same number of steps, so in practice they are all equal).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import safetensors.numpy
import torch
from torch import nn

Arrays = dict[str, np.ndarray]

_PARAMS_PREFIX = "param/"
_OPTIMIZER_PREFIX = "optim/"


# --- model and optimizer <-> arrays ---------------------------------------------------------


def model_arrays(model: nn.Module) -> Arrays:
    """The trainable parameters as numpy copies; tied weights appear once."""
    return {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters() if p.requires_grad}


def load_model_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy arrays into the model's trainable parameters in place (names must match exactly)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(arrays):
        missing, extra = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
        raise ValueError(f"parameter names differ: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.from_numpy(np.asarray(arrays[name])))


def optimizer_arrays(optimizer: torch.optim.Optimizer) -> Arrays:
    """The optimizer's per-parameter state (Adam moments, step counters) as `<index>/<field>` arrays."""
    arrays: Arrays = {}
    for index, fields in optimizer.state_dict()["state"].items():
        for field, value in fields.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            arrays[f"{index}/{field}"] = tensor.detach().cpu().numpy().copy()
    return arrays


def load_optimizer_arrays(optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]) -> None:
    """Replace the optimizer's per-parameter state; its param_groups (lr, decay) stay as they are."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        index, field = key.split("/", 1)
        state.setdefault(int(index), {})[field] = torch.from_numpy(np.array(value))
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


# --- averaging ------------------------------------------------------------------------------


def _is_step_counter(key: str) -> bool:
    return key == "step" or key.endswith("/step")


def average_arrays(
    states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float] | None = None
) -> Arrays:
    """The (weighted) mean of several workers' arrays, key by key.

    Floating arrays are averaged in float64 and cast back to their dtype; step counters and
    integer arrays take the largest value instead (averaging a count is meaningless).
    """
    if not states:
        raise ValueError("nothing to average: no worker states")
    keys = set(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != keys:
            diff = sorted(keys.symmetric_difference(state))
            raise ValueError(f"worker {i} has different keys from worker 0: {diff[:3]}")
    if weights is None:
        weights = [1.0] * len(states)
    if len(weights) != len(states) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"weights must be {len(states)} non-negative numbers with a positive sum, got {weights}"
        )
    total = float(sum(weights))

    averaged: Arrays = {}
    for key in states[0]:
        values = [np.asarray(state[key]) for state in states]
        shapes = {v.shape for v in values}
        if len(shapes) != 1:
            raise ValueError(f"{key}: workers disagree on the shape: {sorted(shapes)}")
        first = values[0]
        if _is_step_counter(key) or not np.issubdtype(first.dtype, np.floating):
            averaged[key] = np.max(np.stack(values), axis=0).astype(first.dtype)
            continue
        mean = sum(w * v.astype(np.float64) for w, v in zip(weights, values, strict=True)) / total
        averaged[key] = np.asarray(mean, dtype=first.dtype)
    return averaged


# --- the wire format ------------------------------------------------------------------------


def pack(
    params: Mapping[str, np.ndarray], optimizer: Mapping[str, np.ndarray] | None = None, **info: object
) -> bytes:
    """Parameters, optional optimizer state and small JSON-able facts as one safetensors blob.

    safetensors rather than pickle: the bytes say exactly what they hold and can be read back
    without executing anything.
    """
    tensors = {_PARAMS_PREFIX + k: np.ascontiguousarray(v) for k, v in params.items()}
    for key, value in (optimizer or {}).items():
        tensors[_OPTIMIZER_PREFIX + key] = np.ascontiguousarray(value)
    return safetensors.numpy.save(tensors, metadata={"info": json.dumps(info)})


def unpack(blob: bytes) -> tuple[Arrays, Arrays, dict]:
    """The inverse of `pack`: (params, optimizer state ({} if none was packed), info)."""
    tensors = safetensors.numpy.load(blob)
    params = {k[len(_PARAMS_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_PARAMS_PREFIX)}
    optimizer = {
        k[len(_OPTIMIZER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_OPTIMIZER_PREFIX)
    }
    info = read_info(blob)
    return params, optimizer, info


def read_info(blob: bytes) -> dict:
    """The JSON facts stored in a safetensors blob's metadata under "info" (without loading tensors)."""
    # The safetensors header: 8-byte little-endian length, then JSON with "__metadata__".
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    return json.loads(header.get("__metadata__", {}).get("info", "{}"))
