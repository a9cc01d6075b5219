"""The scan of a local source directory before it is reported: what will be stored, or why nothing can be.

A report copies regular files only. The scan decides, before anything is written, which files those are and
refuses a directory that could not be stored and restored exactly:

- a name that some store or the manifest cannot hold unchanged (see ``layout.file_name_problem``);
- an entry that is not a regular file or a directory after following symlinks (a FIFO would block the copy
  forever, a device would be stored empty or copied without end, a socket cannot be read);
- a dangling symlink, or a symlink to a directory that contains it (a loop);
- a directory holding a trainkeep run (``trainkeep_run.json`` or ``.trainkeep/``): reporting the run, its
  storage path or an ancestor would copy the run into itself, doubling it each round.

Symlinks to regular files and to directories are followed: the target's bytes are stored under the link's name.
Only this module's dependencies are the standard library, ``layout`` and ``errors``.
"""

from __future__ import annotations

import errno as _errno
import os
import stat

from trainkeep._internal.core.layout import (
    INTERNAL_DIR,
    RUN_INDEX_NAME,
    file_name_problem,
    file_path_problem,
    is_skipped_file,
)
from trainkeep.errors import (
    CheckpointNotADirectoryError,
    CheckpointNotFoundError,
    UnsupportedCheckpointFileError,
)

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
ALLOWED = ("only regular files and directories (symlinks to them are followed) with UTF-8 names without "
           "control characters or '\\' can be checkpointed")


def scan_source(src_dir: str) -> list[str]:
    """Return the relative paths ('/'-separated) of the files a report of local directory ``src_dir`` stores.

    Files of ours (a manifest, temp files) are left out. Reads only; writes nothing.

    Raises:
        UnsupportedCheckpointFileError (a ValueError) naming the first entry that cannot be stored and
        restored as it is, and why; CheckpointNotFoundError (a FileNotFoundError) / CheckpointNotADirectoryError
        (a NotADirectoryError) when ``src_dir`` is not a directory.
    """
    try:
        info = os.stat(src_dir)
    except FileNotFoundError:
        raise CheckpointNotFoundError(_errno.ENOENT, "checkpoint directory does not exist", src_dir) from None
    if not stat.S_ISDIR(info.st_mode):
        raise CheckpointNotADirectoryError(_errno.ENOTDIR, "checkpoint path is not a directory", src_dir)
    out: list[str] = []
    _walk(src_dir, "", frozenset({(info.st_dev, info.st_ino)}), out)
    return out


def _walk(directory: str, prefix: str, ancestors: frozenset[tuple[int, int]], out: list[str]) -> None:
    """Append the files under ``directory`` (relative path ``prefix``) to ``out``: its files first, sorted,
    then each subdirectory in name order. ``ancestors`` are the (device, inode) of the directories above."""
    names = sorted(os.listdir(directory))
    _refuse_run(directory, names)
    subdirs: list[tuple[str, os.stat_result]] = []
    for name in names:
        full = os.path.join(directory, name)
        info = _resolve(full)
        is_dir = stat.S_ISDIR(info.st_mode)
        problem = file_name_problem(name, is_dir=is_dir)
        if problem is None and not is_dir:
            problem = _kind_problem(info)
        if problem is not None:
            raise UnsupportedCheckpointFileError(full, f"{problem}; {ALLOWED}")
        if is_dir:
            subdirs.append((name, info))
            continue
        rel = prefix + name
        if is_skipped_file(rel):
            continue
        too_long = file_path_problem(rel)
        if too_long is not None:
            raise UnsupportedCheckpointFileError(full, too_long)
        out.append(rel)
    for name, info in subdirs:
        key = (info.st_dev, info.st_ino)
        full = os.path.join(directory, name)
        if key in ancestors:
            raise UnsupportedCheckpointFileError(
                full, f"it is a symlink to {os.path.realpath(full)!r}, a directory that contains it (a loop)")
        _walk(full, f"{prefix}{name}/", ancestors | {key}, out)


def _resolve(full: str) -> os.stat_result:
    """Return the status of ``full`` with symlinks followed; refuse dangling links and loops by name."""
    try:
        return os.stat(full)
    except OSError as exc:
        if exc.errno == _errno.ELOOP:
            reason = "it is a symlink loop"
        elif exc.errno == _errno.ENOENT and os.path.islink(full):
            reason = f"it is a dangling symlink (its target {os.readlink(full)!r} does not exist)"
        else:
            reason = f"it cannot be examined ({exc.strerror or exc})"
        raise UnsupportedCheckpointFileError(full, reason) from None


def _kind_problem(info: os.stat_result) -> str | None:
    """Return why an entry that is not a directory cannot be stored (None for a regular file)."""
    if stat.S_ISREG(info.st_mode):
        return None
    kind = next((what for test, what in _KINDS if test(info.st_mode)), "not a regular file")
    return f"it is {kind}, not a regular file or directory"


def _refuse_run(directory: str, names: list[str]) -> None:
    """Refuse a directory that holds a trainkeep run: it would be copied into itself, doubling each round."""
    marker = next((n for n in (RUN_INDEX_NAME, INTERNAL_DIR) if n in names), None)
    if marker is not None:
        raise UnsupportedCheckpointFileError(
            directory,
            f"it holds a trainkeep run ({marker!r}), so the checkpoint would contain the run itself and grow "
            "each round; report a directory of its own, outside the run's storage path",
        )


def is_linked(src_dir: str, relative_path: str) -> bool:
    """Return True when ``relative_path`` under ``src_dir`` passes through a symlink (the file or a directory).

    Such a file belongs to someone else: a source handed over (``put_tree(move=True)``) must copy it, never
    rename or delete it, or the user's file outside the checkpoint directory would be moved away.
    """
    path = src_dir
    for part in relative_path.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            return True
    return False
