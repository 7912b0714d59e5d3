"""Pure pieces of the preprocess step (no Spark): normalisation, segments, embeddings files."""

from __future__ import annotations

import numpy as np
import pytest

from spark_jobs.common.errors import InputError
from spark_jobs.data import corpus, corpus_blocks, embeddings
from spark_jobs.data.tokenizer import train_tokenizer
from spark_jobs.steps.preprocess import token_counts_csv


def test_normalisation_makes_lf_and_drops_bom():
    assert corpus.normalize_text("\ufeffa\r\nb\rc\n\r\n") == "a\nb\nc\n\n"
    assert corpus.normalize_text("tab\tand  spaces \n") == "tab\tand  spaces \n"


def test_decode_errors_name_file_and_offset():
    with pytest.raises(InputError, match=r"f\.txt: invalid UTF-8 at byte offset 3 "):
        corpus.decode_document(b"abc\xffdef", "f.txt")
    assert corpus.decode_document(b"abc\xffdef", "f.txt", "replace") == "abc\ufffddef"
    with pytest.raises(InputError, match=r"g\.bin: looks like a binary .* NUL byte at byte offset 2"):
        corpus.decode_document(b"ab\x00cd", "g.bin")


@pytest.mark.parametrize("text", ["", "a", "line\n" * 5000, "x" * 20_000, "a\n" + "y" * 9000 + "\nz"])
def test_segments_rebuild_the_text(text):
    pieces = corpus.segments(text, max_chars=4096)
    assert "".join(pieces) == text
    assert all(0 < len(p) <= 4096 for p in pieces)


def test_trained_tokenizer_is_deterministic_and_lossless():
    text = ["The quick brown fox\n", "jumps over the lazy dog. \u00e9\u65e5\n"] * 50
    a, b = train_tokenizer(text, 280), train_tokenizer(text, 280)
    assert a.to_str() == b.to_str()
    assert a.token_to_id("<|endoftext|>") == 0
    joined = "".join(text)
    assert a.decode(a.encode(joined).ids) == joined


def test_word2vec_text_and_csv_parse_alike():
    w2v = "2 3\nhello 1 2 3\nĠworld 4 5.5 -6e-1\n"
    csv_text = 'token,v1,v2,v3\nhello,1,2,3\n"Ġworld",4,5.5,-6e-1\n'
    a = embeddings.parse_embeddings(w2v.encode(), "e.txt", 3)
    b = embeddings.parse_embeddings(csv_text.encode(), "e.csv", 3)
    assert a.vectors.keys() == b.vectors.keys() == {"hello", "Ġworld"}
    np.testing.assert_array_equal(a.vectors["Ġworld"], [4, 5.5, -0.6])
    np.testing.assert_array_equal(b.vectors["Ġworld"], [4, 5.5, -0.6])
    quoted = embeddings.parse_embeddings(b'",",1,2\n"""",3,4\n', "c.csv", 2)
    assert quoted.vectors[","].tolist() == [1, 2] and quoted.vectors['"'].tolist() == [3, 4]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2 3\na 1 2 3\nb 1 2 3\n", r"dimension 3 but model.embedding_size is 4"),
        ("a,1,2,3\n", r"e: embeddings have dimension 3 but model.embedding_size is 4"),
        ("1 4\na 1 2 nan 3\n", r"e:2: non-finite value 'nan'"),
        ("a,1,2,3,inf\n", r"e:1: non-finite value 'inf'"),
        ("2 4\na 1 2 3 4\na 5 6 7 8\n", r"e:3: duplicate token 'a' \(first on line 2\)"),
        ("2 4\na 1 2 3 4\nb 5 6 7\n", r"e:3: malformed line: expected a token and 4 values, got 4 fields"),
        ("2 4\na 1 2 3 4\nb 5 six 7 8\n", r"e:3: malformed line: 'six' is not a number"),
        ("3 4\na 1 2 3 4\nb 5 6 7 8\n", r"e: the header says 3 vectors but the file has 2"),
        ("a,1,2,3,4\nb,1,2\n", r"e:2: malformed line: expected a token and 4 values, got 2 values"),
        ("", r"e: the embeddings file is empty"),
        ("x y\n", r"e:1: malformed line"),
    ],
)
def test_bad_embeddings_files_name_the_line(text, expected):
    with pytest.raises(InputError, match=expected):
        embeddings.parse_embeddings(text.encode(), "e", 4)


def test_align_puts_token_vectors_on_their_ids_and_seeds_the_rest():
    vectors = {"b": np.array([1.0, 2.0]), "d": np.array([3.0, 4.0])}
    matrix, known = embeddings.align(vectors, ["a", "b", "c", "d"], 2, seed=1)
    assert matrix.dtype == np.float32 and matrix.shape == (4, 2)
    assert known.tolist() == [False, True, False, True]
    np.testing.assert_array_equal(matrix[1], [1, 2])
    np.testing.assert_array_equal(matrix[3], [3, 4])
    again, _ = embeddings.align(vectors, ["a", "b", "c", "d"], 2, seed=1)
    np.testing.assert_array_equal(matrix, again)
    assert embeddings.oov_rate(np.array([10, 70, 0, 20]), known) == pytest.approx(0.1)


