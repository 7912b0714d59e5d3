"""The optimizer and the learning-rate schedule, shared by every training strategy."""

from __future__ import annotations

import math

import torch
from torch import nn

from spark_jobs.common.config import TrainingConfig
from spark_jobs.models import DecoderModel
from spark_jobs.training.muon import MuonAdamW

# Modules whose weights are not decayed: shrinking embeddings or norm gains toward zero
# only hurts (the GPT-2 / nanoGPT convention).
_NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm)


def make_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW (or Adam) over the trainable parameters, without decay on biases, norms, embeddings;
    with `optimizer: muon`, Muon for the model's hidden matrices and AdamW for the rest."""
    no_decay_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, _NO_DECAY_MODULES)
        for p in m.parameters(recurse=False)
    }
    muon_ids = set()
    if isinstance(model, DecoderModel):
        no_decay_ids |= {id(p) for p in model.token_tables()}
        if cfg.optimizer == "muon":
            muon_ids = {id(p) for p in model.hidden_matrices() if p.requires_grad}
    matrices, decay, no_decay, seen = [], [], [], set()
    for param in model.parameters():  # tied weights appear once
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in muon_ids:
            matrices.append(param)
        elif param.dim() < 2 or id(param) in no_decay_ids:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "muon":
        groups.insert(0, {"params": matrices, "weight_decay": cfg.weight_decay, "use_muon": True})
        return MuonAdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95))
    optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # foreach=False keeps the update order fixed, so runs (and resumed runs) are bit-identical.
    return optimizer_class(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), foreach=False)


def learning_rate_at(step: int, cfg: TrainingConfig, total_steps: int) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_learning_rate` (or constant)."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_schedule == "constant" or total_steps <= cfg.warmup_steps:
        return cfg.learning_rate
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_learning_rate + cosine * (cfg.learning_rate - cfg.min_learning_rate)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
