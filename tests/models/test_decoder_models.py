"""Both models behind the DecoderModel interface: shapes, gradients, causality, decoding, learning."""

from __future__ import annotations

import pytest
import torch

from spark_jobs.common.config import ModelConfig, TrainingConfig
from spark_jobs.common.errors import ConfigError, InputError
from spark_jobs.models import DecoderModel, ModelOutput, build_model
from spark_jobs.models.gpt import Rotary
from spark_jobs.models.mlp import sinusoidal_positions
from spark_jobs.training.optim import make_optimizer

WINDOW = 16


@pytest.mark.parametrize("kind", ["gpt", "mlp"])
def test_forward_shapes_and_backward(kind, make_config, vocab_size, embeddings, windows):
    torch.manual_seed(0)
    model = build_model(make_config(kind), vocab_size, embeddings)
    assert isinstance(model, DecoderModel)
    assert (model.kind, model.window_size, model.vocab_size) == (kind, WINDOW, vocab_size)

    out = model(windows)
    assert isinstance(out, ModelOutput)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    expected_count = windows.shape[0] * WINDOW if kind == "gpt" else windows.shape[0]
    assert out.count == expected_count
    assert out.correct.dtype == torch.int64 and 0 <= int(out.correct) <= out.count

    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)

    for T in (1, 5, WINDOW, WINDOW + 4):  # longer than the window is cropped to its last W tokens
        scores = model.next_token_scores(windows[:3, :T] if T <= WINDOW else windows[:3].repeat(1, 2)[:, :T])
        assert scores.shape == (3, vocab_size)
        assert torch.isfinite(scores).all()
    assert model.flops_per_sample() > 0


@pytest.mark.parametrize("rotary", [False, True])
def test_gpt_is_causal(rotary, make_config, vocab_size, windows):
    torch.manual_seed(0)
    model = build_model(make_config("gpt", rotary=rotary), vocab_size).eval()
    x = windows[:, :WINDOW]
    changed = x.clone()
    t = 9
    changed[:, t] = (changed[:, t] + 1) % vocab_size
    with torch.no_grad():
        before, after = model.logits(x), model.logits(changed)
    torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=1e-6)
    assert (before[:, t:] - after[:, t:]).abs().max() > 1e-4  # the change is visible from t on


def test_rotary_scores_depend_on_the_distance_between_tokens():
    torch.manual_seed(0)
    head_size, window = 8, 16
    rotary = Rotary(head_size, window)
    q, k = torch.randn(head_size), torch.randn(head_size)

    def score(i: int, j: int) -> float:
        # q at position i, k at position j, in one [1, 1, T, head_size] sequence each
        qs, ks = torch.zeros(1, 1, window, head_size), torch.zeros(1, 1, window, head_size)
        qs[0, 0, i], ks[0, 0, j] = q, k
        return float(rotary(qs)[0, 0, i] @ rotary(ks)[0, 0, j])

    assert score(5, 2) == pytest.approx(score(12, 9), abs=1e-5)  # same distance, same score
    assert score(3, 3) == pytest.approx(float(q @ k), abs=1e-5)  # no distance, no rotation
    assert abs(score(5, 2) - score(5, 0)) > 1e-3  # another distance, another score
    # a rotation: lengths are kept
    x = torch.randn(2, 3, window, head_size)
    torch.testing.assert_close(rotary(x).norm(dim=-1), x.norm(dim=-1))
    # no parameters, and nothing in the state dict: checkpoints and model files do not change
    model = build_model(ModelConfig(kind="gpt", window_size=window, embedding_size=32, num_heads=4,
                                    num_layers=1, rotary=True), 50)  # fmt: skip
    plain = build_model(ModelConfig(kind="gpt", window_size=window, embedding_size=32, num_heads=4,
                                    num_layers=1), 50)  # fmt: skip
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert model.num_parameters() == plain.num_parameters()


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ValueError, match=r"head size .* = 5\) must be even"):
        ModelConfig(kind="gpt", embedding_size=20, num_heads=4, rotary=True)
    ModelConfig(kind="gpt", embedding_size=20, num_heads=4)  # without rotary an odd head is fine


