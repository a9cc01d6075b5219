"""Versioned JSON schemas of our own files (checkpoint manifest, run index, history lines) and their validation.

Every parse goes through our own checks, so a damaged file gives a :class:`CorruptRunError` that names the
file and the reason, never a dependency's traceback, and a file from a newer trainkeep gives an
:class:`IncompatibleRunError`. Nothing here is ever unpickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from trainkeep import __version__
from trainkeep.errors import CorruptRunError, IncompatibleRunError, InvalidCheckpointNameError
from trainkeep.layout import validate_checkpoint_name, validate_relative_path

MANIFEST_SCHEMA = "trainkeep.manifest"
RUN_INDEX_SCHEMA = "trainkeep.run"
SCHEMA_VERSION = 1
CHECKSUM_ALGORITHM = "xxh3_128"
RUN_STATUSES = ("running", "finished", "failed")


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint: its path relative to the checkpoint directory, size and checksum."""

    path: str
    size: int
    checksum: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "checksum": self.checksum}


@dataclass(frozen=True)
class Manifest:
    """The commit record of one checkpoint. Its presence (valid) is what makes the checkpoint exist."""

    name: str
    round: int
    time: float
    metrics: dict[str, Any]
    files: tuple[FileEntry, ...]
    writer_version: str = __version__

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "version": SCHEMA_VERSION,
            "trainkeep_version": self.writer_version,
            "name": self.name,
            "round": self.round,
            "time": self.time,
            "checksum_algorithm": CHECKSUM_ALGORITHM,
            "metrics": self.metrics,
            "files": [f.to_dict() for f in self.files],
        }


@dataclass(frozen=True)
class IndexEntry:
    """A committed checkpoint as listed in the run index."""

    name: str
    round: int
    time: float
    size: int
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "round": self.round, "time": self.time, "size": self.size,
                "metrics": self.metrics}

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> IndexEntry:
        return cls(manifest.name, manifest.round, manifest.time, manifest.size, manifest.metrics)


@dataclass
class RunIndex:
    """The run index: a cache of the committed checkpoints, rebuilt from the manifests when missing."""

    checkpoint_config: dict[str, Any]
    next_round: int = 0
    status: str = "running"
    created: float = 0.0
    updated: float = 0.0
    checkpoints: list[IndexEntry] = field(default_factory=list)
    retiring: list[str] = field(default_factory=list)
    writer_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RUN_INDEX_SCHEMA,
            "version": SCHEMA_VERSION,
            "trainkeep_version": self.writer_version,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "next_round": self.next_round,
            "checkpoint_config": self.checkpoint_config,
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "retiring": list(self.retiring),
        }


def encode(document: dict[str, Any]) -> bytes:
    """Encode one of our documents as UTF-8 JSON (NaN and ±inf are kept as JSON5-style tokens)."""
    return (json.dumps(document, indent=1, allow_nan=True) + "\n").encode()


