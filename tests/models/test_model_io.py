"""Model directories: save → load in a fresh interpreter gives the same model; bad files fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

from spark_jobs.common.errors import InputError
from spark_jobs.models import build_model
from spark_jobs.models.artifact import load_model, save_model

CONTEXT = [[5, 17, 42, 101, 7, 250, 33, 9], [1, 2, 3, 4, 5, 6, 7, 8]]

LOAD_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch
    from spark_jobs.models.artifact import load_model

    context = torch.tensor(json.loads(sys.argv[1]))
    result = {}
    for path in sys.argv[2:]:
        model, tokenizer, config = load_model(path)
        with torch.no_grad():
            scores = model.next_token_scores(context)
        tied = model.kind == "gpt" and model.transformer.wte.weight is model.lm_head.weight
        result[path] = {"scores": scores.tolist(), "tied": tied, "vocab": tokenizer.get_vocab_size(),
                        "metadata": config["metadata"], "training": model.training}
    print(json.dumps(result))
    """
)


@pytest.fixture
def saved_models(tmp_path, make_config, tokenizer, vocab_size, embeddings):
    """A trained-a-little gpt (tied, dropout), an mlp and an mlp whose input table is trained,
    saved; with their in-process scores."""
    torch.manual_seed(3)
    saved = {}
    variants = {
        "gpt": ("gpt", {}),
        "gpt_rotary": ("gpt", {"rotary": True}),
        "mlp": ("mlp", {}),
        "mlp_trained_table": ("mlp", {"mlp_loss": "softmax", "mlp_train_input_table": True}),
    }
    for name, (kind, extra) in variants.items():
        cfg = make_config(kind, dropout=0.1, **extra)
        model = build_model(cfg, vocab_size, embeddings)
        # one optimizer step so the weights are not just the init
        model(torch.randint(0, vocab_size, (4, 17))).loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        model.eval()
        with torch.no_grad():
            scores = model.next_token_scores(torch.tensor(CONTEXT))
        path = str(tmp_path / name / "model")
        save_model(model, cfg, path, tokenizer.to_str(), metadata={"run_id": "t", "val_loss": 1.5})
        saved[name] = (path, scores)
    return saved


def test_save_then_load_in_a_fresh_process_gives_identical_outputs(saved_models, vocab_size):
    paths = [path for path, _ in saved_models.values()]
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, json.dumps(CONTEXT), *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, expected in saved_models.values():
        loaded = result[path]
        torch.testing.assert_close(torch.tensor(loaded["scores"]), expected, rtol=0, atol=1e-6)
        assert loaded["vocab"] == vocab_size
        assert loaded["metadata"] == {"run_id": "t", "val_loss": 1.5}
        assert loaded["training"] is False
    assert result[saved_models["gpt"][0]]["tied"] is True


def test_model_directory_contents(saved_models, vocab_size, embeddings):
    gpt_dir, mlp_dir = saved_models["gpt"][0], saved_models["mlp"][0]
    config = json.loads(open(f"{gpt_dir}/config.json").read())
    assert config["kind"] == "gpt" and config["vocab_size"] == vocab_size and config["format_version"] == 1
    assert config["model"]["window_size"] == 16 and config["model"]["dropout"] == 0.1
    # the tied table is stored once
    gpt_tensors = safetensors.torch.load_file(f"{gpt_dir}/model.safetensors")
    assert ("transformer.wte.weight" in gpt_tensors) != ("lm_head.weight" in gpt_tensors)
    mlp_tensors = safetensors.torch.load_file(f"{mlp_dir}/model.safetensors")
    torch.testing.assert_close(mlp_tensors["embeddings"], embeddings)
    table = safetensors.torch.load_file(f"{mlp_dir}/embeddings.safetensors")["embeddings"]
    torch.testing.assert_close(table, embeddings)
    assert json.loads(open(f"{mlp_dir}/tokenizer.json").read())["model"]["type"] == "BPE"


