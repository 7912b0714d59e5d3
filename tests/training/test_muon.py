"""`training.optimizer: muon`: the orthogonalized update, the AdamW half, which parameters get which."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spark_jobs.common.config import ModelConfig, TrainingConfig
from spark_jobs.common.errors import TrainingError
from spark_jobs.models import build_model
from spark_jobs.steps import train
from spark_jobs.training.muon import MuonAdamW, orthogonalize
from spark_jobs.training.optim import make_optimizer


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_orthogonalize_gives_singular_values_near_one(shape):
    torch.manual_seed(0)
    # a badly conditioned matrix: singular values spread over two orders of magnitude (five
    # iterations lift a singular value of 1e-2 of the largest into the band, not 1e-4)
    u, _, v = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    spread = torch.logspace(0, -2, min(shape))
    matrix = u @ torch.diag(spread) @ v
    out = orthogonalize(matrix)
    assert out.shape == matrix.shape
    singular = torch.linalg.svdvals(out)
    # the quintic iteration's band (Jordan's Muon): about 0.7 to 1.2, not exactly 1
    assert singular.min() > 0.55 and singular.max() < 1.25, singular
    # the directions are the input's: U V^T, up to that band
    assert torch.nn.functional.cosine_similarity((u @ v).flatten(), out.flatten(), dim=0) > 0.95


def test_the_adamw_half_is_torch_adamw():
    torch.manual_seed(0)
    ours = nn.Parameter(torch.randn(10, 5))
    theirs = nn.Parameter(ours.detach().clone())
    opt_ours = MuonAdamW([{"params": [ours], "weight_decay": 0.1}], lr=1e-2)
    opt_theirs = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    for _ in range(20):
        grad = torch.randn(10, 5)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert float(opt_ours.state[ours]["step"]) == 20


def test_the_muon_half_is_torch_muon_with_adamw_matched_updates():
    """torch.optim.Muon with Moonshot's RMS matching; it iterates in bfloat16, ours in float32."""
    torch.manual_seed(0)
    ours = nn.Parameter(torch.randn(48, 16))
    theirs = nn.Parameter(ours.detach().clone())
    opt_ours = MuonAdamW([{"params": [ours], "weight_decay": 0.1, "use_muon": True}], lr=1e-2)
    opt_theirs = torch.optim.Muon([theirs], lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = ours.detach().clone()
    for _ in range(20):
        grad = torch.randn(48, 16)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    moved_ours, moved_theirs = ours.detach() - start, theirs.detach() - start
    assert (moved_ours - moved_theirs).norm() < 0.01 * moved_theirs.norm()
    assert set(opt_ours.state[ours]) == {"momentum_buffer"}


def test_muon_refuses_a_parameter_that_is_not_a_matrix():
    with pytest.raises(ValueError, match="not 2-D"):
        MuonAdamW([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": True}], lr=1e-3)


def test_muon_takes_the_gpts_block_matrices_and_adamw_the_rest():
    cfg = ModelConfig(kind="gpt", window_size=8, embedding_size=16, hidden_size=32, num_layers=2, num_heads=2)
    model = build_model(cfg, vocab_size=50)
    optimizer = make_optimizer(model, TrainingConfig(optimizer="muon", weight_decay=0.3))
    assert isinstance(optimizer, MuonAdamW)
    muon, decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert muon["use_muon"] and muon["weight_decay"] == 0.3
    assert sorted(names[id(p)] for p in muon["params"]) == sorted(
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    # the tied token table / output head, the position table, biases and norms keep AdamW, undecayed
    assert decay["params"] == [] and not decay["use_muon"]
    assert no_decay["weight_decay"] == 0.0
    held = {names[id(p)] for p in no_decay["params"]}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= held
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_parameters()


def test_muon_leaves_the_mlps_input_and_output_layers_to_adamw():
    cfg = ModelConfig(kind="mlp", window_size=4, embedding_size=8, hidden_size=16, num_layers=3)
    model = build_model(cfg, vocab_size=20, embeddings=torch.randn(20, 8))
    muon, decay, _ = make_optimizer(model, TrainingConfig(optimizer="muon")).param_groups
    assert [p.shape for p in muon["params"]] == [torch.Size([16, 16])] * 2  # hidden to hidden
    # the layer over the concatenated context embeddings, and `out`, to the embedding space
    assert [p.shape for p in decay["params"]] == [torch.Size([16, 32]), torch.Size([8, 16])]


def test_an_unknown_optimizer_is_a_config_error_naming_the_field():
    with pytest.raises(ValueError, match="optimizer"):
        TrainingConfig(optimizer="lion")


def test_resuming_under_another_optimizer_is_refused(new_run, tiny_config):
    """Adam's moments cannot become Muon's momentum: a changed optimizer is a new run."""
    root, run_id = new_run()
    common = ("training.checkpoint_interval=4", "training.max_steps=4")
    train.run(tiny_config(root, run_id, *common, "training.optimizer=adamw"))
    with pytest.raises(
        TrainingError,
        match=r"step-4 was written by training.optimizer=adamw, not the configured muon; delete .*checkpoints",
    ):
        train.run(tiny_config(root, run_id, "training.checkpoint_interval=4", "training.max_steps=8",
                              "training.optimizer=muon"))  # fmt: skip
