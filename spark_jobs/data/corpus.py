"""The corpus's text rules: decoding, normalisation and segments.

Each corpus file is one document; documents are numbered (doc_id 0, 1, ...) in sorted path
order. Which files (a file, a directory, a glob; literal paths, hidden names, symbolic links)
is `spark_jobs.data.corpus_files`; reading them, in blocks of whole lines on the executors,
is `spark_jobs.data.corpus_blocks`.

"Normalised" text, which is what the token ids of a document decode back to, is:
  1. the file's bytes decoded as UTF-8 (strict: invalid bytes are an error that names the
     file and the byte offset; with `data.on_decode_error: replace` each invalid byte
     sequence becomes U+FFFD instead);
  2. without a leading byte-order mark (U+FEFF) at the start of the file;
  3. with every line ending made LF: CRLF -> LF, then a lone CR -> LF.
Nothing else changes: no Unicode (NFC/NFKC) normalisation, no trimming, no case folding,
tabs and trailing spaces are kept.

Files with a NUL byte are taken for binary (or UTF-16) and refused. Documents that are empty
or whitespace-only after normalisation are skipped with a warning; a corpus left with no
document is an error.
"""

from __future__ import annotations

import logging

from spark_jobs.common.errors import InputError

log = logging.getLogger(__name__)

# Documents are cut into segments of at most this many characters, at line ends where
# possible; one segment is one row of tokens/ (and one encode call inside Spark).
SEGMENT_CHARS = 8192
# A tokenizer sample is made of blocks of about this many characters (whole lines).
SAMPLE_BLOCK_CHARS = 65_536


def normalize_text(text: str, file_start: bool = True) -> str:
    """Drop a leading BOM (at the start of a file only) and make every line ending LF."""
    if file_start and text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def decode_document(data: bytes, path: str, on_decode_error: str = "strict", byte_offset: int = 0) -> str:
    """Bytes (from `byte_offset` of the file) -> normalised text; errors name the file and the
    byte offset in it."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(
            f"{path}: looks like a binary (or UTF-16) file: NUL byte at byte offset {byte_offset + nul}"
        )
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        if on_decode_error != "replace":
            raise InputError(
                f"{path}: invalid UTF-8 at byte offset {byte_offset + exc.start} "
                f"(byte 0x{data[exc.start]:02x}); set data.on_decode_error=replace to substitute U+FFFD"
            ) from None
        count = data.decode("utf-8", errors="ignore")
        text = data.decode("utf-8", errors="replace")
        log.warning(
            "%s: invalid UTF-8 from byte offset %d replaced by U+FFFD (%d chars affected)",
            path,
            byte_offset + exc.start,
            len(text) - len(count),
        )
    return normalize_text(text, file_start=byte_offset == 0)


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


def whole_lines(text: str, start: int, size: int) -> str:
    """Up to `size` characters of `text` from the first line start at or after `start`, cut
    after the last complete line (a single line longer than `size` is cut where it must be)."""
    if start > 0 and text[start - 1] != "\n":
        start = text.find("\n", start) + 1 or len(text)
    piece = text[start : start + size]
    if start + size < len(text):
        cut = piece.rfind("\n")
        piece = piece[: cut + 1] if cut >= 0 else piece
    return piece
