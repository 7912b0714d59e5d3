"""A trained model as a directory (local or s3://) that needs no pickle to read back.

model.safetensors        the state dict (tied gpt weights stored once, restored as tied)
config.json              {"format_version", "kind", "vocab_size", "model": ModelConfig, "metadata"}
tokenizer.json           the HF tokenizer the model was trained with
embeddings.safetensors   mlp only: its frozen input table (tensor "embeddings", as preprocess
                         writes it); the same table is also in model.safetensors, which is
                         what `load_model` reads
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import safetensors.torch
import torch
from pydantic import ValidationError
from tokenizers import Tokenizer
from torch import nn

from spark_jobs.common import finite_json, storage
from spark_jobs.common.config import ModelConfig
from spark_jobs.common.errors import InputError
from spark_jobs.models import DecoderModel, build_model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
EMBEDDINGS_FILE = "embeddings.safetensors"


def _tokenizer_text(tokenizer_json: str) -> str:
    # Accept the JSON itself or a path/URI to a tokenizer.json: callers hold either.
    if tokenizer_json.lstrip().startswith("{"):
        return tokenizer_json
    return storage.read_text(tokenizer_json)


def _unwrap(model: nn.Module) -> DecoderModel:
    # DDP keeps the model in .module, torch.compile in ._orig_mod
    while not isinstance(model, DecoderModel):
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None:
            raise InputError(f"save_model needs a DecoderModel, got {type(model).__name__}")
        model = inner
    return model


def save_model(
    model: DecoderModel,
    model_cfg: ModelConfig,
    out_uri: str,
    tokenizer_json: str,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write the model directory under `out_uri` (local dir or s3://).

    `tokenizer_json` is the tokenizer's JSON text (`Tokenizer.to_str()`) or a path/URI to it.
    `metadata` (JSON-serialisable: run id, step, val loss...) is stored in config.json.
    A DDP- or torch.compile-wrapped model is unwrapped, so its keys carry no wrapper prefix.
    """
    model = _unwrap(model)
    if model_cfg.kind != model.kind:
        raise InputError(f"model_cfg.kind={model_cfg.kind!r} but the model is {model.kind!r}")
    tokenizer_text = _tokenizer_text(tokenizer_json)
    config = {
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "vocab_size": model.vocab_size,
        "parameters": model.num_parameters(),
        "model": model_cfg.model_dump(mode="json"),
        "metadata": metadata or {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        # save_model (not save_file) drops the duplicate of tied tensors instead of failing
        weights = os.path.join(tmp, WEIGHTS_FILE)
        safetensors.torch.save_model(model, weights, metadata={"format": "pt", "kind": model.kind})
        with open(weights, "rb") as handle:
            storage.write_bytes(storage.join(out_uri, WEIGHTS_FILE), handle.read())
    if model.kind == "mlp":
        # the input table as trained (mlp_train_input_table) or as given (a frozen buffer)
        table = {"embeddings": model.embeddings.detach().cpu().contiguous()}
        storage.write_bytes(storage.join(out_uri, EMBEDDINGS_FILE), safetensors.torch.save(table))
    storage.write_text(storage.join(out_uri, TOKENIZER_FILE), tokenizer_text)
    finite_json.write(storage.join(out_uri, CONFIG_FILE), config)
    log.info("saved %s model (%d parameters) to %s", model.kind, config["parameters"], out_uri)


def _read_config(uri: str) -> tuple[dict[str, Any], ModelConfig]:
    path = storage.join(uri, CONFIG_FILE)
    if not storage.exists(path):
        raise InputError(f"model config not found: {path} (not a model directory?)")
    try:
        config = json.loads(storage.read_text(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object")
    if config.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise InputError(f"{path}: vocab_size must be a positive integer, got {vocab_size!r}")
    try:
        model_cfg = ModelConfig.model_validate(config.get("model"))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path}: model.{key}: {first['msg']}") from None
    return config, model_cfg


def _read_tokenizer(uri: str, vocab_size: int) -> Tokenizer:
    path = storage.join(uri, TOKENIZER_FILE)
    if not storage.exists(path):
        raise InputError(f"tokenizer not found: {path}")
    try:
        tokenizer = Tokenizer.from_str(storage.read_text(path))
    except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
        raise InputError(f"{path}: not a valid tokenizer ({exc})") from None
    if tokenizer.get_vocab_size() > vocab_size:
        raise InputError(
            f"{path}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only {vocab_size}"
        )
    return tokenizer


def load_model(uri: str) -> tuple[DecoderModel, Tokenizer, dict[str, Any]]:
    """Read a model directory: (model in eval mode on CPU, tokenizer, config.json as a dict)."""
    config, model_cfg = _read_config(uri)
    vocab_size = config["vocab_size"]
    tokenizer = _read_tokenizer(uri, vocab_size)

    # The mlp needs a table of the right shape to build; the real one comes with the weights.
    placeholder = torch.zeros(vocab_size, model_cfg.embedding_size) if model_cfg.kind == "mlp" else None
    model = build_model(model_cfg.model_copy(update={"init_from_embeddings": False}), vocab_size, placeholder)

    path = storage.join(uri, WEIGHTS_FILE)
    if not storage.exists(path):
        raise InputError(f"model weights not found: {path}")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, WEIGHTS_FILE)
        with open(local, "wb") as handle:
            handle.write(storage.read_bytes(path))
        try:
            safetensors.torch.load_model(model, local, strict=True)
        except Exception as exc:  # SafetensorError, RuntimeError (shapes/keys), OSError...
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{path}: cannot load the weights ({message})") from None
    model.eval()
    log.info("loaded %s model (%d parameters) from %s", model.kind, model.num_parameters(), uri)
    return model, tokenizer, config