def test_token_counts_csv_sorted_by_count_then_id():
    text = token_counts_csv(
        np.array([5, 0, 9, 5]), ["a", ",", '"q', "d"], np.array([True, False, True, True])
    )
    assert text.splitlines() == [
        "id,token,count,has_vector",
        '2,"""q",9,1',
        "0,a,5,1",
        "3,d,5,1",
        '1,",",0,0',
    ]


def _sample(texts: list[str], max_chars: int | None) -> list[str]:
    """The tokenizer sample of blocks with these training texts, as the executors cut it."""
    plan = corpus_blocks.sample_plan([len(t) for t in texts], max_chars)
    return [
        piece
        for i, text in enumerate(texts)
        if i in plan
        for piece in corpus_blocks.sample_pieces(text, plan[i])
    ]


def test_the_tokenizer_sample_is_bounded_spread_deterministic_and_whole_lines():
    texts = ["".join(f"doc {i} line {n}\n" for n in range(20_000)) for i in range(3)]
    everything = _sample(texts, None)
    assert "".join(everything) == "".join(texts)
    assert _sample(texts, 10**9) == everything  # it fits: all of it

    limit = 300_000  # about a third of the text: pieces from every block
    sample = _sample(texts, limit)
    assert sample == _sample(texts, limit)
    text = "".join(sample)
    assert 0.9 * limit < len(text) <= limit
    lines = text.splitlines(keepends=True)
    assert all(line.startswith("doc ") and line.endswith("\n") for line in lines)  # no cut line
    assert {line.split()[1] for line in lines} == {"0", "1", "2"}


def test_a_line_longer_than_a_sample_piece_is_cut_not_lost():
    sample = "".join(_sample(["x" * (3 * corpus.SAMPLE_BLOCK_CHARS)], corpus.SAMPLE_BLOCK_CHARS))
    assert sample == "x" * corpus.SAMPLE_BLOCK_CHARS


def _blocks_of(tmp_path, data: bytes, block_bytes: int, on_error: str = "strict") -> list[str]:
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    blocks = corpus_blocks.plan_blocks(corpus_blocks.file_sizes([str(path)]), block_bytes)
    return [corpus_blocks.read_block(block, on_error) for block in blocks]


@pytest.mark.parametrize("block_bytes", [1, 3, 7, 64, 10_000])
def test_blocks_are_whole_lines_that_rebuild_the_normalised_file(tmp_path, block_bytes):
    data = "\ufeffa\r\nbb\rccc\n\n\ufeffdé日本\r\n".encode() + b"long " * 50 + b"\nlast"
    texts = _blocks_of(tmp_path, data, block_bytes)
    assert "".join(texts) == corpus.decode_document(data, "x")  # the BOM inside the file is kept
    filled = [text for text in texts if text]  # a block inside a long line owns nothing
    assert all(text.endswith("\n") for text in filled[:-1])  # each block ends a line


def test_a_decoding_error_in_a_later_block_names_the_offset_in_the_file(tmp_path):
    data = b"line one\n" * 100 + b"bad \xff here\n"
    with pytest.raises(InputError, match=r"corpus.txt: invalid UTF-8 at byte offset 904 \(byte 0xff\)"):
        _blocks_of(tmp_path, data, 64)
    with pytest.raises(InputError, match=r"corpus.txt: looks like a binary .* NUL byte at byte offset 900"):
        _blocks_of(tmp_path, b"line one\n" * 100 + b"\x00", 64)


@pytest.mark.parametrize("split_by", ["document", "stream"])
@pytest.mark.parametrize("block_bytes", [16, 50, 1000])
def test_block_cuts_put_the_split_where_the_whole_text_rule_does(split_by, block_bytes, tmp_path):
    rng = np.random.default_rng(block_bytes)
    docs = ["".join("w" * int(rng.integers(0, 30)) + "\n" for _ in range(n)) for n in (40, 3, 25)]
    docs[1] += "no newline at the end"
    valid_split = 0.3
    cuts = corpus_blocks.split_cuts([len(d) for d in docs], valid_split, split_by)
    for doc, cut in zip(docs, cuts, strict=True):
        # the rule on the whole text: the cut, moved forward to the next line start
        expected = (
            cut
            if cut <= 0 or cut >= len(doc) or doc[cut - 1] == "\n"
            else (doc.find("\n", cut) + 1 or len(doc))
        )
        train, before = "", 0
        for text in _blocks_of(tmp_path, doc.encode(), block_bytes):
            train += text[: corpus_blocks.block_cut(text, cut - before)]
            before += len(text)
        assert train == doc[:expected]
