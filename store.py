"""The flat-file run store: one JSON file per run, and an in-memory index that follows the folder.

The folder is the truth. The index is rebuilt from it at start, kept current by our own writes
and deletes, and follows changes made from outside (rsync, cp, rm, an editor) through inotify.
Nothing here imports Flask: the store raises domain errors and the app maps them to HTTP.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import errno
import fcntl
import gc
import hashlib
import heapq
import json
import logging
import marshal
import math
import multiprocessing
import os
import re
import select
import signal
import stat
import subprocess
import sys
import termios
import threading
import time
import uuid
from array import array
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count, islice, product
from operator import attrgetter
from pathlib import Path
from types import NoneType
from typing import BinaryIO, NamedTuple
from urllib.parse import quote, unquote

from sortedcontainers import SortedList

log = logging.getLogger("backup_registry.store")

STATUSES = ("success", "failure", "partial")
# schema.json's range for bytes_backed_up: a file copied in must keep to it as a POST does (a
# size of 10**400 made /metrics and the dashboard fail on the float conversion).
MAX_BYTES = 2**63 - 1
FILE_SUFFIX = ".json"
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".tmp"
# A leftover temp file older than this is ours from a crash; a younger one may belong to a
# writer that is still at work (another process on the same folder), so it is left alone.
STALE_TEMP_SECONDS = 600
MAX_FILE_NAME_BYTES = 255
RAW_CACHE_ENTRIES = 10_000  # JSON of the runs listed or saved most recently; a few MB
# ...and never more bytes than this: a run may hold up to MAX_BODY_BYTES (1 MiB) of metadata
# and error text, and 10,000 of those would be 10 GB.
RAW_CACHE_BYTES = 32 * 1024 * 1024
# The largest run file read or written. A report's body is capped (MAX_BODY_BYTES, 1 MiB) and
# grows at most about 4x once stored (1E15 is written 1000000000000000.0); a larger file is no
# run, and reading it whole would cost its size in memory, at every start and every GET.
MAX_RUN_FILE_BYTES = 16 * 1024 * 1024
# How much of a run's error the index keeps, for q: a report's error has no limit of its own
# (a long log tail must not cost the report), and the whole of it stays in the file.
ERROR_INDEXED_CHARS = 65536
FILE_MODE = 0o644  # the umask still applies, so an operator can narrow it
# The index keeps a sorted list of keys for each value of these (see RunStore._select).
# field -> the value of a summary it is keyed by; a value of None is not indexed.
POSTING_FIELDS = {
    "job_name": attrgetter("job_name"),
    "agent_id": attrgetter("agent_id"),
    "status": attrgetter("status"),
    "job_status": attrgetter("job_name", "status"),
    "agent_status": attrgetter("agent_id", "status"),
    "enc": attrgetter("encrypted"),
}
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
BAD_FILE_NAME = "file name is not one this store writes; ignored"


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class RunNotFound(StoreError):
    """No run with that id is in the store."""


class InvalidRunId(StoreError):
    """The run id cannot be stored as a file name."""


class StoreFull(StoreError):
    """The disk or quota is full; nothing was written."""


class StoreUnavailable(StoreError):
    """The store folder cannot be read or written right now (read-only, I/O error, gone)."""


class RunTooLarge(StoreError):
    """The run, once stored, would be larger than any run file the store reads back."""


class RunFileTaken(StoreError):
    """Something that is not a run file, a folder, holds the run's file name."""


# --- file names ------------------------------------------------------------------------------


def file_name_for(run_id: str) -> str:
    """Return the file name that holds run_id: plain ids as they are, others percent-encoded.

    Plain ids never contain '%', so an encoded name can never equal a plain one. The encoding
    covers '/', '\\', NUL and a leading '.', so no id can leave the folder, hide as a dot-file
    or make a sub-folder.
    """
    if not run_id:
        raise InvalidRunId("run_id: must not be empty")
    if _PLAIN_ID.fullmatch(run_id):
        stem = run_id
    else:
        try:
            stem = quote(run_id, safe="-_")
        except UnicodeEncodeError:
            # A lone surrogate: what os.listdir makes of a name that is not UTF-8.
            raise InvalidRunId("run_id: not valid Unicode (holds a lone surrogate)") from None
        # quote() leaves '.' and '~' alone; '.' may stay except at the start, '~' may stay.
        if stem.startswith("."):
            stem = "%2E" + stem[1:]
    name = stem + FILE_SUFFIX
    if len(name.encode()) > MAX_FILE_NAME_BYTES:
        raise InvalidRunId(
            f"run_id: too long once encoded as a file name ({len(name.encode())} bytes, "
            f"at most {MAX_FILE_NAME_BYTES})"
        )
    return name


def run_id_for(file_name: str) -> str | None:
    """Return the run id stored in file_name, or None if it is not a canonical run file name."""
    if file_name.startswith(".") or not file_name.endswith(FILE_SUFFIX):
        return None
    stem = file_name[: -len(FILE_SUFFIX)]
    if "%" not in stem and _PLAIN_ID.fullmatch(stem):
        return stem  # the common case, without the round trip below
    try:
        run_id = unquote(stem, errors="strict")
    except UnicodeDecodeError:
        return None  # '%FF.json': no id encodes to bytes that are not UTF-8
    try:
        canonical = file_name_for(run_id)
    except InvalidRunId:
        return None
    # Refuse rather than guess: 'a%2fb.json' or 'a%41.json' would alias another id's file.
    return run_id if canonical == file_name else None


# --- time ------------------------------------------------------------------------------------


class TimestampOutOfRange(ValueError):
    """A well-formed date-time whose offset takes it past year 1 or 9999 in UTC."""


# An ISO 8601 date (calendar or week, extended or basic), then optionally a time after 'T' or a
# space (RFC 3339 allows both), and an offset in hours and minutes, which may follow a space as
# git's %ci, Ruby's Time#to_s and `date '+%F %T %z'` write it (ISO 8601 has no space there, but
# Python's parser took it, so agents may send it). Python 3.11's fromisoformat alone also takes
# any character between date and time ('2026-05-12702:00:00'), a fraction with no digits
# ('02:00:00.Z') and an offset with seconds, which no scheduler or `date` writes.
_ISO_8601 = re.compile(
    r"(?:\d{4}-(?:\d{2}-\d{2}|W\d{2}-\d)|\d{4}(?:\d{4}|W\d{3}))"
    r"(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?|\d{2}(?:\d{2}(?:[.,]\d+)?)?)?"
    r"(?: ?(?:Z|[+-]\d{2}(?::?\d{2})?))?)?",
    re.ASCII,
)


def parse_timestamp(text: str, *, date_only_ok: bool = False, lenient: bool = False) -> datetime:
    """Parse an ISO 8601 date-time into an aware UTC datetime; a naive time means UTC.

    lenient skips the check of its shape, for run files already in the store (see
    _timestamp_field); what clients send is always checked.
    """
    # 8 is a date in the basic format (20260512, 2026W202); with a time, 11 or more.
    if not isinstance(text, str) or not 8 <= len(text) <= 64:
        raise ValueError("not an ISO 8601 date-time")
    # RFC 3339 allows a lower-case 't' and 'z'; Python's parser does not.
    text = text.upper()
    # Leniency is for the separator of a time already stored; text as short as a date is
    # checked all the same, or 'yesterday' would be told it "needs a time".
    if (not lenient or len(text) <= 10) and not _ISO_8601.fullmatch(text):
        raise ValueError("not an ISO 8601 date-time")
    if not date_only_ok and len(text) <= 10:
        raise ValueError("needs a time as well as a date")
    value = datetime.fromisoformat(text)
    if value.tzinfo is UTC:
        return value  # most are written with Z: converting to UTC costs a third of the parse
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise TimestampOutOfRange(
            "out of range once converted to UTC (years 1 to 9999 only)"
        ) from None


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with microseconds and a trailing Z."""
    # Not strftime: glibc's %Y writes the year 139 as "139", which is no RFC 3339 date-time
    # (schemathesis found it in /v1/jobs for a run reported as ending in 0139).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def to_micros(moment: datetime) -> int:
    """Return microseconds since the epoch for an aware datetime, exactly."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- the index -------------------------------------------------------------------------------


def effective_encryption(run: dict) -> bool | None:
    """Return whether a run counts as encrypted: `encrypted` if set, else its encryption_status."""
    encrypted = run.get("encrypted")
    if isinstance(encrypted, bool):
        return encrypted
    status = run.get("encryption_status")
    if status == "encrypted":
        return True
    if status in ("unencrypted", "partial", "failed"):
        return False
    return None


def _timestamp_field(run: dict, field: str) -> datetime:
    """Parse run[field] as a date-time; a ValueError names the field, for the operator's log."""
    if field not in run:
        raise ValueError(f"{field} is missing")
    try:
        # Lenient: a run an older version accepted with an odd separator stays in the index
        # rather than vanish from it at the next start; and every first start skips the check.
        return parse_timestamp(run[field], lenient=True)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


class RunSummary:
    """What the index keeps of one run: enough to sort, filter and summarise without the file."""

    __slots__ = (
        "agent_id",
        "bytes_backed_up",
        "encrypted",
        "encryption_status",
        "end_ts",
        "error",
        "job_name",
        "key",
        "received_us",
        "run_id",
        "signature",
        "start_ts",
        "status",
    )

    def __init__(self, run: dict, run_id: str, signature: tuple | None):
        self._fill(summary_row(run, run_id, signature or _NO_SIGNATURE))

    def holds_the_same(self, other: RunSummary) -> bool:
        """Tell whether other summarises the same content, whatever the stat signatures say."""
        return all(
            getattr(self, field) == getattr(other, field)
            for field in self.__slots__
            if field != "signature"
        )

    @property
    def job(self) -> tuple[str, str]:
        """The job this run belongs to: (job_name, agent_id)."""
        return (self.job_name, self.agent_id)

    def snapshot_row(self) -> list:
        """Return this summary as a JSON-able row for the index snapshot."""
        return [
            *self.signature,
            self.run_id,
            self.received_us,
            self.job_name,
            self.agent_id,
            self.status,
            self.start_ts,
            self.end_ts,
            self.bytes_backed_up,
            self.encrypted,
            self.encryption_status,
            self.error,
        ]

    @classmethod
    def from_snapshot_row(cls, row: list) -> RunSummary:
        """Rebuild a summary from a snapshot row, without reading its file."""
        summary = cls.__new__(cls)
        summary._fill(row)
        return summary

    def _fill(self, row: list) -> None:
        """Set every field from a snapshot row; a row made with _NO_SIGNATURE gives none."""
        (
            ino,
            size,
            mtime_ns,
            ctime_ns,
            self.run_id,
            self.received_us,
            job_name,
            agent_id,
            status,
            self.start_ts,
            self.end_ts,
            self.bytes_backed_up,
            self.encrypted,
            self.encryption_status,
            self.error,
        ) = row
        self.signature = None if ino is None else (ino, size, mtime_ns, ctime_ns)
        # Interning shares one copy of each job and agent name across a million runs.
        self.job_name, self.agent_id = sys.intern(job_name), sys.intern(agent_id)
        self.status = sys.intern(status)
        # Ascending order of this key is newest received first, ties broken by run id.
        self.key = (-self.received_us, self.run_id)


_NO_SIGNATURE = (None, None, None, None)  # a run not read from a file (yet): see save()
SHOWN_ID_CHARS = 100  # of a wrong run_id a file holds, in its warning


def summary_row(run: dict, run_id: str, signature: tuple) -> list:
    """Check the fields the index needs of a run; return them as RunSummary's snapshot row.

    Raise ValueError saying what is wrong. Loader processes send these rows, not summaries:
    building the row alone costs about half as much as a RunSummary and then its row.
    """
    if run.get("run_id") != run_id:
        # Cut short for the log line this ends in: a file may hold an id of megabytes.
        held = repr(run.get("run_id"))
        held = held if len(held) <= SHOWN_ID_CHARS else held[:SHOWN_ID_CHARS] + "…"
        raise ValueError(f"holds run_id {held}, not the one its name says")
    for field in ("job_name", "agent_id"):
        if not isinstance(run.get(field), str) or not run[field].strip():
            raise ValueError(f"{field} is missing or not a string")
    if run.get("status") not in STATUSES:
        raise ValueError("status is missing or unknown")
    size = run.get("bytes_backed_up")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise ValueError("bytes_backed_up is not an integer")
    if size is not None and not 0 <= size <= MAX_BYTES:
        raise ValueError(f"bytes_backed_up is out of range (0 to {MAX_BYTES})")
    # Text or nothing, as the snapshot's rows must be: a file copied in with `true` here
    # made every later snapshot unusable (its row failed the snapshot's own check).
    encryption_status = run.get("encryption_status")
    error = run.get("error")
    start_ts = _timestamp_field(run, "start_time").timestamp()
    end_ts = _timestamp_field(run, "end_time").timestamp()
    received_us = to_micros(_timestamp_field(run, "received_at"))
    return [
        *signature,
        run_id,
        received_us,
        run["job_name"],
        run["agent_id"],
        run["status"],
        start_ts,
        end_ts,
        size,
        effective_encryption(run),
        encryption_status if isinstance(encryption_status, str) else None,
        error[:ERROR_INDEXED_CHARS] if isinstance(error, str) else None,
    ]


def comma_separated(values: Iterable[str]) -> tuple[str, ...]:
    """Split query values such as ['failure,partial', 'success'] at commas, each part stripped.

    Parts keep their first order, repeats dropped; empty ones stay, for the caller to refuse
    (the API) or pass over (the dashboard's form).
    """
    return tuple(dict.fromkeys(part.strip() for value in values for part in value.split(",")))


@dataclass
class RunQuery:
    """Filters for a listing; every one that is set must hold."""

    job_name: str | None = None
    agent_id: str | None = None
    statuses: tuple[str, ...] = ()
    encrypted: bool | None = None
    since_us: int | None = None  # received_at >= since
    until_us: int | None = None  # received_at < until
    text: str | None = None  # case-insensitive substring of job_name, agent_id or error
    after: tuple[int, str] | None = None  # cursor: the key of the last run of the page before
    limit: int = 100


