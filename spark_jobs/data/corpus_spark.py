"""The corpus on Spark, for the preprocess step: read on the executors, planned on the driver.

    files ─→ blocks ─→ [executors] read, validate, normalise (cached) ─→ BlockText per block
                                                                    └→ [driver] CorpusPlan
    CorpusPlan + split rule ─→ [executors] cut each block, count segments ─→ [driver] SegmentPlan
    SegmentPlan ─→ [executors] segment rows (doc_id, seq, text) to encode; the tokenizer's sample

The text never reaches the driver; only numbers per block do, and the tokenizer's sample,
which `data.tokenizer_sample_chars` bounds. The pure arithmetic is
`spark_jobs.data.corpus_blocks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from spark_jobs.common.config import PipelineConfig
from spark_jobs.common.errors import InputError, names_partition
from spark_jobs.data import corpus_blocks as blocks_io

log = logging.getLogger(__name__)


@dataclass
class CorpusPlan:
    """What the driver knows of the corpus after reading it on the executors: no text."""

    files: list[str]
    blocks: list[blocks_io.Block]
    facts: list[blocks_io.BlockText]
    doc_of_file: dict[int, int]  # file index -> doc_id (empty and whitespace-only files have none)
    doc_chars: list[int]

    def doc_of_block(self, i: int) -> int:
        return self.doc_of_file.get(self.blocks[i].file_index, -1)


def read_corpus_blocks(spark, files: list[str], data) -> tuple[Any, CorpusPlan]:
    """Read, validate and normalise the corpus on the executors: (cached RDD of (block index,
    text, facts), the plan). Bad bytes are one line naming the first bad file and the byte offset."""
    from pyspark import StorageLevel

    blocks = blocks_io.plan_blocks(blocks_io.file_sizes(files), data.read_block_bytes)
    on_error = data.on_decode_error

    def read(items):
        for index, block in items:
            yield (index, *blocks_io.describe_block(block, on_error))

    texts = (
        spark.sparkContext.parallelize(list(enumerate(blocks)), max(1, len(blocks)))
        .mapPartitions(names_partition("preprocess", read))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )  # rows (block index, text, BlockText); the text stays on the executors
    facts = [fact for _, fact in sorted(texts.map(lambda row: (row[0], row[2])).collect())]
    errors = [fact.error for fact in facts if fact.error]
    if errors:
        texts.unpersist()
        raise InputError(errors[0])

    doc_of_file: dict[int, int] = {}
    chars: list[int] = []
    for index, path in enumerate(files):
        mine = [fact for block, fact in zip(blocks, facts, strict=True) if block.file_index == index]
        if any(fact.has_text for fact in mine):
            doc_of_file[index] = len(chars)
            chars.append(sum(fact.chars for fact in mine))
        elif len(files) > 1:
            log.warning("skipping %s corpus file %s", _emptiness(mine), path)
    if not chars:
        texts.unpersist()
        where = files[0] if len(files) == 1 else f"{data.corpus_path} ({len(files)} files)"
        kind = "only whitespace" if any(fact.chars for fact in facts) else "no text (empty)"
        raise InputError(f"corpus has {kind}: {where}")
    return texts, CorpusPlan(files, blocks, facts, doc_of_file, chars)


def _emptiness(facts: list[blocks_io.BlockText]) -> str:
    return "whitespace-only" if any(fact.chars for fact in facts) else "empty"


def block_cuts(plan: CorpusPlan, config: PipelineConfig) -> list[int]:
    """Each block's split point relative to its first character (see corpus_blocks.block_cut)."""
    doc_cuts = blocks_io.split_cuts(plan.doc_chars, config.training.valid_split, config.data.split_by)
    cuts, seen = [], {}
    for i, fact in enumerate(plan.facts):
        doc = plan.doc_of_block(i)
        before = seen.get(doc, 0)  # the document's characters in its earlier blocks
        cuts.append(doc_cuts[doc] - before if doc >= 0 else 0)
        seen[doc] = before + fact.chars
    return cuts


@dataclass
class SegmentPlan:
    train_ends: list[int]  # per block: its training characters
    seq_offsets: list[int]  # per block: the seq of its first segment within its document
    segments: int
    val_first_segment: dict[int, int]  # doc_id -> the seq of its first validation segment
    train_chars: int


def plan_segments(spark, texts, plan: CorpusPlan, config: PipelineConfig) -> SegmentPlan:
    """Cut every block at the split, count its segments and number them (on the driver)."""
    shared = spark.sparkContext.broadcast(
        [(plan.doc_of_block(i), cut) for i, cut in enumerate(block_cuts(plan, config))]
    )

    def count(item: tuple) -> tuple[int, int, int, int]:
        i, text, _ = item
        doc, cut = shared.value[i]
        if doc < 0:
            return i, 0, 0, 0
        end = blocks_io.block_cut(text, cut)
        pieces, train = blocks_io.block_segments(text, end)
        return i, end, len(pieces), train

    counts = sorted(texts.map(count).collect())
    train_ends, offsets, next_seq, val_first = [], [], {}, {}
    for i, end, pieces, train in counts:
        doc = plan.doc_of_block(i)
        train_ends.append(end)
        offsets.append(next_seq.get(doc, 0))
        if doc >= 0 and train < pieces and doc not in val_first:
            val_first[doc] = offsets[-1] + train
        next_seq[doc] = offsets[-1] + pieces
    for doc in range(len(plan.doc_chars)):
        val_first.setdefault(doc, next_seq.get(doc, 0))  # no validation text: its segment count
    total = sum(n for doc, n in next_seq.items() if doc >= 0)
    return SegmentPlan(train_ends, offsets, total, val_first, sum(train_ends))


def segment_rows(spark, texts, plan: CorpusPlan, segs: SegmentPlan):
    """The segments as a DataFrame (doc_id, seq, text), made on the executors."""
    shared = spark.sparkContext.broadcast(
        [(plan.doc_of_block(i), end, segs.seq_offsets[i]) for i, end in enumerate(segs.train_ends)]
    )

    def rows(item: tuple):
        i, text, _ = item
        doc, end, first_seq = shared.value[i]
        if doc < 0:
            return []
        pieces, _ = blocks_io.block_segments(text, end)
        return [(doc, first_seq + k, piece) for k, piece in enumerate(pieces)]

    return spark.createDataFrame(texts.flatMap(rows), schema="doc_id int, seq bigint, text string")


def tokenizer_sample(spark, texts, segs: SegmentPlan, max_chars: int | None) -> list[str]:
    """The tokenizer's training text (training text only, at most max_chars), in corpus order."""
    shared = spark.sparkContext.broadcast(
        (blocks_io.sample_plan(segs.train_ends, max_chars), segs.train_ends)
    )

    def pieces(item: tuple):
        i, text, _ = item
        wanted, ends = shared.value
        return [(i, blocks_io.sample_pieces(text[: ends[i]], wanted[i]))] if i in wanted else []

    return [piece for _, found in sorted(texts.flatMap(pieces).collect()) for piece in found]


def split_record(config: PipelineConfig, plan: CorpusPlan, segs: SegmentPlan) -> dict[str, Any]:
    """preprocess/split.json: where validation begins, which the window step applies."""
    return {
        "split_by": config.data.split_by,
        "valid_split": config.training.valid_split,
        # doc_id -> the first segment (seq) of its validation text; = its segment count if none
        "val_first_segment": {str(doc): seq for doc, seq in sorted(segs.val_first_segment.items())},
        "chars": {"train": segs.train_chars, "val": sum(plan.doc_chars) - segs.train_chars},
    }
