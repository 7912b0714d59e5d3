"""The validation split's token streams, read from the preprocess step's tokens.

The full-split figures score the validation text itself, not the window step's windows: a
stride larger than one leaves the tokens after a range's last window (fewer than a stride)
in no window, and those count for a user as much as any other. Validation is where
preprocess/split.json says it begins: each document's segments from `val_first_segment` on
(split by document), or the whole stream from the first validation segment on (split by
stream, one range across documents, as the window step cuts it).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError
from spark_jobs.data import parquet_files

log = logging.getLogger(__name__)


def validation_ranges(preprocess_dir: str, split_by: str) -> list[np.ndarray]:
    """int32 token streams of the validation ranges (per document, or one for split_by=stream)."""
    split_uri = storage.join(preprocess_dir, "split.json")
    try:
        first = {
            int(doc): int(seq)
            for doc, seq in json.loads(storage.read_text(split_uri))["val_first_segment"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{split_uri}: not a valid split record ({exc!r}); re-run the preprocess step"
        ) from None
    tokens_uri = storage.join(preprocess_dir, "tokens")
    table = pa.concat_tables(
        [
            parquet_files.read_table(uri, ["doc_id", "seq", "ids"])
            for uri in parquet_files.data_files(tokens_uri)
        ]
    ).sort_by([("doc_id", "ascending"), ("seq", "ascending")])
    doc_ids = table.column("doc_id").to_numpy().astype(np.int64)
    seqs = table.column("seq").to_numpy().astype(np.int64)
    val_from = np.array([first.get(int(doc), np.iinfo(np.int64).max) for doc in doc_ids], dtype=np.int64)
    is_val = seqs >= val_from
    if split_by == "stream" and is_val.any():
        is_val[int(np.flatnonzero(is_val)[0]) :] = True  # everything after the cut
    ids = table.column("ids").combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = ids.flatten().to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    rows = np.flatnonzero(is_val)
    if split_by == "stream":
        return [flat[ends[rows[0]] - lengths[rows[0]] :]] if len(rows) else []
    ranges = []
    for doc in np.unique(doc_ids[rows]):
        mine = rows[doc_ids[rows] == doc]  # contiguous: rows are sorted by (doc_id, seq)
        ranges.append(flat[ends[mine[0]] - lengths[mine[0]] : ends[mine[-1]]])
    return ranges