@dataclass
class RunPage:
    """One page of a listing: the runs, how many match in all, and the cursor for the next."""

    raw_runs: list[bytes]  # each run's JSON exactly as its file holds it
    total: int
    next_after: tuple[int, str] | None

    @property
    def runs(self) -> list[dict]:
        """The page's runs, parsed."""
        return [json.loads(raw) for raw in self.raw_runs]

    def json_bytes(self) -> bytes:
        """The page as a JSON array, built from the files' bytes without re-encoding them."""
        return b"[" + b",".join(self.raw_runs) + b"]"


def _changed_ns(signature: tuple) -> int:
    """When a file with this stat signature last changed, for the "racy" test: the earlier of
    its mtime and ctime.

    Any change sets ctime to the clock, and a write sets mtime too, so the two agree unless
    someone set the mtime: to the past (an older signature, which a later write changes), or
    to the future (rsync -a from a host whose clock is ahead), which would keep the file
    "too young to trust" until that date, when its ctime says it is not.
    """
    return min(signature[2], signature[3])


def _file_signature(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _shown(name: str) -> str:
    """Return a folder entry's name fit for one log line: odd bytes and controls as escapes."""
    # os.listdir turns bytes that are not UTF-8 into lone surrogates, which a UTF-8 log cannot
    # hold; and a name holding a newline would start a line of its own choosing.
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return _CONTROL_CHARACTER.sub(lambda match: f"\\x{ord(match[0]):02x}", text)


def _may_be_run_file(name: str) -> bool:
    """Tell whether a folder entry is meant as a run file, so that a bad name is worth a warning.

    Dot-files are our temp files, rsync's and editors' swap files: skipped without a word.
    """
    return not name.startswith(".") and name.endswith(FILE_SUFFIX)


_FILE_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


class _NotARun(ValueError):
    """A file of the folder that holds no valid run; carries the stat signature it had."""

    def __init__(self, signature: tuple, reason: str):
        super().__init__(f"skipped, not a valid run: {reason}")
        self.signature = signature

    @classmethod
    def not_regular(cls, st: os.stat_result) -> _NotARun:
        """The error for a folder entry that is not a regular file (st from lstat or fstat)."""
        kind = next((kind for test, kind in _FILE_KINDS if test(st.st_mode)), "not a file")
        return cls(_file_signature(st), f"{kind}; run files must be regular files")


def _read_file(folder: str, name: str, folder_fd: int | None = None) -> tuple[tuple, bytes]:
    """Read a regular file of folder whole; return (its stat signature as read, its bytes).

    folder_fd, an open descriptor of folder, spares the kernel walking folder's path again
    for each file (about a tenth of a start's time per file, here). Raise _NotARun for any
    other kind of entry, which is never followed or opened for good.
    """
    path = name if folder_fd is not None else os.path.join(folder, name)
    try:
        # O_NOFOLLOW: edits to a symlink's target make no event in this folder, so the index
        # could not follow them. O_NONBLOCK: opening a FIFO would wait for a writer for good.
        fd = os.open(
            path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd
        )
    except FileNotFoundError:
        raise
    except OSError as exc:
        # ELOOP for a symlink, ENXIO for a socket, EACCES for a file or a folder we may not
        # read: look at what is there. If lstat fails too, the folder is at fault, not the file.
        st = os.lstat(path, dir_fd=folder_fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotARun.not_regular(st) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            # The folder let us look the file up: its own permissions keep us out. That file
            # is skipped, as a broken one is; the rest of the store is fine.
            raise _NotARun(_file_signature(st), f"cannot read it ({exc.strerror})") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotARun.not_regular(st)
        if st.st_size > MAX_RUN_FILE_BYTES:
            raise _NotARun(
                _file_signature(st),
                f"larger than any run ({st.st_size} bytes; at most {MAX_RUN_FILE_BYTES})",
            )
        # One byte more than its size: a file grown since fstat reads as broken, not as a
        # run cut short, and its next change event has it read again.
        raw = os.read(fd, st.st_size + 1)
        # A byte order mark (Windows Notepad saves one) is no part of the JSON text, and a
        # client parsing what GET serves would choke on it, so it is dropped here.
        return _file_signature(st), raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw
    finally:
        os.close(fd)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range: it would be read as infinity")
    return value


# Python's json reads NaN and Infinity, which JSON has not, and reads 1e400 as infinity; a
# value like that, stored or served, would be written back as the non-JSON word Infinity.
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def loads_strict(
    text: str | bytes, *, object_pairs_hook: Callable[[list], dict] | None = None
) -> object:
    """Parse JSON text (UTF-8 if bytes) as RFC 8259 defines it, or raise ValueError.

    object_pairs_hook, as json's, builds each object from its (key, value) pairs.
    """
    decoder = _STRICT_JSON
    if object_pairs_hook is not None:
        decoder = json.JSONDecoder(
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=object_pairs_hook,
        )
    return decoder.decode(text.decode("utf-8") if isinstance(text, bytes) else text)


def _parse_run(raw: bytes) -> dict:
    """Parse a run file's bytes into a dict, or raise ValueError saying why it is no run."""
    run = loads_strict(raw)
    if not isinstance(run, dict):
        raise ValueError("not a JSON object")
    # An escaped lone surrogate ("\ud800") is valid JSON but no text: no UTF-8 page, log or
    # index snapshot can hold it (one such file stopped every snapshot). The API refuses it
    # in a report; a file copied in with one is skipped. The byte search keeps this free for
    # the files that hold no escape of the kind.
    if b"\\ud" in raw or b"\\uD" in raw:
        try:
            json.dumps(run, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "holds an unpaired UTF-16 surrogate escape, which is no text"
            ) from None
    return run


def _read_row(folder: str, name: str, run_id: str, folder_fd: int | None = None) -> list:
    """Read one run file into a summary_row; raise _NotARun, or OSError if it cannot be read."""
    signature, raw = _read_file(folder, name, folder_fd)
    try:
        return summary_row(_parse_run(raw), run_id, signature)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _NotARun(signature, str(exc)) from None


def _read_summary(folder: str, name: str, run_id: str, folder_fd: int | None = None) -> RunSummary:
    """Read one run file into a summary; raise _NotARun, or OSError if it cannot be read."""
    return RunSummary.from_snapshot_row(_read_row(folder, name, run_id, folder_fd))


# --- loading a large folder in several processes ---------------------------------------------

# Below this many run files, a start checks them in this process: worker processes cost more
# to start than they save.
PARALLEL_LOAD_MIN_FILES = 20_000
# More loader processes than CPUs keep more reads in flight when the files are not in the page
# cache: a first start of 100,000 un-cached runs took 12.2 s with 2 and 7.9 s with 4 on a
# 2-CPU VM (the disk's random reads then set the pace), and the same with either when cached.
MIN_LOAD_WORKERS = 4
MAX_LOAD_WORKERS = 8

# (folder, names, signatures) of the load in progress; forked loader processes inherit it.
_load_job: tuple[str, list[str], _Signatures] | None = None


class _Signatures(NamedTuple):
    """The snapshot's stat signatures, packed: what loader processes compare files against.

    Why packed: a forked child that touched the snapshot's rows themselves would copy every
    memory page they sit on (reference counts are written even to read an object), and four
    children did: 2.4 GB more at a million runs. Reading numbers from an array writes nothing.
    """

    position: dict[str, int]  # run id -> where its four numbers start in `numbers`, / 4
    numbers: array  # inode, size, mtime_ns, ctime_ns of each run, one after the other

    @classmethod
    def of(cls, rows: dict[str, list | tuple]) -> _Signatures:
        """Pack the signatures that open each row (snapshot rows, or bare signatures) by run
        id; a row whose numbers do not fit is left out."""
        position: dict[str, int] = {}
        numbers = array("q")
        for run_id, row in rows.items():
            try:  # packed first: a number too large must leave none of the others behind
                numbers.extend(array("q", row[:4]))
            except OverflowError:
                continue  # its file is read, as if the snapshot did not have it
            position[run_id] = len(position)
        return cls(position, numbers)

    def match(self, run_id: str, st: os.stat_result) -> bool:
        """Tell whether the snapshot has run_id with exactly this stat signature."""
        at = self.position.get(run_id)
        if at is None:
            return False
        at *= 4
        numbers = self.numbers
        return (
            numbers[at] == st.st_ino
            and numbers[at + 1] == st.st_size
            and numbers[at + 2] == st.st_mtime_ns
            and numbers[at + 3] == st.st_ctime_ns
        )


class _CheckedFiles(NamedTuple):
    """What checking a slice of the folder found; plain data, cheap to send between processes."""

    run_files: int  # how many names in the slice are run files
    kept: list[str]  # ids whose snapshot row still holds (same stat signature)
    rows: list[list]  # snapshot rows for the run files that had to be read, newest first
    problems: list[tuple]  # (name, stat signature or None, message) for files to warn about
    failed: list[str]  # names that could not be read for a reason of the store's: tried again
    gone: list[str]  # names removed while they were checked


def _check_files(
    folder: str, names: list[str], snapshot: _Signatures, start: int, stop: int
) -> _CheckedFiles:
    """Check names[start:stop] of a folder listing against the index snapshot.

    A run file keeps its snapshot row if its stat signature is unchanged, and is read if not.
    """
    with _opened_folder(folder) as folder_fd:
        return _check_files_in(folder, folder_fd, names, snapshot, start, stop)


@contextlib.contextmanager
def _opened_folder(folder: str) -> Iterator[int | None]:
    """Yield a descriptor of folder for *at() calls, or None where none can be had."""
    try:
        fd = os.open(folder, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield None  # each file's own open then says what is wrong
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _check_files_in(
    folder: str,
    folder_fd: int | None,
    names: list[str],
    snapshot: _Signatures,
    start: int,
    stop: int,
) -> _CheckedFiles:
    """_check_files with the folder opened: folder_fd, or None to go by folder's path."""
    run_files = 0
    kept: list[str] = []
    rows: list[list] = []
    problems: list[tuple] = []
    failed: list[str] = []
    gone: list[str] = []
    for index in range(start, stop):
        name = names[index]
        if not _may_be_run_file(name):
            continue
        run_id = run_id_for(name)
        if run_id is None:
            problems.append((name, None, BAD_FILE_NAME))
            continue
        run_files += 1
        if run_id in snapshot.position:
            try:
                path = name if folder_fd is not None else os.path.join(folder, name)
                unchanged = snapshot.match(run_id, os.lstat(path, dir_fd=folder_fd))
            except OSError:
                unchanged = False
            if unchanged:
                kept.append(run_id)
                continue
        try:
            rows.append(_read_row(folder, name, run_id, folder_fd))
        except FileNotFoundError:
            gone.append(name)  # removed as we looked: at start not loaded, live followed
        except _NotARun as exc:
            problems.append((name, exc.signature, str(exc)))
        except OSError as exc:
            problems.append((name, None, f"cannot read: {exc.strerror}; trying again"))
            failed.append(name)
    # Newest first, as the index sorts them: sorted slices make the caller's sort a cheap merge.
    rows.sort(key=_snapshot_row_key)
    return _CheckedFiles(run_files, kept, rows, problems, failed, gone)


def _snapshot_row_key(row: list) -> tuple[int, str]:
    return (-row[5], row[4])


def _check_files_in_worker(start: int, stop: int) -> bytes:
    """_check_files on the load job this loader process inherited when it was forked, marshalled.

    marshal, not the pool's pickle, carries the result back: it is plain data, and pickle's
    memo of every string made sending a row cost twice as much CPU at both ends.
    """
    return marshal.dumps(tuple(_check_files(*_load_job, start, stop)))


PR_SET_PDEATHSIG = 1  # prctl option, from <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Loader initializer: have Linux kill this process if the server dies before it is done.

    Without it, a server stopped or killed during a long start (30 s at a million runs) left
    its loaders behind for good, each blocked on a pipe no one would read again.
    """
    # Ctrl-C reaches the whole process group: the server leaves, and these die with it,
    # rather than each printing a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such guard
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)  # the server died before the guard was set


def load_worker_count() -> int:
    """How many loader processes a start uses: one per CPU, and at least MIN_LOAD_WORKERS."""
    return min(max(len(os.sched_getaffinity(0)), MIN_LOAD_WORKERS), MAX_LOAD_WORKERS)


def _check_folder(folder: str, names: list[str], snapshot: _Signatures) -> Iterator[_CheckedFiles]:
    """_check_files over the whole listing, in order and in slices, shared among processes.

    Why processes: a first start reads and parses every file, and a restart stats every file;
    both are CPU work under the GIL (about 25 and 6 microseconds a file here), so threads would
    not help. Forked children see the listing and the packed signatures without copying them
    (see _Signatures), and send back only plain rows, which the caller turns into summaries
    while they go on. Forking is safe here because it happens at start, before the watcher or
    the server start a thread.
    If the pool fails (no fork, a worker killed), the slices not yet checked are checked in
    this process: it costs time, never correctness.
    """
    global _load_job
    total = len(names)
    checked = 0
    workers = load_worker_count()
    if total >= PARALLEL_LOAD_MIN_FILES:
        size = max(1_000, total // (workers * 8))
        _load_job = (folder, names, snapshot)
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(
                workers, context, initializer=_die_with_parent, initargs=(os.getpid(),)
            ) as pool:
                slices = [
                    (stop, pool.submit(_check_files_in_worker, start, stop))
                    for start in range(0, total, size)
                    for stop in [min(start + size, total)]
                ]
                for stop, future in slices:
                    # Bytes from our own loader process, never from outside: safe to load.
                    yield _CheckedFiles(*marshal.loads(future.result()))  # noqa: S302
                    checked = stop
        except (OSError, BrokenProcessPool) as exc:
            log.warning("loader processes failed (%s); loading the rest in one process", exc)
        finally:
            _load_job = None
    if checked < total:
        yield _check_files(folder, names, snapshot, checked, total)


def _presorted(keys: list) -> SortedList:
    """Return a SortedList of keys that are already in ascending order, without sorting them.

    SortedList(keys) sorts its input again; at a million keys scattered in memory that one
    pass costs about 0.7 s for each list the index builds in one go (its order at start, and
    each field's posting lists). This fills
    the same internals that SortedList.update fills for an empty list (sortedcontainers 2.4,
    pinned); tests/test_index.py checks the result against SortedList(keys).
    """
    result = SortedList()
    load = result._load
    result._lists = [keys[start : start + load] for start in range(0, len(keys), load)]
    result._maxes = [part[-1] for part in result._lists]
    result._len = len(keys)
    return result


# --- checking a large batch of outside changes in reader processes ---------------------------

# A batch of at least this many run files to check (an rsync of a whole backup into the live
# folder, or the rescan after inotify's queue overflowed under one) is shared among reader
# processes; a smaller one is checked in the watcher thread, where a process costs more to
# start than it saves. There each new file costs about 140 us: 50,000 took 6-8 s.
PARALLEL_FOLLOW_MIN_FILES = 2_000
# A reader's runs that number at least 1/POSTINGS_REBUILT_AT of the index have the posting
# lists built again after them, rather than updated (see RunStore._put_all).
POSTINGS_REBUILT_AT = 10
BULK_FILING_CHUNK = 5_000  # runs filed per hold of the locks: about 40 ms of listings held up
# A reader's whole program: argv[1] is the folder that holds store.py, argv[2] the server's pid,
# argv[3] the digest of the store.py the server runs. A store.py replaced on disk (an upgrade)
# while the server runs would read the server's data by other rules, so a reader refuses it
# before importing it, and the server reads those files itself.
_READER_PROGRAM = (
    "import hashlib, os, sys\n"
    "with open(os.path.join(sys.argv[1], 'store.py'), 'rb') as source:\n"
    "    if hashlib.sha256(source.read()).hexdigest() != sys.argv[3]:\n"
    "        sys.exit(3)\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "import store\n"
    "store.serve_reader()\n"
)
_READER_OTHER_VERSION = 3  # its exit code when its store.py is not the server's
_SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
# Resolved now: a release folder behind a symlink (current -> v1) that a deployment has since
# pointed elsewhere still holds the store.py this server runs.
_HOME = os.path.dirname(os.path.realpath(__file__))
# A reader has this long, and a little more per file, before it is taken for hung and killed.
READER_TIMEOUT_SECONDS = 60.0
READER_SECONDS_PER_FILE = 0.001


def serve_reader() -> None:
    """A reader process's main: check the files named on stdin, and send back what it found.

    In: marshalled (folder, names, signature positions, packed signatures, whether to name
    the files found unchanged). Out: a marshalled _CheckedFiles. Plain data both ways, as the
    loaders send.
    """
    _die_with_parent(int(sys.argv[2]))
    # Bytes from the server that started this process, through a pipe only it holds.
    folder, names, position, numbers, name_kept = marshal.loads(sys.stdin.buffer.read())  # noqa: S302
    signatures = _Signatures(position, array("q", numbers))
    checked = _check_files(folder, names, signatures, 0, len(names))
    if not name_kept:  # a rescan's 100,000 unchanged ids cost the server 0.2 s to take in
        checked = checked._replace(kept=[])
    sys.stdout.buffer.write(marshal.dumps(tuple(checked)))


def _check_in_readers(
    folder: str, files: list[tuple[str, str, tuple | None]], name_kept: bool
) -> Iterator[tuple[list[str], _CheckedFiles | None]]:
    """_check_files over files, (name, run id, signature known for it or None), in readers.

    Each slice goes to a reader process started for it. Why not the loaders' fork: by now the
    server's threads run, and a child forked from a threaded process can inherit a lock one
    of them held (the log's, say) and wait on it for good; a new interpreter holds none, and
    starts in about 0.15 s. Yield each slice's names with what was found, or with None where
    its reader failed, for the caller to check those itself: it costs time, never correctness.
    The files just written are in the page cache, so one reader per CPU keeps them all busy.
    kept is left empty unless name_kept.
    """
    count = min(len(os.sched_getaffinity(0)), MAX_LOAD_WORKERS, len(files))
    # -P: no module from the working folder (the store's own, with STORE_DIR=.) can stand in
    # for the standard library's. PYTHONPATH and the user's site stay, as the server has them.
    command = [sys.executable, "-P", "-c", _READER_PROGRAM, _HOME, str(os.getpid()), _SOURCE_DIGEST]
    # Dealt out in turn, not cut in blocks: the files a drop added sit together in a listing,
    # and in blocks one reader read them all while the others only compared stat signatures.
    slices = [files[first::count] for first in range(count)]
    readers: list[tuple[list[str], subprocess.Popen | None, threading.Timer | None]] = []
    try:
        # All started before any is written to: each takes its input only once it has started
        # (about 0.1 s), and a pipe holds 64 KiB, so feeding each in turn started them in turn.
        for part in slices:
            names = [name for name, _, _ in part]
            try:
                # Our own interpreter and program; the folder goes in through stdin, not argv.
                reader = subprocess.Popen(  # noqa: S603
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_HOME
                )
            except OSError as exc:
                log.warning("cannot start a reader process (%s); checking files here", exc)
                readers.append((names, None, None))
                continue
            # A reader stopped, or stuck on a disk, is killed in time; the server then checks
            # its files itself, rather than follow nothing more until it ends.
            hung = threading.Timer(
                READER_TIMEOUT_SECONDS + READER_SECONDS_PER_FILE * len(names), reader.kill
            )
            hung.start()
            readers.append((names, reader, hung))
        for part, (names, reader, _) in zip(slices, readers, strict=True):
            if reader is not None:
                known = _Signatures.of({run_id: sig for _, run_id, sig in part if sig})
                message = (folder, names, known.position, known.numbers.tobytes(), name_kept)
                with contextlib.suppress(BrokenPipeError), reader.stdin:  # if it died: wait()
                    reader.stdin.write(marshal.dumps(message))
        for names, reader, hung in readers:
            found = None
            if reader is not None:
                with reader.stdout:
                    output = reader.stdout.read()
                reader.wait()
                hung.cancel()
                if reader.returncode == _READER_OTHER_VERSION:
                    log.warning(
                        "store.py has changed on disk since the registry started (restart it "
                        "to run the new code); checking files here, not in reader processes"
                    )
                elif reader.returncode == 0:
                    # Bytes from our own reader process, never from outside: safe to load.
                    with contextlib.suppress(ValueError, EOFError, TypeError):
                        found = _CheckedFiles(*marshal.loads(output))  # noqa: S302
                if found is None and reader.returncode != _READER_OTHER_VERSION:
                    log.warning(
                        "a reader process failed (exit code %s); checking its files here",
                        reader.returncode,
                    )
            yield names, found
    finally:
        for _, reader, hung in readers:
            if reader is not None:
                hung.cancel()
                if reader.poll() is None:
                    reader.kill()
                    reader.wait()
                reader.stdout.close()


def _lock_folder(directory: Path) -> int | None:
    """Take an exclusive lock on the folder itself, held until close(); return its fd.

    Two registries on one folder would keep two indexes and overwrite each other's snapshot.
    flock on the folder leaves no file behind, is released by the kernel when the process
    dies however it dies, and grep, rsync and cp never take it. Raise StoreUnavailable if
    another process holds it; where the file system has no such locks (some network ones),
    log that and go on.
    """
    fd = None
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # A registry killed during its start leaves its loaders, which were forked holding
        # the lock, for a few more milliseconds: a restart right then waits for them.
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
    except BlockingIOError:
        os.close(fd)
        raise StoreUnavailable(
            f"store folder {directory} is in use by another process (another registry?); "
            "run one registry per store folder"
        ) from None
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        log.warning(
            "cannot lock store folder %s (%s); not checking for a second registry",
            directory,
            exc.strerror,
        )
        return None
    return fd


class RunStore:
    """Runs kept as `<run_id>.json` in one folder, with an index kept true to that folder."""

    def __init__(
        self, directory: str | os.PathLike, *, watch: bool = True, exclusive: bool = False
    ):
        # Absolute once, at start: STORE_DIR=. otherwise means the process's working folder,
        # which stays the old folder after a restore replaces it (see _Watcher).
        self.directory = Path(os.path.abspath(directory))
        self._path = str(self.directory)  # os.path on str is cheaper than pathlib in hot loops
        self._lock = threading.RLock()
        # Orders the renames and index updates of one run id (see save). A lock per stripe of
        # ids, not one for the store: a rename held under the store lock made every other
        # request queue behind the disk, and each hand-over of the GIL costs a context switch.
        self._id_locks = tuple(threading.Lock() for _ in range(ID_LOCK_STRIPES))
        self._runs: dict[str, RunSummary] = {}
        self._raw_cache: OrderedDict[str, tuple[tuple, bytes]] = OrderedDict()
        self._raw_cache_bytes = 0
        self._order = SortedList()
        # Posting lists: field -> value -> SortedList of keys, for fast filtered listings.
        self._postings: dict[str, dict] = {}
        self._jobs: dict[tuple[str, str], dict[str, RunSummary]] = {}
        self._job_versions: dict[tuple[str, str], int] = {}
        self._version = 0
        self._warned: dict[str, tuple | None] = {}
        self._failing: set[str] = set()  # names follow() could not check; retried
        self._racy: dict[str, int] = {}  # run id -> when its file is old enough to trust (ns)
        self._unlistable: str | None = None  # why the last rescan could not list the folder
        # The runs of a folder that went away (forget_all), by id: if it comes back (moved
        # away and back, a disk remounted) a file whose stat is unchanged is taken back from
        # here, not read again. Emptied by the rescan that reads the folder back.
        self._forgotten: dict[str, RunSummary] = {}
        self._reloading = False  # that rescan is under way: the index is known to be partial
        self._closing = False  # close() has begun
        # Ids delete() removed lately, and when: the dashboard's "Run X was deleted"
        # notice takes X from its address, and must name only a deletion that happened.
        self._deletions: OrderedDict[str, float] = OrderedDict()
        # health_problem's look at the folder in progress, if any, which callers share.
        self._health_look: _HealthLook | None = None
        self._health_looked = threading.Condition()
        self._dir_syncer = _DirectorySyncer(self.directory)
        self._temp_token = uuid.uuid4().hex[:12]
        self._temp_numbers = count()
        self._snapshot = _IndexSnapshot(self.directory)
        self._watcher: _Watcher | None = None
        # A store at the mount point of its own disk: should the disk go, the path is the
        # bare folder beneath, and what was written there would hide once it came back.
        self._at_mount_point = self._is_mount_point()
        # What the index snapshot says of the last time the store was served (False if none).
        self._was_mount_point = self._snapshot.read_header_mount_point()
        # Before the folder is created or probed: that would happen in the folder beneath.
        self._refuse_if_not_mounted_since()
        self._open_directory()
        self._exclusive = exclusive
        self._folder_lock = _lock_folder(self.directory) if exclusive else None
        try:
            # Watch before the first scan, so that nothing changed during the scan is missed.
            if watch:
                self._watcher = _Watcher(self)
            self._load_all()
        except BaseException:
            # A start that fails (a folder that cannot be listed, Ctrl-C) leaves the folder
            # unlocked and no descriptor open: trying again in this process would otherwise
            # find the folder "in use by another process".
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None
            self._unlock_folder()
            raise
        self._postings_builder: threading.Timer | None = None
        if self._watcher is not None:
            self._watcher.start()
            # Built a little after start, in their own thread: run at once, the build (3 s of
            # GIL at a million runs) held back the server's first answer by as much.
            self._postings_builder = threading.Timer(POSTINGS_BUILD_DELAY, self._build_postings)
            self._postings_builder.daemon = True
            self._postings_builder.start()

    # --- life cycle ---

    def _open_directory(self) -> None:
        try:
            found = os.stat(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            found = None  # mkdir below says what is wrong, if anything is
        except OSError as exc:  # a parent folder this user may not search, say
            raise StoreUnavailable(
                f"cannot reach store folder {self.directory}: {exc.strerror}"
            ) from exc
        # Checked first: mkdir on a regular file says only "File exists".
        if found is not None and not stat.S_ISDIR(found.st_mode):
            raise StoreUnavailable(f"store folder {self.directory} is a file, not a folder")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create store folder {self.directory}: {exc.strerror}"
            ) from exc
        probe = self.directory / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailable(
                f"store folder {self.directory} is not writable: {exc.strerror}"
            ) from exc

    def close(self) -> None:
        """Stop following the folder and save the index snapshot; the store stays readable."""
        if self._postings_builder is not None:
            self._postings_builder.cancel()
        self._closing = True  # a bulk batch under way stops at its next slice (follow_all)
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.save_snapshot()
        self._unlock_folder()  # after the snapshot: the next registry may start

    def _unlock_folder(self) -> None:
        if self._folder_lock is not None:
            os.close(self._folder_lock)
            self._folder_lock = None

    def lock_new_folder(self) -> None:
        """Move the folder lock to the folder now at the store's path (after a restore)."""
        if not self._exclusive:
            return
        self._unlock_folder()
        try:
            self._folder_lock = _lock_folder(self.directory)
        except StoreUnavailable as exc:
            # Too late to refuse: this registry serves the folder already. Say it loudly.
            log.error("%s", exc)

    @property
    def watching(self) -> str:
        """How outside changes are followed: 'inotify', 'polling' or 'off'."""
        return self._watcher.mode if self._watcher else "off"

    def sweep_temp_files(
        self, older_than: float = STALE_TEMP_SECONDS, names: list[str] | None = None
    ) -> int:
        """Remove our own temp files left by a crash, if older than older_than seconds.

        names, if given, is a listing of the folder just made, to save listing it again.
        """
        removed = _remove_old_files(
            self._path,
            self._list_folder() if names is None else names,
            lambda name: name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX),
            older_than,
        )
        if removed:
            log.info("removed %d stale temp file(s) from %s", removed, self.directory)
        return removed

    # --- writing ---

    def save(self, run: dict) -> dict:
        """Write run atomically as <run_id>.json, replacing any earlier one; return it.

        When this returns, the file and its folder entry are on disk (fsync'ed).
        """
        run_id = run["run_id"]
        name = file_name_for(run_id)
        summary = RunSummary(run, run_id, None)  # checks the fields the index needs first
        self._refuse_if_unmounted()
        # One line per file: `grep -r failure store` then shows whole records. Compact, as
        # the original's JSON.stringify wrote it: GET serves these bytes, and a script for the
        # original may grep them for '"status":"failure"'.
        data = (json.dumps(run, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        if len(data) > MAX_RUN_FILE_BYTES:  # it would be skipped when read back
            raise RunTooLarge(
                f"body: the run would take {len(data)} bytes on disk, and a run file holds at "
                f"most {MAX_RUN_FILE_BYTES}"
            )
        # Two tries: `rsync -a --delete` from a copy without our dot-files, or a clean-up job,
        # can remove the temp file between its write and its rename. The folder still there,
        # that is no reason to fail a report whose bytes we hold: it is written again, once.
        for tries_left in (1, 0):
            try:
                ours = self._write_and_rename(data, name, summary)
                break
            except FileNotFoundError as exc:
                if not os.path.isdir(self._path):
                    raise _store_error(exc, "write run") from exc
                if not tries_left:
                    raise StoreUnavailable(
                        "cannot write run: its temp file in the store folder was removed "
                        "before its rename, twice (by rsync --delete or a clean-up job?)"
                    ) from None
                log.warning("temp file for %s removed from outside; writing it again", name)
        if not ours:
            self.follow(name, run_id)  # index what the file holds now
        self._sync_directory()
        return run

    def _write_and_rename(self, data: bytes, name: str, summary: RunSummary) -> bool:
        """Write data to a new temp file, fsync it, rename it to name, and index summary.

        Return whether the file still held our bytes just after the rename. Raise StoreError,
        or FileNotFoundError as it came, for save() to tell a missing folder from a temp file
        removed from outside.
        """
        run_id = summary.run_id
        final = os.path.join(self._path, name)
        # A per-store token and a counter: unique without a random read on every write.
        temp_name = f"{TEMP_PREFIX}{self._temp_token}-{next(self._temp_numbers)}{TEMP_SUFFIX}"
        temp = os.path.join(self._path, temp_name)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                written = os.fstat(fd)
            finally:
                os.close(fd)
            # The rename and the index update happen under the id's lock, so the index ends in
            # the order the renames did when clients overwrite the same id at once.
            with self._id_lock(run_id):
                os.replace(temp, final)
                try:
                    st = os.stat(final)
                except FileNotFoundError:
                    st = None  # removed from outside just after our rename, as rm may
                # A rename keeps the inode, size and mtime. If they differ, someone wrote the
                # file after our rename: its signature must not vouch for our content.
                ours = st is not None and (st.st_ino, st.st_size, st.st_mtime_ns) == (
                    written.st_ino,
                    written.st_size,
                    written.st_mtime_ns,
                )
                summary.signature = _file_signature(st) if ours else None
                with self._lock:
                    self._put(summary)
                    if ours:
                        self._cache_raw(run_id, summary.signature, data.rstrip())
        except IsADirectoryError:
            _unlink_quietly(temp)
            raise RunFileTaken(
                f"run_id: its file {name} in the store is a folder, not a run; "
                "move the folder away to post this run"
            ) from None
        except FileNotFoundError:
            _unlink_quietly(temp)
            raise
        except OSError as exc:
            _unlink_quietly(temp)
            raise _store_error(exc, "write run") from exc
        return ours

    def delete(self, run_id: str) -> bool:
        """Remove a run; return whether it was there. Deleting a missing run is not an error."""
        path = self.directory / file_name_for(run_id)
        self._refuse_if_unmounted()
        with self._id_lock(run_id):
            try:
                os.unlink(path)
                existed = True
            except FileNotFoundError as exc:
                if not os.path.isdir(self._path):  # no folder: no telling whether it was there
                    raise _store_error(exc, "delete run") from exc
                existed = False
            except IsADirectoryError:
                existed = False  # a folder is no run (GET says 404): there is none to delete
            except OSError as exc:
                raise _store_error(exc, "delete run") from exc
            with self._lock:
                self._remove(run_id)
                if existed:  # a DELETE of any text answers 204: only a real run counts
                    self._deletions.pop(run_id, None)
                    self._deletions[run_id] = time.monotonic()
                    if len(self._deletions) > RECENT_DELETIONS_KEPT:
                        self._deletions.popitem(last=False)
        if existed:
            self._sync_directory()
        return existed

    def deleted_lately(self, run_id: str, within_seconds: float = 600.0) -> bool:
        """Tell whether delete() removed run_id in the last within_seconds."""
        with self._lock:
            asked_at = self._deletions.get(run_id)
        return asked_at is not None and time.monotonic() - asked_at <= within_seconds

    def _id_lock(self, run_id: str) -> threading.Lock:
        """Return the lock that orders writes to run_id; take it before the store's lock."""
        return self._id_locks[hash(run_id) % ID_LOCK_STRIPES]

    def _sync_directory(self) -> None:
        try:
            self._dir_syncer.sync()
        except OSError as exc:
            raise _store_error(exc, "sync the store folder") from exc

    # --- reading ---

    def get(self, run_id: str) -> dict:
        """Return the stored run, read from its file; raise RunNotFound if there is none."""
        return json.loads(self.get_raw(run_id))

    def get_raw(self, run_id: str) -> bytes:
        """Return the stored run's JSON exactly as its file holds it, read from disk now."""
        self._refuse_if_unmounted()
        return self._read_raw(run_id, file_name_for(run_id))[1]

    def health_problem(self) -> str | None:
        """Say why the store cannot be read or written now, or None when it can.

        Each cause here also makes the API answer 503; /health reports it so that a monitor
        polling /health learns that reports are being refused. A full disk is not one: reads
        still work, and whether a write fits depends on the write.
        """
        # A hung network file system would hold each caller in these calls for good, and a
        # monitor's polls would take the worker threads one by one. So one caller looks and
        # the others share its answer; they stop waiting for it after HEALTH_HUNG_SECONDS.
        with self._health_looked:
            look = self._health_look
            if look is not None:
                if self._health_looked.wait_for(lambda: look.done, HEALTH_HUNG_SECONDS):
                    return look.problem
                return f"a look at store folder {self.directory} has not returned (a hung disk?)"
            look = self._health_look = _HealthLook()
        try:
            look.problem = self._look_at_folder()
        finally:
            with self._health_looked:
                look.done = True
                self._health_look = None
                self._health_looked.notify_all()
        return look.problem

    def _look_at_folder(self) -> str | None:
        """health_problem's look at the folder, which may wait on a slow disk."""
        try:
            self._refuse_if_behind()
        except StoreUnavailable as exc:
            return str(exc)
        if not os.path.isdir(self._path):
            return f"store folder {self.directory} is missing"
        # access(2) answers EROFS for a read-only file system, to root too: a disk with
        # errors that the kernel remounted read-only is the likely case here.
        if not os.access(self._path, os.W_OK | os.X_OK):
            # Which one, so that the operator fixes the right bit: a folder of mode 600 is
            # writable, yet no file in it can be opened.
            writable = os.access(self._path, os.W_OK)
            searchable = os.access(self._path, os.X_OK)
            if not (writable or searchable):
                return f"store folder {self.directory} is neither writable nor searchable"
            if not searchable:
                return f"store folder {self.directory} is not searchable"
            return f"store folder {self.directory} is not writable"  # or changed in between
        return None

    def _is_mount_point(self) -> bool:
        """Tell whether the store folder is the mount point of a disk (through any symlink)."""
        # os.path.ismount says False for a symlink, even for one that leads to a mount point.
        return os.path.ismount(os.path.realpath(self._path))

    def _refuse_if_not_mounted_since(self) -> None:
        """Raise StoreUnavailable if the store was a mount point when last served, and is not.

        A server that starts before its disk is mounted (a boot that fails to mount it, a
        service without RequiresMountsFor) would serve the bare folder beneath as an empty
        registry, and the runs posted meanwhile would hide once the disk came back. The index
        snapshot lives beside the store, on the parent's disk, so it remembers.
        """
        if self._was_mount_point and not self._at_mount_point:
            raise StoreUnavailable(
                f"store folder {self.directory} was the mount point of its own disk when last "
                "served and is not now: is its disk mounted? (If the store has moved onto this "
                f"disk for good, delete {self._snapshot.path} and start again.)"
            )

    def _refuse_if_unmounted(self) -> None:
        """Raise StoreUnavailable if the store was a mount point at start and is not now."""
        if self._at_mount_point and not self._is_mount_point():
            raise StoreUnavailable(
                f"store folder {self.directory} was a mount point at start and is not now (its "
                "disk unmounted?): nothing is read from or written to the folder beneath; "
                "mount it again (to serve that folder instead, stop the registry, delete "
                f"{self._snapshot.path}, and start it: a stop writes that file again)"
            )

    def _read_raw(self, run_id: str, name: str) -> tuple[RunSummary, bytes]:
        """Read a run file and check it holds that run; return (its summary, JSON bytes)."""
        try:
            signature, raw = _read_file(self._path, name)
        except FileNotFoundError as exc:
            if not os.path.isdir(self._path):  # no folder: no telling whether the run exists
                raise _store_error(exc, "read run") from exc
            raise RunNotFound(run_id) from None
        except _NotARun as exc:
            self._warn_once(name, exc.signature, str(exc))
            raise RunNotFound(run_id) from None
        except OSError as exc:
            raise _store_error(exc, "read run") from exc
        try:
            # What the index demands of a run, so that GET serves only what listings show.
            summary = RunSummary(_parse_run(raw), run_id, signature)
        except (ValueError, TypeError, RecursionError) as exc:
            self._warn_once(name, signature, f"skipped, not a valid run: {exc}")
            raise RunNotFound(run_id) from None
        return summary, raw.rstrip()

    def list_runs(self, query: RunQuery) -> RunPage:
        """Return one page of runs matching query, newest received first."""
        self._refuse_if_behind()
        for _ in range(3):
            with self._lock:
                # Again, under the lock: a reload may have begun since the look above, and
                # _select would build posting lists from its empty order.
                self._refuse_if_reloading()
                keys, total = self._select(query)
                summaries = [self._runs[key[1]] for key in keys[: query.limit]]
            raws = [self._cached_raw(summary) for summary in summaries]
            unserved = [s.run_id for s, raw in zip(summaries, raws, strict=True) if raw is None]
            if not unserved:
                break
            # The index was behind the folder (a change the watcher has not handled yet, or no
            # watcher): bring those runs up to date and select again, so that the page and its
            # total count only what can be served. Read whatever the stat says: a rewrite
            # within one timestamp tick keeps it.
            for run_id in unserved:
                try:
                    self.refresh(file_name_for(run_id), run_id, written_in_place=True)
                except OSError as exc:
                    raise _store_error(exc, "read run") from exc
        next_after = summaries[-1].key if len(keys) > query.limit else None
        return RunPage([raw for raw in raws if raw is not None], total, next_after)

    def _refuse_if_behind(self) -> None:
        """Raise StoreUnavailable while the watcher has changes it could not follow.

        The index would answer from what the folder held before them: with the folder
        unreadable, a run removed or edited from outside was listed as it had been (by
        listings, jobs, the dashboard and metrics alike). The watcher retries each second,
        and answers resume once it succeeds, or the file is gone. Without a watcher nothing
        is followed, and nothing is promised: listings then serve what they can read.
        """
        self._refuse_if_unmounted()
        if self._watcher is None:
            return
        if self._unlistable is not None:
            raise StoreUnavailable(
                f"{self._unlistable}, so changes to it cannot be seen: answers resume once it "
                "can be listed"
            )
        self._refuse_if_reloading()
        if not self._failing:
            return
        # Only a run the index serves can be shown as it no longer is. A file it never held
        # and cannot read (an I/O error on a new file) is simply not served, as a broken one.
        stale = [name for name in list(self._failing) if run_id_for(name) in self._runs]
        if stale:
            raise StoreUnavailable(
                f"cannot follow changes to the store folder ({len(stale)} run file(s); "
                "the log says why): answers resume once they can be read"
            )

    def _refuse_if_reloading(self) -> None:
        """Raise StoreUnavailable while a folder that came back is being read (see rescan)."""
        if self._reloading:
            raise StoreUnavailable(
                "the store folder is back and being read again: answers resume once it is"
            )

    def _cached_raw(self, summary: RunSummary) -> bytes | None:
        """Return a run's JSON bytes, from the cache when its file's signature is unchanged.

        Listings serve the newest runs again and again; re-reading and re-parsing a hundred
        files per page would cost more than the whole rest of the request.
        """
        cached = self._raw_cache.get(summary.run_id)
        if cached is not None and summary.signature is not None and cached[0] == summary.signature:
            with self._lock:
                if summary.run_id in self._raw_cache:
                    self._raw_cache.move_to_end(summary.run_id)
            return cached[1]
        try:
            found, raw = self._read_raw(summary.run_id, file_name_for(summary.run_id))
        except RunNotFound:
            return None  # deleted or broken since the index look-up
        if not found.holds_the_same(summary):
            # Rewritten since the look-up: these bytes may not match the filters the indexed
            # version passed (a re-post flipping a run's status put a "success" in a
            # status=failure page). The caller brings the index up to date and selects again.
            return None
        self._cache_raw(summary.run_id, found.signature, raw)
        return raw

    def _cache_raw(self, run_id: str, signature: tuple, raw: bytes) -> None:
        if len(raw) > RAW_CACHE_BYTES // 8:
            return  # a file copied in that large would push every other run out, then itself
        with self._lock:
            summary = self._runs.get(run_id)
            if summary is None or summary.signature != signature:
                # Read without the lock: deleted or changed since, these bytes are no one's
                # (cached, a deleted run's would stay until pushed out).
                return
            self._uncache_raw(run_id)
            self._raw_cache[run_id] = (signature, raw)
            self._raw_cache_bytes += len(raw)
            while (
                len(self._raw_cache) > RAW_CACHE_ENTRIES or self._raw_cache_bytes > RAW_CACHE_BYTES
            ):
                _, (_, dropped) = self._raw_cache.popitem(last=False)
                self._raw_cache_bytes -= len(dropped)

    def _uncache_raw(self, run_id: str) -> None:
        """Drop a run's bytes from the cache, if they are there. Caller holds the lock."""
        cached = self._raw_cache.pop(run_id, None)
        if cached is not None:
            self._raw_cache_bytes -= len(cached[1])

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs

    @property
    def version(self) -> int:
        """A number that changes whenever the index does; readers key their caches on it."""
        self._refuse_if_behind()
        return self._version

    def job_versions(self) -> dict[tuple[str, str], int]:
        """Return each job's change counter; a job's runs changed when its number did."""
        self._refuse_if_behind()
        with self._lock:
            return dict(self._job_versions)

    def job_runs(self, job: tuple[str, str]) -> list[RunSummary]:
        """Return the summaries of one job's runs, in no particular order."""
        with self._lock:
            self._refuse_if_reloading()  # the dashboard's job page would show part of them
            return list(self._jobs.get(job, {}).values())

    def summaries(self) -> list[RunSummary]:
        """Return every run summary, newest received first."""
        with self._lock:
            return [self._runs[key[1]] for key in self._order]

    # --- the query planner ---

    def _select(self, query: RunQuery) -> tuple[list[tuple], int]:
        """Return up to limit + 1 matching keys after the cursor, and the count of all matches.

        The scan is driven by the smallest posting list a filter allows; the other filters
        are checked on each candidate. Caller holds the lock.
        """
        posting = self._posting
        # Each candidate source: (the filters it settles, the posting lists to merge).
        groups: list[tuple[set[str], list[SortedList | None]]] = []
        if query.job_name is not None:
            groups.append(({"job_name"}, [posting("job_name").get(query.job_name)]))
        if query.agent_id is not None:
            groups.append(({"agent_id"}, [posting("agent_id").get(query.agent_id)]))
        if query.statuses:
            groups.append(({"status"}, [posting("status").get(s) for s in query.statuses]))
            # A job's or agent's runs of one status are a list of their own, so "job X's
            # failures" is counted by bisection instead of a scan of all of job X's runs.
            if query.job_name is not None:
                lists = [posting("job_status").get((query.job_name, s)) for s in query.statuses]
                groups.append(({"job_name", "status"}, lists))
            if query.agent_id is not None:
                lists = [posting("agent_status").get((query.agent_id, s)) for s in query.statuses]
                groups.append(({"agent_id", "status"}, lists))
        if query.encrypted is not None:
            groups.append(({"enc"}, [posting("enc").get(query.encrypted)]))
        candidates = [(covered, [keys for keys in lists if keys]) for covered, lists in groups]
        if candidates:
            # Fewest keys to walk first; of equals, the one that settles more filters.
            driver, sources = min(
                candidates, key=lambda group: (sum(map(len, group[1])), -len(group[0]))
            )
        else:
            driver, sources = set(), [self._order]
        predicate = self._predicate(query, skip=driver)
        ranges = [self._key_range(source, query) for source in sources]
        wanted = query.limit + 1
        if predicate is None:
            total = sum(stop - start for start, stop in ranges)
            after = query.after
            page_ranges = [
                (max(start, source.bisect_right(after)) if after else start, stop)
                for source, (start, stop) in zip(sources, ranges, strict=True)
            ]
            return list(islice(self._merged(sources, page_ranges), wanted)), total
        # X-Total-Count needs every match, not only this page's, so the whole range is scanned.
        total, page, runs = 0, [], self._runs
        for key in self._merged(sources, ranges):
            if predicate(runs[key[1]]):
                total += 1
                if len(page) < wanted and (query.after is None or key > query.after):
                    page.append(key)
        return page, total

    @staticmethod
    def _merged(sources: list[SortedList], ranges: list[tuple[int, int]]) -> Iterator[tuple]:
        slices = [
            source.islice(start, stop)
            for source, (start, stop) in zip(sources, ranges, strict=True)
        ]
        if len(slices) == 1:
            return iter(slices[0])
        return heapq.merge(*slices)

    @staticmethod
    def _key_range(source: SortedList, query: RunQuery) -> tuple[int, int]:
        start, stop = 0, len(source)
        if query.until_us is not None:  # received < until  <=>  -received >= 1 - until
            start = source.bisect_left((1 - query.until_us, ""))
        if query.since_us is not None:  # received >= since  <=>  -received < 1 - since
            stop = source.bisect_left((1 - query.since_us, ""))
        return start, max(start, stop)

    @staticmethod
    def _predicate(query: RunQuery, skip: set[str]) -> Callable[[RunSummary], bool] | None:
        checks: list[Callable[[RunSummary], bool]] = []
        if query.job_name is not None and "job_name" not in skip:
            checks.append(lambda s: s.job_name == query.job_name)
        if query.agent_id is not None and "agent_id" not in skip:
            checks.append(lambda s: s.agent_id == query.agent_id)
        if query.statuses and "status" not in skip:
            checks.append(lambda s: s.status in query.statuses)
        if query.encrypted is not None and "enc" not in skip:
            checks.append(lambda s: s.encrypted is query.encrypted)
        if query.text:
            needle = query.text.casefold()
            checks.append(
                lambda s: (
                    needle in s.job_name.casefold()
                    or needle in s.agent_id.casefold()
                    or (s.error is not None and needle in s.error.casefold())
                )
            )
        if not checks:
            return None
        if len(checks) == 1:
            return checks[0]
        return lambda s: all(check(s) for check in checks)

    # --- keeping the index true to the folder ---

    def _put(self, summary: RunSummary) -> None:
        """Add or replace a summary in every index structure. Caller holds the lock.

        While a folder that came back is read, the order is left alone: rescan sorts it then.
        """
        self._file_run(summary)
        if not self._reloading:  # else the order is sorted once when the reload ends
            self._order.add(summary.key)
        for field, value in self._posting_values(summary):
            postings = self._postings.get(field)
            if postings is not None:  # else it is built, with this run, when first needed
                keys = postings.get(value)
                if keys is None:
                    keys = postings[value] = SortedList()
                keys.add(summary.key)

    def _file_run(self, summary: RunSummary) -> None:
        """The part of _put() that _put_all() shares: the run by id and by job, not sorted."""
        self._remove(summary.run_id)
        self._runs[summary.run_id] = summary
        self._jobs.setdefault(summary.job, {})[summary.run_id] = summary
        self._touch(summary.job)

    def _put_all(self, summaries: list[RunSummary], *, drop_postings: bool) -> None:
        """_put() for many summaries, the order and posting lists updated once each.

        drop_postings drops the posting lists instead, for follow_all() to build again in
        one go: cheaper when the runs are many beside the index (a key at a time into six of
        them, 50,000 new runs in 100,000 cost over a second), dearer when few (at a million
        runs a build takes 2.6 s). Caller holds the lock.
        """
        if not summaries:
            return
        for summary in summaries:
            self._file_run(summary)
        keys = sorted(summary.key for summary in summaries)
        if not self._reloading:  # else the order is sorted once when the reload ends
            self._order.update(keys)
        if drop_postings:
            self._postings = {}
            return
        for field, postings in self._postings.items():
            for value, added in self._built_posting(field, keys).items():
                if value in postings:
                    postings[value].update(added)
                else:
                    postings[value] = added

    def _remove(self, run_id: str) -> None:
        """Drop a run from every index structure, if it is there. Caller holds the lock."""
        summary = self._runs.pop(run_id, None)
        self._uncache_raw(run_id)  # a deleted run's bytes held memory until pushed out
        if summary is None:
            return
        self._order.discard(summary.key)
        for field, value in self._posting_values(summary):
            postings = self._postings.get(field, {})
            keys = postings.get(value)
            if keys is not None:
                keys.discard(summary.key)
                if not keys:
                    del postings[value]
        job_runs = self._jobs.get(summary.job)
        if job_runs is not None:
            job_runs.pop(run_id, None)
            if not job_runs:
                del self._jobs[summary.job]
        self._touch(summary.job)

    def _touch(self, job: tuple[str, str]) -> None:
        self._version += 1
        if job in self._jobs:
            self._job_versions[job] = self._version
        else:
            self._job_versions.pop(job, None)

    @staticmethod
    def _posting_values(summary: RunSummary) -> Iterable[tuple[str, object]]:
        for field, value_of in POSTING_FIELDS.items():
            value = value_of(summary)
            if value is not None:
                yield field, value

    def _posting(self, field: str) -> dict:
        """Return field's posting lists (value -> keys), building them now if need be.

        Caller holds the lock.
        """
        postings = self._postings.get(field)
        if postings is None:
            postings = self._postings[field] = self._built_posting(field, self._order)
        return postings

    def _built_posting(self, field: str, keys: Iterable[tuple]) -> dict[object, SortedList]:
        """Group keys, which are in index order, by field's value: one sorted list a value."""
        value_of, runs = POSTING_FIELDS[field], self._runs
        by_value: defaultdict[object, list] = defaultdict(list)
        for key in keys:
            by_value[value_of(runs[key[1]])].append(key)
        by_value.pop(None, None)
        return {value: _presorted(found) for value, found in by_value.items()}

    def _build_postings(self) -> None:
        try:
            self.build_postings()
        except Exception:
            log.exception("cannot build the posting lists; they will be built when first needed")

    def build_postings(self) -> None:
        """Build every posting list not yet built, holding the lock only to install each one.

        Each is built from a copy of the index's order; if a write lands meanwhile, that
        build is dropped and the list is left to be built when first needed.
        """
        for field in POSTING_FIELDS:
            with self._lock:
                if field in self._postings:
                    continue
                version, keys = self._version, list(self._order)
            try:
                postings = self._built_posting(field, keys)
            except KeyError:
                continue  # a run was removed while we read: the version check says so too
            with self._lock:
                if self._version == version and field not in self._postings:
                    self._postings[field] = postings

    def forget_all(self) -> None:
        """Drop every run from the index: for a folder that is gone from the store's path.

        The runs are kept aside, so that a rescan of the folder back takes each unchanged
        file back without reading it.
        """
        with self._lock:
            self._forgotten.update(self._runs)
            for run_id in list(self._runs):
                self._remove(run_id)
            self._failing.clear()  # no folder, nothing to follow
            self._unlistable = None  # and no runs to show as they were

    def rescan(self) -> None:
        """Bring the index in line with the folder, re-reading only files whose stat changed.

        A file that cannot be checked is logged and retried later (see follow); the rest are
        checked all the same.
        """
        scan_started = time.time_ns()
        try:
            listing = self._list_folder()
        except StoreError as exc:
            # Then no change can be seen (in the polling fallback, none at all): listings
            # refuse until it can be listed (see _refuse_if_behind). Said once, not per turn.
            if self._unlistable is None:
                log.warning("%s; listings answer 503 until it can be listed again", exc)
            self._unlistable = str(exc)
            raise
        if self._unlistable is not None:
            log.info("store folder %s can be listed again", self.directory)
            self._unlistable = None
        # A folder back after it went: until every file is checked the index holds some of
        # its runs and not others, and listings would say so with a 200 (see _refuse_if_behind).
        # Meanwhile the runs are only filed, and sorted in one go at the end: added one at a
        # time to the order and six posting lists, 50,000 runs took 8 s; sorted, well under 1.
        reloading = bool(self._forgotten)
        if reloading:
            with self._lock:
                self._reloading = True
                self._order = SortedList()
                self._postings = {}  # built again, all at once, after the reload
        try:
            run_ids: dict[str, str] = {}
            for name in listing:
                run_id = self._run_id_of(name)
                if run_id is not None:
                    run_ids[name] = run_id
            self.follow_all(dict.fromkeys(run_ids, False), scan_started, run_ids)
            seen = set(run_ids.values())
            with self._lock:
                for gone in [run_id for run_id in self._runs if run_id not in seen]:
                    if not os.path.exists(os.path.join(self._path, file_name_for(gone))):
                        self._remove(gone)
            # A file that failed and has gone since is nothing to follow any more.
            self._failing.intersection_update(run_ids)
        finally:
            self._forgotten.clear()  # what was not taken back is not in the folder as it was
            if reloading:
                with self._lock:
                    self._order = _presorted(sorted(s.key for s in self._runs.values()))
                    # Any posting list built meanwhile came from the empty order: dropped, and
                    # the version moved on so that a build still under way is dropped too.
                    self._postings = {}
                    self._version += 1
                    self._reloading = False
                threading.Thread(target=self._build_postings, daemon=True).start()

    def _load_all(self) -> None:
        """Build the index from nothing, with the cyclic garbage collector kept out of it.

        Loading makes a few objects per run and frees almost none, so each collection the
        allocations would trigger is wasted work: at 100,000 runs, about a third of the load.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._load_all_files()
        finally:
            if gc_was_enabled:
                gc.enable()
        # The index lives as long as the process. Left in the collector's sight, each full
        # collection walks every summary (tens of ms at 100,000 runs, seen as latency spikes
        # and 5x slower filtered listings); frozen, the collector skips them.
        gc.freeze()

    def _load_all_files(self) -> None:
        """Index every run file, then sort each list once.

        Files whose stat signature matches the index snapshot are taken from it; every other
        file is read. In a large folder both jobs are shared among loader processes (see
        _check_folder). Adding a million keys one by one to sorted lists would cost several
        times more than sorting them in one go.
        """
        scan_started = time.time_ns()
        names = self._list_folder()
        self.sweep_temp_files(names=names)
        self._snapshot.sweep_temp_files()
        snapshot = self._snapshot.load()
        run_files = 0
        kept: set[str] = set()
        runs: dict[str, RunSummary] = {}
        jobs: defaultdict[tuple[str, str], dict[str, RunSummary]] = defaultdict(dict)
        # The runs read are filed as each slice comes in, while the loaders still work on
        # the next ones: after the last slice only this process works, and a core idles.
        for checked in _check_folder(self._path, names, _Signatures.of(snapshot)):
            run_files += checked.run_files
            kept.update(checked.kept)
            for row in checked.rows:
                summary = RunSummary.from_snapshot_row(row)
                self._forget_if_racy(summary, scan_started)
                runs[summary.run_id] = jobs[summary.job][summary.run_id] = summary
            for name, signature, message in checked.problems:
                self._warn_once(name, signature, message)
            # An I/O error may pass: the watcher tries these files again, as it does its own.
            self._failing.update(checked.failed)
        self.files_read_at_start = run_files - len(kept)
        snapshot_is_current = (
            self.files_read_at_start == 0
            and len(kept) == len(snapshot)
            and not self._snapshot.refused
            # A store that became a mount point (or stopped being one) with no run changed:
            # the next start must know, so the snapshot is written again.
            and self._was_mount_point == self._at_mount_point
        )
        for row in snapshot.values():
            if row[4] in kept:
                summary = RunSummary.from_snapshot_row(row)
                runs[summary.run_id] = jobs[summary.job][summary.run_id] = summary
        # Each slice read is sorted already, and the snapshot is written newest first, so
        # this sort only merges runs of keys.
        summaries = list(runs.values())
        summaries.sort(key=attrgetter("key"))
        keys = [summary.key for summary in summaries]
        with self._lock:
            self._runs = runs
            self._order = _presorted(keys)
            # Posting lists are built POSTINGS_BUILD_DELAY after start, or by the first query
            # that needs one: at a million runs they cost 2.6 s the first answer need not wait.
            self._postings = {}
            self._jobs = dict(jobs)
            for job in jobs:
                self._touch(job)
            if snapshot_is_current:
                self._snapshot.version = self._version  # nothing to write until a change

    def save_snapshot(self) -> bool:
        """Write the index snapshot if the index changed since the last one; return whether."""
        with self._lock:
            # Mid-reload the order is empty until the end (see rescan): a snapshot then would
            # hold no runs, and a crash before the next one cost a start that reads them all.
            if self._version == self._snapshot.version or self._reloading:
                return False
            version = self._version
            runs = self._runs.copy()
            order = list(self._order)
        # Newest first, as the index keeps them, so that the next start need not sort them.
        self._snapshot.write([runs[run_id] for _, run_id in order], version, self._at_mount_point)
        return True

    def _list_folder(self) -> list[str]:
        """Return the name of every entry in the folder."""
        try:
            with os.scandir(self._path) as entries:
                return [entry.name for entry in entries]
        except OSError as exc:
            raise _store_error(exc, "list the store folder") from exc

    def _run_id_of(self, name: str) -> str | None:
        if not _may_be_run_file(name):
            return None
        run_id = run_id_for(name)
        if run_id is None:
            self._warn_once(name, None, BAD_FILE_NAME)
        return run_id

    def _read_summary(self, name: str, run_id: str) -> RunSummary | None:
        """Read one run file into a summary; warn once and return None if it is not a run.

        Raise OSError if the store itself cannot be read (the folder, the disk).
        """
        try:
            return _read_summary(self._path, name, run_id)
        except FileNotFoundError:
            return None  # removed while we looked; its delete event or the next scan drops it
        except _NotARun as exc:
            self._warn_once(name, exc.signature, str(exc))
            return None

    def _forget_if_racy(self, summary: RunSummary, scan_started_ns: int | None) -> None:
        """Drop the signature of a file modified just before a scan, so it is read again.

        A file changed twice within the file system's timestamp resolution, keeping its size,
        keeps its stat signature ("racy" stat), so that signature proves nothing yet. Caller
        holds the lock, or is the start, before any other thread runs.
        """
        changed_ns = _changed_ns(summary.signature)
        if scan_started_ns is not None and changed_ns >= scan_started_ns - RACY_NS:
            # Read again once RACY_NS old (settle_racy): with no signature, its bytes were
            # read from disk at every listing and it was left out of every snapshot.
            self._racy[summary.run_id] = changed_ns + RACY_NS
            summary.signature = None

    def settle_racy(self) -> None:
        """Read again each run whose signature was too young to trust, once it is old enough."""
        now = time.time_ns()
        with self._lock:
            due = [run_id for run_id, trusted_at in self._racy.items() if trusted_at < now]
            for run_id in due:
                del self._racy[run_id]
        # After a large drop (50,000 files rsynced in) these are many, so they go in one batch.
        names = {file_name_for(run_id): run_id for run_id in due}
        self.follow_all(dict.fromkeys(names, False), run_ids=names)  # notes the still-young

    def refresh(
        self,
        name: str,
        run_id: str | None = None,
        scan_started_ns: int | None = None,
        *,
        written_in_place: bool = False,
    ) -> None:
        """Re-read one file if its stat changed since it was indexed, or drop it if it is gone.

        written_in_place says the file was written where it lies, so it is read whatever its
        stat says. A file that holds no run the store can serve (broken, unreadable, not a
        regular file) is dropped too. Raise OSError if the store itself cannot be read.
        """
        path = os.path.join(self._path, name)
        if run_id is None:
            run_id = self._run_id_of(name)
            if run_id is None:
                if not os.path.lexists(path):
                    self._warned.pop(name, None)
                return
        try:
            before = _file_signature(os.lstat(path))
        except FileNotFoundError:
            with self._id_lock(run_id), self._lock:
                if not os.path.lexists(path):  # not written again by a save since our stat
                    self._remove(run_id)
                    # Forget its warning too: a folder where broken files come and go must
                    # not grow this without end.
                    self._warned.pop(name, None)
            return
        # Under the id's lock, a save of this id whose rename we saw has also updated the index.
        with self._id_lock(run_id):
            current = self._runs.get(run_id)
        if current is not None and current.signature == before and not written_in_place:
            return
        if current is None and self._forgotten and not written_in_place:
            remembered = self._forgotten.pop(run_id, None)
            if remembered is not None and remembered.signature == before:
                # Its folder went and came back with this file unchanged: no need to read it.
                # Looked at again under the id's lock, as a read file is below: a DELETE
                # since our lstat must not see its run put back.
                with self._id_lock(run_id), self._lock:
                    try:
                        now = _file_signature(os.lstat(path))
                    except FileNotFoundError:
                        return
                    if now == before:
                        if run_id not in self._runs:  # else a save filed it meanwhile
                            self._put(remembered)
                        return
                # Changed since: read it below, as any changed file is.
        read_started = time.time_ns()
        # The same file we already warned about is not read again, only dropped.
        warned = self._warned.get(name) == before and not written_in_place
        summary = None if warned else self._read_summary(name, run_id)
        with self._id_lock(run_id), self._lock:
            try:
                now = _file_signature(os.lstat(path))
            except FileNotFoundError:
                self._remove(run_id)
                return
            if summary is None:
                # Only if what is there now is what we warned about: a file replaced since
                # then has an event of its own coming.
                if self._warned.get(name) == now:
                    self._remove(run_id)  # a run file turned bad: it is no longer served
                return
            if now != summary.signature:
                return  # changed while we read it; the next event or scan picks it up
            # An outside writer may rewrite this file again within the same timestamp tick,
            # keeping its size: so a signature younger than RACY_NS proves nothing yet.
            self._forget_if_racy(summary, scan_started_ns or read_started)
            if name in self._warned:
                del self._warned[name]
                log.info("%s: a valid run again, served", _shown(name))
            self._put(summary)  # which drops the cached bytes: their signature may be ours too

    def follow(self, name: str, *args, **kwargs) -> None:
        """refresh() for the watcher: an error is logged, once, and the file tried again later.

        It takes refresh()'s arguments. One file that cannot be checked must not cost the
        other files of a batch or a scan their turn, nor be forgotten: retry_failed() tries
        it again until it works.
        """
        try:
            self.refresh(name, *args, **kwargs)
        except Exception as exc:
            if name not in self._failing:
                log.warning(
                    "cannot follow a change to %s (%s); trying again every second",
                    _shown(name),
                    exc.strerror if isinstance(exc, OSError) and exc.strerror else exc,
                    exc_info=not isinstance(exc, OSError),  # a bug's traceback, not a disk's
                )
            self._failing.add(name)
        else:
            self._failing.discard(name)

    def follow_all(
        self,
        changed: dict[str, bool],
        scan_started_ns: int | None = None,
        run_ids: dict[str, str] | None = None,
    ) -> None:
        """Do what follow() does for each name in changed, which says whether it was
        written in place.

        run_ids, if given, holds the run id of every name (a rescan has them already). A
        large batch is checked by reader processes and filed in bulk (see
        _check_in_readers); a small one, or a slice whose reader or filing failed, file by
        file with follow(), which logs and retries what cannot be checked.
        """
        files = []
        for name, written_in_place in changed.items():
            if run_ids is not None:
                run_id = run_ids[name]
            else:
                run_id = run_id_for(name) if _may_be_run_file(name) else None
            if run_id is None or len(changed) < PARALLEL_FOLLOW_MIN_FILES:
                self.follow(name, run_id, scan_started_ns, written_in_place=written_in_place)
                continue
            # Compared with what the index holds (or held, before its folder went): a file
            # with the same stat is not read. One written in place is read whatever its stat.
            known = self._runs.get(run_id) or self._forgotten.get(run_id)
            signature = None if written_in_place or known is None else known.signature
            files.append((name, run_id, signature))
        if not files:
            return
        read_started = time.time_ns()
        # Which ids were found unchanged matters only for taking back a folder's runs.
        name_kept = bool(self._forgotten)
        read = kept = 0
        for names, found in _check_in_readers(self._path, files, name_kept):
            if self._closing:
                # Filing the rest could outlast close()'s wait for the watcher, which would
                # then save the snapshot and unlock the folder under a changing index. The
                # next start reads what was not filed.
                return
            if found is not None:
                read, kept = read + len(found.rows), kept + len(found.kept)
                try:
                    followed = self._file_checked(found, scan_started_ns or read_started)
                except Exception:  # a bug: the slice is not lost for it
                    log.exception("cannot file what a reader found; checking its files here")
                    found = None
            if found is None:
                for name in names:
                    self.follow(name, None, scan_started_ns, written_in_place=changed[name])
            elif self._failing:
                # Checked after all, as follow() would have: no longer failing.
                self._failing.difference_update(set(names) - followed)
        if read or kept:  # a large drop, or a folder back: worth a line, unlike a quiet rescan
            log.info(
                "reader processes checked %d files in %.1f s: %d read, %d taken back unread",
                len(files),
                (time.time_ns() - read_started) / 1e9,
                read,
                kept,
            )
        with self._lock:
            # Dropped by the bulk filing: built again in one go, unless a reload will.
            rebuild = not self._reloading and len(self._postings) < len(POSTING_FIELDS)
        if rebuild:
            threading.Thread(target=self._build_postings, daemon=True).start()

    def _file_checked(self, found: _CheckedFiles, scan_started_ns: int) -> set[str]:
        """Bring the index in line with what a reader found, in a few bulk updates.

        As refresh() does for one file, each file is looked at again under its id's lock
        before its run is filed: a file changed since it was read is left to its own event
        (or the next rescan), and a DELETE since must not see its run put back. A file that
        cannot be looked at, gone before its reader got to it, or unreadable is handed to
        follow(); return the names of those.
        """
        to_follow = set(found.gone) | set(found.failed)
        # Runs of a folder back after it went, found unchanged, are taken back unread.
        remembered = [self._forgotten.pop(i, None) for i in found.kept]
        candidates = [(summary, True) for summary in remembered if summary is not None]
        candidates += [(RunSummary.from_snapshot_row(row), False) for row in found.rows]
        drop_postings = len(candidates) * POSTINGS_REBUILT_AT >= len(self._runs)
        for start in range(0, len(candidates), BULK_FILING_CHUNK):
            filed = []
            with self._all_id_locks(), self._lock:
                for summary, unread in candidates[start : start + BULK_FILING_CHUNK]:
                    name = file_name_for(summary.run_id)
                    try:
                        now = self._signature_now(summary.run_id)
                    except OSError:  # the disk, say: follow() logs it and tries again
                        to_follow.add(name)
                        continue
                    if now is None and not unread:
                        self._remove(summary.run_id)
                    if now is None or now != summary.signature:
                        continue  # changed since it was looked at: its event reads it again
                    if unread:
                        if summary.run_id not in self._runs:  # else a save filed it meanwhile
                            filed.append(summary)
                        continue
                    self._forget_if_racy(summary, scan_started_ns)
                    if name in self._warned:
                        del self._warned[name]
                        log.info("%s: a valid run again, served", _shown(name))
                    filed.append(summary)
                self._put_all(filed, drop_postings=drop_postings)
        for name, signature, message in found.problems:
            if name in to_follow:
                continue  # follow() below tries it again, and says why it could not
            self._warn_once(name, signature, message)
            run_id = run_id_for(name)
            with self._id_lock(run_id), self._lock:
                try:
                    if self._signature_now(run_id) == signature:
                        self._remove(run_id)  # a run file turned bad: no longer served
                except OSError:
                    to_follow.add(name)
        for name in to_follow:
            self.follow(name, written_in_place=True)
        return to_follow

    def _signature_now(self, run_id: str) -> tuple | None:
        """Return the stat signature of run_id's file now, or None if there is none."""
        try:
            return _file_signature(os.lstat(os.path.join(self._path, file_name_for(run_id))))
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _all_id_locks(self) -> Iterator[None]:
        """Hold every id's lock: for filing many runs at once, as refresh() holds one."""
        with contextlib.ExitStack() as stack:
            for lock in self._id_locks:  # always in this order: two holders cannot deadlock
                stack.enter_context(lock)
            yield

    def retry_failed(self) -> None:
        """Try again each file follow() could not check, reading it whatever its stat says."""
        for name in list(self._failing):
            self.follow(name, written_in_place=True)

    def _warn_once(self, name: str, signature: tuple | None, message: str) -> None:
        if name in self._warned and self._warned[name] == signature:
            return
        self._warned[name] = signature
        log.warning("%s: %s", _shown(name), message)


RACY_NS = 2_000_000_000
LOCK_WAIT_SECONDS = 2.0  # for the store folder's lock held by a dead registry's loaders
ID_LOCK_STRIPES = 64
RECENT_DELETIONS_KEPT = 256  # for the dashboard's deletion notice (see deleted_lately)
HEALTH_HUNG_SECONDS = 10.0  # how long a /health waits for another's look at the folder
POSTINGS_BUILD_DELAY = 2.0  # seconds after start
SNAPSHOT_SECONDS = 300
# Events held for the watcher at most, as read (about a million); more, and it rescans instead.
# One read larger than this (a kernel queue raised past 170,000 events of long names) is always
# an overflow.
MAX_PENDING_BYTES = 48_000_000
INOTIFY_EVENT_BYTES = 48  # struct inotify_event: 16 bytes, then the name, padded (rsync: 32)


@dataclass
class _HealthLook:
    """One look at the store folder for /health, and what it found (see health_problem)."""

    done: bool = False
    problem: str | None = "the look at the store folder failed"


def _remove_old_files(
    folder: str, names: Iterable[str], is_temp: Callable[[str], object], older_than: float
) -> int:
    """Remove the files among names that is_temp picks and that are older than older_than
    seconds; return how many. Young ones may belong to a write still running."""
    removed = 0
    cutoff = time.time() - older_than
    for name in names:
        if not is_temp(name):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:  # a folder so named: not ours
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            pass  # another process swept it first
        except OSError as exc:
            # One file that cannot go (EPERM, an immutable file) must not stop the start.
            log.warning("%s: cannot remove this stale temp file: %s", _shown(name), exc.strerror)
    return removed


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _store_error(exc: OSError, action: str) -> StoreError:
    """Map an OS error to the store's own: a full disk, or a store that is unavailable.

    action says what failed, as in "cannot write run": "write run", "list the store folder".
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"cannot {action}: the store's disk is full")
    reason = {
        errno.EROFS: "the store is read-only",
        errno.EACCES: "permission denied on the store folder",
        errno.EPERM: "permission denied on the store folder",
        errno.EIO: "I/O error on the store's disk",
        errno.ENOENT: "the store folder is missing",
    }.get(exc.errno, exc.strerror or "unexpected OS error")
    return StoreUnavailable(f"cannot {action}: {reason}")


# The types the last six fields of a snapshot row may have, as snapshot_row writes them
# (json.loads gives exactly these classes; a bool is no int here). Every mix of them, so that
# one look-up checks all six: a million rows are checked at a restart.
_ROW_TAIL_TYPES = frozenset(
    product(
        (float, int),  # start_ts
        (float, int),  # end_ts
        (int, NoneType),  # bytes_backed_up
        (bool, NoneType),  # encrypted
        (str, NoneType),  # encryption_status
        (str, NoneType),  # error
    )
)
# What a datetime can hold, so that any time in a row can be turned back into one.
MIN_TS = datetime(1, 1, 1, tzinfo=UTC).timestamp()
MAX_TS = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC).timestamp()
MIN_US, MAX_US = int(MIN_TS) * 1_000_000, int(MAX_TS) * 1_000_000 + 999_999


def _digest(text: bytes) -> bytes:
    """The hex blake2b-128 digest of text, as bytes: what marks a snapshot line intact."""
    return hashlib.blake2b(text, digest_size=16).hexdigest().encode("ascii")


class _IndexSnapshot:
    """A copy of the index on disk, so a restart reads only the files that changed.

    It lives beside the store, not in it (`.<store>.index-snapshot`), so the store folder stays
    runs-only for rsync and grep. It is a cache and never the truth: at start each row is used
    only if its file's stat signature is unchanged, a row younger than RACY_NS when written is
    ignored, and a missing, foreign or broken snapshot means every file is read, after which a
    good one is written again.

    Each line is the digest of its JSON text, a space, and the text: a byte changed on disk or
    by hand that leaves the JSON well-formed (a digit of a size, a letter of a status) would
    otherwise be trusted until that run's file changed.
    """

    FORMAT = 2  # 1 had no digests; such a snapshot is refused once, and rewritten
    CHUNK = 5000  # rows per line: small enough that writing never holds the GIL for long

    def __init__(self, directory: Path):
        # Absolute first: STORE_DIR=. has no name and its parent is itself, which put the
        # snapshot inside the store. Not resolve(): a store reached through a symlink keeps
        # its snapshot where it always was, beside the link.
        directory = Path(os.path.abspath(directory))
        self.path = directory.parent / f".{directory.name}.index-snapshot"
        self.version = -1  # the index version last written
        self.refused = False  # whether load() found a snapshot it could not use
        # What write() names its temp files, and nothing else: only those are ever swept.
        self._temp_name = re.compile(re.escape(self.path.name) + r"\.[0-9a-f]{32}\.tmp")

    def load(self) -> dict[str, list]:
        """Return run_id -> snapshot row for every trustworthy row, or {} if there are none."""
        rows: dict[str, list] = {}
        self.refused = False
        try:
            with self._open() as handle:
                header = self._verified(handle.readline())
                if not isinstance(header, dict):
                    raise ValueError("no header")
                if header.get("format") != self.FORMAT:
                    raise ValueError(f"format {header.get('format')!r}")
                young = header["written_ns"] - RACY_NS
                for line in handle:
                    for row in self._verified(line):
                        self._check(row)
                        if _changed_ns(row) < young:
                            rows[row[4]] = row
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            log.warning("index snapshot %s unusable (%s); reading every run file", self.path, exc)
            self.refused = True  # to be written again, even for a store with no runs
            return {}
        return rows

    def read_header_mount_point(self) -> bool:
        """Read only the snapshot's header; return whether the store was a mount point then.

        False when there is no usable snapshot: a missing, broken or older one tells nothing.
        """
        try:
            with self._open() as handle:
                header = self._verified(handle.readline())
        except (OSError, ValueError, RecursionError):
            return False
        return (
            isinstance(header, dict)
            and header.get("format") == self.FORMAT
            and header.get("mount_point") is True
        )

    def _open(self) -> BinaryIO:
        """Open the snapshot for reading; raise ValueError if it is no regular file."""
        # O_NONBLOCK: a FIFO left at the snapshot's path would otherwise hang the start for good.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def line(payload: object) -> bytes:
        """Return payload as one line of the snapshot: its JSON text's digest, a space, the text."""
        text = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return _digest(text) + b" " + text + b"\n"

    @staticmethod
    def _verified(line: bytes) -> object:
        """Return what a line written by line() holds; raise ValueError if it is not intact."""
        digest, _, text = line.rstrip(b"\n").partition(b" ")
        # Corruption, not forgery, is what this catches: no secret, so == will do. blake2b reads
        # about 750 MB/s here: 0.25 s for the 180 MB snapshot of a million runs.
        if _digest(text) != digest:
            raise ValueError("a line does not match its digest")
        return json.loads(text)

    @staticmethod
    def _check(row: list) -> None:
        """Raise ValueError unless row is what snapshot_row writes, each field of its type.

        A row taken on trust goes into the index as it is: a start_ts read as a string, say,
        made /v1/jobs answer 500 long after the start.
        """
        # Unpacking checks the length too (a ValueError), and that row is a sequence at all.
        (
            ino,
            size,
            mtime,
            ctime,
            run_id,
            received,
            job,
            agent,
            status,
            start,
            end,
            backed_up,
            encrypted,
            encryption_status,
            error,
        ) = row
        if (
            not (ino.__class__ is size.__class__ is mtime.__class__ is ctime.__class__ is int)
            or received.__class__ is not int
            or not (run_id.__class__ is job.__class__ is agent.__class__ is str)
            or status not in STATUSES
            or (
                start.__class__,
                end.__class__,
                backed_up.__class__,
                encrypted.__class__,
                encryption_status.__class__,
                error.__class__,
            )
            not in _ROW_TAIL_TYPES
            or not MIN_US <= received <= MAX_US
            or (backed_up is not None and not 0 <= backed_up <= MAX_BYTES)
            or not (MIN_TS <= start <= MAX_TS and MIN_TS <= end <= MAX_TS)  # nor NaN
        ):
            raise ValueError("malformed row")

    def sweep_temp_files(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Remove temp files a killed write() left beside the store; return how many.

        Each is a partial copy of the index (180 MB at a million runs), and nothing else would
        ever remove it. Young ones may belong to a write still running, so they stay.
        """
        folder = str(self.path.parent)
        try:
            removed = _remove_old_files(
                folder, os.listdir(folder), self._temp_name.fullmatch, older_than
            )
        except OSError as exc:
            log.warning("cannot sweep old index snapshot temp files: %s", exc.strerror)
            return 0
        if removed:
            log.info("removed %d stale index snapshot temp file(s)", removed)
        return removed

    def write(self, summaries: list[RunSummary], version: int, at_mount_point: bool) -> None:
        """Write the snapshot atomically; a failure is logged and costs only a slower start.

        at_mount_point: whether the store is served at the mount point of its own disk.
        """
        temp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.tmp")
        header = {
            "format": self.FORMAT,
            "written_ns": time.time_ns(),
            "runs": len(summaries),
            "mount_point": at_mount_point,
        }
        try:
            with open(temp, "wb") as handle:
                handle.write(self.line(header))
                for start in range(0, len(summaries), self.CHUNK):
                    chunk = summaries[start : start + self.CHUNK]
                    handle.write(
                        self.line([s.snapshot_row() for s in chunk if s.signature is not None])
                    )
            os.replace(temp, self.path)
            self.version = version
        except (OSError, UnicodeError) as exc:
            # UnicodeError: text no file can hold. The index lets none in (see _parse_run);
            # should one slip through, a snapshot is a cache, and must not fail a stop.
            _unlink_quietly(temp)
            reason = exc.strerror if isinstance(exc, OSError) else exc
            log.warning("cannot write index snapshot %s: %s", self.path, reason)


class _DirectorySyncer:
    """Group commit for the folder's fsync: one fsync covers every rename made before it began.

    Each writer must not answer until an fsync that *started after its rename* has finished.
    Writers that arrive while an fsync is running wait for it and then share the next one,
    so 16 concurrent clients cost a handful of folder fsyncs instead of 16.
    """

    def __init__(self, directory: Path):
        self._directory = directory
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out
        self._synced = 0  # every ticket up to this one is durable
        self._running = False
        self._failed: tuple[int, OSError] | None = None

    def sync(self) -> None:
        """Return once the folder has been fsync'ed after the caller's change."""
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._synced < ticket:
                if self._failed is not None and self._failed[0] >= ticket:
                    raise self._failed[1]
                if not self._running:
                    self._running = True
                    covered = self._requested
                    self._cond.release()
                    error = None
                    try:
                        fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                    except OSError as exc:
                        error = exc
                    finally:
                        self._cond.acquire()
                        self._running = False
                    if error is None:
                        self._synced = max(self._synced, covered)
                    else:
                        self._failed = (covered, error)
                    self._cond.notify_all()
                else:
                    self._cond.wait()


class _Watcher:
    """Follows outside changes to the folder and refreshes only the files they touched.

    Why inotify: a stat sweep costs about 3.5 s of CPU per pass at a million files, and the
    folder's mtime says only that *something* changed and misses edits in place. inotify names
    each changed file as it closes or is renamed in, so an rsync of ten files costs ten reads.
    If the kernel's event queue overflows, one full rescan (stat-only for unchanged files)
    puts things right. Where inotify is missing (not Linux, or out of watches) a rescan every
    POLL_SECONDS does the same job more slowly.
    A watch follows the folder's inode, not its path: if the folder is removed or moved away
    (a restore: rm -rf store; cp -a backup store), its watch is dropped, the index is emptied
    (no folder, no runs), the path is looked at every POLL_SECONDS until a folder is there
    again, and that one is watched and rescanned. The folder's own events say so at once;
    a check of the inode at the path every POLL_SECONDS catches a change that makes none.
    """

    POLL_SECONDS = 1.0
    # After the first event, wait this long for more and take them all at once. Under a
    # stream of POSTs, waking for each one's events cost about a seventh of the throughput
    # (every wake is a GIL hand-over); outside changes still show within 2 s.
    BATCH_SECONDS = 0.05
    FIRST_SNAPSHOT_SECONDS = 5.0  # after start: soon, as a start that read files was slow
    RETRY_SECONDS = 1.0  # how often a file that could not be checked is tried again
    # A burst has ended when fewer than QUIET_EVENTS come in QUIET_WINDOW_SECONDS (a stream
    # of POSTs makes about 200); see _folder_events_until_quiet.
    QUIET_EVENTS = 1_000
    QUIET_WINDOW_SECONDS = 0.1
    QUIET_MAX_SECONDS = 10.0

    def __init__(self, store: RunStore):
        self._store = store
        self._stop = threading.Event()
        self._inotify = None
        # The folder at the store's path when it was last watched; taken before the watch
        # (see _watch_folder). RunStore has just opened it, so it can be looked at.
        self._watched = self._folder_identity()
        # The folder the store locked (RunStore locks before it builds the watcher). Kept
        # apart from _watched: a restored folder may be served without a watch (polling, or
        # out of inotify watches), and the lock must move to it all the same.
        self._locked = self._watched
        try:
            import inotify_simple

            self._inotify = inotify_simple.INotify()
            f = inotify_simple.flags
            self._mask = (
                f.CLOSE_WRITE
                | f.MOVED_TO
                | f.MOVED_FROM
                | f.DELETE
                | f.CREATE
                | f.ATTRIB
                | f.DELETE_SELF
                | f.MOVE_SELF
                | f.ONLYDIR
            )
            self._wd: int | None = self._inotify.add_watch(store.directory, self._mask)
            self._overflow = f.Q_OVERFLOW
            # What _take_events puts in place of events it has no room for.
            self._overflowed = inotify_simple.Event(wd=-1, mask=f.Q_OVERFLOW, cookie=0, name="")
            self._parse_events = inotify_simple.parse_events
            # A run file closed after writing was written in place (cp, an editor): the API
            # only ever renames finished files in. Its stat may not show it: two writes of the
            # same size within one timestamp tick (a second, on some file systems) keep the
            # signature, and so would our save's. This event is the one sure sign, so such a
            # file is read whatever its stat says; it costs the API's own writes nothing.
            self._closed_after_writing = f.CLOSE_WRITE
            self._created = f.CREATE
            # The folder itself is gone from its path (IN_IGNORED: its watch was removed).
            self._folder_gone = f.DELETE_SELF | f.MOVE_SELF | f.IGNORED
            self.mode = "inotify"
        except (ImportError, OSError) as exc:
            if self._inotify is not None:
                self._inotify.close()
                self._inotify = None
            log.warning(
                "inotify unavailable (%s); polling the store every %.0f s", exc, self.POLL_SECONDS
            )
            self.mode = "polling"
        self._wake_read, self._wake_write = os.pipe()
        self._poller = select.poll()
        self._poller.register(self._wake_read, select.POLLIN)
        if self._inotify is not None:
            self._poller.register(self._inotify.fileno(), select.POLLIN)
        # Events are taken from the kernel by a thread of their own (see _take_events), into
        # _pending, where this one finds them: a long turn here, reading a large drop, must
        # not leave them queued in the kernel, which holds 16,384 (fs.inotify.max_queued_events)
        # and then drops the rest. Each overflow cost a rescan of the whole folder, and under
        # an rsync of 50,000 files into 100,000 they came one after another, 2 to 3 s each.
        self._pending: list[bytes] = []  # events as read from the kernel, not yet parsed
        self._pending_bytes = 0
        self._pending_overflowed = False  # _pending ran full: events were dropped
        self._pending_lock = threading.Lock()
        self._events_came = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="store-watcher", daemon=True)]
        if self._inotify is not None:
            self._threads.append(
                threading.Thread(
                    target=self._take_events_until_stopped, name="store-events", daemon=True
                )
            )
        self._snapshot_writer: threading.Thread | None = None

    def start(self) -> None:
        """Start following the folder in background threads."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the threads and release the inotify descriptor."""
        self._stop.set()
        os.write(self._wake_write, b"x")  # end a wait for events now, not at its timeout
        self._events_came.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        if self._snapshot_writer is not None:
            self._snapshot_writer.join()  # the caller may write one next: let this one land
        if self._inotify is not None:
            self._inotify.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _save_snapshot_aside(self) -> None:
        """Write the index snapshot in a thread of its own, unless the last one still writes.

        At a million runs a snapshot takes about 7 s to write; in this thread, no outside
        change would be followed meanwhile, against the promise of 2 s.
        """
        if self._snapshot_writer is not None and self._snapshot_writer.is_alive():
            return
        self._snapshot_writer = threading.Thread(
            target=self._save_snapshot, name="store-snapshot", daemon=True
        )
        self._snapshot_writer.start()

    def _save_snapshot(self) -> None:
        try:
            self._store.save_snapshot()
        except Exception:  # a bug: say so, and let the next turn try again
            log.exception("cannot write index snapshot")

    def _take_events_until_stopped(self) -> None:
        """The "store-events" thread: move the kernel's events into _pending as they come."""
        while not self._stop.is_set():
            try:
                self._take_events()
            except Exception:  # the descriptor failed: say so, and try again in a second
                log.exception("cannot read the store folder's events; retrying")
                self._stop.wait(1.0)

    def _take_events(self) -> None:
        """Wait up to a second for events, then BATCH_SECONDS for the rest of a burst, and
        add them all to _pending as read; a full _pending becomes one overflow, as the
        kernel's does.

        Read, not parsed: parsing takes the GIL for a few microseconds an event, and under a
        burst, with the watcher filing runs, this thread waited for it so long between reads
        that the kernel's queue overflowed all the same. The watcher parses (_take_pending).
        """
        if not self._poller.poll(1000) or self._stop.wait(self.BATCH_SECONDS):
            return
        queued = self._queued_bytes()
        if not queued:
            # A guard: only stop() writes the wake pipe, and its flag returns above first. A
            # read of nothing queued would wait, and one byte fits no event.
            return
        # Whole events only: read() returns as many as fit, and FIONREAD counts whole ones.
        data = os.read(self._inotify.fileno(), queued)
        with self._pending_lock:
            if self._pending_bytes + len(data) > MAX_PENDING_BYTES:
                # The rescan that follows puts the index right, as after the kernel's overflow.
                self._pending.clear()
                self._pending_bytes = 0
                self._pending_overflowed = True
            else:
                self._pending.append(data)
                self._pending_bytes += len(data)
        self._events_came.set()

    def _take_pending(self) -> list:
        """Return the events taken from the kernel since the last call, parsed."""
        with self._pending_lock:
            chunks, self._pending, self._pending_bytes = self._pending, [], 0
            overflowed, self._pending_overflowed = self._pending_overflowed, False
            self._events_came.clear()
        events = [self._overflowed] if overflowed else []
        for chunk in chunks:
            events += self._parse_events(chunk)
        return events

    def _wait_for_events(self) -> list:
        """Return the events taken since the last call, waiting up to 250 ms for some, or
        none once stop() is called."""
        if not self._events_came.wait(0.25) or self._stop.is_set():
            return []
        return self._take_pending()

    def _folder_events_until_quiet(self) -> list:
        """After an overflow, wait for the burst to end; return the folder's own events.

        A rescan started under the burst (an rsync of 50,000 files) was overflowed in turn,
        and so was the one after it: 2 to 3 s each at 150,000 files. The one rescan made once
        events come slowly again covers every event taken meanwhile, so only those that say
        the folder itself went are kept. Slowly: fewer than QUIET_EVENTS taken in a window,
        and as few left in the kernel's queue (the events thread may be starved of CPU).
        A burst that goes on is rescanned every QUIET_MAX_SECONDS, so it shows as it lands.
        """
        kept = []
        deadline = time.monotonic() + self.QUIET_MAX_SECONDS
        while time.monotonic() < deadline and not self._stop.wait(self.QUIET_WINDOW_SECONDS):
            events = self._take_pending()
            kept += [event for event in events if event.mask & (self._folder_gone | self._overflow)]
            if len(events) < self.QUIET_EVENTS and self._queued_events() < self.QUIET_EVENTS:
                break
        return kept

    def _queued_events(self) -> int:
        """Return about how many events the kernel holds for us, not yet taken."""
        return self._queued_bytes() // INOTIFY_EVENT_BYTES

    def _queued_bytes(self) -> int:
        """Return how many bytes of events the kernel holds for us, not yet taken."""
        queued = array("i", [0])
        fcntl.ioctl(self._inotify.fileno(), termios.FIONREAD, queued, True)
        return queued[0]

    def _lose_folder(self) -> None:
        """Drop the watch of a folder that is no longer the one at the store's path."""
        # A folder moved away (IN_MOVE_SELF) is still watched, under its new name.
        with contextlib.suppress(OSError):  # EINVAL: the kernel removed it already
            self._inotify.rm_watch(self._wd)
        self._wd = None
        self.mode = "polling"
        log.warning(
            "store folder %s was removed or moved away; looking for it every %.0f s",
            self._store.directory,
            self.POLL_SECONDS,
        )

    def _folder_identity(self) -> tuple[int, int] | None:
        """Return (device, inode) of the folder now at the store's path, or None if none is.

        Raise OSError when the path cannot be looked at (a parent folder's permissions, an
        I/O error, a stale NFS handle). That says nothing of the folder being gone: taken for
        gone, it emptied the index, and listings answered 200 with no runs at all.
        """
        try:
            st = os.stat(self._store.directory)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None  # a file in the folder's place: no folder holds no runs
        return (st.st_dev, st.st_ino)

    def _folder_is_gone(self) -> bool:
        """Tell whether nothing is at the store's path, rather than something unreachable."""
        try:
            return self._folder_identity() is None
        except OSError:
            return False  # a rescan then fails to list it, and listings answer 503

    def _watch_folder(self) -> bool:
        """Watch the folder now at the store's path; return False if there is none to watch."""
        # Taken before the watch is added: if the folder is replaced in between, the two
        # differ, and the next check of the identity watches the path again.
        try:
            self._watched = self._folder_identity()
            self._wd = self._inotify.add_watch(self._store.directory, self._mask)
        except OSError:  # not there (yet), or no folder, or out of watches
            return False
        self.mode = "inotify"
        log.info("watching store folder %s again; rescanning it", self._store.directory)
        self._move_lock_if_replaced()
        return True

    def _move_lock_if_replaced(self) -> None:
        """Move the folder lock to the folder at the store's path, if it is another one now."""
        try:
            identity = self._folder_identity()
        except OSError:
            return  # cannot tell: the next look does
        if identity is not None and identity != self._locked:  # a restore replaced it
            self._locked = identity
            self._store.lock_new_folder()

    def _is_being_written(self, name: str) -> bool:
        """Tell whether a file only just created is still empty: `cmd > store/x.json` makes
        it so, and reading it before its writer closes it would warn of a broken run."""
        try:
            st = os.lstat(os.path.join(self._store.directory, name))
        except OSError:
            return False  # follow() says what is wrong
        return stat.S_ISREG(st.st_mode) and st.st_size == 0

    def _poll(self, folder_was_there: bool) -> None:
        """Without inotify: rescan the folder, or, while it is gone, hold no runs."""
        if not self._folder_is_gone():
            self._move_lock_if_replaced()
            self._store.rescan()
            self._store.settle_racy()  # rescan re-read them: this only empties the list
            return
        # One warning, not a traceback every second, while a restore is under way.
        if folder_was_there:
            log.warning(
                "store folder %s is gone; checking every %.0f s",
                self._store.directory,
                self.POLL_SECONDS,
            )
        self._store.forget_all()  # no folder holds no runs, as when inotify sees it go

    def _run(self) -> None:
        # Soon after a start that read files, then every SNAPSHOT_SECONDS if the index changed.
        next_snapshot = time.monotonic() + self.FIRST_SNAPSHOT_SECONDS
        next_retry = next_identity_check = 0.0
        rescan_due = False
        folder_was_there = True
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_snapshot:
                    next_snapshot = time.monotonic() + SNAPSHOT_SECONDS
                    self._save_snapshot_aside()
                if self._inotify is None:
                    if not self._stop.wait(self.POLL_SECONDS):
                        self._poll(folder_was_there)
                        folder_was_there = not self._folder_is_gone()
                        self._store.retry_failed()
                    continue
                if self._wd is None:  # the folder went away: look for it again
                    if self._stop.wait(self.POLL_SECONDS):
                        continue
                    if not self._watch_folder():
                        if not self._folder_is_gone():
                            self._move_lock_if_replaced()
                            self._store.rescan()  # back, but cannot be watched: poll it
                            self._store.retry_failed()
                        continue
                    rescan_due = True
                events = self._wait_for_events()
                if any(event.mask & self._overflow for event in events):
                    log.warning("inotify queue overflowed; rescanning the store")
                    events += self._folder_events_until_quiet()
                    if self._stop.is_set():
                        break  # a rescan now could outlast stop()'s wait, and close()
                    rescan_due = True
                gone = any(e.wd == self._wd and e.mask & self._folder_gone for e in events)
                if not gone and time.monotonic() >= next_identity_check:
                    next_identity_check = time.monotonic() + self.POLL_SECONDS
                    # Not every removal makes an event: a folder that is still some process's
                    # working folder (ours, with STORE_DIR=.) lives on, unnamed, until it is not.
                    try:
                        gone = self._folder_identity() != self._watched
                    except OSError:
                        # Unreachable, not gone: keep the runs, and rescan each turn. It fails
                        # to list the folder, so listings answer 503, until it can.
                        rescan_due = True
                if gone:
                    self._lose_folder()
                    if not self._watch_folder():  # it may be back already
                        self._store.forget_all()  # no folder holds no runs
                        continue
                    rescan_due = True
                if rescan_due:
                    self._store.rescan()  # if it fails, the next turn tries again
                    rescan_due = False
                    continue
                # Events of a watch dropped above are about a folder that is not the store's.
                # Dot-files (our temp files, rsync's, editors') are never runs and never
                # warned about: skipping them spares a syscall per POST for the temp file
                # the save renames away, in the thread that competes for the GIL with it.
                changed: dict[str, bool] = {}
                only_created: set[str] = set()
                for event in events:
                    if event.name and event.wd == self._wd and not event.name.startswith("."):
                        written = bool(event.mask & self._closed_after_writing)
                        if event.name not in changed and event.mask == self._created:
                            only_created.add(event.name)
                        elif event.mask != self._created:
                            only_created.discard(event.name)
                        changed[event.name] = changed.get(event.name, False) or written
                for name in only_created:
                    if self._is_being_written(name):
                        del changed[name]  # its close is the event to read it on
                self._store.follow_all(changed)
                if time.monotonic() >= next_retry:
                    next_retry = time.monotonic() + self.RETRY_SECONDS
                    self._store.retry_failed()
                    self._store.settle_racy()
            except StoreError:
                self._stop.wait(1.0)  # the store logged it, once (an unlistable folder)
            except Exception:
                # The watcher must outlive one bad moment (a folder briefly gone, say).
                log.exception("store watcher error; retrying")
                self._stop.wait(1.0)