def test_gpt_ties_embeddings_and_scales_init(make_config, vocab_size, embeddings):
    model = build_model(make_config("gpt", init_from_embeddings=True), vocab_size, embeddings)
    assert model.transformer.wte.weight is model.lm_head.weight
    table = model.transformer.wte.weight.detach()
    assert table.std().item() == pytest.approx(0.02, rel=0.05)
    # same directions as the given vectors (up to the mean shift and the scale)
    cosine = torch.nn.functional.cosine_similarity(table, embeddings - embeddings.mean(), dim=-1)
    assert cosine.min() > 0.999
    # a parameter count that counts the tied table once: 6 FLOPs per parameter per token dominate
    n = sum(p.numel() for p in model.parameters())
    assert n == model.num_parameters()
    assert 6 * n * WINDOW <= model.flops_per_sample() <= 8 * n * WINDOW


def test_mlp_input_table_is_frozen_and_positional(make_config, vocab_size, embeddings):
    model = build_model(make_config("mlp"), vocab_size, embeddings)
    assert "embeddings" in dict(model.named_buffers())
    assert all(p is not model.embeddings for p in model.parameters())
    torch.testing.assert_close(model.embeddings, embeddings)
    pe = sinusoidal_positions(WINDOW, 32)
    assert pe[0, 0::2].abs().max() == 0 and (pe[0, 1::2] == 1).all()  # sin(0)=0, cos(0)=1
    torch.testing.assert_close(pe[3, 0], torch.sin(torch.tensor(3.0)))


