"""Checkpoints: everything needed to continue a run exactly, without pickle.

<run>/checkpoints/step-<n>/
    model.safetensors      the model's state dict
    optimizer.safetensors  the optimizer's per-parameter tensors ("<param index>.<name>")
    rng.safetensors        torch's CPU RNG state
    average.safetensors    the weights' moving average, when training.ema_decay is set
    state.json             step, data position, schedule and early-stop counters, the optimizer's
                           param groups, and the sha256 of each file above (written last)
    _SUCCESS               via storage.step_output: a checkpoint without it never counts

A checkpoint that fails to load (missing marker, bad JSON, hash mismatch, unreadable
tensors) is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from spark_jobs.common import finite_json, storage
from spark_jobs.common.errors import TrainingError

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
AVERAGE_FILE = "average.safetensors"


@dataclass
class Checkpoint:
    uri: str
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    rng_state: torch.Tensor
    state: dict[str, Any] = field(default_factory=dict)  # everything from state.json
    average: dict[str, torch.Tensor] | None = None  # the weights' moving average, if kept

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        load_optimizer_state(optimizer, self.optimizer_tensors, self.state["optimizer"])


# --- optimizer state as tensors + JSON --------------------------------------------------


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state dict into named tensors and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --- writing ----------------------------------------------------------------------------


def checkpoint_uri(checkpoint_dir: str, step: int) -> str:
    return storage.join(checkpoint_dir, f"step-{step}")


def list_checkpoints(checkpoint_dir: str) -> list[tuple[int, str]]:
    """(step, uri) of every checkpoint folder, oldest first (complete or not)."""
    found = []
    for name in storage.list_dir(checkpoint_dir):
        match = _STEP_DIR.match(name)
        if match:
            found.append((int(match.group(1)), storage.join(checkpoint_dir, name)))
    return sorted(found)


def save_checkpoint(
    checkpoint_dir: str,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
    average: dict[str, torch.Tensor] | None = None,
) -> str:
    """Write step-<step>/ atomically, then delete all but the newest `keep` checkpoints."""
    uri = checkpoint_uri(checkpoint_dir, step)
    optimizer_tensors, optimizer_meta = optimizer_state_to_tensors(optimizer)
    blobs = {
        # clone: tied weights share storage, which safetensors refuses; stored twice they reload tied
        "model.safetensors": save_tensors({k: v.detach().cpu().clone() for k, v in model_state.items()}),
        "optimizer.safetensors": save_tensors(optimizer_tensors),
        "rng.safetensors": save_tensors({"torch": torch.get_rng_state()}),
    }
    if average is not None:
        blobs[AVERAGE_FILE] = save_tensors({k: v.detach().cpu().contiguous() for k, v in average.items()})
    record = dict(state, step=step, optimizer=optimizer_meta)
    record["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    with storage.step_output(uri) as out:
        for name, data in blobs.items():
            storage.write_bytes(storage.join(out, name), data)
        state_uri = storage.join(out, "state.json")
        storage.write_text(state_uri, finite_json.dumps(record, state_uri, indent=1))
    for _, old in list_checkpoints(checkpoint_dir)[:-keep]:
        storage.delete(old)
    log.info("checkpoint step %d → %s", step, uri)
    return uri


# --- reading ----------------------------------------------------------------------------


def load_checkpoint(uri: str) -> Checkpoint:
    """Load and verify one checkpoint; raises TrainingError saying what is wrong."""
    if not storage.is_complete(uri):
        raise TrainingError(f"{uri}: incomplete (no {storage.SUCCESS_MARKER})")
    try:
        state = json.loads(storage.read_text(storage.join(uri, "state.json")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{uri}/state.json: not valid JSON ({exc})") from None
    tensors = {}
    for name in TENSOR_FILES + ((AVERAGE_FILE,) if AVERAGE_FILE in state.get("sha256", {}) else ()):
        data = storage.read_bytes(storage.join(uri, name))
        if hashlib.sha256(data).hexdigest() != state.get("sha256", {}).get(name):
            raise TrainingError(f"{uri}/{name}: checksum mismatch (file corrupt or truncated)")
        try:
            tensors[name] = load_tensors(data)
        except Exception as exc:  # safetensors raises its own error types
            raise TrainingError(f"{uri}/{name}: unreadable ({exc})") from None
    return Checkpoint(
        uri=uri,
        step=int(state["step"]),
        model_state=tensors["model.safetensors"],
        optimizer_tensors=tensors["optimizer.safetensors"],
        rng_state=tensors["rng.safetensors"]["torch"],
        state=state,
        average=tensors.get(AVERAGE_FILE),
    )


def load_latest(checkpoint_dir: str) -> Checkpoint | None:
    """The newest valid checkpoint; a corrupt one is skipped with a warning. None if there are none.

    Raises TrainingError when checkpoints exist but none of them loads.
    """
    candidates = list_checkpoints(checkpoint_dir)
    problems = []
    for step, uri in reversed(candidates):
        try:
            checkpoint = load_checkpoint(uri)
        except Exception as exc:  # any failure to read means: try the previous one
            problems.append(str(exc))
            log.warning("checkpoint step-%d is unusable, falling back to the previous one: %s", step, exc)
            continue
        return checkpoint
    if candidates:
        raise TrainingError(f"no valid checkpoint in {checkpoint_dir}: " + "; ".join(problems))
    return None


def has_checkpoints(checkpoint_dir: str) -> bool:
    return bool(list_checkpoints(checkpoint_dir))
