"""Versioned JSON schemas of our own files (checkpoint manifest, run index) and their validation.

Every parse goes through our own checks, so a damaged file gives a :class:`CorruptRunError` that names the
file and the reason, never a dependency's traceback, and a file from a newer trainkeep gives an
:class:`IncompatibleRunError`. Nothing here is ever unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from trainkeep._internal.core.layout import validate_checkpoint_name, validate_relative_path
from trainkeep._internal.core.validation_state import (
    VALIDATED,
    merge_validated,
    merged_metrics,
    parse_validation,
)
from trainkeep._version import __version__
from trainkeep.errors import CorruptRunError, IncompatibleRunError, InvalidCheckpointNameError

MANIFEST_SCHEMA = "trainkeep.manifest"
RUN_INDEX_SCHEMA = "trainkeep.run"
SCHEMA_VERSION = 1
# The run index's version 2 adds the optional per-entry field "corrupt". An index is written as version 2 only
# while an entry carries that mark, so older trainkeep versions (which read version 1 and would drop the mark,
# then let retention delete the checkpoint) refuse such a run instead; every other run stays version 1.
# Version 3 adds the optional per-entry field "validation", on the same terms: a trainkeep that reads up to
# version 2 would rebuild the index without it, rank validated checkpoints by their reported metrics again and
# delete pending ones, so an index is version 3 only while an entry carries a validation state.
CORRUPT_MARK_VERSION = 2
RUN_INDEX_VERSION = 3
CHECKSUM_ALGORITHM = "xxh3_128"
RUN_STATUSES = ("running", "finished", "failed")
_INDEX_FIELDS = frozenset({"schema", "version", "trainkeep_version", "status", "created", "updated", "next_round",
                           "checkpoint_config", "checkpoints", "retiring", "history_mark"})
_ENTRY_FIELDS = frozenset({"name", "round", "time", "size", "metrics", "corrupt", "validation"})
_MARK_FIELDS = frozenset({"bytes", "round"})


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
    """A committed checkpoint as listed in the run index; ``corrupt`` is why it failed verification, if it did.

    ``validation`` is its asynchronous validation, when one was requested: ``{"status": one of
    VALIDATION_STATUSES, "metrics": what the validation returned, "task": the report's ValidationTaskConfig as
    JSON (or None), "error": why it failed (optional)}``. ``metrics`` are the round's reported metrics with a
    successful validation's metrics merged in (``validation_state.merge_validated``): what ranking and readers
    see.
    """

    name: str
    round: int
    time: float
    size: int
    metrics: dict[str, Any]
    corrupt: str | None = None
    validation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        document = {"name": self.name, "round": self.round, "time": self.time, "size": self.size,
                    "metrics": self.metrics}
        if self.corrupt is not None:
            document["corrupt"] = self.corrupt
        if self.validation is not None:
            document["validation"] = self.validation
        return document

    def agrees_with(self, manifest: Manifest) -> bool:
        """Return True when this entry says what ``manifest`` says (name, round, time, size, metrics)."""
        return (self.name, self.round, self.time, self.size) == (manifest.name, manifest.round, manifest.time,
                                                                 manifest.size) and _same_json(
            self.metrics, merged_metrics(manifest.metrics, self.validation))

    def with_validation(self, validation: dict[str, Any]) -> IndexEntry:
        """Return this entry in the validation state ``validation``, its metrics merged when VALIDATED.

        Called on an entry that was not validated yet (its metrics are the reported ones).

        Raises:
            InvalidMetricsError when the validation's metrics are not plain JSON values.
        """
        metrics = self.metrics
        if validation.get("status") == VALIDATED:
            metrics = merge_validated(self.metrics, validation.get("metrics") or {})
        return IndexEntry(self.name, self.round, self.time, self.size, metrics, self.corrupt, validation)

    @classmethod
    def from_manifest(cls, manifest: Manifest, corrupt: str | None = None,
                      validation: dict[str, Any] | None = None) -> IndexEntry:
        return cls(manifest.name, manifest.round, manifest.time, manifest.size,
                   merged_metrics(manifest.metrics, validation), corrupt, validation)


@dataclass(frozen=True)
class HistoryMark:
    """A point of ``history.jsonl`` that the run index vouches for, so that opening a run reads only what follows.

    ``bytes``: the first ``bytes`` bytes of the history were whole, durable lines when the index was written;
    ``round``: every committed checkpoint of an earlier round has its row within them. Opening a run checks that
    the line ending at ``bytes`` is a whole history row and reads only from there (see ``trainkeep._internal.engine.history``); a
    mark that fails the check is ignored and the whole history is read, as for a run without a mark.
    """

    bytes: int
    round: int


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
    history_mark: HistoryMark | None = None

    def to_dict(self) -> dict[str, Any]:
        marked = any(c.corrupt is not None for c in self.checkpoints)
        validated = any(c.validation is not None for c in self.checkpoints)
        document = {
            "schema": RUN_INDEX_SCHEMA,
            "version": RUN_INDEX_VERSION if validated else CORRUPT_MARK_VERSION if marked else SCHEMA_VERSION,
            "trainkeep_version": self.writer_version,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "next_round": self.next_round,
            "checkpoint_config": self.checkpoint_config,
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "retiring": list(self.retiring),
        }
        if self.history_mark is not None:
            document["history_mark"] = {"bytes": self.history_mark.bytes, "round": self.history_mark.round}
        return document


def encode(document: dict[str, Any]) -> bytes:
    """Encode one of our documents as UTF-8 JSON (NaN and ±inf are kept as JSON5-style tokens)."""
    return (json.dumps(document, indent=1, allow_nan=True) + "\n").encode()


def _same_json(a: Any, b: Any) -> bool:
    """Return True when ``a`` and ``b`` encode to the same JSON (so NaN equals NaN)."""
    return bool(json.dumps(a, sort_keys=True, allow_nan=True) == json.dumps(b, sort_keys=True, allow_nan=True))


def _load(raw: bytes, path: str, schema: str, max_version: int = SCHEMA_VERSION) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptRunError(path, f"not valid JSON ({exc})") from None
    except RecursionError:  # e.g. 100,000 nested "[": the stdlib parser recurses once per level
        raise CorruptRunError(path, "not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise CorruptRunError(path, f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != schema:
        raise CorruptRunError(path, f"schema is {data.get('schema')!r}, expected {schema!r}")
    version = data.get("version")
    if not _is_int(version):
        raise CorruptRunError(path, f"'version' must be an integer, got {version!r}")
    if version > max_version:
        raise IncompatibleRunError(
            f"{path} was written by trainkeep {data.get('trainkeep_version', '?')} with format version "
            f"{version}; this trainkeep ({__version__}) reads versions up to {max_version}. Upgrade trainkeep."
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
    """Parse and validate a run index file's bytes; anything not exactly valid is refused.

    Refused (so that the caller rebuilds the index from the manifests): unknown fields, fields of the wrong type,
    a checkpoint listed twice (by name or by round), and JSON nested too deeply to parse.

    Raises:
        CorruptRunError for anything malformed; IncompatibleRunError for a newer format version.
    """
    data = _load(raw, path, RUN_INDEX_SCHEMA, RUN_INDEX_VERSION)
    _no_unknown_fields(data, _INDEX_FIELDS, "", path)
    config = _field(data, "checkpoint_config", lambda v: isinstance(v, dict), "an object", path)
    next_round = _field(data, "next_round", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path)
    status = _field(data, "status", lambda v: v in RUN_STATUSES, f"one of {RUN_STATUSES}", path)
    created = _field(data, "created", _is_time, "a number", path)
    updated = _field(data, "updated", _is_time, "a number", path)
    writer = data.get("trainkeep_version", "?")
    if not isinstance(writer, str):
        raise CorruptRunError(path, f"field 'trainkeep_version' must be a string, got {writer!r}")
    entries_raw = _field(data, "checkpoints", lambda v: isinstance(v, list), "a list", path)
    entries = [_index_entry(i, item, path) for i, item in enumerate(entries_raw)]
    _no_duplicates(entries, path)
    retiring = data.get("retiring", [])
    if not isinstance(retiring, list):
        raise CorruptRunError(path, "field 'retiring' must be a list")
    return RunIndex(config, next_round, status, float(created), float(updated), entries,
                    [_name(n, path) for n in retiring], writer, _history_mark(data, path))


def _history_mark(data: dict[str, Any], path: str) -> HistoryMark | None:
    if "history_mark" not in data:  # written before trainkeep kept marks: the next index write adds one
        return None
    mark = data["history_mark"]
    if not isinstance(mark, dict):
        raise CorruptRunError(path, f"field 'history_mark' must be an object, got {mark!r}")
    _no_unknown_fields(mark, _MARK_FIELDS, "history_mark: ", path)
    size = _field(mark, "bytes", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path)
    round_ = _field(mark, "round", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path)
    return HistoryMark(size, round_)


def _index_entry(i: int, item: Any, path: str) -> IndexEntry:
    if not isinstance(item, dict):
        raise CorruptRunError(path, f"checkpoints[{i}] must be an object")
    _no_unknown_fields(item, _ENTRY_FIELDS, f"checkpoints[{i}]: ", path)
    corrupt = item.get("corrupt")
    if corrupt is not None and not (isinstance(corrupt, str) and corrupt):
        raise CorruptRunError(path, f"checkpoints[{i}]: field 'corrupt' must be a non-empty string, got {corrupt!r}")
    return IndexEntry(
        _name(_field(item, "name", lambda v: isinstance(v, str), "a string", path), path),
        _field(item, "round", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path),
        float(_field(item, "time", _is_time, "a number", path)),
        _field(item, "size", lambda v: _is_int(v) and v >= 0, "an integer >= 0", path),
        _field(item, "metrics", lambda v: isinstance(v, dict), "an object", path),
        corrupt,
        parse_validation(f"checkpoints[{i}]", item.get("validation"), path),
    )


def _no_unknown_fields(data: dict[str, Any], known: frozenset[str], where: str, path: str) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise CorruptRunError(path, f"{where}unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _no_duplicates(entries: list[IndexEntry], path: str) -> None:
    names: set[str] = set()
    rounds: set[int] = set()
    for i, entry in enumerate(entries):
        if entry.name in names:
            raise CorruptRunError(path, f"checkpoints[{i}]: checkpoint {entry.name!r} is listed twice")
        if entry.round in rounds:
            raise CorruptRunError(path, f"checkpoints[{i}]: round {entry.round} is listed twice")
        names.add(entry.name)
        rounds.add(entry.round)
