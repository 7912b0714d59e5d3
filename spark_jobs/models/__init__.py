"""The models the pipeline trains, behind one interface.

Both models read the same batches, int64 windows of W+1 token ids, and return the same
`ModelOutput`, so the trainer, the metrics and the generator never ask which one they hold:

- `gpt`: a decoder-only causal transformer (nanoGPT style) predicting a distribution over
  the vocabulary at every one of the W positions.
- `mlp`: the seed's network, which regresses the next token's (frozen) embedding from the W
  context embeddings and is decoded by nearest neighbour over the embedding table.

Beside them: `artifact.py` (a trained model as a directory: safetensors + config.json +
tokenizer.json) and `generate.py` (text from a prompt, and the run's sample generations).
May import: spark_jobs.common.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
from torch import nn

from spark_jobs.common.config import ModelConfig
from spark_jobs.common.errors import ConfigError, InputError


class ModelOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable
    correct: torch.Tensor  # scalar int tensor: correct next-token predictions in the batch
    count: int  # predictions scored (B*W for gpt, B for mlp)


class DecoderModel(nn.Module, abc.ABC):
    """The base class of both models: what the trainer and the generator rely on."""

    kind: str  # "gpt" | "mlp"
    window_size: int
    vocab_size: int

    @abc.abstractmethod
    def forward(self, windows: torch.Tensor) -> ModelOutput:
        """windows: int64 [B, W+1] token ids → loss and top-1 accuracy counts."""

    @abc.abstractmethod
    def target_losses(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """windows: int64 [B, W+1] → (loss, correct) per prediction, each [B, P], P = len(target_offsets):
        the loss `forward` averages (nats for gpt) and whether the top-1 prediction was right."""

    @property
    @abc.abstractmethod
    def has_likelihood(self) -> bool:
        """Whether the loss is nats of a distribution over the vocabulary (then bits per character exist)."""

    @property
    @abc.abstractmethod
    def target_offsets(self) -> range:
        """Positions within a window whose token is predicted: 1..W for gpt, W for mlp."""

    @abc.abstractmethod
    def next_token_scores(self, context: torch.Tensor) -> torch.Tensor:
        """context: int64 [B, T], T <= W → [B, vocab] scores for the next token (higher is likelier)."""

    @abc.abstractmethod
    def flops_per_sample(self) -> int:
        """Forward + backward FLOPs for one window, for FLOP-utilisation figures."""

    def token_tables(self) -> list[nn.Parameter]:
        """Trained tables of per-token vectors outside nn.Embedding (the mlp's), which the
        optimizer leaves undecayed as it does embeddings."""
        return []

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The weight matrices inside the network, between the token tables and the output head:
        what `training.optimizer: muon` orthogonalizes (the rest keeps AdamW)."""
        return []

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def build_model(cfg: ModelConfig, vocab_size: int, embeddings: torch.Tensor | None = None) -> DecoderModel:
    """The model `cfg.kind` describes; `embeddings` ([vocab_size, embedding_size]) feed the
    mlp's frozen input table (required) or the gpt's initial token table (if
    `cfg.init_from_embeddings`)."""
    if vocab_size <= 0:
        raise ConfigError(f"vocab_size must be positive, got {vocab_size}")
    if embeddings is not None:
        expected = (vocab_size, cfg.embedding_size)
        if tuple(embeddings.shape) != expected:
            raise InputError(
                f"embeddings have shape {tuple(embeddings.shape)}, expected {expected} "
                "(vocab_size, model.embedding_size)"
            )
        if not torch.isfinite(embeddings).all():
            raise InputError("embeddings contain NaN or inf values")

    if cfg.kind == "gpt":
        from spark_jobs.models.gpt import GPT

        if cfg.init_from_embeddings and embeddings is None:
            raise ConfigError("model.init_from_embeddings is true but no embeddings were given")
        return GPT(cfg, vocab_size, embeddings if cfg.init_from_embeddings else None)
    if cfg.kind == "mlp":
        from spark_jobs.models.mlp import MLPDecoder

        if embeddings is None:
            raise ConfigError("model.kind=mlp needs the preprocess step's embeddings (none were given)")
        return MLPDecoder(cfg, vocab_size, embeddings)
    raise ConfigError(f"model.kind: unknown model {cfg.kind!r} (expected 'gpt' or 'mlp')")


__all__ = ["DecoderModel", "ModelOutput", "build_model"]
