"""Token embeddings: read and validate a previous phase's file, or train them with Word2Vec;
write them aligned to the tokenizer's ids (row i = token id i).

Accepted files (the token is the tokenizer's own token string, e.g. "Ġthe" in byte-level BPE):
  word2vec text: a header "N D", then N lines "token v1 ... vD" (separated by whitespace);
  CSV:           lines "token,v1,...,vD" (an optional header row whose first field is
                 "token"); quote a token that contains a comma or a quote.
The format is taken from the first line: two integers mean word2vec text.

Every error names the file (and the line number where there is one).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

import numpy as np

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError

log = logging.getLogger(__name__)

TENSOR_NAME = "embeddings"


@dataclass
class TokenVectors:
    """Vectors by token string, as read from a file, with where they came from."""

    vectors: dict[str, np.ndarray]
    dim: int
    source: str


def _parse_floats(fields: list[str], source: str, lineno: int) -> np.ndarray:
    try:
        values = np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        bad = next(f for f in fields if not _is_float(f))
        raise InputError(f"{source}:{lineno}: malformed line: {bad!r} is not a number") from None
    if not np.all(np.isfinite(values)):
        bad = fields[int(np.flatnonzero(~np.isfinite(values))[0])]
        raise InputError(f"{source}:{lineno}: non-finite value {bad!r} (NaN/inf are not allowed)")
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _add(vectors: dict, first_line: dict, token: str, values: np.ndarray, source: str, lineno: int) -> None:
    if token in vectors:
        raise InputError(f"{source}:{lineno}: duplicate token {token!r} (first on line {first_line[token]})")
    vectors[token] = values
    first_line[token] = lineno


def _check_dim(dim: int, expected: int | None, source: str) -> None:
    if expected is not None and dim != expected:
        raise InputError(f"{source}: embeddings have dimension {dim} but model.embedding_size is {expected}")


def parse_word2vec_text(text: str, source: str, expected_dim: int | None = None) -> TokenVectors:
    lines = text.splitlines()
    header = lines[0].split()
    try:
        count, dim = int(header[0]), int(header[1])
    except (ValueError, IndexError):
        raise InputError(f"{source}:1: malformed header {lines[0]!r}, expected 'N D'") from None
    if count < 0 or dim <= 0:
        raise InputError(f"{source}:1: malformed header {lines[0]!r}, expected N >= 0 and D > 0")
    _check_dim(dim, expected_dim, source)
    vectors: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != dim + 1:
            raise InputError(
                f"{source}:{lineno}: malformed line: expected a token and {dim} values, "
                f"got {len(fields)} fields"
            )
        _add(vectors, first_line, fields[0], _parse_floats(fields[1:], source, lineno), source, lineno)
    if len(vectors) != count:
        raise InputError(f"{source}: the header says {count} vectors but the file has {len(vectors)}")
    return TokenVectors(vectors, dim, source)


def parse_csv(text: str, source: str, expected_dim: int | None = None) -> TokenVectors:
    vectors: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    dim: int | None = None
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if not vectors and dim is None and row[0].strip() == "token" and not all(map(_is_float, row[1:])):
                continue  # header row
            if len(row) < 2:
                raise InputError(f"{source}:{lineno}: malformed line: expected 'token,v1,...,vD'")
            if dim is None:
                dim = len(row) - 1
                _check_dim(dim, expected_dim, source)
            if len(row) - 1 != dim:
                raise InputError(
                    f"{source}:{lineno}: malformed line: expected a token and {dim} values, got {len(row) - 1} values"
                )
            _add(vectors, first_line, row[0], _parse_floats(row[1:], source, lineno), source, lineno)
    except csv.Error as exc:
        raise InputError(f"{source}:{reader.line_num}: malformed CSV: {exc}") from None
    if dim is None:
        raise InputError(f"{source}: no vectors in the embeddings file")
    return TokenVectors(vectors, dim, source)


def parse_embeddings(data: bytes, source: str, expected_dim: int | None = None) -> TokenVectors:
    """Parse and validate an embeddings file (word2vec text or CSV)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise InputError(f"{source}: the embeddings file is empty")
    first = text.splitlines()[0].split()
    if len(first) == 2 and all(f.lstrip("-").isdigit() for f in first):
        parsed = parse_word2vec_text(text, source, expected_dim)
    else:
        parsed = parse_csv(text, source, expected_dim)
    if not parsed.vectors:
        raise InputError(f"{source}: no vectors in the embeddings file")
    return parsed


