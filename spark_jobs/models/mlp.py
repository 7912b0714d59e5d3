"""The seed's decoder: a dense network from W context embeddings to the next token's embedding.

windows [B, W+1] → context = windows[:, :W], target = windows[:, W] → frozen token
embeddings + sinusoidal positional encoding, concatenated to [B, W*D] → num_layers dense
ReLU layers of hidden_size → linear to D → MSE (or cosine) loss to the target's embedding.
A predicted embedding becomes a token by nearest neighbour (cosine) over the embedding table,
not by an argmax over outputs the network never trained (the seed's flaw).

With `mlp_loss: softmax` the predicted embedding is scored instead against every token: dot
products with the frozen table (or, with `mlp_train_output_table`, a trained copy of it) plus
a learned bias per token, under cross-entropy; that gives the model a likelihood. With
`mlp_train_input_table` the input table is trained too (from Word2Vec), and the softmax scores
against it (tied): the network can then tell tokens apart that Word2Vec put close together.

Contexts shorter than W (generation from a short prompt) are left-padded with zero vectors:
the padded positions carry their positional encoding but no token, and the real tokens keep
the positions nearest the prediction, as in training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spark_jobs.common.config import ModelConfig
from spark_jobs.common.errors import InputError
from spark_jobs.models import DecoderModel, ModelOutput


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The Transformer paper's positional encoding: [length, dim], sin on even dims, cos on odd."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return pe


class MLPDecoder(DecoderModel):
    kind = "mlp"

    def __init__(self, cfg: ModelConfig, vocab_size: int, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.window_size = cfg.window_size
        self.vocab_size = vocab_size
        D = cfg.embedding_size
        # A buffer, not a parameter: the input table is the previous phase's output and stays
        # frozen (unless mlp_train_input_table); either way it is saved with the weights, so a
        # model directory is self-contained.
        table = embeddings.detach().clone().float()
        if cfg.mlp_train_input_table:
            self.embeddings = nn.Parameter(table)
        else:
            self.register_buffer("embeddings", table)
        self.register_buffer("positions", sinusoidal_positions(cfg.window_size, D), persistent=False)

        layers: list[nn.Module] = []
        width = cfg.window_size * D
        for _ in range(cfg.num_layers):
            layers += [nn.Linear(width, cfg.hidden_size), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden_size
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, D)
        if self.has_likelihood:
            # A bias per token carries its frequency, which dot products with a fixed table
            # cannot; the table scored against is the frozen one or a trained copy of it.
            self.token_bias = nn.Parameter(torch.zeros(vocab_size))
            if cfg.mlp_train_output_table:
                self.output_table = nn.Parameter(embeddings.detach().clone().float())

    def token_tables(self) -> list[nn.Parameter]:
        tables = (self.embeddings, getattr(self, "output_table", None))
        return [t for t in tables if isinstance(t, nn.Parameter)]

    def hidden_matrices(self) -> list[nn.Parameter]:
        # The first layer reads the concatenated token embeddings: an input layer, which Muon's
        # authors leave to AdamW (and, W*D wide, the costliest to orthogonalize).
        return [m.weight for m in self.hidden if isinstance(m, nn.Linear)][1:]

    def predict_embedding(self, context: torch.Tensor) -> torch.Tensor:
        """context [B, T], T <= W → predicted next-token embedding [B, D]."""
        B, T = context.shape
        if T > self.window_size:
            raise InputError(f"context of {T} tokens is longer than model.window_size={self.window_size}")
        x = self.embeddings[context]
        if T < self.window_size:
            x = torch.cat([x.new_zeros(B, self.window_size - T, x.shape[-1]), x], dim=1)
        x = x + self.positions
        return self.out(self.hidden(x.flatten(1)))

    def similarities(self, predicted: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each predicted embedding to every token's: [B, vocab]."""
        return F.normalize(predicted, dim=-1) @ F.normalize(self.embeddings, dim=-1).T

    @property
    def has_likelihood(self) -> bool:
        return self.cfg.mlp_loss == "softmax"

    def scores(self, predicted: torch.Tensor) -> torch.Tensor:
        """Next-token scores [B, vocab]: logits (dot products with the table) under the softmax
        loss, cosine similarities (nearest-neighbour decoding) under the regression losses."""
        if self.has_likelihood:
            table = self.output_table if self.cfg.mlp_train_output_table else self.embeddings
            return predicted @ table.T + self.token_bias
        return self.similarities(predicted)

    def _losses(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-window loss: nats under softmax; MSE or 1 - cosine to the target's embedding."""
        if self.cfg.mlp_loss == "softmax":
            return F.cross_entropy(self.scores(predicted), target, reduction="none")
        wanted = self.embeddings[target]
        if self.cfg.mlp_loss == "mse":
            return (predicted - wanted).pow(2).mean(dim=-1)
        return 1.0 - F.cosine_similarity(predicted, wanted, dim=-1)

    def forward(self, windows: torch.Tensor) -> ModelOutput:
        W = self.window_size
        if windows.shape[1] != W + 1:
            raise InputError(f"mlp expects windows of {W + 1} ids (window_size + 1), got {windows.shape[1]}")
        context, target = windows[:, :W], windows[:, W]
        predicted = self.predict_embedding(context)
        loss = self._losses(predicted, target).mean()
        with torch.no_grad():
            correct = (self.scores(predicted).argmax(dim=-1) == target).sum()
        return ModelOutput(loss, correct, target.numel())

    def target_losses(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W = self.window_size
        target = windows[:, W]
        predicted = self.predict_embedding(windows[:, :W])
        correct = self.scores(predicted).argmax(dim=-1) == target
        return self._losses(predicted, target).unsqueeze(1), correct.unsqueeze(1)

    @property
    def target_offsets(self) -> range:
        return range(self.window_size, self.window_size + 1)  # next-token top-1 at the last position

    def next_token_scores(self, context: torch.Tensor) -> torch.Tensor:
        return self.scores(self.predict_embedding(context[:, -self.window_size :]))

    def flops_per_sample(self) -> int:
        # 2 FLOPs per multiply-add; backward costs about twice the forward. The nearest-
        # neighbour decode (one [D] x [D, vocab] product) runs forward only.
        matmul = sum(m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear))
        return int(3 * 2 * matmul + 2 * self.cfg.embedding_size * self.vocab_size)
