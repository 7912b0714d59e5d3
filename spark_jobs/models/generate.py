"""Text generation from a prompt: one token at a time, from either model's next-token scores.

gpt scores are logits; mlp scores are cosine similarities of the predicted embedding to every
token's embedding (nearest-neighbour decoding). Either way the next token is drawn from
softmax(scores / temperature) over the top_k highest scores, or is the argmax when
temperature is 0. Cosine similarities lie in [-1, 1], so the mlp wants a much lower
temperature (e.g. 0.05) than the gpt for the same sharpness.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from tokenizers import Tokenizer

from spark_jobs.common import storage
from spark_jobs.common.config import PipelineConfig
from spark_jobs.common.errors import ConfigError, InputError
from spark_jobs.models import DecoderModel

log = logging.getLogger(__name__)


def _check_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:  # also refuses NaN
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1 (or None for the whole vocabulary), got {top_k}")


def sample_next(
    scores: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator
) -> torch.Tensor:
    """scores [B, vocab] → the next token ids [B, 1]."""
    if temperature == 0:
        return scores.argmax(dim=-1, keepdim=True)
    scores = scores.float() / temperature
    if top_k is not None and top_k < scores.size(-1):
        kth = torch.topk(scores, top_k, dim=-1).values[:, [-1]]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: DecoderModel,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """The prompt followed by up to `max_new_tokens` generated tokens, decoded. Same seed, same text."""
    _check_args(max_new_tokens, temperature, top_k)
    prompt_ids = tokenizer.encode(prompt).ids
    if not prompt_ids:
        raise InputError(f"the prompt {prompt!r} tokenizes to no tokens; give some text")
    if max(prompt_ids) >= model.vocab_size:
        raise InputError(
            f"the prompt has token id {max(prompt_ids)} but the model's vocabulary has {model.vocab_size}"
        )

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            # the model only knows window_size positions: condition on the most recent ones
            scores = model.next_token_scores(idx[:, -model.window_size :])
            idx = torch.cat([idx, sample_next(scores, temperature, top_k, generator)], dim=1)
    finally:
        model.train(was_training)

    new_ids = idx[0, len(prompt_ids) :].tolist()
    # Decoding all ids at once keeps a multi-byte character that straddles the prompt's end
    # intact; fall back to prompt + continuation if the prompt does not round-trip exactly.
    text = tokenizer.decode(prompt_ids + new_ids)
    if text.startswith(prompt):
        return text
    return prompt + tokenizer.decode(new_ids)


# mlp scores are cosine similarities in [-1, 1]: it needs a far lower temperature than gpt logits.
SAMPLE_TEMPERATURE = {"gpt": 0.8, "mlp": 0.05}


def sample_generations(
    model: DecoderModel, tokenizer_uri: str, config: PipelineConfig
) -> list[dict[str, Any]]:
    """Continue each of training.sample_prompts by training.sample_tokens tokens (seeded)."""
    tokenizer = Tokenizer.from_str(storage.read_text(tokenizer_uri))
    temperature = SAMPLE_TEMPERATURE.get(model.kind, 0.8)
    samples = []
    for prompt in config.training.sample_prompts:
        text = generate(
            model,
            tokenizer,
            prompt,
            config.training.sample_tokens,
            temperature,
            top_k=50,
            seed=config.training.seed,
        )
        samples.append(
            {"prompt": prompt, "text": text, "temperature": temperature, "seed": config.training.seed}
        )
    return samples
