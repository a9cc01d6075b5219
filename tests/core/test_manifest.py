"""Parsing of our own files: every damaged manifest or run index gives our typed error naming file and reason."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

import trainkeep as tk
from trainkeep._internal.core.manifest import (
    RUN_INDEX_VERSION,
    SCHEMA_VERSION,
    FileEntry,
    IndexEntry,
    Manifest,
    RunIndex,
    encode,
    parse_manifest,
    parse_run_index,
)

PATH = "/runs/exp/checkpoint_000001/.trainkeep_manifest.json"
CHECKSUM = "0" * 32


def _manifest() -> Manifest:
    files = (FileEntry("model.pt", 10, CHECKSUM), FileEntry("sub/opt.pt", 5, "f" * 32))
    return Manifest("checkpoint_000001", 1, 1700000000.5, {"loss": math.nan, "val": {"acc": 0.9}}, files)


def _index() -> RunIndex:
    entry = IndexEntry.from_manifest(_manifest())
    return RunIndex(tk.CheckpointConfig(2, "loss", "min").to_dict(), next_round=2, created=1.0, updated=2.0,
                    checkpoints=[entry], retiring=["checkpoint_000000"])


def _raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_manifest_round_trips_with_nan_metrics() -> None:
    parsed = parse_manifest(encode(_manifest().to_dict()), PATH)
    assert (parsed.name, parsed.round, parsed.time, parsed.files) == ("checkpoint_000001", 1, 1700000000.5,
                                                                      _manifest().files)
    assert math.isnan(parsed.metrics["loss"]) and parsed.metrics["val"] == {"acc": 0.9}
    assert parsed.size == 15


def test_run_index_round_trips() -> None:
    parsed = parse_run_index(encode(_index().to_dict()), "/runs/exp/trainkeep_run.json")
    assert parsed.checkpoint_config == _index().checkpoint_config
    assert (parsed.next_round, parsed.status, parsed.retiring) == (2, "running", ["checkpoint_000000"])
    assert [c.name for c in parsed.checkpoints] == ["checkpoint_000001"]
    assert parsed.checkpoints[0].size == 15


def _mutated(base: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()

MANIFEST_DAMAGE = [
    (("schema",), "trainkeep.run", "schema is 'trainkeep.run'"),
    (("version",), "1", "'version' must be an integer"),
    (("name",), _DELETE, "missing field 'name'"),
    (("name",), 3, "field 'name' must be a string"),
    (("name",), "../../etc", "bad checkpoint name"),
    (("round",), -1, "field 'round' must be an integer >= 0"),
    (("round",), True, "field 'round'"),
    (("time",), "now", "field 'time' must be a number"),
    (("time",), _DELETE, "missing field 'time'"),
    (("metrics",), [1], "field 'metrics' must be an object"),
    (("checksum_algorithm",), "md5", "unknown checksum_algorithm 'md5'"),
    (("files",), {"a": 1}, "field 'files' must be a list"),
    (("files", 0), "model.pt", "files[0] must be an object"),
    (("files", 0, "path"), "../escape", "files[0]"),
    (("files", 0, "path"), "/etc/passwd", "not a safe relative path"),
    (("files", 1, "path"), "model.pt", "listed twice"),
    (("files", 0, "size"), -5, "field 'size' must be an integer >= 0"),
    (("files", 0, "size"), 1.5, "field 'size'"),
    (("files", 0, "checksum"), "abc", "field 'checksum' must be a 32-character hex string"),
    (("files", 0, "checksum"), "z" * 32, "field 'checksum' must be a 32-character hex string"),
    (("files", 0, "checksum"), _DELETE, "missing field 'checksum'"),
]


@pytest.mark.parametrize(("where", "value", "reason"), MANIFEST_DAMAGE)
def test_damaged_manifest_is_a_corrupt_run_error(where: tuple, value: Any, reason: str) -> None:
    raw = _raw(_mutated(_manifest().to_dict(), where, value))
    with pytest.raises(tk.CorruptRunError) as exc:
        parse_manifest(raw, PATH)
    assert isinstance(exc.value, ValueError)
    assert exc.value.path == PATH and reason in exc.value.reason
    assert str(exc.value).startswith(PATH)


INDEX_DAMAGE = [
    (("schema",), "trainkeep.manifest", "schema is 'trainkeep.manifest'"),
    (("checkpoint_config",), None, "field 'checkpoint_config' must be an object"),
    (("next_round",), -1, "field 'next_round'"),
    (("status",), "paused", "field 'status' must be one of"),
    (("created",), math.nan, "field 'created' must be a number"),
    (("updated",), _DELETE, "missing field 'updated'"),
    (("checkpoints",), "all", "field 'checkpoints' must be a list"),
    (("checkpoints", 0), 7, "checkpoints[0] must be an object"),
    (("checkpoints", 0, "name"), "..", "bad checkpoint name"),
    (("checkpoints", 0, "name"), "a/b", "bad checkpoint name"),
    (("checkpoints", 0, "round"), "1", "field 'round'"),
    (("checkpoints", 0, "size"), _DELETE, "missing field 'size'"),
    (("checkpoints", 0, "metrics"), None, "field 'metrics' must be an object"),
    (("retiring",), "checkpoint_000000", "field 'retiring' must be a list"),
    (("retiring", 0), "../x", "bad checkpoint name"),
    # issue 14, item 6: an index that is not exactly valid is refused (and then rebuilt from the manifests)
    (("pinned",), ["checkpoint_000001"], "unknown field 'pinned'"),
    (("checkpoints", 0, "keep"), True, "checkpoints[0]: unknown field 'keep'"),
    (("trainkeep_version",), 1, "field 'trainkeep_version' must be a string"),
    (("checkpoints", 0, "corrupt"), 1, "field 'corrupt' must be a non-empty string"),
    (("checkpoints", 0, "corrupt"), "", "field 'corrupt' must be a non-empty string"),
]


@pytest.mark.parametrize(("where", "value", "reason"), INDEX_DAMAGE)
def test_damaged_run_index_is_a_corrupt_run_error(where: tuple, value: Any, reason: str) -> None:
    raw = _raw(_mutated(_index().to_dict(), where, value))
    with pytest.raises(tk.CorruptRunError) as exc:
        parse_run_index(raw, "/runs/exp/trainkeep_run.json")
    assert reason in exc.value.reason


def test_an_index_listing_a_checkpoint_or_a_round_twice_is_corrupt() -> None:
    entry = _index().to_dict()["checkpoints"][0]
    for twin, reason in ((entry, "'checkpoint_000001' is listed twice"),
                         ({**entry, "name": "checkpoint_000009"}, "round 1 is listed twice")):
        document = _index().to_dict()
        document["checkpoints"].append(twin)
        with pytest.raises(tk.CorruptRunError, match=reason):
            parse_run_index(_raw(document), PATH)


def test_a_corrupt_mark_round_trips_and_only_then_is_the_index_version_2() -> None:
    index = _index()
    assert index.to_dict()["version"] == SCHEMA_VERSION == 1  # older trainkeep versions keep reading it
    index.checkpoints[0] = IndexEntry(**{**vars(index.checkpoints[0]), "corrupt": "model.pt: checksum is x"})
    document = index.to_dict()
    assert document["version"] == 2
    assert parse_run_index(encode(document), PATH).checkpoints[0].corrupt == "model.pt: checksum is x"


@pytest.mark.parametrize("parse", [parse_manifest, parse_run_index])
def test_json_nested_too_deeply_is_corrupt_not_a_recursion_error(parse: Any) -> None:
    with pytest.raises(tk.CorruptRunError, match="nested too deeply"):
        parse(b"[" * 100_000 + b"]" * 100_000, PATH)


@pytest.mark.parametrize("parse", [parse_manifest, parse_run_index])
@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"", "not valid JSON"), (b"\xff\xfe\x00", "not valid JSON"), (b"[1, 2]", "expected a JSON object"),
     (b"null", "expected a JSON object"), (b"{\"schema\": ", "not valid JSON")],
)
def test_not_json_is_a_corrupt_run_error(parse: Any, raw: bytes, reason: str) -> None:
    with pytest.raises(tk.CorruptRunError, match=reason):
        parse(raw, PATH)


@pytest.mark.parametrize(("parse", "document"), [(parse_manifest, _manifest().to_dict()),
                                                 (parse_run_index, _index().to_dict())])
def test_truncated_files_are_corrupt_at_every_cut(parse: Any, document: dict[str, Any]) -> None:
    raw = encode(document)
    for cut in range(0, len(raw) - 2, 7):  # the last two bytes are "}\n": a cut there still parses
        with pytest.raises(tk.CorruptRunError):
            parse(raw[:cut], PATH)


@pytest.mark.parametrize(("parse", "document", "newest"), [(parse_manifest, _manifest().to_dict(), SCHEMA_VERSION),
                                                           (parse_run_index, _index().to_dict(), RUN_INDEX_VERSION)])
def test_future_version_is_incompatible_not_corrupt(parse: Any, document: dict[str, Any], newest: int) -> None:
    future = {**document, "version": newest + 1, "trainkeep_version": "9.0.0", "new_field": [1]}
    with pytest.raises(tk.IncompatibleRunError) as exc:
        parse(_raw(future), PATH)
    assert not isinstance(exc.value, tk.CorruptRunError)
    message = str(exc.value)
    assert "9.0.0" in message and f"version {newest + 1}" in message and "Upgrade" in message
