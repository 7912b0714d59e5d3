"""Reading the corpus on the executors: each file cut into blocks of whole lines.

The driver lists the files and their sizes and plans blocks of about `data.read_block_bytes`
(a small file is one block); nothing of the text itself passes through it. A block is the
lines that *start* in its nominal byte range, like Hadoop's line records: it begins at the
first line start at or after its range's start and ends at the first line start at or after
its range's end, reading past the end to finish its last line. So a line longer than a block
is read whole by the block where it starts, and the next block, starting mid-line, owns
nothing. A "\\n" byte never occurs inside a UTF-8 multi-byte sequence, so every block decodes
on its own; errors name the file and the byte offset in the file.

Then, per block, on the executors:

    bytes ─→ normalised text ─→ (chars, sha256)                         the driver plans the split
                           └──→ train | val cut ─→ segments ─→ tokens     and the seq numbers

`split_cuts` is the driver's arithmetic: where training ends, in characters, for each
document (or the whole stream), and so for each block. `block_cut` moves a block's cut to
the next line start inside it, which is where the sequential definition
(`corpus.train_text_ends`) puts it too, because every block begins at a line start.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.data.corpus import SAMPLE_BLOCK_CHARS, decode_document, segments, whole_lines

SCAN_BYTES = 1 << 20  # how much more is read at a time when looking for the end of a line


@dataclass(frozen=True)
class Block:
    """Nominal bytes [start, end) of file `file_index` (of `size` bytes)."""

    file_index: int
    path: str
    start: int
    end: int
    size: int


@dataclass(frozen=True)
class BlockText:
    """What the driver learns of a block: never its text."""

    chars: int
    has_text: bool  # something other than whitespace
    sha256: str
    error: str | None  # a decoding error, reported by the driver (files in order)


def plan_blocks(files: list[tuple[str, int]], block_bytes: int) -> list[Block]:
    """Blocks of about `block_bytes` for (path, size) files, in file order; an empty file is one empty block."""
    blocks = []
    for index, (path, size) in enumerate(files):
        starts = range(0, max(size, 1), block_bytes)
        blocks.extend(Block(index, path, start, min(start + block_bytes, size), size) for start in starts)
    return blocks


def file_sizes(paths: list[str]) -> list[tuple[str, int]]:
    """(path, size in bytes) of each corpus file, from one metadata call per file."""
    sized = []
    for path in paths:
        fs, location = storage.filesystem(path)
        sized.append((path, fs.get_file_info(location).size or 0))
    return sized


def read_block(block: Block, on_decode_error: str) -> str:
    """The normalised text of the lines that start in the block (see the module docstring)."""
    fs, location = storage.filesystem(block.path)
    try:
        with fs.open_input_file(location) as handle:
            begin = _line_start_at_or_after(handle, block.start, block.size)
            stop = (
                _line_start_at_or_after(handle, block.end, block.size)
                if block.end < block.size
                else block.size
            )
            data = handle.read_at(stop - begin, begin) if stop > begin else b""
    except OSError as exc:
        raise InputError(f"{block.path}: cannot be read ({' '.join(str(exc).split())})") from None
    return decode_document(data, block.path, on_decode_error, byte_offset=begin) if data else ""


def _line_start_at_or_after(handle, position: int, size: int) -> int:
    """The first byte offset >= position that starts a line (0, or just after a "\\n"); size if none."""
    if position <= 0:
        return 0
    offset = position - 1  # the byte before a line start is "\n"
    while offset < size:
        chunk = handle.read_at(min(SCAN_BYTES, size - offset), offset)
        if not chunk:
            break
        newline = chunk.find(b"\n")
        if newline >= 0:
            return offset + newline + 1
        offset += len(chunk)
    return size


def describe_block(block: Block, on_decode_error: str) -> tuple[str, BlockText]:
    """(text, what the driver may know of it); a bad block is reported, not raised, so that
    the driver names the first bad file in file order with one line."""
    try:
        text = read_block(block, on_decode_error)
    except InputError as exc:
        return "", BlockText(0, False, "", str(exc))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return text, BlockText(len(text), bool(text) and not text.isspace(), digest, None)


def corpus_hash(digests: list[str]) -> str:
    """sha256 over the blocks' sha256 (of their normalised text), in order: the same corpus read
    with the same data.read_block_bytes gives the same hash wherever it lives."""
    outer = hashlib.sha256()
    for digest in digests:
        outer.update(bytes.fromhex(digest))
    return outer.hexdigest()


# --- the train/val split, planned on the driver ---------------------------------------------


def split_cuts(
    doc_chars: list[int], valid_split: float, split_by: Literal["document", "stream"]
) -> list[int]:
    """Where each document's training text ends, in characters, before moving to a line start
    (the rule of corpus.train_text_ends, from the lengths alone)."""
    if split_by == "document":
        return [n - round(n * valid_split) for n in doc_chars]
    remaining = sum(doc_chars) - round(sum(doc_chars) * valid_split)
    cuts = []
    for n in doc_chars:
        cuts.append(min(n, max(remaining, 0)))
        remaining -= n
    return cuts


def block_cut(text: str, cut: int) -> int:
    """The block's training end, given its document's cut relative to the block's first
    character: clipped to the block, then moved forward to the next line start in it."""
    if cut <= 0:
        return 0  # the block starts at a line start at or after the cut: all validation
    if cut >= len(text):
        return len(text)
    if text[cut - 1] == "\n":
        return cut
    newline = text.find("\n", cut)
    return len(text) if newline < 0 else newline + 1


def block_segments(text: str, train_end: int) -> tuple[list[str], int]:
    """(segments of the block's text, how many of them are training text): no segment
    straddles the cut."""
    train = segments(text[:train_end])
    return train + segments(text[train_end:]), len(train)


# --- the tokenizer's sample -----------------------------------------------------------------


def sample_plan(train_chars: list[int], max_chars: int | None) -> dict[int, list[tuple[int, int]]]:
    """{block: [(start, size), ...]} of the tokenizer's training sample: all the training text
    if it fits in `max_chars`, else evenly spaced pieces of about SAMPLE_BLOCK_CHARS from all
    of it, `max_chars` in all (each piece cut to whole lines and to its block by `whole_lines`)."""
    total = sum(train_chars)
    if max_chars is None or total <= max_chars:
        return {i: [(0, n)] for i, n in enumerate(train_chars) if n}
    pieces = max(1, max_chars // SAMPLE_BLOCK_CHARS)
    size = max_chars // pieces
    plan: dict[int, list[tuple[int, int]]] = {}
    block, block_start = 0, 0
    for i in range(pieces):
        start = i * total // pieces
        while start >= block_start + train_chars[block]:
            block_start += train_chars[block]
            block += 1
        plan.setdefault(block, []).append((start - block_start, size))
    return plan


def sample_pieces(train_text: str, plan: list[tuple[int, int]]) -> list[str]:
    """The block's part of the tokenizer sample, as segments."""
    pieces = []
    for start, size in plan:
        pieces.extend(segments(whole_lines(train_text, start, size)))
    return [piece for piece in pieces if piece]
