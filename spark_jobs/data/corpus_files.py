"""Finding the corpus files: `data.corpus_path` as a file, a directory or a glob, local or s3://.

The rules, in the order they apply:
  1. A path that exists as-is is taken literally, whatever characters it holds: a folder
     named `books[2024]` is that folder, not a pattern.
  2. Otherwise a path holding `*`, `?` or `[` is a glob. Each `/`-separated part of it
     that exists as-is is still literal (`books[2024]/*.txt` is the .txt files of that
     folder); in the others `*` and `?` match within one name, `[abc]` one character of
     the set (write `[[]` for a literal `[`), and a part that is exactly `**` matches
     any number of folders, none included. s3:// globs follow the same rules.
  3. Otherwise the corpus is not found.
A folder, or a glob, yields regular files only, never a hidden one: a name starting with
"." or "_" (Spark's `_SUCCESS`, `.DS_Store`) is skipped with everything below it. A file
named exactly is read whatever its name.

Local folders are walked following symbolic links, and each real file is read once: a link
back to a folder being walked (a loop, e.g. `dir/loop -> .`) and a link to nothing (dangling)
are skipped with a warning naming them; a second path to a file already found is skipped. The result is sorted by path, which numbers the documents (doc_id 0, 1, ...).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath

from pyarrow import fs as pafs

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError

log = logging.getLogger(__name__)

_GLOB_CHARS = "*?["


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def find_corpus_files(corpus_path: str) -> list[str]:
    """The corpus files for a file, directory or glob (local or s3://), sorted; see the module docstring."""
    if not corpus_path or not corpus_path.strip():
        raise InputError("data.corpus_path is empty")
    if storage.exists(corpus_path):
        if not storage.is_dir(corpus_path):
            return [storage.normalize(corpus_path)]
        files = [storage.join(corpus_path, rel) for rel in _files_below(storage.normalize(corpus_path))]
        if not files:
            raise InputError(f"corpus directory has no text files: {corpus_path} (hidden files are ignored)")
        return sorted(files)
    if any(c in corpus_path for c in _GLOB_CHARS):
        files = _expand_glob(storage.normalize(corpus_path))
        if not files:
            raise InputError(f"corpus not found: no files match data.corpus_path={corpus_path}")
        return files
    raise InputError(f"corpus not found: {corpus_path} (data.corpus_path)")


# --- globs ----------------------------------------------------------------------------


def _expand_glob(pattern: str) -> list[str]:
    base, parts = _literal_base(pattern)
    if not storage.is_dir(base):
        return []
    max_depth = None if "**" in parts else len(parts)
    rels = _files_below(base, max_depth)
    return sorted(storage.join(base, rel) for rel in rels if match_parts(rel.split("/"), parts))


def _literal_base(pattern: str) -> tuple[str, list[str]]:
    """(the longest leading folder that is literal, the pattern's remaining parts)."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in _GLOB_CHARS) and not storage.exists("/".join(parts[: i + 1])):
            return "/".join(parts[:i]) or "/", parts[i:]
    return pattern, []  # not reached: the whole pattern does not exist as-is


def match_parts(names: list[str], parts: list[str]) -> bool:
    """Whether a relative path (its names) matches glob parts; `**` matches zero or more names."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(match_parts(names[i:], parts[1:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and match_parts(names[1:], parts[1:])


# --- listing a folder -------------------------------------------------------------------


def _files_below(folder: str, max_depth: int | None = None) -> list[str]:
    """Relative paths ("a/b.txt") of the non-hidden files below a folder, at most max_depth names deep."""
    if storage.is_s3(folder):
        return _s3_files_below(folder, max_depth)
    return _local_files_below(folder, max_depth)


def _s3_files_below(folder: str, max_depth: int | None) -> list[str]:
    fs, path = storage.filesystem(folder)
    prefix = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    rels = []
    for info in infos:
        rel = info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
        names = rel.split("/")
        if info.type != pafs.FileType.File or any(_hidden(n) for n in names):
            continue
        if max_depth is None or len(names) <= max_depth:
            rels.append(rel)
    return rels


def _local_files_below(folder: str, max_depth: int | None) -> list[str]:
    """Follows symbolic links; each real file once, loops and dangling links warned about."""
    found: dict[str, str] = {}  # real path of a file -> its first relative path

    # `ancestors`: the real folders on the way down; meeting one again is a loop.
    def walk(path: str, rel: str, ancestors: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"cannot list the corpus folder {path}: {exc.strerror or exc}") from None
        for entry in entries:
            if _hidden(entry.name):
                continue
            child_rel = posixpath.join(rel, entry.name) if rel else entry.name
            link = f"{entry.path} -> {os.readlink(entry.path)}" if entry.is_symlink() else ""
            if link and not os.path.exists(entry.path):
                log.warning("corpus: skipping a dangling symbolic link %s", link)
                continue
            real = os.path.realpath(entry.path)
            if entry.is_dir():
                if real in ancestors:
                    log.warning("corpus: skipping a symbolic link loop %s (a folder above it)", link)
                elif max_depth is None or child_rel.count("/") + 1 < max_depth:
                    walk(entry.path, child_rel, ancestors | {real})
            elif entry.is_file():
                if max_depth is not None and child_rel.count("/") + 1 > max_depth:
                    continue
                if real in found:
                    log.info("corpus: skipping %s, the same file as %s", entry.path, found[real])
                else:
                    found[real] = child_rel

    walk(folder, "", frozenset({os.path.realpath(folder)}))
    return list(found.values())
