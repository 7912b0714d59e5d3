"""A decoder-only causal transformer, after nanoGPT's model.py, in the order data flows.

windows [B, W+1] → x = windows[:, :-1], y = windows[:, 1:] → token + learned position
embeddings → num_layers pre-LayerNorm blocks (causal self-attention, with rotary positions if
model.rotary; MLP) → final LayerNorm → logits through the tied embedding table → cross-entropy
on all W positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spark_jobs.common.config import ModelConfig
from spark_jobs.common.errors import InputError
from spark_jobs.models import DecoderModel, ModelOutput

INIT_STD = 0.02


class Rotary(nn.Module):
    """Rotary position embedding (RoPE; Su et al. 2021, as in GPT-NeoX and Llama): each head's
    query and key features, in pairs (i, i + head_size/2), are rotated by an angle proportional
    to the position, so that their dot product depends on how far apart the two tokens are.
    It has no parameters: the angles are a buffer, rebuilt with the model (not saved)."""

    def __init__(self, head_size: int, window_size: int, base: float = 10000.0) -> None:
        super().__init__()
        frequencies = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        angles = torch.outer(torch.arange(window_size, dtype=torch.float32), frequencies)
        self.register_buffer("cos", angles.cos(), persistent=False)  # [W, head_size/2]
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, heads, T, head_size] → the same, rotated by position."""
        T = x.shape[2]
        cos, sin = self.cos[:T], self.sin[:T]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(cfg.embedding_size, 3 * cfg.embedding_size)
        self.c_proj = nn.Linear(cfg.embedding_size, cfg.embedding_size)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.rotary = Rotary(cfg.embedding_size // cfg.num_heads, cfg.window_size) if cfg.rotary else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        # the fused kernel masks the future and picks flash/memory-efficient paths where it can
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.embedding_size, cfg.hidden_size)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.embedding_size)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.embedding_size)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(DecoderModel):
    kind = "gpt"

    def __init__(self, cfg: ModelConfig, vocab_size: int, embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.window_size = cfg.window_size
        self.vocab_size = vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, cfg.embedding_size),
                wpe=nn.Embedding(cfg.window_size, cfg.embedding_size),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)]),
                ln_f=nn.LayerNorm(cfg.embedding_size),
            )
        )
        self.lm_head = nn.Linear(cfg.embedding_size, vocab_size, bias=False)
        # weight tying: the input table is also the output projection (fewer parameters,
        # and a token's meaning is learnt from both ends)
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # scaled init of the residual projections, per the GPT-2 paper: keeps the residual
        # stream's variance from growing with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.num_layers))
        if embeddings is not None:
            self._init_token_table(embeddings)

    def hidden_matrices(self) -> list[nn.Parameter]:
        return [m.weight for m in self.transformer.h.modules() if isinstance(m, nn.Linear)]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    @torch.no_grad()
    def _init_token_table(self, embeddings: torch.Tensor) -> None:
        # Word2Vec vectors have norms of several units; through the tied output head they
        # would start the model with huge, confident logits. Keep their directions, rescale
        # to the std the rest of the network is initialised with.
        table = embeddings.to(self.lm_head.weight.dtype)
        table = table - table.mean()
        std = table.std()
        if std > 0:
            table = table * (INIT_STD / std)
        self.transformer.wte.weight.copy_(table)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] → logits [B, T, vocab]."""
        T = idx.shape[1]
        if T > self.window_size:
            raise InputError(f"sequence of {T} tokens is longer than model.window_size={self.window_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    def forward(self, windows: torch.Tensor) -> ModelOutput:
        x, y = windows[:, :-1], windows[:, 1:]
        logits = self.logits(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        with torch.no_grad():
            correct = (logits.argmax(dim=-1) == y).sum()
        return ModelOutput(loss, correct, y.numel())

    def target_losses(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = windows[:, :-1], windows[:, 1:]
        logits = self.logits(x)
        nats = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        return nats, logits.argmax(dim=-1) == y

    @property
    def has_likelihood(self) -> bool:
        return True

    @property
    def target_offsets(self) -> range:
        return range(1, self.window_size + 1)  # next-token top-1 at every position

    def next_token_scores(self, context: torch.Tensor) -> torch.Tensor:
        context = context[:, -self.window_size :]  # the model has learnt W positions only
        return self.logits(context)[:, -1, :]

    def flops_per_sample(self) -> int:
        # nanoGPT's (PaLM appendix B) estimate: 6 FLOPs per parameter per token for the
        # matmuls forward and backward, plus the attention scores and mixing, W tokens per window.
        # The position table is a lookup, not a matmul; the tied token table counts once, as the head.
        n = self.num_parameters() - self.transformer.wpe.weight.numel()
        L, C, T = self.cfg.num_layers, self.cfg.embedding_size, self.window_size
        return int((6 * n + 12 * L * C * T) * T)
