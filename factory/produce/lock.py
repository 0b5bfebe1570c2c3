"""One driver per run location: `driver.lock` beside the shards, held while a driver writes there.

Two drivers started on the same output would otherwise both write every shard not yet committed (the
same bytes, twice the work, and two manifests). The lock is created exclusively (O_EXCL on a disk, a
conditional put on S3), so of two drivers racing exactly one gets it and the other is refused in one
line naming the lock and its holder. The holder renews it every RENEW_S; a lock is stale, and taken
over, when its holder is a process of this host that no longer runs (a driver killed with SIGKILL and
started again) or when it was last renewed more than STALE_S ago (a driver on a machine that vanished).
A driver that stops in any other way removes it.
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
from typing import Any, Iterator

from factory import storage
from factory.errors import BadInputError, StorageError

log = logging.getLogger(__name__)

LOCK_NAME = "driver.lock"
RENEW_S = 10.0
STALE_S = 60.0


def lock_url(out: str) -> str:
    return storage.join(out, LOCK_NAME)


def _now() -> float:
    return time.time()


def _document(run_id: str, token: str, started: float) -> bytes:
    return json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "token": token,
                       "started_at": started, "renewed_at": _now()}).encode()


def _read(url: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(url))
    except BadInputError as err:
        if isinstance(err, StorageError):
            raise
        return None  # removed meanwhile
    except (ValueError, UnicodeDecodeError):
        return {}  # a lock whose write was cut off: nobody's, stale


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user
        return False
    return False


def stale_reason(holder: dict[str, Any]) -> str | None:
    """Why `holder` (a lock's contents) no longer holds the lock; None while it does."""
    if not holder:
        return "its lock file is unreadable"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and holder["pid"] != os.getpid() and _process_gone(holder["pid"]):
        return f"driver process {holder['pid']} on this host is gone"
    age = _now() - float(holder.get("renewed_at", 0))
    if age > STALE_S:
        return f"not renewed for {age:.0f} s"
    return None


@contextlib.contextmanager
def driver_lock(out: str, run_id: str) -> Iterator[None]:
    """Hold the run location `out` for this driver for the duration of the block, or raise
    BadInputError naming the lock and the driver that holds it."""
    url = lock_url(out)
    token, started = uuid.uuid4().hex, _now()
    fs, path = storage.filesystem(out)
    # Folders the lock makes on a disk go again with it when the run wrote nothing (refused after the lock).
    made = [] if storage.is_object_store(fs) else storage.missing_folders(fs, path)
    while not storage.create_exclusive(url, _document(run_id, token, started)):
        holder = _read(url)
        if holder is None:
            continue
        reason = stale_reason(holder)
        if reason is None:
            age = _now() - float(holder["renewed_at"])
            raise BadInputError(url, f"another driver is writing run {holder.get('run_id')} here (host "
                                     f"{holder.get('host')}, pid {holder.get('pid')}, seen {age:.0f} s ago); wait "
                                     f"for it to finish, or if it is gone run again after {STALE_S - age:.0f} s")
        log.warning("%s: taking over the run location (%s)", url, reason)
        storage.remove(url)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_S):
            try:
                holder = _read(url)
                if not holder or holder.get("token") != token:
                    log.error("%s: this driver's lock was taken over by another driver", url)
                    return
                storage.atomic_put(url, _document(run_id, token, started))
            except Exception as err:  # a store that is down now: the next renewal tries again
                log.warning("%s: could not renew the lock (%s)", url, err)

    renewer = threading.Thread(target=renew, name="driver-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(Exception):
            holder = _read(url)
            if holder and holder.get("token") == token:
                storage.remove(url)
        for folder in made:
            with contextlib.suppress(OSError):
                fs.rmdir(folder)