def test_mlp_trained_input_table_is_tied_to_the_softmax(make_config, vocab_size, embeddings, windows):
    """mlp_train_input_table: the table starts as the given one, is trained, and is what the
    softmax scores against (tied). test_model_io checks that a saved one reloads as trained."""
    model = build_model(
        make_config("mlp", mlp_loss="softmax", mlp_train_input_table=True), vocab_size, embeddings
    )
    parameters = dict(model.named_parameters())
    assert "embeddings" in parameters and "output_table" not in parameters
    torch.testing.assert_close(model.embeddings.detach(), embeddings.float())
    # the table is not decayed, like an nn.Embedding; the dense weights are
    decay, no_decay = make_optimizer(model, TrainingConfig(weight_decay=0.1)).param_groups
    assert any(p is model.embeddings for p in no_decay["params"])
    assert not any(p is model.embeddings for p in decay["params"]) and decay["params"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(windows).loss.backward()
    optimizer.step()
    assert not torch.allclose(model.embeddings.detach(), embeddings.float())
    predicted = model.predict_embedding(windows[:, :WINDOW])
    torch.testing.assert_close(model.scores(predicted), predicted @ model.embeddings.T + model.token_bias)


def test_mlp_nearest_neighbour_decoding(make_config, vocab_size, embeddings, windows):
    """A network that always predicts a scaled, slightly noisy copy of token 5's embedding
    decodes every window to token 5: cosine ignores the scale."""
    model = build_model(make_config("mlp"), vocab_size, embeddings)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(
            3.0 * embeddings[5] + 0.01 * torch.randn(32, generator=torch.Generator().manual_seed(1))
        )
    targets = windows[:, WINDOW].clone()
    targets[:3] = 5
    batch = torch.cat([windows[:, :WINDOW], targets[:, None]], dim=1)
    out = model(batch)
    assert int(out.correct) == int((targets == 5).sum()) == 3
    scores = model.next_token_scores(batch[:, :4])  # short context: left-padded
    assert (scores.argmax(dim=-1) == 5).all()
    assert scores.max() <= 1.0 + 1e-5 and scores.min() >= -1.0 - 1e-5


def test_mlp_cosine_loss(make_config, vocab_size, embeddings, windows):
    model = build_model(make_config("mlp", mlp_loss="cosine"), vocab_size, embeddings)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(2.0 * embeddings[7])
    batch = windows.clone()
    batch[:, WINDOW] = 7
    assert model(batch).loss.item() == pytest.approx(0.0, abs=1e-5)
    batch[:, WINDOW] = 8
    expected = 1 - torch.nn.functional.cosine_similarity(embeddings[7], embeddings[8], dim=0)
    assert model(batch).loss.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("kind", ["gpt", "gpt_rotary", "mlp"])
def test_overfits_a_repeated_sequence(kind, make_config, tokenizer, vocab_size, embeddings):
    torch.manual_seed(0)
    ids = torch.tensor(tokenizer.encode("To be, or not to be: that is the question. " * 3).ids)
    batch = ids.unfold(0, WINDOW + 1, 2)
    assert 20 <= batch.shape[0] <= 50
    config = make_config("gpt", rotary=True) if kind == "gpt_rotary" else make_config(kind)
    model = build_model(config, vocab_size, embeddings)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(batch)
    for _ in range(100):
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    last = model(batch)
    assert last.loss.item() < 0.1 * first.loss.item()
    assert int(last.correct) / last.count > 0.95


def test_build_model_rejects_bad_inputs(make_config, vocab_size, embeddings):
    with pytest.raises(ConfigError, match="needs the preprocess step's embeddings"):
        build_model(make_config("mlp"), vocab_size, None)
    with pytest.raises(ConfigError, match="init_from_embeddings"):
        build_model(make_config("gpt", init_from_embeddings=True), vocab_size, None)
    with pytest.raises(InputError, match=r"shape \(300, 16\), expected \(300, 32\)"):
        build_model(make_config("mlp"), vocab_size, torch.zeros(vocab_size, 16))
    bad = embeddings.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        build_model(make_config("mlp"), vocab_size, bad)
    model = build_model(make_config("gpt"), vocab_size)
    with pytest.raises(InputError, match="window_size=16"):
        model(torch.zeros(2, WINDOW + 2, dtype=torch.long))


def test_mlp_softmax_loss_scores_the_whole_table(make_config, vocab_size, embeddings, windows):
    """The softmax loss: cross-entropy over dot products with the frozen table; it has a likelihood."""
    model = build_model(make_config("mlp", mlp_loss="softmax"), vocab_size, embeddings)
    assert model.has_likelihood and not build_model(make_config("mlp"), vocab_size, embeddings).has_likelihood
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(3.0 * embeddings[7])
    batch = windows.clone()
    batch[:, WINDOW] = 7
    logits = 3.0 * embeddings[7] @ embeddings.T
    expected = torch.nn.functional.cross_entropy(logits.expand(len(batch), -1), batch[:, WINDOW])
    out = model(batch)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert int(out.correct) == (len(batch) if int(logits.argmax()) == 7 else 0)
    losses, correct = model.target_losses(batch)
    assert losses.shape == (len(batch), 1) and losses.mean().item() == pytest.approx(
        out.loss.item(), rel=1e-5
    )
    torch.testing.assert_close(model.next_token_scores(batch[:, :WINDOW]), logits.expand(len(batch), -1))


def test_mlp_softmax_trains_a_token_bias_and_optionally_its_own_output_table(
    make_config, vocab_size, embeddings, windows
):
    """The input table stays frozen; what the softmax scores against is the frozen table plus a
    learned per-token bias, or (mlp_train_output_table) a trained copy of the table."""
    for trained_table in (False, True):
        model = build_model(
            make_config("mlp", mlp_loss="softmax", mlp_train_output_table=trained_table),
            vocab_size,
            embeddings,
        )
        names = {name for name, _ in model.named_parameters()}
        assert "token_bias" in names and ("output_table" in names) == trained_table
        assert "embeddings" not in names  # a buffer
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(windows).loss.backward()
        optimizer.step()
        torch.testing.assert_close(model.embeddings, embeddings.float())
        assert model.token_bias.abs().sum() > 0
        if trained_table:
            assert not torch.allclose(model.output_table, embeddings.float())
