"""Muon for the hidden weight matrices, AdamW for every other parameter, as one optimizer.

Muon (Keller Jordan, 2024: "MomentUm Orthogonalized by Newton-Schulz") keeps SGD's Nesterov
momentum for a weight matrix but steps along the nearest semi-orthogonal matrix to it: every
direction of the update gets the same size, so directions that plain gradients keep small (rare
features) move as fast as the dominant ones. Five Newton-Schulz iterations approximate the
orthogonalization with matmuls only.

It suits the matrices inside the network. Token tables, position tables, the output head,
biases and norm gains are not hidden matrices and keep AdamW (the Muon authors' split). The size
of a Muon update is matched to AdamW's typical RMS (Moonshot AI's "Muon is Scalable for LLM
Training": 0.2 x sqrt(max(rows, cols))), so one learning rate, one schedule and one weight decay
drive both halves, and the AdamW settings carry over.

One `torch.optim.Optimizer` (groups marked `use_muon`) so that checkpoints, resumption and
parameter averaging see one state dict, as with AdamW: `momentum_buffer` per Muon matrix,
`step`/`exp_avg`/`exp_avg_sq` per AdamW parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

# The quintic iteration's coefficients, chosen for the steepest slope at zero (Jordan's Muon):
# it does not converge to exactly U V^T, but to singular values in ~[0.7, 1.2], which trains as well.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
RMS_MATCH = 0.2


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to `matrix` (approximately), by Newton-Schulz iterations."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.T if tall else matrix  # iterate on the wide side: the Gram matrix is the small one
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the groups with `use_muon=True` (2-D parameters), AdamW on the others."""

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        momentum: float = 0.95,
        ns_steps: int = 5,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            momentum=momentum,
            ns_steps=ns_steps,
            weight_decay=0.0,
            use_muon=False,
        )
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError(
                    "Muon orthogonalizes matrices: a use_muon group holds a parameter that is not 2-D"
                )

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            update = self._muon_update if group["use_muon"] else self._adamw_update
            for param in group["params"]:
                if param.grad is None:
                    continue
                param.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled weight decay
                update(param, self.state[param], group)

    @staticmethod
    def _muon_update(param: torch.Tensor, state: dict, group: dict) -> None:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        buffer, beta = state["momentum_buffer"], group["momentum"]
        buffer.lerp_(param.grad, 1 - beta)
        nesterov = param.grad.lerp(buffer, beta)
        rows, cols = param.shape
        scale = RMS_MATCH * math.sqrt(max(rows, cols))
        param.add_(orthogonalize(nesterov, group["ns_steps"]), alpha=-group["lr"] * scale)

    @staticmethod
    def _adamw_update(param: torch.Tensor, state: dict, group: dict) -> None:
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        step, (beta1, beta2) = float(state["step"]), group["betas"]
        grad = param.grad
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        param.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1**step))
