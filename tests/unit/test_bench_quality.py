"""bench/quality.py's own scoring: what its figures are computed over (the bench itself runs for
minutes and is not part of the suite)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("val_chars", [1_000, 1_003, 1_007])  # the last window on the stride, or not
def test_the_char_baseline_scores_every_validation_character_but_the_first_once(
    quality, small_corpus, val_chars
):
    text = small_corpus.read_text(encoding="utf-8")
    train_chars = len(text) - val_chars
    result = quality.char_nanogpt(str(small_corpus), train_chars, budget_s=5.0, iterations=0)
    assert result["val_chars_scored"] == val_chars - 1
    # Untrained (GPT-2 init, logits near zero): close to uniform over the alphabet.
    assert result["val_bits_per_char"] == pytest.approx(math.log2(len(set(text))), abs=0.05)
