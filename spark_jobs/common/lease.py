"""One writer per run: the lease `<run>/_LEASE` that a step holds while it runs.

Two processes on the same run id would delete each other's temporary output and rotate each
other's checkpoints. So a step takes the run's lease before it writes anything and gives it
back when it ends. The lease is a small JSON record (owner, step, host, pid, taken, heartbeat)
whose heartbeat a thread renews every `HEARTBEAT_S`. A second writer that finds someone else's
live lease stops with one line naming the holder. A lease is dead, and taken over, when its
heartbeat is older than `EXPIRE_S` (its writer died on another machine) or when its process is
gone from this machine (a killed step, resumed at once).

Locally the lease is created with O_EXCL, so two writers cannot both take it. S3 has no such
create here (pyarrow writes unconditionally), so after writing, the writer reads the lease
back a moment later and yields to whoever wrote last: two writers within that moment are the
window this cannot close.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError

log = logging.getLogger(__name__)

LEASE_FILE = "_LEASE"
HEARTBEAT_S = 10.0
EXPIRE_S = 60.0
_S3_SETTLE_S = 1.0


def _record(owner: str, step: str, taken: float) -> dict[str, Any]:
    return {
        "owner": owner,
        "step": step,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "taken": taken,
        "heartbeat": time.time(),
    }


def _read(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(uri))
    except InputError:
        return None  # gone, or half written by a writer that died: not a live lease
    except ValueError:
        return None


def is_alive(lease: dict[str, Any], now: float | None = None) -> bool:
    """A lease counts while its heartbeat is recent and, on this host, its process exists."""
    now = time.time() if now is None else now
    if now - float(lease.get("heartbeat", 0)) > EXPIRE_S:
        return False
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError):
            pass  # another user's process, or a record without a pid: trust the heartbeat
    return True


def _holder(lease: dict[str, Any]) -> str:
    age = time.time() - float(lease.get("heartbeat", 0))
    return (
        f"{lease.get('step', '?')} step of pid {lease.get('pid', '?')} on {lease.get('host', '?')} "
        f"(heartbeat {age:.0f} s ago; it expires after {EXPIRE_S:.0f} s without one)"
    )


def _take_local(uri: str, record: dict[str, Any]) -> None:
    path = storage.normalize(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(2):  # a second time after removing a dead lease
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            current = _read(uri)
            if current is not None and is_alive(current):
                raise InputError(
                    f"{os.path.dirname(path)} is being written by the {_holder(current)}"
                ) from None
            log.warning("taking over a dead lease on %s: %s", os.path.dirname(path), current)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        return
    raise InputError(f"could not take the lease {path}: another writer took it at the same time")


def _take_s3(uri: str, record: dict[str, Any]) -> None:
    current = _read(uri)
    if current is not None and current.get("owner") != record["owner"] and is_alive(current):
        raise InputError(f"{uri.rsplit('/', 1)[0]} is being written by the {_holder(current)}")
    storage.write_text(uri, json.dumps(record))
    time.sleep(_S3_SETTLE_S)  # a writer that raced us has written by now: the last one keeps it
    current = _read(uri)
    if current is None or current.get("owner") != record["owner"]:
        holder = _holder(current) if current else "another writer"
        raise InputError(f"{uri.rsplit('/', 1)[0]} is being written by the {holder}")


@contextlib.contextmanager
def run_lease(run_uri: str, step: str) -> Iterator[None]:
    """Hold `<run_uri>/_LEASE` while the body runs; refuse with one line if someone else holds it."""
    uri = storage.join(run_uri, LEASE_FILE)
    owner = uuid.uuid4().hex
    taken = time.time()
    if storage.is_s3(uri):
        _take_s3(uri, _record(owner, step, taken))
    else:
        try:
            _take_local(uri, _record(owner, step, taken))
        except OSError as exc:  # e.g. run.root is a file, or not writable
            raise InputError(f"cannot take the lease {uri}: {exc.strerror or exc}") from None

    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                storage.write_text(uri, json.dumps(_record(owner, step, taken)))
            except Exception as exc:  # a missed heartbeat must not kill the step
                log.warning("could not renew the lease %s: %s", uri, exc)

    heart = threading.Thread(target=renew, name="run-lease", daemon=True)
    heart.start()
    try:
        yield
    finally:
        stop.set()
        heart.join(timeout=5)
        current = _read(uri)
        if current is not None and current.get("owner") == owner:
            with contextlib.suppress(InputError):
                storage.delete(uri)
