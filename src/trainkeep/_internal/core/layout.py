"""Every on-storage name trainkeep uses, and the validation of names that users supply.

Layout of a run::

    <storage_path>/<name>/
      trainkeep_run.json            the run index (a cache: rebuilt from manifests when missing or corrupt)
      history.jsonl                 one JSON line per completed round, append-only
      history.jsonl.parts/          the same log on stores that cannot append: one object per flush
      .trainkeep/lock               the single-writer lock
      .trainkeep/intent-<ckpt>.json the record that a checkpoint directory is being written by us
      <checkpoint name>/            the workers' files
        .trainkeep_manifest.json    the commit record; written last
"""

from __future__ import annotations

import os
import re

from trainkeep.errors import InvalidCheckpointNameError

RUN_INDEX_NAME = "trainkeep_run.json"
HISTORY_NAME = "history.jsonl"
INTERNAL_DIR = ".trainkeep"
LOCK_NAME = "lock"
MANIFEST_NAME = ".trainkeep_manifest.json"
INTENT_PREFIX = "intent-"
TEMP_SUFFIX = ".trainkeep_tmp"
LOG_PARTS_SUFFIX = ".parts"  # <log>.parts/ holds the parts of a log on stores that cannot append
METADATA_NAME = ".metadata.json"
MAX_NAME_LENGTH = 100
MAX_NAME_BYTES = 200  # in UTF-8: with the intent record's prefix, suffix and temp suffix, within NAME_MAX (255)
MAX_FILE_NAME_BYTES = 255  # NAME_MAX of local filesystems: a longer file name could not be restored to a disk
MAX_FILE_PATH_BYTES = 768  # with the run's prefix and the checkpoint's name, an S3 key stays within 1024 bytes
# C0 and C1 controls, DEL and the Unicode line separators: they break lines of output and some object stores
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

RESERVED_PREFIXES = (".trainkeep", "trainkeep_run", "history.jsonl")


def default_checkpoint_name(round_index: int) -> str:
    """Return the default directory name of the checkpoint of round ``round_index``."""
    return f"checkpoint_{round_index:06d}"


def _check_component(kind: str, name: object, reserved: bool = True) -> str:
    if not isinstance(name, str):
        raise InvalidCheckpointNameError(f"{kind} must be a string, got {name!r} ({type(name).__name__})")
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"it has {len(name)} characters (at most {MAX_NAME_LENGTH} are allowed)"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"it is {len(name.encode('utf-8', 'surrogatepass'))} bytes long in UTF-8 (at most {MAX_NAME_BYTES})"
    elif "/" in name or "\\" in name:
        problem = "it contains a path separator ('/' or '\\')"
    elif "\x00" in name:
        problem = "it contains a NUL character"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "it contains a control character"
    elif name in (".", "..") or ".." in name:
        problem = "it contains '..'"
    elif name != name.strip():
        problem = "it starts or ends with whitespace"
    elif reserved and name.startswith(RESERVED_PREFIXES):
        problem = f"it starts with a reserved prefix ({', '.join(repr(p) for p in RESERVED_PREFIXES)})"
    elif reserved and name.endswith(TEMP_SUFFIX):
        problem = f"it ends with {TEMP_SUFFIX!r}, the suffix of trainkeep's temporary files"
    elif name.startswith("."):
        problem = "it starts with '.' (hidden names are reserved)"
    if problem:
        raise InvalidCheckpointNameError(
            f"{kind} {name!r} is not allowed: {problem}. Use a single directory name of at most "
            f"{MAX_NAME_LENGTH} characters without '/', '\\', '..', NUL or a leading '.'"
        )
    return name


def validate_checkpoint_name(name: object) -> str:
    """Return ``name`` if it is a valid checkpoint directory name.

    Raises:
        InvalidCheckpointNameError (a ValueError) naming the value and the rule it breaks.
    """
    return _check_component("checkpoint_dir_name", name)


def validate_run_name(name: object) -> str:
    """Return ``name`` if it is a valid run name: a single directory name, as for checkpoints.

    The prefixes reserved inside a run directory are allowed, so a default name (``trainkeep_run-...``) can be
    passed back to resume its run.

    Raises:
        InvalidCheckpointNameError (a ValueError) naming the value and the rule it breaks.
    """
    return _check_component("RunConfig.name", name, reserved=False)


def validate_relative_path(path: object) -> str:
    """Return ``path`` if it is a safe relative file path inside a checkpoint (as recorded in a manifest).

    Raises:
        InvalidCheckpointNameError when it is absolute, escapes with ``..``, or holds NUL or backslashes.
    """
    if not isinstance(path, str) or not path:
        raise InvalidCheckpointNameError(f"file path must be a non-empty string, got {path!r}")
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise InvalidCheckpointNameError(
            f"file path {path!r} is not a safe relative path inside a checkpoint"
        )
    return path


def is_reserved_file(relative_path: str) -> bool:
    """Return True for files of ours that must not be copied as user files (manifest, temp files)."""
    base = relative_path.rsplit("/", 1)[-1]
    return base.startswith(".trainkeep") or base.endswith(TEMP_SUFFIX)


def intent_name(checkpoint_name: str) -> str:
    """Return the file name of the intent record for ``checkpoint_name``."""
    return f"{INTENT_PREFIX}{checkpoint_name}.json"


def file_name_problem(name: str, is_dir: bool = False) -> str | None:
    """Return why one component of a checkpoint file's path cannot round-trip through every store, or None.

    A name that passes is stored, listed, verified and restored unchanged on a local disk, fsspec's memory
    filesystem and S3, and printed on one line by the CLI.
    """
    if name in ("", ".", "..") or "/" in name:
        return f"{name!r} is not a usable file name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return (f"its name is not valid UTF-8 (bytes {os.fsencode(name)!r}); manifests and object stores "
                "hold UTF-8 names only")
    if "\\" in name:
        return "its name contains a backslash ('\\'), which object stores and manifests treat as a separator"
    control = _CONTROL_RE.search(name)
    if control:
        return f"its name contains the control character {control.group()!r}"
    if len(encoded) > MAX_FILE_NAME_BYTES:
        return f"its name is {len(encoded)} bytes long in UTF-8 (at most {MAX_FILE_NAME_BYTES})"
    reserved = name.startswith(".trainkeep") or name.endswith(TEMP_SUFFIX)
    if reserved and (is_dir or not is_skipped_file(name)):  # a directory named like our manifest would block it
        return (f"its name starts with '.trainkeep' or ends with {TEMP_SUFFIX!r}, which are reserved for "
                "trainkeep's own files")
    return None


def file_path_problem(relative_path: str) -> str | None:
    """Return why a checkpoint file's relative path (names checked one by one already) is refused, or None."""
    size = len(relative_path.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_PATH_BYTES:
        return f"its path inside the checkpoint is {size} bytes long in UTF-8 (at most {MAX_FILE_PATH_BYTES})"
    return None


def is_skipped_file(relative_path: str) -> bool:
    """Return True for a source file that a report leaves out: a manifest or a temp file of ours.

    A committed checkpoint can be reported again (its manifest is not copied), and a temp file that a crash
    left behind (ours are hidden names ending in the temp suffix) is debris, not data.
    """
    base = relative_path.rsplit("/", 1)[-1]
    return base == MANIFEST_NAME or (base.startswith(".") and base.endswith(TEMP_SUFFIX))