def _load(raw: bytes, path: str, schema: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptRunError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptRunError(path, f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != schema:
        raise CorruptRunError(path, f"schema is {data.get('schema')!r}, expected {schema!r}")
    version = data.get("version")
    if not _is_int(version):
        raise CorruptRunError(path, f"'version' must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise IncompatibleRunError(
            f"{path} was written by trainkeep {data.get('trainkeep_version', '?')} with format version "
            f"{version}; this trainkeep ({__version__}) reads versions up to {SCHEMA_VERSION}. Upgrade trainkeep."
        )
    return data


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_checksum(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(data: dict[str, Any], key: str, check, what: str, path: str) -> Any:
    if key not in data:
        raise CorruptRunError(path, f"missing field {key!r}")
    value = data[key]
    if not check(value):
        raise CorruptRunError(path, f"field {key!r} must be {what}, got {value!r}")
    return value


def _name(value: Any, path: str) -> str:
    try:
        return validate_checkpoint_name(value)
    except InvalidCheckpointNameError as exc:
        raise CorruptRunError(path, f"bad checkpoint name: {exc}") from None


def parse_manifest(raw: bytes, path: str) -> Manifest:
    """Parse and validate a manifest file's bytes.

    Raises:
        CorruptRunError for anything malformed; IncompatibleRunError for a newer format version.
    """
    data = _load(raw, path, MANIFEST_SCHEMA)
    name = _name(_field(data, "name", lambda v: isinstance(v, str), "a string", path), path)
    round_ = _field(data, "round", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path)
    time_ = _field(data, "time", _is_time, "a number", path)
    metrics = _field(data, "metrics", lambda v: isinstance(v, dict), "an object", path)
    algo = data.get("checksum_algorithm", CHECKSUM_ALGORITHM)
    if algo != CHECKSUM_ALGORITHM:
        raise CorruptRunError(path, f"unknown checksum_algorithm {algo!r}")
    files_raw = _field(data, "files", lambda v: isinstance(v, list), "a list", path)
    files: list[FileEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(files_raw):
        if not isinstance(item, dict):
            raise CorruptRunError(path, f"files[{i}] must be an object, got {item!r}")
        rel = _field(item, "path", lambda v: isinstance(v, str), "a string", path)
        try:
            validate_relative_path(rel)
        except InvalidCheckpointNameError as exc:
            raise CorruptRunError(path, f"files[{i}]: {exc}") from None
        if rel in seen:
            raise CorruptRunError(path, f"files[{i}]: {rel!r} is listed twice")
        seen.add(rel)
        size = _field(item, "size", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path)
        checksum = _field(item, "checksum", _is_checksum, "a 32-character hex string", path)
        files.append(FileEntry(rel, size, checksum))
    return Manifest(name, round_, float(time_), metrics, tuple(files), str(data.get("trainkeep_version", "?")))


def parse_run_index(raw: bytes, path: str) -> RunIndex:
    """Parse and validate a run index file's bytes.

    Raises:
        CorruptRunError for anything malformed; IncompatibleRunError for a newer format version.
    """
    data = _load(raw, path, RUN_INDEX_SCHEMA)
    config = _field(data, "checkpoint_config", lambda v: isinstance(v, dict), "an object", path)
    next_round = _field(data, "next_round", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path)
    status = _field(data, "status", lambda v: v in RUN_STATUSES, f"one of {RUN_STATUSES}", path)
    created = _field(data, "created", _is_time, "a number", path)
    updated = _field(data, "updated", _is_time, "a number", path)
    entries_raw = _field(data, "checkpoints", lambda v: isinstance(v, list), "a list", path)
    entries: list[IndexEntry] = []
    for i, item in enumerate(entries_raw):
        if not isinstance(item, dict):
            raise CorruptRunError(path, f"checkpoints[{i}] must be an object")
        entries.append(IndexEntry(
            _name(_field(item, "name", lambda v: isinstance(v, str), "a string", path), path),
            _field(item, "round", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path),
            float(_field(item, "time", _is_time, "a number", path)),
            _field(item, "size", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path),
            _field(item, "metrics", lambda v: isinstance(v, dict), "an object", path),
        ))
    retiring = data.get("retiring", [])
    if not isinstance(retiring, list):
        raise CorruptRunError(path, "field 'retiring' must be a list")
    return RunIndex(config, next_round, status, float(created), float(updated), entries,
                    [_name(n, path) for n in retiring], str(data.get("trainkeep_version", "?")))


def history_line(round_index: int, time_: float, metrics: dict[str, Any], checkpoint: str | None) -> bytes:
    """Encode one completed round as a line of ``history.jsonl``."""
    return (json.dumps({"round": round_index, "time": time_, "checkpoint": checkpoint, "metrics": metrics},
                       separators=(",", ":"), allow_nan=True) + "\n").encode()


def parse_history(raw: bytes, parts: Sequence[bytes] = ()) -> tuple[list[dict[str, Any]], int]:
    """Parse ``history.jsonl`` and the parts of a history kept in parts; return the rows and the byte length of
    the valid prefix of ``raw``.

    A torn last line (a crash while appending) ends the valid prefix; rows are sorted by round, and a round
    that appears twice keeps its last occurrence (``raw`` first, then ``parts`` in log order). Each part is a
    whole object written at once (object stores); a line that does not parse ends that part.
    """
    rows: dict[int, dict[str, Any]] = {}
    valid = _parse_history_lines(raw, rows)
    for part in parts:
        _parse_history_lines(part, rows)
    return sorted(rows.values(), key=lambda r: r["round"]), valid


def _parse_history_lines(raw: bytes, rows: dict[int, dict[str, Any]]) -> int:
    valid = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not (isinstance(row, dict) and _is_int(row.get("round")) and isinstance(row.get("metrics"), dict)):
            break
        rows[row["round"]] = row
        valid += len(line)
    return valid
