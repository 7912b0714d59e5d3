"""The preprocess step on local Spark: outputs checked by content."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.data.corpus import normalize_text
from spark_jobs.steps.preprocess import run

from .conftest import EMBEDDING_SIZE, SECOND_DOC, make_config, step_dir


def read_tokens(out: Path) -> pa.Table:
    table = pq.read_table(out / "tokens")
    return table.sort_by([("doc_id", "ascending"), ("seq", "ascending")])


def doc_ids(table: pa.Table) -> dict[int, list[int]]:
    docs: dict[int, list[int]] = {}
    for doc_id, ids in zip(table.column("doc_id").to_pylist(), table.column("ids").to_pylist(), strict=True):
        docs.setdefault(doc_id, []).extend(ids)
    return docs


def test_tokens_decode_to_the_normalised_corpus(baseline, small_corpus):
    _, out, stats = baseline
    table = read_tokens(out)
    assert table.schema.field("doc_id").type == pa.int32()
    assert table.schema.field("seq").type == pa.int64()
    assert table.schema.field("ids").type == pa.list_(pa.int32())
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    docs = doc_ids(table)
    expected = [small_corpus.read_text(encoding="utf-8"), normalize_text(SECOND_DOC)]
    assert sorted(docs) == [0, 1]
    for doc_id, text in enumerate(expected):
        assert tokenizer.decode(docs[doc_id], skip_special_tokens=False) == text
    # seq numbers are 0..n-1 within each document: order is explicit, not row order.
    for doc_id in docs:
        seqs = [
            s
            for d, s in zip(table["doc_id"].to_pylist(), table["seq"].to_pylist(), strict=True)
            if d == doc_id
        ]
        assert seqs == list(range(len(seqs)))
    documents = json.loads((out / "documents.json").read_text())
    assert [d["path"].rsplit("/", 1)[-1] for d in documents] == ["a_shakespeare.txt", "b_mixed.txt"]
    assert [d["chars"] for d in documents] == [len(t) for t in expected]
    assert [d["tokens"] for d in documents] == [len(docs[0]), len(docs[1])]
    assert stats["documents"] == 2
    assert stats["chars"] == sum(map(len, expected))
    assert stats["tokens"] == len(docs[0]) + len(docs[1])
    assert stats["chars_per_token"] == pytest.approx(stats["chars"] / stats["tokens"])
    assert json.loads((out / "stats.json").read_text()) == stats
    assert (out / storage.SUCCESS_MARKER).exists()


def test_token_counts_match_the_tokens(baseline):
    _, out, stats = baseline
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    all_ids = np.concatenate([np.array(v, dtype=np.int64) for v in doc_ids(read_tokens(out)).values()])
    expected = np.bincount(all_ids, minlength=tokenizer.get_vocab_size())
    with open(out / "token_counts.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == tokenizer.get_vocab_size() == stats["vocab_size"]
    counts = [int(r["count"]) for r in rows]
    assert counts == sorted(counts, reverse=True)
    for r in rows:
        assert int(r["count"]) == expected[int(r["id"])]
        assert r["token"] == tokenizer.id_to_token(int(r["id"]))


def test_embeddings_are_aligned_to_token_ids(baseline):
    _, out, stats = baseline
    matrix = load_file(str(out / "embeddings.safetensors"))["embeddings"]
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert matrix.dtype == np.float32
    assert matrix.shape == (tokenizer.get_vocab_size(), EMBEDDING_SIZE)
    assert np.isfinite(matrix).all()
    lines = (out / "embeddings.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"{matrix.shape[0]} {EMBEDDING_SIZE}"
    for i, line in enumerate(lines[1:]):
        token, *values = line.split(" ")
        assert token == tokenizer.id_to_token(i)
        np.testing.assert_array_equal(np.array(values, dtype=np.float32), matrix[i])
    assert stats["embeddings_source"] == "word2vec"
    assert 0 < stats["tokens_with_vector"] <= stats["vocab_size"]


def test_a_gpt_gets_no_word2vec(spark, tmp_path, baseline, two_doc_corpus):
    """Word2Vec runs only for a model that reads embeddings; the rest of the output is the same."""
    _, mlp_out, mlp_stats = baseline
    config = make_config(tmp_path, two_doc_corpus, run_id="gpt")
    stats = run(config)
    out = Path(step_dir(config))
    assert stats["embeddings_source"] == "none" and stats["tokens_with_vector"] == 0
    assert not (out / "embeddings.safetensors").exists() and not (out / "embeddings.txt").exists()
    assert read_tokens(out).equals(read_tokens(mlp_out))
    assert (out / "tokenizer.json").read_bytes() == (mlp_out / "tokenizer.json").read_bytes()
    assert stats["tokens"] == mlp_stats["tokens"]


def test_same_seed_same_outputs_and_rerun_replaces(baseline):
    """A second run into the same folder: identical outputs, old leftovers gone."""
    config, out, _ = baseline
    before = {
        name: (out / name).read_bytes()
        for name in (
            "tokenizer.json",
            "embeddings.safetensors",
            "embeddings.txt",
            "token_counts.csv",
            "documents.json",
        )
    }
    tokens_before = read_tokens(out)
    (out / "stale.txt").write_text("from an older run")
    run(config)
    assert not (out / "stale.txt").exists()
    assert (out / storage.SUCCESS_MARKER).exists()
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
    assert read_tokens(out).equals(tokens_before)


def test_user_embeddings_land_on_their_token_ids(spark, tmp_path, baseline, two_doc_corpus):
    """Known vectors (value = token id) in shuffled CSV order, with the baseline's tokenizer."""
    _, out, _ = baseline
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    order = np.random.default_rng(0).permutation(vocab)
    path = tmp_path / "vectors.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["token"] + [f"v{j}" for j in range(EMBEDDING_SIZE)])
        for i in order[: vocab - 3]:  # three tokens without a vector
            writer.writerow(
                [tokenizer.id_to_token(int(i))] + [int(i) + j / 100 for j in range(EMBEDDING_SIZE)]
            )
    missing = sorted(int(i) for i in order[vocab - 3 :])
    config = make_config(
        tmp_path / "out",
        two_doc_corpus,
        run_id="user-emb",
        tokenizer_path=str(out / "tokenizer.json"),
        embeddings_path=str(path),
        max_oov_rate=1.0,
    )
    stats = run(config)
    new_out = Path(step_dir(config))
    assert (new_out / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()
    matrix = load_file(str(new_out / "embeddings.safetensors"))["embeddings"]
    for i in range(vocab):
        if i in missing:
            assert not np.allclose(matrix[i], i + np.arange(EMBEDDING_SIZE) / 100)
        else:
            np.testing.assert_allclose(matrix[i], i + np.arange(EMBEDDING_SIZE) / 100, rtol=1e-6)
    assert stats["embeddings_source"] == f"file:{path}"
    assert stats["tokenizer_source"] == f"file:{out / 'tokenizer.json'}"
    assert stats["tokens_with_vector"] == vocab - 3


def test_oov_above_threshold_is_an_error(spark, tmp_path, baseline, two_doc_corpus):
    _, out, _ = baseline
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    path = tmp_path / "few.txt"
    few = [tokenizer.id_to_token(i) for i in range(1, 11)]
    path.write_text(
        f"{len(few)} {EMBEDDING_SIZE}\n" + "".join(f"{t} {' '.join(['0.5'] * EMBEDDING_SIZE)}\n" for t in few)
    )
    config = make_config(
        tmp_path / "out",
        two_doc_corpus,
        run_id="oov",
        tokenizer_path=str(out / "tokenizer.json"),
        embeddings_path=str(path),
        max_oov_rate=0.05,
    )
    with pytest.raises(
        InputError,
        match=rf"{path}: \d+\.\d% of the corpus tokens have no vector, above data.max_oov_rate=0.05",
    ):
        run(config)
    assert not storage.is_complete(step_dir(config))


def test_a_failed_rerun_keeps_the_last_good_output(spark, tmp_path, baseline):
    """A good run, then a failing one into the same folder: the old output stays complete and
    unchanged, and the failed attempt leaves nothing behind."""
    config, out, _ = baseline
    copy = tmp_path / "copy"
    shutil.copytree(out.parents[2], copy)
    bad = make_config(copy, tmp_path / "missing.txt", run_id=config.run.id)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="corpus not found"):
        run(bad)
    assert storage.is_complete(step_dir(bad))
    after = {
        p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != "_LEASE"
    }
    assert after == {k: v for k, v in before.items() if k.name != "_LEASE"}


