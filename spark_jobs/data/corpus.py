"""Finding, reading and normalising the corpus: a file, a directory or a glob, local or s3://.

Each file is one document; documents are numbered (doc_id 0, 1, ...) in sorted path order.
Which files (a file, a directory, a glob; literal paths, hidden names, symbolic links) is
`spark_jobs.data.corpus_files`. Files are read through `spark_jobs.common.storage`
(pyarrow.fs), so local paths and s3:// URIs behave the same.

"Normalised" text, which is what the token ids of a document decode back to, is:
  1. the file's bytes decoded as UTF-8 (strict: invalid bytes are an error that names the
     file and the byte offset; with `data.on_decode_error: replace` each invalid byte
     sequence becomes U+FFFD instead);
  2. without a leading byte-order mark (U+FEFF);
  3. with every line ending made LF: CRLF -> LF, then a lone CR -> LF.
Nothing else changes: no Unicode (NFC/NFKC) normalisation, no trimming, no case folding,
tabs and trailing spaces are kept.

Files with a NUL byte are taken for binary (or UTF-16) and refused. Documents that are empty
or whitespace-only after normalisation are skipped with a warning; a corpus left with no
document is an error.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.data.corpus_files import find_corpus_files

log = logging.getLogger(__name__)

# Documents are cut into segments of at most this many characters, at line ends where
# possible; one segment is one row of tokens/ (and one encode call inside Spark).
SEGMENT_CHARS = 8192
# A tokenizer sample is made of blocks of about this many characters (whole lines).
SAMPLE_BLOCK_CHARS = 65_536


@dataclass(frozen=True)
class Document:
    doc_id: int
    path: str
    text: str  # normalised (see the module docstring)


def normalize_text(text: str) -> str:
    """Drop a leading BOM and make every line ending LF (CRLF and lone CR)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def decode_document(data: bytes, path: str, on_decode_error: str = "strict") -> str:
    """Bytes -> normalised text; errors name the file and the byte offset."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(f"{path}: looks like a binary (or UTF-16) file: NUL byte at byte offset {nul}")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        if on_decode_error != "replace":
            raise InputError(
                f"{path}: invalid UTF-8 at byte offset {exc.start} "
                f"(byte 0x{data[exc.start]:02x}); set data.on_decode_error=replace to substitute U+FFFD"
            ) from None
        count = data.decode("utf-8", errors="ignore")
        text = data.decode("utf-8", errors="replace")
        log.warning(
            "%s: invalid UTF-8 from byte offset %d replaced by U+FFFD (%d chars affected)",
            path,
            exc.start,
            len(text) - len(count),
        )
    return normalize_text(text)


def read_corpus(corpus_path: str, on_decode_error: str = "strict") -> list[Document]:
    """Find, read, validate and normalise every corpus file; at least one document results."""
    files = find_corpus_files(corpus_path)
    documents: list[Document] = []
    skipped = {"empty": 0, "whitespace-only": 0}
    for path in files:
        text = decode_document(storage.read_bytes(path), path, on_decode_error)
        if not text or text.isspace():
            kind = "empty" if not text else "whitespace-only"
            skipped[kind] += 1
            if len(files) > 1:
                log.warning("skipping %s corpus file %s", kind, path)
            continue
        documents.append(Document(doc_id=len(documents), path=path, text=text))
    if not documents:
        where = files[0] if len(files) == 1 else f"{corpus_path} ({len(files)} files)"
        what = "only whitespace" if skipped["whitespace-only"] else "no text (empty)"
        raise InputError(f"corpus has {what}: {where}")
    return documents


def segments(text: str, max_chars: int = SEGMENT_CHARS) -> list[str]:
    """Cut a text into consecutive pieces of at most `max_chars`, at line ends where possible.

    "".join(segments(text)) == text always holds; a line longer than `max_chars` is cut
    mid-line (at a character boundary, so every piece is valid UTF-8 on its own).
    """
    pieces: list[str] = []
    start = 0
    n = len(text)
    while start < n:
        end = min(start + max_chars, n)
        if end < n:
            cut = text.rfind("\n", start, end)
            if cut >= start:
                end = cut + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def sample_text(documents: list[Document], max_chars: int | None) -> list[str]:
    """The tokenizer's training text: all of it if it fits in `max_chars`, else evenly spaced
    blocks of whole lines from across all documents, `max_chars` in all.

    Deterministic (the same corpus gives the same sample) and spread out: a corpus of many
    files is not learnt from its first files only.
    """
    total = sum(len(doc.text) for doc in documents)
    if max_chars is None or total <= max_chars:
        return [piece for doc in documents for piece in segments(doc.text)]
    blocks = max(1, max_chars // SAMPLE_BLOCK_CHARS)
    block = max_chars // blocks
    out: list[str] = []
    doc_index, doc_start = 0, 0  # the document holding position `start` of the concatenation
    for i in range(blocks):
        start = i * total // blocks
        while start >= doc_start + len(documents[doc_index].text):
            doc_start += len(documents[doc_index].text)
            doc_index += 1
        out.extend(segments(_whole_lines(documents[doc_index].text, start - doc_start, block)))
    return [piece for piece in out if piece]


def _whole_lines(text: str, start: int, size: int) -> str:
    """Up to `size` characters of `text` from the first line start at or after `start`, cut
    after the last complete line (a single line longer than `size` is cut where it must be)."""
    if start > 0 and text[start - 1] != "\n":
        start = text.find("\n", start) + 1 or len(text)
    piece = text[start : start + size]
    if start + size < len(text):
        cut = piece.rfind("\n")
        piece = piece[: cut + 1] if cut >= 0 else piece
    return piece


def train_text_ends(
    documents: list[Document], valid_split: float, split_by: Literal["document", "stream"]
) -> list[int]:
    """Where each document's training text ends (a character offset): validation is the rest.

    "document": the last `valid_split` of every document; "stream": the last `valid_split` of
    all documents in order (earlier documents are all training, later ones all validation).
    The cut moves forward to the next line start, so no line is split between the two. The
    tokenizer and Word2Vec are fitted on the training text only, and the window step cuts its
    train/val windows at the same place (preprocess/split.json).
    """
    lengths = [len(doc.text) for doc in documents]
    if split_by == "document":
        cuts = [n - round(n * valid_split) for n in lengths]
    else:
        total = sum(lengths)
        remaining = total - round(total * valid_split)  # training characters, from the start
        cuts = []
        for n in lengths:
            cuts.append(min(n, max(remaining, 0)))
            remaining -= n
    return [_next_line_start(doc.text, cut) for doc, cut in zip(documents, cuts, strict=True)]


def _next_line_start(text: str, position: int) -> int:
    if position <= 0 or position >= len(text) or text[position - 1] == "\n":
        return position
    newline = text.find("\n", position)
    return len(text) if newline < 0 else newline + 1


def content_hash(documents: list[Document]) -> str:
    """sha256 of the normalised texts in order: the same corpus gives the same hash wherever it lives."""
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
