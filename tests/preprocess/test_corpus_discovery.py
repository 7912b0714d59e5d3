"""Which files make the corpus: symbolic links (loops, dangling, duplicates), literal `[`, globs.

Real folders on disk and a moto server over HTTP for s3://; no Spark.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from spark_jobs.common.errors import InputError
from spark_jobs.data.corpus_blocks import file_sizes, plan_blocks, read_block
from spark_jobs.data.corpus_files import find_corpus_files, match_parts


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_symlink_loop_reads_each_real_file_once_and_is_named(tmp_path, caplog):
    corpus = _tree(tmp_path / "corpus", {"a.txt": "alpha\n", "sub/b.txt": "beta\n"})
    os.symlink(".", corpus / "loop")  # dir/loop -> .
    os.symlink("..", corpus / "sub" / "up")  # a loop one level down
    with caplog.at_level(logging.WARNING):
        files = find_corpus_files(str(corpus))
    assert files == [str(corpus / "a.txt"), str(corpus / "sub" / "b.txt")]
    assert [read_block(block, "strict") for block in plan_blocks(file_sizes(files), 1024)] == [
        "alpha\n",
        "beta\n",
    ]
    loops = [r.getMessage() for r in caplog.records if "symbolic link loop" in r.getMessage()]
    assert any(f"{corpus}/loop -> ." in m for m in loops)
    assert any(f"{corpus}/sub/up -> .." in m for m in loops)


def test_a_dangling_link_is_named_and_skipped(tmp_path, caplog):
    corpus = _tree(tmp_path / "corpus", {"a.txt": "alpha\n"})
    os.symlink("gone.txt", corpus / "b.txt")
    with caplog.at_level(logging.WARNING):
        assert find_corpus_files(str(corpus)) == [str(corpus / "a.txt")]
    assert f"dangling symbolic link {corpus}/b.txt -> gone.txt" in caplog.text


def test_two_paths_to_one_file_read_it_once(tmp_path):
    corpus = _tree(tmp_path / "corpus", {"a.txt": "alpha\n", "other/c.txt": "gamma\n"})
    os.symlink("a.txt", corpus / "alias.txt")
    os.symlink("other", corpus / "same")  # a folder reached twice, not a loop
    assert find_corpus_files(str(corpus)) == [str(corpus / "a.txt"), str(corpus / "other" / "c.txt")]


def test_a_link_to_a_folder_outside_is_followed(tmp_path):
    outside = _tree(tmp_path / "outside", {"x.txt": "x\n"})
    corpus = _tree(tmp_path / "corpus", {"a.txt": "alpha\n"})
    os.symlink(outside, corpus / "more")
    assert find_corpus_files(str(corpus)) == [str(corpus / "a.txt"), str(corpus / "more" / "x.txt")]


def test_a_path_that_exists_is_literal_even_with_brackets(tmp_path):
    books = _tree(tmp_path / "books[2024]", {"a.txt": "alpha\n", "b.md": "beta\n"})
    _tree(tmp_path, {"books2/z.txt": "not this\n"})  # what books[2024] would match as a glob
    notes = _tree(tmp_path, {"notes[1].txt": "one\n", "notes1.txt": "not this\n"}) / "notes[1].txt"
    assert find_corpus_files(str(books)) == [str(books / "a.txt"), str(books / "b.md")]
    assert find_corpus_files(str(notes)) == [str(notes)]
    # in a glob, a part that exists as-is stays literal too
    assert find_corpus_files(f"{books}/*.txt") == [str(books / "a.txt")]


def test_a_path_that_does_not_exist_is_a_glob(tmp_path):
    root = _tree(
        tmp_path, {"a.txt": "a\n", "b.txt": "b\n", "c.txt": "c\n", "d/e.txt": "e\n", "d/f/g.txt": "g\n"}
    )
    assert find_corpus_files(f"{root}/[ab].txt") == [str(root / "a.txt"), str(root / "b.txt")]
    assert find_corpus_files(f"{root}/*.txt") == [str(root / n) for n in ("a.txt", "b.txt", "c.txt")]
    assert find_corpus_files(f"{root}/*/*.txt") == [str(root / "d" / "e.txt")]
    assert find_corpus_files(f"{root}/d/**/*.txt") == [
        str(root / "d" / "e.txt"),
        str(root / "d" / "f" / "g.txt"),
    ]
    with pytest.raises(InputError, match=r"no files match data.corpus_path=.*/\[xy\].txt"):
        find_corpus_files(f"{root}/[xy].txt")


def test_a_recursive_glob_through_a_loop_reads_each_file_once(tmp_path, caplog):
    corpus = _tree(tmp_path / "corpus", {"a.txt": "alpha\n", "sub/b.txt": "beta\n", "_hidden/c.txt": "no\n"})
    os.symlink(".", corpus / "loop")
    with caplog.at_level(logging.WARNING):
        files = find_corpus_files(f"{corpus}/**/*.txt")
    assert files == [str(corpus / "a.txt"), str(corpus / "sub" / "b.txt")]
    assert f"{corpus}/loop -> ." in caplog.text


def test_match_parts():
    assert match_parts(["a.txt"], ["**", "*.txt"])
    assert match_parts(["x", "y", "a.txt"], ["**", "*.txt"])
    assert not match_parts(["x", "a.txt"], ["*.txt"])
    assert match_parts(["[a].txt"], ["[[]a].txt"])


@pytest.fixture
def s3_corpus(s3_endpoint) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="corpora")
    for key in ("texts[v1]/a.txt", "texts[v1]/b.md", "texts[v1]/deep/c.txt", "texts[v1]/_SUCCESS"):
        s3.put_object(Bucket="corpora", Key=key, Body=b"text\n")
    return "s3://corpora/texts[v1]"


def test_s3_follows_the_same_rules(s3_corpus):
    base = s3_corpus
    everything = [f"{base}/a.txt", f"{base}/b.md", f"{base}/deep/c.txt"]
    assert find_corpus_files(base) == everything  # exists as-is: literal, hidden _SUCCESS skipped
    assert find_corpus_files(f"{base}/*.txt") == [f"{base}/a.txt"]  # `*` stays within one name
    assert find_corpus_files(f"{base}/**/*.txt") == [f"{base}/a.txt", f"{base}/deep/c.txt"]