def test_nothing_is_fitted_on_the_validation_text(spark, tmp_path, small_corpus):
    """A word and a character that occur only in the validation tail are unknown to the
    tokenizer's merges and get no Word2Vec vector; split.json says where validation begins."""
    planted_word, planted_char = "Zyxwvutsrq", "\u00a7"  # '§': two bytes, both absent from the training text
    text = small_corpus.read_text(encoding="utf-8")
    assert planted_char not in text
    # 3.6 kB, inside the last 10 %; 240 occurrences, far more than most of the 1,700 merges a
    # 2,000-token vocabulary learns from 40 kB: fitted on the whole corpus, it would be merged.
    tail = "".join(f"{planted_word} {planted_word} {planted_char}{planted_char}\n" for _ in range(120))
    corpus = tmp_path / "planted.txt"
    corpus.write_text(text + tail, encoding="utf-8")
    config = make_config(tmp_path, corpus, run_id="planted", kind="mlp", vocab_size=2000)
    run(config)
    out = Path(step_dir(config))

    split = json.loads((out / "split.json").read_text())
    assert split["split_by"] == "document" and split["valid_split"] == config.training.valid_split
    train_chars = split["chars"]["train"]
    assert split["chars"]["val"] == len(text + tail) - train_chars
    assert (text + tail)[train_chars - 1] == "\n" and planted_word not in (text + tail)[:train_chars]

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert all(planted_word[:4] not in token for token in tokenizer.get_vocab())  # no merge learnt from it
    planted_ids = set(tokenizer.encode(planted_char).ids)
    with open(out / "token_counts.csv", encoding="utf-8") as handle:
        rows = {int(row["id"]): row for row in csv.DictReader(handle)}
    for token_id in planted_ids:
        assert int(rows[token_id]["count"]) >= 120  # in the corpus (the validation tail) ...
        assert rows[token_id]["has_vector"] == "0"  # ... but Word2Vec never saw it
    assert sum(row["has_vector"] == "1" for row in rows.values()) > 50


