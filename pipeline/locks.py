"""One writer per folder below the storage root: shard folders, sweeps, training runs.

Two preprocess runs on one dataset would write the same clips into differently grouped
(differently named) shards, and training would then read both copies; two sweeps with one
name would drive one Ray Tune experiment folder; two ``--resume`` of one run would write one
checkpoint folder. Each of those stages therefore holds a lock on its folder while it writes::

    with folder_lock(storage, "shards", "dfew", what="preprocess of dfew"):
        ...   # this process is the only writer of <root>/shards/dfew/

The lock of ``<root>/a/b`` is the file ``<root>/a/.b.lock`` — beside the folder, not in it, so
clearing the folder (``preprocess --overwrite``) keeps the lock, and no reader of the folder
ever lists it. It holds the holder as JSON (host, pid, start time, command line, a random
token, the lease's expiry); a second writer is refused with a :class:`LockHeld` error that
names them, and the lock file, for the case where the holder is known to be gone.

Local folders (and shared filesystems mounted as folders): the lock file is created
atomically — written under a private name, then hard-linked to the lock name, which fails if
it exists — so exactly one of any number of racing processes gets it and a lock file is never
seen half-written. Object stores (``s3://``, ``gs://`` through pyarrow.fs) have no
create-if-absent, so there the lock is a best-effort *lease object*: read it, write ours, wait
``settle_s`` (2 s), read it again and keep it only if it is still ours. Two writers both win
only if one's read and write are further apart than the settle time (docs/cluster.md,
"Storage", says the limits).

Stale locks are recovered, with a warning line naming the old holder: a lock whose process on
this host is gone (or whose pid now belongs to a younger process), or one from another host
whose lease expired — holders renew the lease every quarter of it (``DFERCLIP_LOCK_LEASE_S``,
default 120 s) from a background thread, so only a dead (or frozen) holder's lease runs out.
Hosts sharing a storage root must keep their clocks within the lease of each other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pipeline.errors import UserError
from pipeline.storage import Storage

__all__ = ["LockHeld", "Holder", "folder_lock", "lock_rel", "LEASE_ENV", "DEFAULT_LEASE_S"]

logger = logging.getLogger(__name__)

LEASE_ENV = "DFERCLIP_LOCK_LEASE_S"
DEFAULT_LEASE_S = 120.0
_SUFFIX = ".lock"
# A stale-lock breaker holds "<lock>.break" for milliseconds; one older than this crashed.
_BREAK_STALE_S = 30.0


def lock_rel(*parts: str) -> str:
    """Relative path of the lock file of the folder ``parts`` (``a/b`` -> ``a/.b.lock``)."""
    folder = posixpath.normpath(posixpath.join(*parts)) if parts else ""
    if folder in ("", "."):
        raise ValueError("folder_lock needs a folder below the storage root, not the root itself")
    parent, base = posixpath.split(folder)
    return posixpath.join(parent, f".{base}{_SUFFIX}")


def _lease_s() -> float:
    text = os.environ.get(LEASE_ENV)
    if not text:
        return DEFAULT_LEASE_S
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{LEASE_ENV}: expected seconds (a number > 0), got {text!r}") from None
    if not value > 0:
        raise UserError(f"{LEASE_ENV}: expected seconds (a number > 0), got {text!r}")
    return value


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot, Linux), None where unknown.

    Recorded with the pid so that a pid reused by an unrelated process after a crash does not
    keep a stale lock alive."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@dataclass
class Holder:
    """Who holds a lock: the content of the lock file."""

    what: str  # the work, e.g. "preprocess of dfew"
    host: str
    pid: int
    started: str  # ISO time the lock was taken
    command: str
    token: str  # unique per acquisition: tells our lock from a successor's
    expires: float  # epoch seconds; renewed by the holder's heartbeat
    pid_start: str | None = None

    @classmethod
    def mine(cls, what: str, lease_s: float) -> Holder:
        pid = os.getpid()
        return cls(
            what=what,
            host=socket.gethostname(),
            pid=pid,
            started=datetime.now(UTC).isoformat(timespec="seconds"),
            command=" ".join(sys.argv)[:500],
            token=uuid.uuid4().hex,
            expires=time.time() + lease_s,
            pid_start=_process_start(pid),
        )

    @classmethod
    def parse(cls, text: str) -> Holder:
        data = json.loads(text)
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def describe(self) -> str:
        return f"{self.what}: host {self.host}, pid {self.pid}, started {self.started}, command {self.command!r}"

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why this holder is gone (the lock may be taken over), or None while it may be alive."""
        if self.host == socket.gethostname():
            if not _pid_alive(self.pid):
                return f"process {self.pid} on this host is gone"
            if self.pid_start is not None and _process_start(self.pid) not in (None, self.pid_start):
                return f"process {self.pid} on this host is gone (the pid now belongs to another process)"
            return None  # alive here: its lease does not matter (it may be paused, not dead)
        now = time.time() if now is None else now
        if now > self.expires:
            ended = datetime.fromtimestamp(self.expires, UTC).isoformat(timespec="seconds")
            return f"its lease expired at {ended} (no heartbeat from host {self.host} since)"
        return None


class LockHeld(UserError):
    """The folder is being written by another run; the message names it and the lock file."""

    def __init__(self, folder: str, lock_path: str, holder: Holder):
        self.holder = holder
        self.lock_path = lock_path
        super().__init__(
            f"{folder} is in use by another run ({holder.describe()}). Wait for it to finish, or use "
            f"another name. If that process is gone but its lock was not recovered (another host whose "
            f"lease has not expired yet), delete {lock_path}"
        )


