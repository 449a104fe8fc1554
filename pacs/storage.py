"""The file store: received instances on disk, durably, at paths derived from UIDs only.

Layout: ``STORAGE_DIR/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, each UID
validated first (PS3.5 9.1: digits and dots, at most 64 characters, no empty component),
so no name, ID or other free text ever reaches a path and ``../`` cannot.

Writing follows "persist before you acknowledge": the data goes to a temporary file in
``STORAGE_DIR/.incoming`` (same file system; written there by ``pacs.dimse.acceptor``), is
renamed to the final name (atomic) and fsynced, and the directory is fsynced, before anything
is indexed (``commit_file``, ``place_new_file``).  The 128-byte preamble is always zeros: the
acceptor writes the preamble and File Meta Information itself, never the sender's
(PS3.10 7.1: the preamble is for the application that wrote the file; a sender's preamble could
make a stored file an executable as well as a DICOM file).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

# PS3.5 9.1: components of digits without leading zeros (a lone "0" allowed), separated by dots.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_LENIENT = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # leading zeros seen in the wild: still safe for paths


class InvalidUID(ValueError):
    """A UID that is not a DICOM UID (and must never become a path)."""


class StorageFull(OSError):
    """The store cannot take the file (no space, read-only, permissions): out of resources."""


def is_valid_uid(value: str | None, *, strict: bool = False) -> bool:
    if not value or len(value) > 64:
        return False
    return bool((_UID if strict else _UID_LENIENT).match(value))


def require_uid(value, what: str) -> str:
    text = "" if value is None else str(value)
    if not is_valid_uid(text):
        raise InvalidUID(f"{what} {text[:80]!r} is not a valid UID")
    return text


def storage_root() -> Path:
    return _root(str(settings.STORAGE_DIR))


@functools.lru_cache(maxsize=8)
def _root(directory: str) -> Path:
    return Path(directory)


def relative_path(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
    """The path of an instance, relative to STORAGE_DIR, from three validated UIDs."""
    parts = [
        require_uid(study_instance_uid, "StudyInstanceUID"),
        require_uid(series_instance_uid, "SeriesInstanceUID"),
        require_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm",
    ]
    return "/".join(parts)


def absolute_path(relative: str) -> Path:
    path = (storage_root() / relative).resolve()
    root = storage_root().resolve()
    if root not in path.parents:
        raise InvalidUID(f"path {relative!r} leaves the store")
    return path


def instance_path(relative: str) -> Path:
    """The file of an indexed instance without resolving it: a path of the shape
    ``relative_path`` gives (three UIDs, the last with ``.dcm``: digits and dots only) cannot
    leave the store.  Any other shape gets ``absolute_path``'s check, which resolves every
    directory level (system calls that add up over a study's thousand instances)."""
    parts = relative.split("/")
    if len(parts) == 3 and parts[2].endswith(".dcm") and all(
            is_valid_uid(p) for p in (parts[0], parts[1], parts[2][:-4])):
        return storage_root() / relative
    return absolute_path(relative)


def incoming_dir() -> Path:
    path = storage_root() / ".incoming"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_storage_error(exc: OSError) -> OSError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE, errno.EIO):
        return StorageFull(exc.errno, f"cannot write to the store: {exc.strerror}")
    return exc


RECEIVED_SUFFIX = ".recv"  # files the DICOM acceptor writes in the incoming directory

try:
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
except (AttributeError, OSError):  # not Linux
    _sync_file_range = None


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing a file's dirty pages now, without waiting (Linux
    sync_file_range SYNC_FILE_RANGE_WRITE): the fsync that makes the file durable later has
    less left to do.  Durability still comes only from that fsync."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, 2)


def _make_parents(final: Path) -> list[Path]:
    """Create the study and series directories of ``final`` where missing; the ones created
    (their parents must be fsynced for them to last)."""
    created = []
    parent = final.parent
    for directory in (parent.parent, parent):
        if not directory.exists():
            directory.mkdir(parents=True, exist_ok=True)
            created.append(directory)
    return created


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(temporary: Path, relative: str) -> tuple[Path, bool]:
    """Put the temporary file at its final place, durably: the file and the directories that
    name it fsynced before this returns.

    A new instance is renamed first and fsynced at its final name, then its directory: on a
    journalling file system the file's fsync commits the rename with it, so the directory's
    fsync finds nothing left to write (one journal commit instead of two).  Until both
    fsyncs return nothing is indexed or acknowledged, so a crash in between leaves at most
    an unindexed file that a resend replaces.  A resend of a stored instance (the final name
    exists) is fsynced first and then renamed over the old copy, which so stays whole until
    the new one is.

    Returns (final path, replaced) where ``replaced`` says a file was already there
    (a resend of the same SOP Instance UID: the new copy replaces the old atomically).
    """
    final = absolute_path(relative)
    try:
        created = _make_parents(final)
        replaced = final.exists()
        if replaced:
            _fsync_file(temporary)
            os.replace(temporary, final)
            _fsync_dirs(final, created)
        else:
            os.replace(temporary, final)
            try:
                _durable_new(final, created)
            except OSError:
                discard(final)
                raise
        return final, replaced
    except OSError as exc:
        discard(temporary)
        raise _as_storage_error(exc) from exc