def read_embeddings(uri: str, expected_dim: int) -> TokenVectors:
    if not storage.exists(uri):
        raise InputError(f"embeddings file not found: {uri} (data.embeddings_path)")
    if storage.is_dir(uri):
        raise InputError(f"data.embeddings_path is a directory, expected a file: {uri}")
    return parse_embeddings(storage.read_bytes(uri), uri, expected_dim)


# --- alignment to the tokenizer -----------------------------------------------------


def random_rows(vocab_size: int, dim: int, seed: int, scale: float) -> np.ndarray:
    """The seeded init for tokens without a vector (the same row whatever else is missing)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((vocab_size, dim)) * scale).astype(np.float32)


def align(
    vectors: dict[str, np.ndarray], id_to_token: list[str], dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """[vocab_size, dim] float32 with row i = the vector of token i; rows without one get a
    seeded random init scaled like the known vectors. Returns (matrix, has_vector mask)."""
    known = np.array([t in vectors for t in id_to_token], dtype=bool)
    if known.any():
        stacked = np.stack([vectors[t] for t, k in zip(id_to_token, known, strict=True) if k])
        scale = float(stacked.std()) or 0.02
    else:
        scale = 0.02
    matrix = random_rows(len(id_to_token), dim, seed, scale)
    for i, token in enumerate(id_to_token):
        if known[i]:
            matrix[i] = vectors[token]
    return matrix, known


def oov_rate(counts: np.ndarray, known: np.ndarray) -> float:
    """Fraction of corpus token occurrences whose token has no vector."""
    total = int(counts.sum())
    return float(counts[~known].sum() / total) if total else 0.0


def check_oov(rate: float, max_rate: float, source: str, missing_tokens: list[str]) -> None:
    if rate > max_rate:
        examples = ", ".join(repr(t) for t in missing_tokens[:5])
        raise InputError(
            f"{source}: {rate:.1%} of the corpus tokens have no vector, above data.max_oov_rate="
            f"{max_rate:g} (e.g. {examples}); is it for this tokenizer?"
        )


# --- writing ------------------------------------------------------------------------


def to_safetensors(matrix: np.ndarray) -> bytes:
    from safetensors.numpy import save

    return save({TENSOR_NAME: np.ascontiguousarray(matrix, dtype=np.float32)})


def read_table(uri: str, embedding_size: int) -> np.ndarray:
    """The preprocess step's embeddings.safetensors, checked: float32 [vocab, embedding_size].

    A truncated or garbled file, or one of another shape, is one error naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        table = load(storage.read_bytes(uri)).get(TENSOR_NAME)
    except SafetensorError as exc:
        reason = " ".join(str(exc).split())
        raise InputError(
            f"{uri}: not a readable safetensors file ({reason}); re-run the preprocess step"
        ) from None
    if table is None or table.ndim != 2:
        raise InputError(f"{uri}: no 2-D tensor '{TENSOR_NAME}'")
    if table.shape[1] != embedding_size:
        raise InputError(
            f"model.embedding_size is {embedding_size} but {uri} has embeddings of size {table.shape[1]}"
        )
    check_finite(table, uri)
    return table


def to_word2vec_text(matrix: np.ndarray, id_to_token: list[str]) -> str:
    """word2vec text format; '%.9g' round-trips float32 exactly."""
    rows, dim = matrix.shape
    lines = [f"{rows} {dim}"]
    for token, row in zip(id_to_token, matrix, strict=True):
        lines.append(token + " " + " ".join(f"{v:.9g}" for v in row.tolist()))
    return "\n".join(lines) + "\n"


def train_word2vec(tokens_df, dim: int, seed: int, iterations: int, window: int) -> dict[str, np.ndarray]:
    """Spark ML Word2Vec over the token sequences (one segment = one sentence).

    Words are token ids as strings; minCount=1 so every token seen gets a vector.
    """
    from pyspark.ml.feature import Word2Vec
    from pyspark.sql import functions as F

    sentences = tokens_df.select(F.transform("ids", lambda x: x.cast("string")).alias("words")).coalesce(1)
    model = Word2Vec(
        vectorSize=dim,
        seed=seed,
        maxIter=iterations,
        windowSize=window,
        minCount=1,
        numPartitions=1,
        inputCol="words",
        outputCol="vector",
    ).fit(sentences)
    return {
        row["word"]: np.asarray(row["vector"].toArray(), dtype=np.float32)
        for row in model.getVectors().collect()
    }


def check_finite(matrix: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"{what}: the embeddings contain NaN or inf")