def test_validation_ranges_decode_to_the_validation_text(baseline):
    """What the full-split figures score: the validation text of each document, exactly."""
    from spark_jobs.data.validation_text import validation_ranges

    _, out, _ = baseline
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    split = json.loads((out / "split.json").read_text())
    ranges = validation_ranges(str(out), "document")
    decoded = [tokenizer.decode(r.tolist(), skip_special_tokens=False) for r in ranges]
    assert sum(map(len, decoded)) == split["chars"]["val"]
    table = read_tokens(out)
    docs = doc_ids(table)
    segments = {doc: table["doc_id"].to_pylist().count(doc) for doc in docs}
    with_val = [doc for doc in sorted(docs) if split["val_first_segment"][str(doc)] < segments[doc]]
    assert with_val == [0]  # the second document is too short to have validation text
    for doc, text in zip(with_val, decoded, strict=True):
        full = tokenizer.decode(docs[doc], skip_special_tokens=False)
        assert text and full.endswith(text) and len(text) < len(full)
    # split by stream: one range, from the first validation token to the end of the stream
    [stream] = validation_ranges(str(out), "stream")
    assert stream.tolist() == ranges[0].tolist() + docs[1]


def test_a_corpus_read_in_many_blocks_gives_the_documents_and_the_split(spark, tmp_path, two_doc_corpus):
    """Blocks of 8 kB, one line longer than a block among them: each document's tokens decode to
    its text, and the split is where the rule on the whole text puts it."""
    corpus = tmp_path / "corpus"
    shutil.copytree(two_doc_corpus, corpus)
    first = corpus / "a_shakespeare.txt"
    texts = [first.read_text(encoding="utf-8") + "a line longer than a block " * 1000 + "\n"]  # +27 kB
    first.write_text(texts[0], encoding="utf-8")
    texts.append(normalize_text(SECOND_DOC))
    config = make_config(tmp_path, corpus, run_id="many", read_block_bytes=8192)
    stats = run(config)
    out = Path(step_dir(config))
    assert stats["read_blocks"] > 6 and stats["chars"] == sum(map(len, texts))
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    tokens = read_tokens(out)
    assert [tokenizer.decode(ids, skip_special_tokens=False) for ids in doc_ids(tokens).values()] == texts
    for doc in (0, 1):  # seq numbers 0..n-1 within each document, across blocks
        seqs = [
            s
            for d, s in zip(tokens["doc_id"].to_pylist(), tokens["seq"].to_pylist(), strict=True)
            if d == doc
        ]
        assert seqs == list(range(len(seqs)))
    train = 0
    for text in texts:  # the last 10 % of each document, from the next line start
        cut = len(text) - round(len(text) * config.training.valid_split)
        train += cut if text[cut - 1] == "\n" else (text.find("\n", cut) + 1 or len(text))
    split = json.loads((out / "split.json").read_text())
    assert split["chars"] == {"train": train, "val": sum(map(len, texts)) - train}
