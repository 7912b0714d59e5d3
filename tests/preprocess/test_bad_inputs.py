"""Bad inputs: one error that names the culprit, and nothing marked complete.

These fail before Spark starts (inputs are validated first), so they are fast.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.steps.preprocess import run

from .conftest import EMBEDDING_SIZE, make_config, step_dir

GOOD_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def _vectors(rows: list[str], header: str | None = None) -> str:
    head = f"{header}\n" if header is not None else f"{len(rows)} {EMBEDDING_SIZE}\n"
    return head + "".join(r + "\n" for r in rows)


def _row(token: str, value: str = "0.1", dim: int = EMBEDDING_SIZE) -> str:
    return token + " " + " ".join([value] * dim)


def _case(tmp: Path, name: str) -> tuple[dict, str]:
    """(config data overrides, expected message regex) for one bad input, files under tmp."""
    good = tmp / "good.txt"
    good.write_text(GOOD_TEXT)
    emb = tmp / "emb.txt"
    if name == "missing path":
        return {"corpus_path": str(tmp / "nope.txt")}, rf"corpus not found: {tmp}/nope.txt"
    if name == "empty file":
        (tmp / "empty.txt").write_bytes(b"")
        return {"corpus_path": str(tmp / "empty.txt")}, rf"corpus has no text \(empty\): {tmp}/empty.txt"
    if name == "whitespace only":
        (tmp / "ws.txt").write_text(" \n\t\r\n\n")
        return {"corpus_path": str(tmp / "ws.txt")}, rf"corpus has only whitespace: {tmp}/ws.txt"
    if name == "binary file":
        (tmp / "data.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        return {
            "corpus_path": str(tmp / "data.bin")
        }, rf"{tmp}/data.bin: looks like a binary .* byte offset 8"
    if name == "invalid utf-8 in a directory":
        (tmp / "dir").mkdir()
        (tmp / "dir" / "a.txt").write_text(GOOD_TEXT)
        (tmp / "dir" / "b.txt").write_bytes(b"hello\nw\xc3rld\n")
        return {"corpus_path": str(tmp / "dir")}, rf"{tmp}/dir/b.txt: invalid UTF-8 at byte offset 7"
    if name == "directory without text files":
        (tmp / "emptydir").mkdir()
        (tmp / "emptydir" / "_SUCCESS").write_text("")
        (tmp / "emptydir" / ".DS_Store").write_text("x")
        return {"corpus_path": str(tmp / "emptydir")}, rf"corpus directory has no text files: {tmp}/emptydir"
    if name == "glob matching nothing":
        return {"corpus_path": str(tmp / "*.md")}, rf"no files match data.corpus_path={tmp}/\*\.md"
    if name == "directory of empty files":
        (tmp / "blank").mkdir()
        (tmp / "blank" / "a.txt").write_text("")
        (tmp / "blank" / "b.txt").write_text("\n\n")
        return {"corpus_path": str(tmp / "blank")}, rf"corpus has only whitespace: {tmp}/blank \(2 files\)"
    data = {"corpus_path": str(good), "embeddings_path": str(emb)}
    if name == "embeddings missing":
        return data, rf"embeddings file not found: {emb}"
    if name == "embeddings wrong dimension":
        emb.write_text(_vectors([_row("a", dim=EMBEDDING_SIZE + 1)], header=f"1 {EMBEDDING_SIZE + 1}"))
        return (
            data,
            rf"{emb}: embeddings have dimension {EMBEDDING_SIZE + 1} but model.embedding_size is {EMBEDDING_SIZE}",
        )
    if name == "embeddings with NaN":
        emb.write_text(_vectors([_row("a"), _row("b", "NaN")]))
        return data, rf"{emb}:3: non-finite value 'NaN'"
    if name == "embeddings duplicate token":
        emb.write_text(_vectors([_row("a"), _row("b"), _row("a")]))
        return data, rf"{emb}:4: duplicate token 'a' \(first on line 2\)"
    if name == "embeddings malformed line":
        emb.write_text(_vectors([_row("a"), "b 0.1 0.2"]))
        return data, rf"{emb}:3: malformed line: expected a token and {EMBEDDING_SIZE} values, got 3 fields"
    if name == "embeddings header disagrees":
        emb.write_text(_vectors([_row("a"), _row("b")], header=f"5 {EMBEDDING_SIZE}"))
        return data, rf"{emb}: the header says 5 vectors but the file has 2"
    tok = tmp / "tokenizer.json"
    data = {"corpus_path": str(good), "tokenizer_path": str(tok)}
    if name == "tokenizer not json":
        tok.write_text("this is not json")
        return data, rf"{tok}: not a valid tokenizer.json \(data.tokenizer_path\)"
    if name == "tokenizer wrong json":
        tok.write_text(json.dumps({"vocab": {"a": 0}}))
        return data, rf"{tok}: not a valid tokenizer.json \(data.tokenizer_path\)"
    if name == "tokenizer missing":
        return data, rf"tokenizer not found: {tok}"
    raise AssertionError(name)


CASES = [
    "missing path",
    "empty file",
    "whitespace only",
    "binary file",
    "invalid utf-8 in a directory",
    "directory without text files",
    "glob matching nothing",
    "directory of empty files",
    "embeddings missing",
    "embeddings wrong dimension",
    "embeddings with NaN",
    "embeddings duplicate token",
    "embeddings malformed line",
    "embeddings header disagrees",
    "tokenizer not json",
    "tokenizer wrong json",
    "tokenizer missing",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_error_naming_the_culprit(tmp_path, name):
    data, expected = _case(tmp_path, name)
    config = make_config(tmp_path / "out", data.pop("corpus_path"), run_id="bad", **data)
    with pytest.raises(InputError, match=expected) as info:
        run(config)
    assert "\n" not in str(info.value)
    assert not storage.is_complete(step_dir(config))
    assert not any(p.name == storage.SUCCESS_MARKER for p in (tmp_path / "out").rglob("*"))


def test_lossy_tokenizer_is_refused(tmp_path):
    """A tokenizer.json that cannot reproduce the text (word-level with [UNK]) is refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    lossy = Tokenizer(models.WordLevel({"[UNK]": 0, "First": 1}, unk_token="[UNK]"))
    lossy.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "lossy.json"
    lossy.save(str(path))
    good = tmp_path / "good.txt"
    good.write_text(GOOD_TEXT)
    config = make_config(tmp_path / "out", good, tokenizer_path=str(path))
    with pytest.raises(InputError, match=rf"{path}: the tokenizer does not reproduce the corpus text"):
        run(config)


@pytest.mark.parametrize(
    ("name", "extra", "expected"),
    [
        ("missing path", [], "corpus not found: "),
        ("invalid utf-8 in a directory", [], "invalid UTF-8 at byte offset 7"),
        ("embeddings with NaN", [], ":3: non-finite value 'NaN'"),
        ("missing path", ["data.vocab_size=100"], "data.vocab_size: Value error, must be at least 257"),
    ],
)
def test_cli_exits_2_with_one_error_line(repo, tmp_path, name, extra, expected):
    data, _ = _case(tmp_path, name)
    sets = [f"data.{k}={v}" for k, v in data.items()] + [
        f"run.root={tmp_path / 'out'}",
        f"model.embedding_size={EMBEDDING_SIZE}",
        *extra,
    ]
    args = [str(repo / ".venv/bin/llm-decoder"), "preprocess", "--config", "configs/local.yaml"]
    for item in sets:
        args += ["--set", item]
    result = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]
    assert not any(p.name == storage.SUCCESS_MARKER for p in (tmp_path / "out").rglob("*"))
