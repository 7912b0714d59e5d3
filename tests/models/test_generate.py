"""Generation: seeded sampling, greedy decoding, context cropping, argument checks, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from spark_jobs.cli import app
from spark_jobs.common.errors import ConfigError, InputError
from spark_jobs.models import build_model
from spark_jobs.models.artifact import load_model, save_model
from spark_jobs.models.generate import generate, sample_next

PROMPT = "First Citizen:\n"


@pytest.fixture(scope="module", params=["gpt", "mlp"])
def model(request, make_config, vocab_size, embeddings):
    torch.manual_seed(11)
    return build_model(make_config(request.param), vocab_size, embeddings).eval()


def test_same_seed_same_text_other_seed_other_text(model, tokenizer):
    kwargs = dict(max_new_tokens=30, temperature=1.0, top_k=None)
    first = generate(model, tokenizer, PROMPT, seed=1, **kwargs)
    assert first.startswith(PROMPT) and len(first) > len(PROMPT)
    assert generate(model, tokenizer, PROMPT, seed=1, **kwargs) == first
    assert generate(model, tokenizer, PROMPT, seed=2, **kwargs) != first


def test_greedy_ignores_the_seed_and_follows_the_scores(model, tokenizer):
    a = generate(model, tokenizer, PROMPT, max_new_tokens=5, temperature=0, seed=1)
    b = generate(model, tokenizer, PROMPT, max_new_tokens=5, temperature=0, seed=99)
    assert a == b
    ids = tokenizer.encode(PROMPT).ids
    with torch.no_grad():
        best = model.next_token_scores(torch.tensor([ids])).argmax().item()
    first_step = generate(model, tokenizer, PROMPT, max_new_tokens=1, temperature=0)
    assert first_step == tokenizer.decode(ids + [best])


def test_long_prompts_are_cropped_to_the_window(model, tokenizer, sample_text):
    prompt = sample_text[:400]
    assert len(tokenizer.encode(prompt).ids) > model.window_size
    text = generate(model, tokenizer, prompt, max_new_tokens=20, seed=0)
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert generate(model, tokenizer, prompt, max_new_tokens=0) == prompt


def test_top_k_one_is_greedy():
    scores = torch.tensor([[0.1, 2.0, -1.0, 1.9], [3.0, 0.0, 0.0, 2.5]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_next(scores, 5.0, 1, generator).flatten().tolist() == [1, 0]
    # top-2 never draws outside the two best
    drawn = {tuple(sample_next(scores, 5.0, 2, generator).flatten().tolist()) for _ in range(50)}
    assert all(a in (1, 3) and b in (0, 3) for a, b in drawn)


def test_bad_arguments(model, tokenizer):
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, tokenizer, PROMPT, temperature=-0.1)
    with pytest.raises(ConfigError, match="top_k"):
        generate(model, tokenizer, PROMPT, top_k=0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(model, tokenizer, PROMPT, max_new_tokens=-1)
    with pytest.raises(InputError, match="tokenizes to no tokens"):
        generate(model, tokenizer, "")


@pytest.fixture(scope="module")
def saved_gpt(tmp_path_factory, make_config, tokenizer, vocab_size):
    torch.manual_seed(5)
    cfg = make_config("gpt")
    path = str(tmp_path_factory.mktemp("cli") / "model")
    save_model(build_model(cfg, vocab_size), cfg, path, tokenizer.to_str())
    return path


def test_cli_generate_prints_the_models_text(saved_gpt):
    args = ["--model", saved_gpt, "--prompt", "ROMEO:", "--max-new-tokens", "15", "--seed", "4"]
    proc = subprocess.run(
        [sys.executable, "-m", "spark_jobs.cli", "generate", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    model, tokenizer, _ = load_model(saved_gpt)
    expected = generate(model, tokenizer, "ROMEO:", max_new_tokens=15, seed=4)
    assert proc.stdout == expected + "\n"


def test_cli_generate_errors_are_one_line(saved_gpt, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "--model", str(tmp_path / "missing"), "--prompt", "hi"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: model config not found")
    assert "config.json" in result.output and len(result.output.strip().splitlines()) == 1

    result = runner.invoke(app, ["generate", "--model", saved_gpt, "--prompt", "hi", "--temperature", "-1"])
    assert result.exit_code == 2
    assert "temperature must be >= 0" in result.output