_fsyncs: ThreadPoolExecutor | None = None


def _fsync_dirs(final: Path, created: list[Path]) -> None:
    """The directory naming ``final``, and the parents of the directories just created."""
    _fsync_dir(final.parent)
    for directory in created:
        _fsync_dir(directory.parent)


def _durable_new(final: Path, created: list[Path]) -> None:
    """A new file at its final name made durable: the file, then its directories."""
    try:
        _fsync_file(final)
        _fsync_dirs(final, created)
    except OSError as exc:
        raise _as_storage_error(exc) from exc


def place_new_file(temporary: Path, relative: str) -> tuple[Path, Future] | None:
    """``commit_file`` for a new instance with its fsyncs running on a helper thread: the file
    is renamed to its final name now and the returned future completes when the file and its
    directories are durable (or raises StorageFull / OSError).  The caller must wait for it
    before anything that depends on the file is committed or acknowledged.  None when the
    final name exists (a resend: use ``commit_file``); nothing is moved then."""
    global _fsyncs
    final = absolute_path(relative)
    try:
        created = _make_parents(final)
        if final.exists():
            return None
        os.replace(temporary, final)
    except OSError as exc:
        discard(temporary)
        raise _as_storage_error(exc) from exc
    if _fsyncs is None:
        _fsyncs = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-fsync")
    return final, _fsyncs.submit(_durable_new, final, created)


def sweep_incoming(older_than_seconds: float) -> int:
    """Delete files left in the incoming directory by a crash (never indexed, never
    acknowledged): those not written to for ``older_than_seconds``.  A file being received is
    written to at least every network timeout, so a live transfer is never touched.  Returns
    how many were deleted."""
    root = storage_root() / ".incoming"
    if not root.is_dir():
        return 0
    limit = time.time() - older_than_seconds
    removed = 0
    for entry in os.scandir(root):
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < limit:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


def discard(path: Path | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def data_set_offset(fh) -> int:
    """Where the data set of a stored file begins: after the preamble, 'DICM' and the File Meta
    Information group, whose length its first element (0002,0000) gives (PS3.10 7.1)."""
    fh.seek(0)
    head = fh.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        raise ValueError("not a DICOM file with File Meta Information group length")
    return 144 + int.from_bytes(head[140:144], "little")


def sha256_from(path: Path, offset: int) -> str:
    """SHA-256 (hex) of a file's bytes from ``offset`` to its end, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def data_set_sha256(path: Path) -> str:
    """SHA-256 of a stored file's data set: the value the DICOM acceptor computes while it
    receives the data set (the File Meta Information, which we write, is not part of it)."""
    with open(path, "rb") as fh:
        offset = data_set_offset(fh)
    return sha256_from(path, offset)


REPLACED_DIR = ".replaced"  # replaced versions (STORE_OVERWRITE_POLICY=replace) until archived


def set_aside(relative: str) -> str:
    """Move a stored file out of the way, durably, to ``.replaced/<Study>/<Series>/<SOP>.<ns>.dcm``
    (UIDs and digits only); returns its new relative path."""
    source = absolute_path(relative)
    kept = f"{REPLACED_DIR}/{relative.removesuffix('.dcm')}.{time.time_ns()}.dcm"
    target = storage_root() / kept
    try:
        top = storage_root() / REPLACED_DIR
        if not top.exists():
            top.mkdir(exist_ok=True)
            _fsync_dir(top.parent)
        created = _make_parents(target)
        os.replace(source, target)
        _fsync_dirs(target, created)
        _fsync_dir(source.parent)
    except OSError as exc:
        raise _as_storage_error(exc) from exc
    return kept


def put_back(kept: str, relative: str) -> None:
    """Undo ``set_aside``: the kept version back at its place (durably)."""
    target = absolute_path(relative)
    os.replace(storage_root() / kept, target)
    _fsync_dir(target.parent)


def remove_instance_file(relative: str) -> None:
    """Delete a stored file (retention purge only: never before storage commitment)."""
    discard(absolute_path(relative))
