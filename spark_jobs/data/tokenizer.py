"""The tokenizer: a byte-level BPE trained with HF `tokenizers`, or the user's tokenizer.json.

Byte-level BPE starts from the 256 byte symbols, so every text encodes without unknown
tokens and decoding the ids gives back the exact text. Training is deterministic: the same
text and vocab size give the same tokenizer.json, byte for byte.

Encoding runs inside Spark on Arrow batches (`encode_arrow_batches` under `mapInArrow`):
the tokenizer JSON is broadcast once and each Python worker builds the tokenizer once.
Python workers import this module, so its top level imports only what encoding needs.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from spark_jobs.common.errors import InputError, names_partition

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

TOKENS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.int32(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ids", pa.list_(pa.int32()), nullable=False),
    ]
)
TOKENS_DDL = "doc_id int, seq bigint, ids array<int>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (special tokens first: <|endoftext|> is id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from spark_jobs.common.config import SPECIAL_TOKENS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if tokenizer.get_vocab_size() < vocab_size:
        log.warning(
            "the corpus only supports %d tokens (data.vocab_size=%d asked for more)",
            tokenizer.get_vocab_size(),
            vocab_size,
        )
    return tokenizer


def load_tokenizer(uri: str, hint: str = "data.tokenizer_path") -> Tokenizer:
    """Read a tokenizer.json (local or s3://); errors name the file, and `hint` where it came from."""
    from tokenizers import Tokenizer

    from spark_jobs.common import storage
    from spark_jobs.common.config import SPECIAL_TOKENS

    if not storage.exists(uri):
        raise InputError(f"tokenizer not found: {uri} ({hint})")
    if storage.is_dir(uri):
        raise InputError(f"{uri} is a directory, expected a tokenizer.json file ({hint})")
    text = storage.read_text(uri)  # unreadable or not UTF-8: a one-line error of its own
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # what tokenizers raises for bad JSON
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{uri}: not a valid tokenizer.json ({hint}): {reason}") from None
    if tokenizer.get_vocab_size() == 0:
        raise InputError(f"{uri}: the tokenizer has an empty vocabulary ({hint})")
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        log.warning("%s has no special token(s) %s", uri, ", ".join(missing))
    return tokenizer


def check_round_trip(
    tokenizer: Tokenizer, texts: Iterable[str], source: str, max_chars: int = 200_000
) -> None:
    """Refuse a tokenizer that does not decode its own ids back to the text (lossy/unknown tokens)."""
    seen = 0
    for text in texts:
        decoded = tokenizer.decode(
            tokenizer.encode(text, add_special_tokens=False).ids, skip_special_tokens=False
        )
        if decoded != text:
            at = next((i for i, (a, b) in enumerate(zip(decoded, text, strict=False)) if a != b), None)
            at = min(len(decoded), len(text)) if at is None else at
            raise InputError(
                f"{source}: the tokenizer does not reproduce the corpus text when decoding "
                f"(first difference at character {seen + at}: {text[at : at + 20]!r}); "
                "use a byte-level BPE tokenizer"
            )
        seen += len(text)
        if seen >= max_chars:
            return


def fingerprint(tokenizer_json: str) -> str:
    return hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()[:16]


# --- encoding inside Spark ----------------------------------------------------------

_WORKER_TOKENIZERS: dict[str, Tokenizer] = {}


def cached_tokenizer(tokenizer_json: str) -> Tokenizer:
    """One Tokenizer per distinct JSON per Python process (Spark reuses its workers)."""
    key = fingerprint(tokenizer_json)
    tokenizer = _WORKER_TOKENIZERS.get(key)
    if tokenizer is None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tokenizer_json)
        _WORKER_TOKENIZERS.clear()
        _WORKER_TOKENIZERS[key] = tokenizer
    return tokenizer


def encode_texts(tokenizer: Tokenizer, texts: list[str]) -> pa.ListArray:
    """Token ids of each text as an Arrow list<int32> column (batch encode, threads in Rust;
    the fast form skips the offsets nobody reads). The ids go through numpy: `pa.array` of
    nested Python lists took half as long again as the encoding itself."""
    ids = [encoding.ids for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


# Segments per encode call inside a worker: a tokenizer Encoding costs far more than its ids,
# so a whole Arrow batch (10,000 segments, up to 80 MB of text) at once would need gigabytes.
ENCODE_SLICE = 256


def encode_arrow_batches(tokenizer_json: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(doc_id, seq, text) batches -> (doc_id, seq, ids) batches; for `mapInArrow`."""
    tokenizer = cached_tokenizer(tokenizer_json)
    for batch in batches:
        for start in range(0, batch.num_rows, ENCODE_SLICE):
            part = batch.slice(start, ENCODE_SLICE)
            yield pa.RecordBatch.from_arrays(
                [
                    part.column("doc_id").cast(pa.int32()),
                    part.column("seq").cast(pa.int64()),
                    encode_texts(tokenizer, part.column("text").to_pylist()),
                ],
                schema=TOKENS_SCHEMA,
            )


def arrow_encoder(broadcast_json):
    """A `mapInArrow` function bound to a broadcast tokenizer JSON."""

    def encode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return encode_arrow_batches(broadcast_json.value, batches)

    return names_partition("preprocess", encode)
