"""An exponential moving average of the weights (Polyak averaging): the model training returns
when `training.ema_decay` is set.

Late in training the weights keep moving around a minimum with the noise of each minibatch;
their average over the last ~1/(1 - decay) steps lies closer to it than the last step's
weights do. On the local gpt (1,250 steps) the average at decay 0.995 scores about 0.016
bits/char better on the whole validation split, for a fraction of a millisecond per step.

The average catches up with the weights every UPDATE_EVERY steps (after the strategy's call
that reaches them: a step, or a parameter-averaging round of K steps), weighting them as that
many single-step updates would (decay**n). Periodic evaluations score the weights being
trained; the final model, its full-split figures and its samples are the average. Checkpoints
keep the average and the step it is at, so a resumed run ends with the same one.
"""

from __future__ import annotations

import torch
from torch import nn

from spark_jobs.common.errors import TrainingError

# Updating every step would cost the mlp's 15-ms steps 1.6 ms each (2.4 M parameters); every 5th
# step samples the weights 40 times over the average's ~200-step span at decay 0.995.
UPDATE_EVERY = 5


class WeightAverage:
    """The running average of a model's parameters (tied ones once), by parameter name."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.step = 0  # the training step the average has caught up with
        named = list(model.named_parameters())  # a tied table is listed once
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def follow(self, step: int) -> None:
        """Training reached `step`: at least UPDATE_EVERY steps since the last update, move the
        average towards the current weights as that many single-step updates would, with the
        weights held at their current values."""
        steps = step - self.step
        if steps >= UPDATE_EVERY:
            weight = 1.0 - self.decay**steps
            torch._foreach_lerp_(self.average, [p.detach() for p in self.params], weight)
            self.step = step

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.average, strict=True))

    def load_state_dict(self, saved: dict[str, torch.Tensor], source: str) -> None:
        _copy_by_name(saved, self.state_dict(), source)


def load_average_into(model: nn.Module, average: dict[str, torch.Tensor], source: str) -> None:
    """Put a saved average in place of the model's parameters (its buffers stay)."""
    _copy_by_name(average, dict(model.named_parameters()), source)


@torch.no_grad()
def _copy_by_name(saved: dict[str, torch.Tensor], into: dict[str, torch.Tensor], source: str) -> None:
    if set(saved) != set(into):
        raise TrainingError(
            f"{source}: its weight average holds {sorted(saved)}, the model has {sorted(into)}"
        )
    for name, tensor in into.items():
        tensor.copy_(saved[name])
