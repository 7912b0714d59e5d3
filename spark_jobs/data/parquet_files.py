"""The files of a Parquet folder (tokens/, a split of windows), checked before anyone reads them.

A truncated Parquet file has no valid footer. Spark then fails with a Java stack trace and
pyarrow's datasets either raise or, with `exclude_invalid_files`, skip the file without a
word. Reading each file's footer on the driver first is cheap (a small read per file, no
data) and turns such a file into one error that names it.

A folder's data files are its plain files whose names do not start with "." or "_", as Spark
and pyarrow see them (`_SUCCESS`, Hadoop's `.crc` files are not data).
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError


def data_files(folder_uri: str) -> list[str]:
    """The URIs of a folder's data files, sorted by name; an error when there are none."""
    fs, path = storage.filesystem(folder_uri)
    if not storage.is_dir(folder_uri):
        raise InputError(f"Parquet folder not found: {folder_uri}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(
        posixpath.basename(info.path)
        for info in infos
        if info.type == pafs.FileType.File and not posixpath.basename(info.path).startswith((".", "_"))
    )
    if not names:
        raise InputError(f"no Parquet files in {folder_uri}")
    return [storage.join(folder_uri, name) for name in names]


def rows_per_file(folder_uri: str) -> dict[str, int]:
    """{file URI: rows} from each data file's footer, in name order; a file that is not valid
    Parquet (truncated, garbled footer) is an InputError naming it."""
    rows = {}
    for uri in data_files(folder_uri):
        fs, path = storage.filesystem(uri)
        try:
            with fs.open_input_file(path) as handle:
                rows[uri] = pq.ParquetFile(handle).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{uri}: not a valid Parquet file ({_reason(exc)})") from None
    return rows


def read_table(uri: str, columns: list[str]) -> pa.Table:
    """One data file's columns; a file whose data cannot be read is an InputError naming it."""
    fs, path = storage.filesystem(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{uri}: unreadable Parquet ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
