"""Fixtures for the model tests: a tiny byte-level BPE tokenizer trained in-test, tiny configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from spark_jobs.common.config import ModelConfig

CORPUS = Path(__file__).resolve().parents[2] / "data" / "tinyshakespeare.txt"
VOCAB_SIZE = 300
WINDOW = 16
EMBEDDING = 32


@pytest.fixture(scope="session")
def sample_text() -> str:
    """The first ~120 lines of Tiny Shakespeare."""
    lines = CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)[:120]
    return "".join(lines)


@pytest.fixture(scope="session")
def tokenizer(sample_text: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_text.splitlines(keepends=True), trainer)
    return tok


@pytest.fixture(scope="session")
def vocab_size(tokenizer: Tokenizer) -> int:
    return tokenizer.get_vocab_size()


@pytest.fixture(scope="session")
def embeddings(vocab_size: int) -> torch.Tensor:
    """Stand-in for the preprocess step's Word2Vec table: random but fixed, with word2vec-like norms."""
    return torch.randn(vocab_size, EMBEDDING, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="session")
def make_config() -> Callable[..., ModelConfig]:
    """make_config(kind, **overrides): a model small enough to train in a test."""

    def make(kind: str, **overrides: object) -> ModelConfig:
        fields: dict[str, object] = dict(
            kind=kind, window_size=WINDOW, embedding_size=EMBEDDING, hidden_size=64, num_layers=2, num_heads=4
        )
        fields.update(overrides)
        return ModelConfig(**fields)

    return make


@pytest.fixture
def windows(tokenizer: Tokenizer, sample_text: str) -> torch.Tensor:
    """Eight real windows of W+1 ids from the sample text."""
    ids = torch.tensor(tokenizer.encode(sample_text).ids, dtype=torch.long)
    return ids.unfold(0, WINDOW + 1, 7)[:8].contiguous()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are tiny: one thread is as fast, and on a loaded 2-core machine two threads
    spinning at OpenMP barriers made one test 20x slower (measured: 4.5 s vs 89 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