class _LockFile:
    """Reading and writing the lock file through the storage's pyarrow filesystem."""

    def __init__(self, storage: Storage, rel: str):
        self.storage, self.rel = storage, rel
        self.path = storage.path(rel)

    def read(self) -> Holder | None:
        """The holder, or None when there is no lock file."""
        try:
            text = self.storage.read_text(self.rel)
        except FileNotFoundError:
            return None
        except OSError:
            if not self.storage.exists(self.rel):
                return None
            raise
        try:
            return Holder.parse(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(
                f"lock file {self.path} is not readable ({exc}); delete it if no run is writing that folder"
            ) from None

    def write(self, holder: Holder) -> None:
        """Replace the lock file's content (atomically: Storage writes under a temporary name)."""
        self.storage.write_text(holder.to_json(), self.rel)

    def remove_if(self, token: str) -> bool:
        current = self.read()
        if current is None or current.token != token:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.storage.fs.delete_file(self.path)
        return True


class _ExclusiveLock(_LockFile):
    """A local lock file, created atomically (hard link of a private file; fails if it exists)."""

    def try_create(self, holder: Holder) -> bool:
        path = self.path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{holder.token}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(holder.to_json())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def break_stale(self, stale: Holder) -> None:
        """Remove the lock file if it still holds ``stale``, under a short-lived breaker lock so
        two processes recovering at once cannot delete the lock the first one took since."""
        breaker = f"{self.path}.break"
        while True:
            try:
                fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.stat(breaker).st_mtime > _BREAK_STALE_S:
                        os.unlink(breaker)  # a breaker that crashed mid-way
                time.sleep(0.05)
                continue
            os.close(fd)
            break
        try:
            self.remove_if(stale.token)
        finally:
            os.unlink(breaker)


@contextlib.contextmanager
def folder_lock(
    storage: Storage,
    *parts: str,
    what: str,
    mode: str | None = None,
    lease_s: float | None = None,
    settle_s: float = 2.0,
) -> Iterator[Holder]:
    """Hold the lock of the folder ``parts`` below ``storage`` while the block runs.

    ``what`` names the work in the lock (and so in another run's error). ``mode``: ``"exclusive"``
    (atomic create; the default for local storage) or ``"lease"`` (write, wait ``settle_s``,
    confirm; the default for object stores). ``lease_s``: the lease (default
    ``$DFERCLIP_LOCK_LEASE_S`` or 120 s), renewed every quarter of it while the block runs.
    Raises :class:`LockHeld` naming the holder when another live run holds it.
    """
    mode = mode or ("exclusive" if storage.is_local else "lease")
    if mode not in ("exclusive", "lease"):
        raise ValueError(f"folder_lock mode: 'exclusive' or 'lease', got {mode!r}")
    lease = _lease_s() if lease_s is None else lease_s
    rel = lock_rel(*parts)
    folder = storage.uri(*parts)
    lock = _ExclusiveLock(storage, rel) if mode == "exclusive" else _LockFile(storage, rel)
    me = Holder.mine(what, lease)
    _acquire(lock, me, folder, lease, settle_s)
    logger.debug("locked %s (%s)", folder, lock.path)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(lock, me, lease, stop, folder), name=f"lock-heartbeat {rel}", daemon=True
    )
    beat.start()
    try:
        yield me
    finally:
        stop.set()
        beat.join()
        if not lock.remove_if(me.token):
            logger.warning("the lock of %s (%s) was no longer ours when the run ended", folder, lock.path)


def _refuse_unless_stale(held: Holder, folder: str, lock_path: str) -> None:
    """LockHeld naming ``held`` while it may be alive; otherwise a warning that we take over."""
    reason = held.stale_reason()
    if reason is None:
        raise LockHeld(folder, lock_path, held)
    logger.warning("recovering the stale lock of %s: %s (was held by %s)", folder, reason, held.describe())


def _acquire(lock: _LockFile, me: Holder, folder: str, lease: float, settle_s: float) -> None:
    while True:
        if isinstance(lock, _ExclusiveLock):
            if lock.try_create(me):
                return
            held = lock.read()
            if held is not None:  # None: released between our create and our read
                _refuse_unless_stale(held, folder, lock.path)
                lock.break_stale(held)
            continue
        # Lease: no create-if-absent on object stores; write, let racing writers land, confirm.
        held = lock.read()
        if held is not None and held.token != me.token:
            _refuse_unless_stale(held, folder, lock.path)
        me.expires = time.time() + lease
        lock.write(me)
        time.sleep(settle_s)
        now = lock.read()
        if now is not None and now.token == me.token:
            return
        if now is not None:
            raise LockHeld(folder, lock.path, now)  # a racing writer's write landed after ours


def _heartbeat(lock: _LockFile, me: Holder, lease: float, stop: threading.Event, folder: str) -> None:
    """Renew the lease every quarter of it while the lock is ours; stop (with an error line) if
    another run took it over — which happens only after our lease ran out (a frozen process)."""
    while not stop.wait(lease / 4):
        try:
            current = lock.read()
            if current is None or current.token != me.token:
                logger.error(
                    "lost the lock of %s (%s): %s",
                    folder,
                    lock.path,
                    f"now held by {current.describe()}" if current else "the lock file was removed",
                )
                return
            me.expires = time.time() + lease
            lock.write(me)
        except (OSError, UserError) as exc:  # a storage hiccup: keep the lock, try again next beat
            logger.warning("could not renew the lock of %s: %s", folder, exc)
