"""Why a path cannot be used, as one line naming it: for every command's file errors.

Each check returns ``"path: reason"`` or None and creates nothing, so a command can
refuse bad input before it has done any work (a replay that fails on its output
file after an hour of input is worse than one that never starts).
"""

from __future__ import annotations

import errno
import io
import os
import sqlite3
import stat
from pathlib import Path
from typing import IO


class OutputError(Exception):
    """Writing an output file (``--events``, ``--alerts``) failed; the message names it."""


class _NamedOutput(io.TextIOWrapper):
    """A text file whose write, flush and close failures are OutputErrors naming it.

    Buffered text reaches the disk later than the ``write`` that produced it, so a
    full disk surfaces in whatever flushes next (often the close at the end of a
    ``with``), as an OSError without a file name; this puts the name back.
    """

    def _failed(self, err: OSError) -> OutputError:
        return OutputError(f"{self.name}: cannot write: {err.strerror or err}")

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError as err:
            raise self._failed(err) from None

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as err:
            raise self._failed(err) from None

    def close(self) -> None:
        try:
            super().close()
        except OSError as err:
            raise self._failed(err) from None


def open_output(path: Path) -> IO[str]:
    """``path`` opened for writing text (truncated); every later failure names it."""
    return _NamedOutput(open(path, "wb"), encoding="utf-8")  # the caller closes it


def describe(err: OSError) -> str:
    """``path: reason`` for an OSError, without the ``[Errno N]`` noise."""
    reason = err.strerror or str(err)
    return f"{err.filename}: {reason}" if err.filename is not None else reason


def check_input(path: Path) -> str | None:
    """Why the capture file at ``path`` cannot be read, or None."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"{path}: no such file"
    except OSError as err:  # a symlink loop, a directory on the way we may not enter
        return f"{path}: cannot read: {err.strerror or err}"
    if stat.S_ISDIR(info.st_mode):
        return f"{path}: is a directory, not a capture file"
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        return f"{path}: cannot read: {err.strerror or err}"
    return None


def check_output(path: Path) -> str | None:
    """Why an output file cannot be written at ``path``, or None. Creates nothing.

    A regular file is opened for appending and given a zero-length write, which is
    what finds a read-only filesystem (even for root) or a pseudo-file such as
    /proc/version that opens but refuses every write. The file is never truncated here; one this
    check created is removed again.
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except OSError as err:
        return f"{path}: cannot write: {err.strerror or err}"
    if info is not None and stat.S_ISDIR(info.st_mode):
        return f"{path}: is a directory"
    if info is not None and not stat.S_ISREG(info.st_mode):
        return None  # a pipe, a terminal, /dev/null: write errors are caught as they come
    if info is None and not path.parent.is_dir():
        if (blocker := blocking_file(path)) is not None:
            return f"{path}: cannot write: {blocker} is a file, not a directory"
        return f"{path}: cannot write: directory {path.parent} does not exist"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as err:
        return f"{path}: cannot write: {err.strerror or err}"
    try:
        os.write(fd, b"")
    except OSError as err:
        return f"{path}: cannot write: {err.strerror or err}"
    finally:
        os.close(fd)
        if info is None:
            try:
                os.unlink(path)
            except OSError as err:
                if err.errno != errno.ENOENT:
                    raise
    return None


def check_special(path: Path) -> str | None:
    """Why ``path`` is neither a regular file nor a directory (a device, a FIFO), or None.

    For inputs read whole: ``/dev/zero`` as a rule pack or a baseline would be read
    until memory runs out. A path that cannot be looked at is left to the reader.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"{path}: not a regular file"


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path``; ValueError naming the limit if it holds more (or never ends)."""
    with path.open("rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit >> 20} MiB")
    return data


def blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a directory, else None."""
    for candidate in path.parents:
        try:
            info = candidate.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None  # unreadable: the operation itself reports it
        return None if stat.S_ISDIR(info.st_mode) else candidate
    return None


def check_creatable(path: Path) -> str | None:
    """Why a file or directory cannot be made at ``path`` for a file in the way, or None.

    ``mkdir(parents=True)`` reports a file where a directory should be as ``File
    exists`` or ``Not a directory``; this names the file that is in the way.
    """
    blocker = blocking_file(path)
    if blocker is None:
        return None
    return f"{path}: cannot create: {blocker} is a file, not a directory"


def describe_mkdir(err: OSError) -> str:
    """``describe`` for an error from making ``path``'s directories and then ``path``."""
    if isinstance(err, FileExistsError | NotADirectoryError) and err.filename is not None:
        path = Path(os.fsdecode(err.filename))
        if isinstance(err, FileExistsError):
            try:
                info = os.stat(path)
            except FileNotFoundError:
                return f"{path}: a symbolic link to nothing"
            except OSError as stat_err:  # a symlink loop
                return f"{path}: {stat_err.strerror or stat_err}"
            if not stat.S_ISDIR(info.st_mode):
                return f"{path}: is a file, not a directory"
        if (problem := check_creatable(path)) is not None:
            return problem
    return describe(err)


def sqlite_tables(path: Path) -> set[str]:
    """The table names of the SQLite file at ``path``, opened read-only (sqlite3.Error
    for a file that is not one)."""
    conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def foreign_sqlite(path: Path, table: str, what: str) -> str | None:
    """Why the file at ``path`` is not ``what`` (has no ``table``), or None.

    None too when there is no file yet, or an empty one: opening creates the schema.
    Without this, the collector or the journal would add its tables to whatever
    SQLite file it was pointed at (the sensor's own store, say) and then fail, or
    report nothing, on a database that is not its own. Opens read-only.
    """
    try:
        if path.is_dir():
            return f"{path}: is a directory, not {what}"
        if not path.exists() or path.stat().st_size == 0:
            return None
        tables = sqlite_tables(path)
    except sqlite3.Error as err:
        return f"{path}: not {what}: {err}"
    except OSError as err:
        return describe(err)
    if table not in tables:
        return f"{path}: not {what} (an SQLite file without its tables)"
    return None
