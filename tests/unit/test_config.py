"""The config schema: defaults, overrides, and errors that name the key at fault."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spark_jobs.common.config import (
    PipelineConfig,
    apply_overrides,
    dump_config,
    load_config,
    validate_config,
)
from spark_jobs.common.errors import ConfigError


def test_local_config_loads_and_overrides_apply(repo):
    cfg = load_config(repo / "configs" / "local.yaml", ["training.num_epochs=3", "model.kind=mlp"])
    assert cfg.training.num_epochs == 3
    assert cfg.model.kind == "mlp"
    assert cfg.data.corpus_path == "data/tinyshakespeare.txt"


def test_override_values_are_parsed_as_yaml():
    raw = apply_overrides({}, ["training.early_stop_patience=null", "data.embeddings_path=s3://b/e.txt"])
    cfg = validate_config(raw)
    assert cfg.training.early_stop_patience is None
    assert cfg.data.embeddings_path == "s3://b/e.txt"


def test_dumped_config_round_trips():
    cfg = validate_config({"model": {"kind": "mlp", "window_size": 16}})
    import yaml

    assert PipelineConfig.model_validate(yaml.safe_load(dump_config(cfg))) == cfg


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.windw_size=3", "unknown key 'model.windw_size'"),
        ("sparkk.master=local", "unknown key 'sparkk'"),
        ("model.window_size=abc", "model.window_size: Input should be a valid integer"),
        ("training.learning_rate=fast", "training.learning_rate"),
        ("model.window_size=0", "model.window_size: Input should be greater than 0"),
        ("training.batch_size=-4", "training.batch_size: Input should be greater than 0"),
        ("training.averaging_frequency=0", "training.averaging_frequency"),
        ("spark.target_partition_size=0", "spark.target_partition_size"),
        ("data.vocab_size=200", "data.vocab_size: Value error, must be at least 257"),
        ("model.kind=rnn", "model.kind"),
        ("run.id=../escape", "run.id"),
        ("training.valid_split=0.3", "must equal 1"),
        ("model.mlp_train_output_table=true", "model.mlp_train_output_table needs model.kind=mlp"),
        ("model.mlp_train_input_table=true", "model.mlp_train_input_table needs model.kind=mlp"),
    ],
)
def test_bad_config_names_the_key(repo, override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(repo / "configs" / "local.yaml", [override])
    assert expected in str(info.value)
    assert "local.yaml" in str(info.value)


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["training.num_epochs"])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_config_error_in_one_line(repo, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spark_jobs.cli",
            "preprocess",
            "--config",
            str(repo / "configs/local.yaml"),
            "--set",
            "model.window_size=zero",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "model.window_size" in errors[0], result.stderr


def test_every_config_key_is_documented_in_the_readme(repo):
    readme = (repo / "README.md").read_text(encoding="utf-8")
    undocumented = [
        f"{section}.{key}"
        for section, field in PipelineConfig.model_fields.items()
        for key in field.annotation.model_fields
        if f"`{section}.{key}`" not in readme and f"{key}`" not in readme
    ]
    assert not undocumented, f"README's configuration table misses {undocumented}"


def _loaders():
    """The steps' loader and the Airflow side's (configs/emr.yaml, configs/local.yaml): the same rules."""
    from llm_decoder_airflow.settings import read_yaml

    return [lambda path: load_config(path), read_yaml]


@pytest.mark.parametrize("loader", range(2))
def test_a_section_written_twice_is_an_error_naming_both_lines(tmp_path, loader):
    path = tmp_path / "twice.yaml"
    path.write_text("training:\n  num_epochs: 3\nmodel:\n  kind: mlp\ntraining:\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: 'training' is written twice \(lines 1 and 5\)"):
        _loaders()[loader](path)
    path.write_text("training:\n  num_epochs: 3\n  num_epochs: 4\n")
    with pytest.raises(ConfigError, match=r"'num_epochs' is written twice \(lines 2 and 3\)"):
        _loaders()[loader](path)


@pytest.mark.parametrize("loader", range(2))
def test_a_directory_or_a_non_utf8_file_is_a_one_line_error(tmp_path, loader):
    with pytest.raises(ConfigError, match=r"config file is a directory: .*give the YAML file inside it"):
        _loaders()[loader](tmp_path)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("run:\n  id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(
        ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 14: invalid continuation byte\)"
    ):
        _loaders()[loader](latin)


def test_invalid_yaml_is_one_line_with_its_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {kind: gpt\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"{path}: not valid YAML: expected ',' or '}}'")
    assert "at line 2, column 1 (while parsing a flow mapping)" in str(error.value)