def test_tokenizer_may_be_given_as_a_path(tmp_path, make_config, tokenizer, vocab_size):
    tok_path = tmp_path / "tokenizer.json"
    tok_path.write_text(tokenizer.to_str())
    cfg = make_config("gpt")
    save_model(build_model(cfg, vocab_size), cfg, str(tmp_path / "m"), str(tok_path))
    _, loaded_tokenizer, _ = load_model(str(tmp_path / "m"))
    assert loaded_tokenizer.encode("ROMEO: hello").ids == tokenizer.encode("ROMEO: hello").ids


def test_corrupt_weights_name_the_file(saved_models):
    path = saved_models["gpt"][0]
    weights = f"{path}/model.safetensors"
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"model\.safetensors: cannot load the weights"):
        load_model(path)
    open(weights, "wb").write(b"not a safetensors file at all")
    with pytest.raises(InputError, match=r"model\.safetensors"):
        load_model(path)


def test_weights_of_another_shape_are_refused(saved_models, tmp_path):
    path = saved_models["gpt"][0]
    config = json.loads(open(f"{path}/config.json").read())
    config["model"]["embedding_size"] = 64
    open(f"{path}/config.json", "w").write(json.dumps(config))
    with pytest.raises(InputError, match=r"model\.safetensors: cannot load"):
        load_model(path)


def test_missing_or_bad_directory_is_an_input_error(tmp_path, saved_models):
    with pytest.raises(InputError, match=r"config\.json.*not a model directory"):
        load_model(str(tmp_path / "nowhere"))
    path = saved_models["mlp"][0]
    open(f"{path}/config.json", "w").write("{ truncated")
    with pytest.raises(InputError, match=r"config\.json: not valid JSON"):
        load_model(path)
    open(f"{path}/config.json", "w").write(
        json.dumps({"format_version": 1, "vocab_size": 300, "model": {"kind": "rnn"}})
    )
    with pytest.raises(InputError, match=r"config\.json: model\.kind"):
        load_model(path)
    gpt_path = saved_models["gpt"][0]
    open(f"{gpt_path}/tokenizer.json", "w").write("{}")
    with pytest.raises(InputError, match=r"tokenizer\.json: not a valid tokenizer"):
        load_model(gpt_path)


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A bucket on a moto server on 127.0.0.1, reached through the same env vars as on EMR."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="models")
    return "s3://models"


def test_save_and_load_through_s3(s3_bucket, make_config, tokenizer, vocab_size, embeddings):
    torch.manual_seed(2)
    cfg = make_config("mlp")
    model = build_model(cfg, vocab_size, embeddings).eval()
    uri = f"{s3_bucket}/runs/r1/train/model"
    save_model(model, cfg, uri, tokenizer.to_str(), metadata={"run_id": "r1"})
    loaded, _, config = load_model(uri)
    context = torch.tensor(CONTEXT)
    with torch.no_grad():
        torch.testing.assert_close(loaded.next_token_scores(context), model.next_token_scores(context))
    assert config["metadata"] == {"run_id": "r1"} and config["kind"] == "mlp"


def test_a_wrapped_model_is_saved_without_the_wrapper_prefix(tmp_path, make_config, tokenizer, vocab_size):
    """DDP holds the model in `.module` (torch.compile in `._orig_mod`); the saved keys must not show it."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    cfg = make_config("gpt")
    save_model(Wrapper(build_model(cfg, vocab_size)), cfg, str(tmp_path / "m"), tokenizer.to_str())
    keys = safetensors.torch.load_file(str(tmp_path / "m" / "model.safetensors")).keys()
    assert "transformer.wpe.weight" in keys and not any(k.startswith("module.") for k in keys)
    with pytest.raises(InputError, match="needs a DecoderModel, got Linear"):
        save_model(torch.nn.Linear(2, 2), cfg, str(tmp_path / "x"), tokenizer.to_str())
